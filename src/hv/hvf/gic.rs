//! The VM's GICv3: the in-kernel one of macOS 15 (`hv_gic_*`), placed where the device tree
//! says, or on macOS 13/14 the userspace model (`devices::gic_v3`), whose registers the backend
//! serves itself — as KVM serves its vGIC in the kernel — so its MMIO never reaches the bus.
//! The geometry check and the userspace glue are portable and unit-tested; the framework calls
//! are macOS-only.
//!
//! Order matters (`hv_gic.h`): create the GIC after `hv_vm_create` and before any vCPU; set each
//! vCPU's MPIDR_EL1 before asking for its redistributor. The redistributor region holds one
//! 128 KiB redistributor (RD_base + SGI_base frames) per vCPU the VM supports, contiguously.

use hv_sys::newer::GicApi;

use boot::layout;
use devices::gic_v3::{GicError, GicV3, IccRegister, GICD_FRAME_SIZE, GICR_FRAME_SIZE, MAX_VCPUS};
use devices::{BusError, MmioBus};

use crate::arch::aarch64::mpidr_for_vcpu;
use crate::arch::aarch64::sysreg::{ForwardedAccess, ForwardedOp};

// The model's frames are the sizes the layout (and so the FDT) gives them, and it can hold as
// many vCPUs as the redistributor window.
const _: () = {
    assert!(GICD_FRAME_SIZE == layout::GICD_SIZE);
    assert!(GICR_FRAME_SIZE == layout::GICR_SIZE_PER_VCPU);
    assert!(MAX_VCPUS >= layout::MAX_VCPUS as usize);
};

/// The VM's interrupt controller.
pub enum GicBackend {
    /// The framework's GICv3 (macOS 15).
    InKernel(&'static GicApi),
    /// hvrun's model (macOS 13/14): the backend serves its MMIO and ICC registers and drives
    /// each vCPU's IRQ line with `hv_vcpu_set_pending_interrupt`.
    Userspace(UserspaceGic),
}

/// What a VTIMER_ACTIVATED exit asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtimerActivation {
    /// Userspace GIC: raise the timer PPI (27) in the model and keep the vtimer masked until
    /// the guest has handled it (QEMU's `hvf_sync_vtimer`, VirtualBox's
    /// `nemR3DarwinPreRunGuest`).
    RaisePpi,
    /// In-kernel GIC: the framework delivers the timer itself (QEMU's vGIC series: "no vmexits
    /// ought to happen"; VirtualBox: "PPIs are handled entirely in Hypervisor.framework"). If
    /// the exit comes anyway, log it once and unmask at once; never write the redistributor,
    /// whose pending bits the framework owns (clearing GICR_ICPENDR0 could drop a timer
    /// interrupt it made pending).
    UnmaskOnly,
}

/// The rule for VTIMER_ACTIVATED with the in-kernel GIC or the userspace one.
pub fn vtimer_activation(in_kernel_gic: bool) -> VtimerActivation {
    if in_kernel_gic {
        VtimerActivation::UnmaskOnly
    } else {
        VtimerActivation::RaisePpi
    }
}

impl GicBackend {
    /// Whether this is the framework's GIC.
    pub fn is_in_kernel(&self) -> bool {
        matches!(self, GicBackend::InKernel(_))
    }
}

/// Why the userspace GIC could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceGicError {
    #[error("the userspace GICv3: {0}")]
    Model(#[from] GicError),
    #[error("placing the userspace GICv3's frames (an hvrun bug: please report it): {0}")]
    Frames(#[from] BusError),
}

/// The userspace GIC (`devices::gic_v3`) wired into hvrun's machine: the MPIDRs and interrupt
/// count of `boot::layout`, and its two register blocks on a bus of their own at the addresses
/// the device tree gives them. The backend serves them itself, so they never reach the VM's bus.
pub struct UserspaceGic {
    pub gic: GicV3,
    frames: MmioBus,
}

impl UserspaceGic {
    /// A userspace GICv3 for `vcpus` vCPUs, with hvrun's MPIDRs and interrupt count.
    pub fn new(vcpus: u32) -> Result<Self, UserspaceGicError> {
        let gic = GicV3::new((0..vcpus).map(mpidr_for_vcpu).collect(), layout::GIC_NR_IRQS)?;
        let mut frames = MmioBus::new();
        frames.insert(
            layout::GICD_BASE,
            GICD_FRAME_SIZE,
            "gicv3-distributor",
            gic.distributor(),
        )?;
        frames.insert(
            layout::GICR_BASE,
            gic.redistributors_size(),
            "gicv3-redistributors",
            gic.redistributors(),
        )?;
        Ok(UserspaceGic { gic, frames })
    }

    /// Serves an MMIO access if `addr` is one of the GIC's registers: `Some(value read)` (0
    /// for a write), `None` if the address is not the GIC's.
    pub fn mmio(&self, addr: u64, size: u8, write: Option<u64>) -> Option<u64> {
        match write {
            Some(value) => self.frames.write(addr, size, value).then_some(0),
            None => self.frames.read(addr, size),
        }
    }

    /// Performs a trapped access to a GIC CPU-interface register of `vcpu` (what
    /// `sysreg::emulate` hands back): `Some(register write that finishes it)`, or `None` if the
    /// model has no such register (the backend injects UNDEF then).
    pub fn icc_access(&self, vcpu: u32, access: &ForwardedAccess) -> Option<Option<(u8, u64)>> {
        let r = access.reg;
        let icc = IccRegister::from_encoding(r.op0, r.op1, r.crn, r.crm, r.op2)?;
        Some(match access.op {
            ForwardedOp::Read { .. } => access.completion(self.gic.icc_read(vcpu, icc)),
            ForwardedOp::Write(value) => {
                self.gic.icc_write(vcpu, icc, value);
                None
            }
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

/// Which GIC a VM gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GicChoice {
    /// The framework's.
    InKernel,
    /// hvrun's userspace model, and why (no framework GIC, or one that does not fit).
    Userspace(String),
}

/// Picks the VM's GIC. `framework` is `None` on macOS 13/14 (no `hv_gic_*`), else the
/// framework's geometry or why it could not be read. A framework GIC whose geometry hvrun's
/// memory map cannot hold falls back to the userspace GIC (which always fits) instead of
/// failing every VM — except with `--nested`, which needs the framework's GIC (the vCPU
/// interrupt calls cannot reach a guest hypervisor's guests, `hv_gic.h`): then it is an error.
pub fn choose_gic(
    framework: Option<Result<GicGeometry, String>>,
    nested: bool,
) -> Result<GicChoice, String> {
    let why = match framework {
        None => "no in-kernel GIC (macOS 13/14)".to_string(),
        Some(Ok(geometry)) => match check_geometry(&geometry) {
            Ok(()) => return Ok(GicChoice::InKernel),
            Err(why) => format!("the in-kernel GIC does not fit hvrun's memory map: {why}"),
        },
        Some(Err(why)) => format!("the in-kernel GIC's parameters cannot be read: {why}"),
    };
    if nested {
        return Err(format!("--nested needs the in-kernel GIC, but {why}"));
    }
    Ok(GicChoice::Userspace(why))
}

#[cfg(target_os = "macos")]
pub use macos::*;

#[cfg(target_os = "macos")]
mod macos {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use hv_sys::newer::GicApi;
    use hv_sys::*;

    use super::GicGeometry;
    use crate::hv::hvf::errors::check;
    use crate::hv::hvf::kick::Doorbells;
    use crate::hv::{HvError, Result};
    use boot::layout;
    use devices::gic_v3::VcpuWaker;
    use devices::IrqLine;

    /// How the userspace GIC reaches a vCPU whose interrupt state changed: out of the guest
    /// (`hv_vcpus_exit`) or out of its WFI sleep.
    pub struct Waker(pub Arc<Doorbells>);

    impl VcpuWaker for Waker {
        fn wake(&self, vcpu: u32) {
            if let Some(bell) = self.0.get(vcpu) {
                bell.interrupt_vcpu();
            }
        }
    }

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
    /// The caller has checked the geometry (`choose_gic`).
    pub fn create(api: &GicApi) -> Result<()> {
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
        /// Every vCPU's doorbell, to end emulated WFI sleeps.
        pub doorbells: Arc<Doorbells>,
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
                self.doorbells.wake_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::sysreg::{
        emulate, is_gic_cpu_interface, regs, SysReg, SysRegAccess, SysRegContext, SysRegOutcome,
    };

    #[test]
    fn the_guest_finds_the_gic_where_the_fdt_says() {
        let vcpus = 3;
        let gic = UserspaceGic::new(vcpus).unwrap();
        assert_eq!(gic.gic.redistributors_size(), layout::gicr_size(vcpus));
        // GICD_TYPER.ITLinesNumber (GIC_NR_IRQS = 128 → 3).
        assert_eq!(gic.mmio(layout::GICD_BASE + 0x4, 4, None).map(|v| v & 0x1f), Some(3));
        // Each vCPU's GICR_TYPER carries its MPIDR affinity; the last one says Last.
        for cpu in 0..vcpus {
            let typer = layout::GICR_BASE + u64::from(cpu) * layout::GICR_SIZE_PER_VCPU + 8;
            let t = gic.mmio(typer, 8, None).unwrap();
            assert_eq!(t >> 32, mpidr_for_vcpu(cpu) & 0xff_ffff);
            assert_eq!(t & 0x10 != 0, cpu == vcpus - 1);
        }
        // Every SPI the layout hands out has a line.
        let (_, last_spi) = layout::virtio_mmio_slot(layout::VIRTIO_MMIO_SLOTS - 1).unwrap();
        assert!(gic.gic.spi_line(layout::UART_SPI).is_some());
        assert!(gic.gic.spi_line(last_spi).is_some());
    }

    /// Finding 7 of reviews/hvf-review.md.
    #[test]
    fn only_the_userspace_gic_takes_the_timer_ppi_from_a_vtimer_exit() {
        let userspace = GicBackend::Userspace(UserspaceGic::new(1).unwrap());
        assert!(!userspace.is_in_kernel());
        assert_eq!(vtimer_activation(userspace.is_in_kernel()), VtimerActivation::RaisePpi);
        assert_eq!(vtimer_activation(true), VtimerActivation::UnmaskOnly);
    }

    #[test]
    fn vcpu_counts_the_model_cannot_hold_are_errors() {
        assert!(matches!(UserspaceGic::new(0), Err(UserspaceGicError::Model(_))));
        assert!(UserspaceGic::new(layout::MAX_VCPUS).is_ok());
    }

    #[test]
    fn the_userspace_gic_serves_its_own_frames_only() {
        let gic = UserspaceGic::new(2).unwrap();
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

    /// A trapped ICC access as the vCPU thread performs it: the shared policy, then the GIC.
    fn icc(
        gic: &UserspaceGic,
        vcpu: u32,
        access: SysRegAccess,
        rt_value: u64,
    ) -> Option<(u8, u64)> {
        match emulate(&access, rt_value, SysRegContext::default()) {
            SysRegOutcome::GicCpuInterface(f) => gic.icc_access(vcpu, &f).expect("implemented"),
            other => panic!("{access:?}: {other:?}"),
        }
    }

    #[test]
    fn icc_registers_reach_the_vcpus_own_cpu_interface() {
        let gic = UserspaceGic::new(2).unwrap();
        let pmr = SysRegAccess { reg: regs::ICC_PMR_EL1, rt: 4, read: false };
        assert_eq!(icc(&gic, 1, pmr, 0xf7), None);
        let pmr_read = SysRegAccess { read: true, ..pmr };
        assert_eq!(icc(&gic, 1, pmr_read, 0), Some((4, 0xf0)), "5 priority bits");
        assert_eq!(icc(&gic, 0, pmr_read, 0), Some((4, 0)), "each vCPU has its own interface");
        let sre = SysRegAccess { reg: regs::ICC_SRE_EL1, rt: 0, read: true };
        assert_eq!(icc(&gic, 1, sre, 0), Some((0, 7)));
        let iar = SysRegAccess { reg: regs::ICC_IAR1_EL1, rt: 9, read: true };
        assert_eq!(icc(&gic, 1, iar, 0), Some((9, 1023)), "nothing pending: spurious");
        // msr icc_pmr_el1, xzr writes zero whatever Rt's number would hold.
        assert_eq!(icc(&gic, 1, SysRegAccess { rt: 31, ..pmr }, 0xff), None);
        assert_eq!(icc(&gic, 1, pmr_read, 0), Some((4, 0)));
    }

    #[test]
    fn the_policy_and_the_model_agree_on_the_icc_space() {
        // Every register the model implements is one the policy forwards; a forwarded register
        // the model lacks gets None (UNDEF), never a panic.
        let gic = UserspaceGic::new(1).unwrap();
        for crn in 0..16 {
            for crm in 0..16 {
                for op2 in 0..8 {
                    let reg = SysReg::new(3, 0, crn, crm, op2);
                    let modelled = IccRegister::from_encoding(3, 0, crn, crm, op2).is_some();
                    assert!(!modelled || is_gic_cpu_interface(reg), "{reg:?}");
                    if let SysRegOutcome::GicCpuInterface(f) = emulate(
                        &SysRegAccess { reg, rt: 0, read: true },
                        0,
                        SysRegContext::default(),
                    ) {
                        assert_eq!(gic.icc_access(0, &f).is_some(), modelled, "{reg:?}");
                    }
                }
            }
        }
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

    /// Finding 10 of reviews/hvf-review.md.
    #[test]
    fn a_gic_that_does_not_fit_falls_back_to_the_userspace_gic() {
        assert_eq!(choose_gic(Some(Ok(plausible())), false), Ok(GicChoice::InKernel));
        assert_eq!(choose_gic(Some(Ok(plausible())), true), Ok(GicChoice::InKernel));
        let huge = GicGeometry { redistributor_region_size: 512 * 0x2_0000, ..plausible() };
        let Ok(GicChoice::Userspace(why)) = choose_gic(Some(Ok(huge)), false) else {
            panic!("a misfit must fall back")
        };
        assert!(why.contains("does not fit") && why.contains("below the UART"), "{why}");
        let nested = choose_gic(Some(Ok(huge)), true).unwrap_err();
        assert!(nested.starts_with("--nested needs the in-kernel GIC"), "{nested}");
        let Ok(GicChoice::Userspace(why)) = choose_gic(None, false) else { panic!() };
        assert!(why.contains("macOS 13/14"));
        assert!(choose_gic(None, true).is_err());
        let unreadable = choose_gic(Some(Err("HV_ERROR".into())), false);
        assert!(matches!(unreadable, Ok(GicChoice::Userspace(why)) if why.contains("HV_ERROR")));
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
