//! A Hypervisor.framework VM: its configuration (IPA width, EL2), its interrupt controller,
//! guest memory, and the state its vCPU threads share (`shared.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hv_sys::newer::El2Api;
use hv_sys::*;

use super::caps::{counter_rates, HostCaps};
use super::errors::check;
use super::gic::{self, GicBackend, GicChoice, UserspaceGic};
use super::ipa::{choose_ipa_bits, ipa_bits, IpaChoice};
use super::kick::Doorbells;
use super::options::HvfOptions;
use super::shared::VmShared;
use super::vcpu::HvfVcpu;
use crate::arch::aarch64::mpidr_for_vcpu;
use crate::arch::aarch64::power::VcpuPowerStates;
use crate::arch::aarch64::sysreg::UndefinedSysRegs;
use crate::arch::aarch64::timer::{CounterRates, VtimerOffset};
use crate::hv::{HvError, MemoryPerms, Result, Vm, VmSpec};
use devices::IrqLine;

/// The process's one VM.
pub struct HvfVm {
    shared: Arc<VmShared>,
    /// Declared last, so it is dropped last: the framework's VM outlives everything above.
    _vm: FrameworkVm,
}

/// Owns the framework's VM from the moment `hv_vm_create` succeeds: dropping it destroys the
/// VM, on every error path too. Otherwise the next `hv_vm_create` in this process (a reboot,
/// or `hvrun host` after a probe) would fail with HV_BUSY: one VM per process (`hv_vm.h`).
pub(super) struct FrameworkVm(());

impl FrameworkVm {
    /// `hv_vm_create` with `config` (null: the defaults).
    pub(super) fn create(config: hv_vm_config_t) -> Result<Self> {
        // SAFETY: `config` is a live configuration or null (the defaults).
        check(unsafe { hv_vm_create(config) }, "hv_vm_create")?;
        Ok(FrameworkVm(()))
    }
}

impl Drop for FrameworkVm {
    fn drop(&mut self) {
        // Every vCPU was destroyed by its own thread, which the VMM joined before dropping the
        // VM (`hv_vm_destroy` requires that).
        // SAFETY: no arguments; this process's VM exists.
        let ret = unsafe { hv_vm_destroy() };
        if let Err(e) = check(ret, "hv_vm_destroy") {
            log::warn!("{e}");
        }
    }
}

impl HvfVm {
    pub(super) fn create(caps: &HostCaps, options: &HvfOptions, spec: &VmSpec) -> Result<Self> {
        let ipa = choose_ipa_bits(spec.ipa_bits, caps.default_ipa_bits, caps.max_ipa_bits)
            .map_err(|e| {
                HvError::new("sizing the guest address space", std::io::Error::other(e))
            })?;
        // SAFETY: no arguments; returns a new OS object (null on failure, which
        // hv_vm_create treats as "defaults" — then the checks below fail loudly).
        let config = unsafe { hv_vm_config_create() };
        let created =
            configure(config, ipa, options.nested).and_then(|()| FrameworkVm::create(config));
        if !config.is_null() {
            // SAFETY: we own the one reference hv_vm_config_create gave us.
            unsafe { os_release(config) };
        }
        // From here on, dropping `framework_vm` (or the HvfVm holding it) destroys the VM.
        let framework_vm = created?;
        let doorbells = Arc::new(Doorbells::new(spec.vcpus));
        let framework_gic = caps.gic.map(|api| gic::geometry(api).map_err(|e| e.to_string()));
        if let Some(Ok(geometry)) = &framework_gic {
            log::info!("the framework's GIC: {geometry:?}");
        }
        let choice = gic::choose_gic(framework_gic, options.nested).map_err(|why| {
            HvError::new(why, std::io::Error::from(std::io::ErrorKind::Unsupported))
        })?;
        let gic = match (choice, caps.gic) {
            (GicChoice::InKernel, Some(api)) => GicBackend::InKernel(api),
            (choice, _) => {
                if let GicChoice::Userspace(why) = choice {
                    log::info!("{why}: using hvrun's userspace GICv3");
                }
                let userspace = UserspaceGic::new(spec.vcpus).map_err(|e| {
                    HvError::new("creating the userspace GIC", std::io::Error::other(e))
                })?;
                userspace.gic.set_waker(Arc::new(gic::Waker(doorbells.clone())));
                GicBackend::Userspace(userspace)
            }
        };
        let ipa_bits = ipa_bits(ipa, caps.default_ipa_bits);
        if let GicBackend::InKernel(api) = &gic {
            gic::create(api)?;
        }
        let shared = Arc::new(shared_state(gic, doorbells, options, spec, ipa_bits));
        Ok(HvfVm { shared, _vm: framework_vm })
    }
}

/// Sets the IPA width and EL2 on a fresh VM configuration.
fn configure(config: hv_vm_config_t, ipa: IpaChoice, nested: bool) -> Result<()> {
    if let IpaChoice::Set(bits) = ipa {
        // SAFETY: `config` came from hv_vm_config_create.
        check(unsafe { hv_vm_config_set_ipa_size(config, bits) }, "hv_vm_config_set_ipa_size")?;
    }
    if nested {
        let api = El2Api::get().ok_or_else(|| {
            HvError::new(
                "--nested needs macOS 15 or later",
                std::io::Error::from(std::io::ErrorKind::Unsupported),
            )
        })?;
        // SAFETY: `config` came from hv_vm_config_create.
        let ret = unsafe { (api.hv_vm_config_set_el2_enabled)(config, true) };
        check(ret, "hv_vm_config_set_el2_enabled")?;
    }
    Ok(())
}

/// Logs the counter rates once per VM: when they differ (M4-class chips with a recent SDK)
/// WFI deadlines depend on how the framework applies the vtimer offset, which is unconfirmed.
fn log_counter_rates(rates: &CounterRates) {
    if rates.agree() {
        log::info!("guest counter: {} Hz (CNTFRQ_EL0 = host clock)", rates.counter_hz);
    } else {
        log::warn!(
            "guest counter at {} Hz (CNTFRQ_EL0) but the host clock at {} Hz: WFI deadlines are \
             converted between them (unconfirmed on hardware; please report `hvrun host`)",
            rates.counter_hz,
            rates.host_hz
        );
    }
}

fn shared_state(
    gic: GicBackend,
    doorbells: Arc<Doorbells>,
    options: &HvfOptions,
    spec: &VmSpec,
    ipa_bits: u32,
) -> VmShared {
    // SAFETY: mach_absolute_time has no preconditions.
    let vtimer = VtimerOffset::starting_at(unsafe { mach_absolute_time() });
    let counter = counter_rates();
    log_counter_rates(&counter);
    VmShared {
        power: VcpuPowerStates::new((0..spec.vcpus).map(mpidr_for_vcpu).collect()),
        doorbells,
        gic,
        undefined_sysregs: UndefinedSysRegs::default(),
        injected_logged: AtomicBool::new(false),
        timer_warned: AtomicBool::new(false),
        vtimer_exit_logged: AtomicBool::new(false),
        el2: options.nested,
        ipa_bits,
        vtimer_offset: vtimer.offset(),
        counter,
        wfi_spin: options.wfi_spin,
    }
}

impl Vm for HvfVm {
    type Vcpu = HvfVcpu;

    unsafe fn map_memory(
        &self,
        host_addr: *mut u8,
        guest_addr: u64,
        size: u64,
        perms: MemoryPerms,
    ) -> Result<()> {
        let flags = if perms.read { HV_MEMORY_READ } else { 0 }
            | if perms.write { HV_MEMORY_WRITE } else { 0 }
            | if perms.exec { HV_MEMORY_EXEC } else { 0 };
        let size = usize::try_from(size).map_err(|_| {
            HvError::new(
                "guest memory size",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        // SAFETY: the caller guarantees the host range is one live mmap'd region that outlives
        // the VM; the framework checks alignment and reports it.
        let ret = unsafe { hv_vm_map(host_addr.cast(), guest_addr, size, flags) };
        check(ret, &format!("hv_vm_map at {guest_addr:#x} ({size:#x} bytes)"))
    }

    fn create_vcpu(&self, index: u32) -> Result<HvfVcpu> {
        HvfVcpu::create(self.shared.clone(), index)
    }

    fn vcpus_created(&self) -> Result<()> {
        Ok(())
    }

    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine> {
        let line = match &self.shared.gic {
            GicBackend::InKernel(api) => Some(Arc::new(gic::InKernelSpi {
                api,
                intid: 32 + spi,
                doorbells: self.shared.doorbells.clone(),
                logged: AtomicBool::new(false),
            }) as Arc<dyn IrqLine>),
            GicBackend::Userspace(u) => u.gic.spi_line(spi),
        };
        line.unwrap_or_else(|| Arc::new(NoGicLine { spi, logged: AtomicBool::new(false) }))
    }
}

/// An SPI the GIC does not have (beyond `boot::layout::GIC_NR_IRQS`; the layout's own checks
/// make this unreachable): the level is dropped, once with a warning.
struct NoGicLine {
    spi: u32,
    logged: AtomicBool,
}

impl IrqLine for NoGicLine {
    fn set_level(&self, _high: bool) {
        if !self.logged.swap(true, Ordering::Relaxed) {
            log::warn!("SPI {}: no interrupt controller to deliver it to", self.spi);
        }
    }
}
