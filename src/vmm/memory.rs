//! Guest RAM: one host mapping, seen by the devices and the loader through vm-memory and by the
//! hypervisor through [`Vm::map_memory`]. Also what `hvrun bench` gives its micro-guests.
//!
//! The mapping starts at a host address aligned to the host's block size (the huge-page size:
//! 2 MiB with 4 KiB pages, 32 MiB with 16 KiB pages, 512 MiB with 64 KiB pages). Guest RAM
//! starts at a block-aligned guest address, so host and guest addresses are then congruent
//! modulo the block size, and the hypervisor can back guest RAM with block (huge-page) mappings
//! in its stage-2 tables instead of one entry per page. On Linux the range is also marked
//! `MADV_HUGEPAGE`, so the host backs it with transparent huge pages where it can.
//!
//! A page-aligned mapping (what an ordinary `mmap` returns) costs KVM a stage-2 fault per 4 KiB
//! page the guest touches — measured here as ~10× more exits during a boot, and boots 10–20 %
//! slower. (It was first blamed for the 2-vCPU hang; that turned out to be the emulated
//! machine's 6.1 KVM — see the README's "The 2-vCPU hang".)

use std::io;

use boot::layout::RAM_BASE;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::VmmError;
use crate::hv::{MemoryPerms, Vm};

/// The guest's RAM, at [`RAM_BASE`].
pub struct GuestRam {
    memory: GuestMemoryMmap,
    /// The host mapping, unmapped on drop.
    host: *mut libc::c_void,
    bytes: usize,
}

// SAFETY: `host` is only used to unmap the mapping on drop; the memory itself is shared through
// vm-memory, which is Send + Sync.
unsafe impl Send for GuestRam {}
// SAFETY: as above: no access goes through `host`.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Allocates `bytes` of zeroed guest RAM, block-aligned in host memory. Pages cost host memory
    /// only once the guest touches them.
    pub fn allocate(bytes: u64) -> Result<Self, VmmError> {
        let fail = |e: io::Error| VmmError::Memory(bytes >> 20, e.to_string());
        let size = usize::try_from(bytes)
            .map_err(|_| fail(io::Error::new(io::ErrorKind::InvalidInput, "too large")))?;
        let align = host_block_size();
        let host = map_aligned(size, align).map_err(fail)?;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `host..host + size` is a mapping we own; madvise only changes how the
            // kernel backs it. Failing (no THP in this kernel) only costs speed.
            if unsafe { libc::madvise(host, size, libc::MADV_HUGEPAGE) } != 0 {
                log::debug!("MADV_HUGEPAGE on guest RAM: {}", io::Error::last_os_error());
            }
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: `host..host + size` is a valid mapping with exactly these protections and
        // flags, and it stays mapped until `self` is dropped (see `memory`).
        let region = unsafe { MmapRegion::<()>::build_raw(host.cast(), size, prot, flags) };
        let memory = region.map_err(|e| io::Error::other(e.to_string())).and_then(|region| {
            let region = GuestRegionMmap::new(region, GuestAddress(RAM_BASE))
                .ok_or_else(|| io::Error::other("guest RAM wraps the address space"))?;
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| io::Error::other(e.to_string()))
        });
        match memory {
            Ok(memory) => Ok(GuestRam { memory, host, bytes: size }),
            Err(e) => {
                // SAFETY: the mapping is ours and nothing refers to it.
                unsafe { libc::munmap(host, size) };
                Err(fail(e))
            }
        }
    }

    /// The memory as devices and the loader see it (a cheap, shared handle when cloned). Every
    /// clone must be gone before `self` is dropped: the mapping goes with it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes as u64
    }

    /// Where the RAM starts in host memory.
    pub fn host_address(&self) -> usize {
        self.host as usize
    }

    /// Makes this RAM the guest's memory in `vm`.
    ///
    /// # Safety
    /// `self` must outlive `vm` — dropped after it, and after every thread that runs one of its
    /// vCPUs has been joined: the guest reads and writes the mapping at any time until then.
    pub unsafe fn map_into<V: Vm>(&self, vm: &V) -> Result<(), VmmError> {
        // SAFETY: the mapping is owned by `self`, which the caller keeps alive longer than the VM.
        unsafe { vm.map_memory(self.host.cast(), RAM_BASE, self.bytes as u64, MemoryPerms::RWX)? };
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map_aligned` and, by the contract of `memory` and
        // `map_into`, nothing uses it any more.
        unsafe { libc::munmap(self.host, self.bytes) };
    }
}

/// The host's block size for guest RAM: the transparent-huge-page size where Linux says it,
/// otherwise what one page-table page of the host's page size covers (4 KiB pages: 512 × 4 KiB
/// = 2 MiB; 16 KiB pages, as on Apple Silicon: 2048 × 16 KiB = 32 MiB).
pub fn host_block_size() -> usize {
    #[cfg(target_os = "linux")]
    if let Some(size) =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|s| s.is_power_of_two())
    {
        return size;
    }
    // SAFETY: sysconf only reads system configuration.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let page = if page.is_power_of_two() { page } else { 4096 };
    // A page-table page holds page / 8 entries of 8 bytes.
    page * (page / 8)
}

/// An anonymous read-write mapping of `size` bytes whose start is a multiple of `align` (a
/// power of two): map `size + align` bytes, then unmap the unaligned head and the tail.
fn map_aligned(size: usize, align: usize) -> io::Result<*mut libc::c_void> {
    let reserve = size
        .checked_add(align)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "size overflows"))?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), reserve, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = (base as usize).next_multiple_of(align);
    let head = start - base as usize;
    let tail = reserve - head - size;
    // SAFETY: both ranges lie inside the mapping just made and are used by nobody.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
    }
    Ok(start as *mut libc::c_void)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn guest_ram_is_block_aligned_zeroed_and_usable() {
        let block = host_block_size();
        assert!(block.is_power_of_two() && block >= 64 << 10, "{block}");
        let ram = GuestRam::allocate(64 << 20).unwrap();
        assert_eq!(ram.host_address() % block, 0, "host address {:#x}", ram.host_address());
        assert_eq!(ram.bytes(), 64 << 20);
        let mem = ram.memory();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(RAM_BASE + 4096)).unwrap(), 0);
        mem.write_obj(0xfeed_u64, GuestAddress(RAM_BASE + (64 << 20) - 8)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(RAM_BASE + (64 << 20) - 8)).unwrap(), 0xfeed);
        assert!(
            mem.read_obj::<u8>(GuestAddress(RAM_BASE + (64 << 20))).is_err(),
            "ends at its size"
        );
    }

    #[test]
    fn aligned_mappings_keep_nothing_outside_their_range() {
        for align in [4096, 2 << 20, 32 << 20] {
            let p = map_aligned(3 << 20, align).unwrap();
            assert_eq!(p as usize % align, 0);
            // SAFETY: the test's own mapping.
            unsafe {
                *(p as *mut u8) = 1;
                *((p as usize + (3 << 20) - 1) as *mut u8) = 2;
                assert_eq!(libc::munmap(p, 3 << 20), 0);
            }
        }
    }
}
