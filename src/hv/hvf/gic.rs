//! The VM's GICv3: the in-kernel one of macOS 15 (`hv_gic_*`), placed where the device tree
//! says, or on macOS 13/14 the userspace model (`devices::gic_v3`), whose registers the backend
//! serves itself — as KVM serves its vGIC in the kernel — so its MMIO never reaches the bus.
//! The geometry check and the userspace glue are portable and unit-tested; the framework calls
//! are macOS-only.
//!
//! Order matters (`hv_gic.h`): create the GIC after `hv_vm_create` and before any vCPU; set each
//! vCPU's MPIDR_EL1 before asking for its redistributor. The redistributor region holds one
//! 128 KiB redistributor (RD_base + SGI_base frames) per vCPU the VM supports, contiguously.

use std::sync::{Arc, Mutex};

use boot::layout;
use devices::gic_v3::{GicV3, GICD_FRAME_SIZE};
use devices::BusDevice;

/// The userspace GIC and its two register blocks, as the vCPU threads reach them.
pub struct UserspaceGic {
    pub gic: GicV3,
    distributor: Arc<Mutex<dyn BusDevice>>,
    redistributors: Arc<Mutex<dyn BusDevice>>,
    redistributors_size: u64,
}

impl UserspaceGic {
    pub fn new(gic: GicV3) -> Self {
        UserspaceGic {
            distributor: gic.distributor(),
            redistributors: gic.redistributors(),
            redistributors_size: gic.redistributors_size(),
            gic,
        }
    }

    /// Serves an MMIO access if `addr` is one of the GIC's registers: `Some(value read)` (0
    /// for a write), `None` if the address is not the GIC's.
    pub fn mmio(&self, addr: u64, size: u8, write: Option<u64>) -> Option<u64> {
        let (frame, offset) = if (layout::GICD_BASE..layout::GICD_BASE + GICD_FRAME_SIZE)
            .contains(&addr)
        {
            (&self.distributor, addr - layout::GICD_BASE)
        } else if (layout::GICR_BASE..layout::GICR_BASE + self.redistributors_size).contains(&addr)
        {
            (&self.redistributors, addr - layout::GICR_BASE)
        } else {
            return None;
        };
        let mut frame = frame.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(match write {
            Some(value) => {
                frame.write(offset, size, value);
                0
            }
            None => frame.read(offset, size),
        })
    }
}

/// What the framework reports about its GIC (`hv_gic_parameters.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicGeometry {
    pub distributor_size: u64,
    pub distributor_alignment: u64,
    pub redistributor_region_size: u64,
    pub redistributor_size: u64,
    pub redistributor_alignment: u64,
    pub spi_base: u32,
    pub spi_count: u32,
}

/// Checks that the framework's GIC fits hvrun's memory map (`boot::layout`): bases aligned as
/// required, the frames inside their windows, one redistributor per [`layout::GICR_SIZE_PER_VCPU`]
/// (the stride the device tree implies), and every SPI hvrun hands out in range.
pub fn check_geometry(g: &GicGeometry) -> Result<(), String> {
    let aligned = |base: u64, align: u64| align == 0 || base % align == 0;
    if !aligned(layout::GICD_BASE, g.distributor_alignment) {
        return Err(format!(
            "the distributor must be {:#x}-aligned; hvrun places it at {:#x}",
            g.distributor_alignment,
            layout::GICD_BASE
        ));
    }
    if layout::GICD_BASE + g.distributor_size > layout::GICR_BASE {
        return Err(format!(
            "the distributor ({:#x} bytes) overlaps the redistributors at {:#x}",
            g.distributor_size,
            layout::GICR_BASE
        ));
    }
    if !aligned(layout::GICR_BASE, g.redistributor_alignment) {
        return Err(format!(
            "the redistributors must be {:#x}-aligned; hvrun places them at {:#x}",
            g.redistributor_alignment,
            layout::GICR_BASE
        ));
    }
    if layout::GICR_BASE + g.redistributor_region_size > layout::UART_BASE {
        return Err(format!(
            "the redistributor region ({:#x} bytes) does not fit below the UART at {:#x}",
            g.redistributor_region_size,
            layout::UART_BASE
        ));
    }
    if g.redistributor_size != layout::GICR_SIZE_PER_VCPU {
        return Err(format!(
            "each redistributor is {:#x} bytes; the device tree assumes {:#x}",
            g.redistributor_size,
            layout::GICR_SIZE_PER_VCPU
        ));
    }
    let spi_end = u64::from(g.spi_base) + u64::from(g.spi_count);
    if g.spi_base > 32 || spi_end < u64::from(layout::GIC_NR_IRQS) {
        return Err(format!(
            "it offers SPIs {}..{spi_end}; hvrun uses 32..{}",
            g.spi_base,
            layout::GIC_NR_IRQS
        ));
    }
    Ok(())
}

#[cfg(target_os = "macos")]
pub use macos::*;

#[cfg(target_os = "macos")]
mod macos {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use hv_sys::newer::GicApi;
    use hv_sys::*;

    use super::{check_geometry, GicGeometry};
    use crate::hv::hvf::errors::check;
    use crate::hv::hvf::vm::VmShared;
    use crate::hv::{HvError, Result};
    use boot::layout;
    use devices::IrqLine;

    /// Reads the framework's GIC parameters.
    pub fn geometry(api: &GicApi) -> Result<GicGeometry> {
        let size = |f: unsafe extern "C" fn(*mut usize) -> hv_return_t, what: &str| {
            let mut value = 0usize;
            // SAFETY: the function writes one size_t through the pointer.
            check(unsafe { f(&mut value) }, what)?;
            Ok::<u64, HvError>(value as u64)
        };
        let (mut spi_base, mut spi_count) = (0u32, 0u32);
        // SAFETY: the function writes two u32s through the pointers.
        let ret = unsafe { (api.hv_gic_get_spi_interrupt_range)(&mut spi_base, &mut spi_count) };
        check(ret, "hv_gic_get_spi_interrupt_range")?;
        Ok(GicGeometry {
            distributor_size: size(api.hv_gic_get_distributor_size, "GIC distributor size")?,
            distributor_alignment: size(
                api.hv_gic_get_distributor_base_alignment,
                "GIC distributor alignment",
            )?,
            redistributor_region_size: size(
                api.hv_gic_get_redistributor_region_size,
                "GIC redistributor region size",
            )?,
            redistributor_size: size(api.hv_gic_get_redistributor_size, "GIC redistributor size")?,
            redistributor_alignment: size(
                api.hv_gic_get_redistributor_base_alignment,
                "GIC redistributor alignment",
            )?,
            spi_base,
            spi_count,
        })
    }

    /// Creates the in-kernel GIC at `boot::layout`'s addresses. Call after `hv_vm_create` and
    /// before the first `hv_vcpu_create`.
    pub fn create(api: &GicApi) -> Result<()> {
        let g = geometry(api)?;
        check_geometry(&g).map_err(|why| {
            HvError::new(
                format!("the in-kernel GIC does not fit hvrun's memory map: {why}"),
                std::io::Error::from(std::io::ErrorKind::Unsupported),
            )
        })?;
        // SAFETY: no arguments; returns a new OS object (or null on failure).
        let config = unsafe { (api.hv_gic_config_create)() };
        if config.is_null() {
            return Err(HvError::new(
                "hv_gic_config_create returned nothing",
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            ));
        }
        // SAFETY: `config` is a live GIC configuration until the os_release below.
        let result = unsafe {
            check(
                (api.hv_gic_config_set_distributor_base)(config, layout::GICD_BASE),
                "hv_gic_config_set_distributor_base",
            )
            .and_then(|()| {
                check(
                    (api.hv_gic_config_set_redistributor_base)(config, layout::GICR_BASE),
                    "hv_gic_config_set_redistributor_base",
                )
            })
            .and_then(|()| check((api.hv_gic_create)(config), "hv_gic_create"))
        };
        // SAFETY: we own the one reference hv_gic_config_create gave us.
        unsafe { os_release(config) };
        result
    }

    /// One SPI of the in-kernel GIC. Asserting it also wakes vCPUs sleeping in an emulated WFI,
    /// which the framework does not know about (the GIC's routing decides which vCPU takes it;
    /// the others go back to sleep).
    pub struct InKernelSpi {
        pub api: &'static GicApi,
        pub intid: u32,
        pub vm: Arc<VmShared>,
        pub logged: AtomicBool,
    }

    impl IrqLine for InKernelSpi {
        fn set_level(&self, high: bool) {
            // SAFETY: hv_gic_set_spi takes plain values and may be called from any thread.
            let ret = unsafe { (self.api.hv_gic_set_spi)(self.intid, high) };
            if ret != HV_SUCCESS && !self.logged.swap(true, Ordering::Relaxed) {
                let err = check(ret, &format!("hv_gic_set_spi({}, {high})", self.intid));
                log::error!("{}", err.err().map(|e| e.to_string()).unwrap_or_default());
            }
            if high {
                self.vm.wake_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::gic::userspace_gic;

    #[test]
    fn the_userspace_gic_serves_its_own_frames_only() {
        let gic = UserspaceGic::new(userspace_gic(2).unwrap());
        // GICD_PIDR2.ArchRev = 3 (GICv3).
        assert_eq!(gic.mmio(layout::GICD_BASE + 0xffe8, 4, None).map(|v| v & 0xf0), Some(0x30));
        // The second vCPU's GICR_TYPER says Last (bit 4).
        let typer = layout::GICR_BASE + layout::GICR_SIZE_PER_VCPU + 8;
        assert_eq!(gic.mmio(typer, 8, None).map(|v| v & 0x10), Some(0x10));
        assert_eq!(gic.mmio(layout::GICR_BASE + layout::gicr_size(2), 4, None), None);
        assert_eq!(gic.mmio(layout::UART_BASE, 1, Some(0x41)), None);
        // GICD_CTLR: enable Group 1 (ARE is fixed on); the write goes to the model.
        assert_eq!(gic.mmio(layout::GICD_BASE, 4, Some(0x2)), Some(0));
        assert_eq!(gic.mmio(layout::GICD_BASE, 4, None).map(|v| v & 0x2), Some(0x2));
    }

    /// What QEMU's virt machine layout (same bases as hvrun's) assumes of macOS 15.
    fn plausible() -> GicGeometry {
        GicGeometry {
            distributor_size: 0x1_0000,
            distributor_alignment: 0x1_0000,
            redistributor_region_size: 64 * 0x2_0000,
            redistributor_size: 0x2_0000,
            redistributor_alignment: 0x1_0000,
            spi_base: 32,
            spi_count: 988,
        }
    }

    #[test]
    fn a_plausible_gic_fits() {
        assert_eq!(check_geometry(&plausible()), Ok(()));
    }

    #[test]
    fn misfits_are_explained() {
        let too_aligned = GicGeometry { redistributor_alignment: 0x20_0000, ..plausible() };
        assert!(check_geometry(&too_aligned).unwrap_err().contains("aligned"));
        let huge = GicGeometry { redistributor_region_size: 512 * 0x2_0000, ..plausible() };
        assert!(check_geometry(&huge).unwrap_err().contains("below the UART"));
        let fat_dist = GicGeometry { distributor_size: 0x10_0000, ..plausible() };
        assert!(check_geometry(&fat_dist).unwrap_err().contains("overlaps"));
        let stride = GicGeometry { redistributor_size: 0x4_0000, ..plausible() };
        assert!(check_geometry(&stride).unwrap_err().contains("device tree assumes"));
        let few_spis = GicGeometry { spi_count: 32, ..plausible() };
        assert!(check_geometry(&few_spis).unwrap_err().contains("SPIs 32..64"));
    }
}
