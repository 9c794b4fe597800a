//! Where the kernel, initrd and device tree go inside guest RAM, and copying them there.
//!
//! The kernel sits at the bottom of RAM (2 MiB aligned, booting.rst §4); the device tree gets the
//! last 2 MiB block (booting.rst §2: 8-byte aligned, must not cross a 2 MiB boundary); the initrd
//! goes right below the device tree, page aligned, so it stays clear of the kernel's BSS and of
//! the memory the kernel allocates early right after its image.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{self, FDT_MAX_SIZE, RAM_BASE};

/// Page alignment for the initrd (booting.rst §2 asks for none, but page alignment lets the kernel
/// free it page by page).
const INITRD_ALIGN: u64 = 4096;

/// Errors while placing boot images in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "the kernel ({kernel} bytes), initrd ({initrd} bytes) and device tree do not fit in {ram} \
         bytes of RAM; give the guest more memory with --mem"
    )]
    DoesNotFit { kernel: u64, initrd: u64, ram: u64 },
    #[error("the device tree is {0} bytes, more than the 2 MiB the arm64 boot protocol allows")]
    FdtTooBig(usize),
    #[error("writing the {what} into guest memory failed: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Guest physical addresses chosen for one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlacement {
    /// 2 MiB aligned base the kernel Image is loaded at (its entry is base + text_offset).
    pub kernel_base: u64,
    /// The initrd's start and size, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// Where the device tree blob goes.
    pub fdt: u64,
}

impl BootPlacement {
    /// Plans a boot in `ram_size` bytes of RAM for a kernel occupying `kernel_footprint` bytes
    /// from its base (BSS included) and an initrd of `initrd_size` bytes (0 for none).
    pub fn plan(
        ram_size: u64,
        kernel_footprint: u64,
        initrd_size: u64,
    ) -> Result<Self, PlacementError> {
        let too_small = || PlacementError::DoesNotFit {
            kernel: kernel_footprint,
            initrd: initrd_size,
            ram: ram_size,
        };
        if ram_size < FDT_MAX_SIZE || ram_size % FDT_MAX_SIZE != 0 {
            return Err(too_small());
        }
        let kernel_base = RAM_BASE;
        let kernel_end = kernel_base.checked_add(kernel_footprint).ok_or_else(too_small)?;
        let fdt = layout::fdt_address(ram_size);
        let initrd = if initrd_size == 0 {
            None
        } else {
            let start = fdt.checked_sub(initrd_size).ok_or_else(too_small)? & !(INITRD_ALIGN - 1);
            Some((start, initrd_size))
        };
        let lowest_other = initrd.map_or(fdt, |(start, _)| start);
        if kernel_end > lowest_other {
            return Err(too_small());
        }
        Ok(BootPlacement { kernel_base, initrd, fdt })
    }

    /// Copies the initrd to its planned place.
    pub fn write_initrd<M: GuestMemory>(
        &self,
        mem: &M,
        initrd: &[u8],
    ) -> Result<(), PlacementError> {
        if let Some((start, _)) = self.initrd {
            mem.write_slice(initrd, GuestAddress(start))
                .map_err(|source| PlacementError::Write { what: "initrd", source })?;
        }
        Ok(())
    }

    /// Copies the device tree blob to its planned place.
    pub fn write_fdt<M: GuestMemory>(&self, mem: &M, fdt: &[u8]) -> Result<(), PlacementError> {
        if fdt.len() as u64 > FDT_MAX_SIZE {
            return Err(PlacementError::FdtTooBig(fdt.len()));
        }
        mem.write_slice(fdt, GuestAddress(self.fdt))
            .map_err(|source| PlacementError::Write { what: "device tree", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn initrd_sits_below_the_fdt_page_aligned() {
        let p = BootPlacement::plan(512 * MIB, 40 * MIB, 10 * MIB + 123).unwrap();
        assert_eq!(p.kernel_base, RAM_BASE);
        assert_eq!(p.fdt, RAM_BASE + 510 * MIB);
        let (start, size) = p.initrd.unwrap();
        assert_eq!(start % INITRD_ALIGN, 0);
        assert!(start + size <= p.fdt);
        assert!(start >= RAM_BASE + 40 * MIB);
    }

    #[test]
    fn no_initrd() {
        let p = BootPlacement::plan(64 * MIB, 30 * MIB, 0).unwrap();
        assert_eq!(p.initrd, None);
    }

    #[test]
    fn overlap_is_refused() {
        assert!(BootPlacement::plan(64 * MIB, 40 * MIB, 30 * MIB).is_err());
        assert!(BootPlacement::plan(64 * MIB, 63 * MIB, 0).is_err());
        assert!(BootPlacement::plan(64 * MIB, u64::MAX, 0).is_err());
        assert!(BootPlacement::plan(64 * MIB, 0, u64::MAX).is_err());
        let err = BootPlacement::plan(64 * MIB, 40 * MIB, 30 * MIB).unwrap_err();
        assert!(err.to_string().contains("--mem"), "{err}");
    }

    #[test]
    fn images_land_where_planned() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 64 * MIB as usize)]).unwrap();
        let p = BootPlacement::plan(64 * MIB, 8 * MIB, 4096 + 5).unwrap();
        let initrd: Vec<u8> = (0..4101u32).map(|i| i as u8).collect();
        p.write_initrd(&mem, &initrd).unwrap();
        p.write_fdt(&mem, b"\xd0\x0d\xfe\xed").unwrap();
        let mut back = vec![0; initrd.len()];
        mem.read_slice(&mut back, GuestAddress(p.initrd.unwrap().0)).unwrap();
        assert_eq!(back, initrd);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(p.fdt)).unwrap().to_be(), 0xd00d_feed);
        assert!(p.write_fdt(&mem, &vec![0; 3 * MIB as usize]).is_err());
    }
}
