//! A Hypervisor.framework VM: its configuration (IPA width, EL2), the in-kernel GIC, guest
//! memory, and the state its vCPU threads share (power states, doorbells, the vtimer offset).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hv_sys::newer::{El2Api, GicApi};
use hv_sys::*;

use super::errors::check;
use super::gic::{self, UserspaceGic};
use super::ipa::{choose_ipa_bits, IpaChoice};
use super::kick::Doorbell;
use super::options::HvfOptions;
use super::vcpu::HvfVcpu;
use super::HostCaps;
use crate::arch::aarch64::mpidr_for_vcpu;
use crate::arch::aarch64::power::VcpuPowerStates;
use crate::arch::aarch64::sysreg::UndefinedSysRegs;
use crate::arch::aarch64::timer::VtimerOffset;
use crate::hv::{HvError, MemoryPerms, Result, Vm, VmSpec};
use devices::gic_v3::VcpuWaker;
use devices::IrqLine;

/// The VM's interrupt controller.
pub enum GicBackend {
    /// The framework's GICv3 (macOS 15).
    InKernel(&'static GicApi),
    /// hvrun's model (macOS 13/14): the backend serves its MMIO and ICC registers and drives
    /// each vCPU's IRQ line with `hv_vcpu_set_pending_interrupt`.
    Userspace(UserspaceGic),
}

/// What a VM's vCPU threads share.
pub struct VmShared {
    /// PSCI power states and the CPU_ON mailbox.
    pub power: VcpuPowerStates,
    /// One per vCPU: kicks and WFI wake-ups.
    pub doorbells: Vec<Arc<Doorbell>>,
    /// Whether vCPU `i` exists (so a kick may call `hv_vcpus_exit` on it).
    pub alive: Vec<AtomicBool>,
    /// The framework's handle of vCPU `i`, once created.
    pub handles: Vec<AtomicU64>,
    pub gic: GicBackend,
    /// Guest accesses to system registers hvrun does not emulate (each got an UNDEF).
    pub undefined_sysregs: UndefinedSysRegs,
    /// An injected exception for an unemulated trap was logged (once per VM).
    pub injected_logged: AtomicBool,
    /// The guest runs at EL2 (`--nested`).
    pub el2: bool,
    /// One vtimer offset for every vCPU: booting.rst requires CNTVOFF to be the same on all
    /// CPUs. `CNTVCT_EL0 = mach_absolute_time() - offset`, so the guest's count starts at 0.
    pub vtimer_offset: u64,
    /// The counter frequency (`mach_absolute_time` ticks per second; the guest's CNTFRQ).
    pub counter_hz: u64,
    /// WFI does not sleep when the timer is due sooner than this.
    pub wfi_spin: Duration,
}

impl VmShared {
    /// Ends the WFI sleep of every vCPU (an interrupt may be pending for one of them).
    pub fn wake_all(&self) {
        for bell in &self.doorbells {
            bell.wake();
        }
    }

    /// Makes vCPU `index` look at its interrupts again: out of a WFI sleep, and out of the
    /// guest if it is running (its IRQ line is set before each entry).
    pub fn interrupt(&self, index: u32) {
        let i = index as usize;
        if let Some(bell) = self.doorbells.get(i) {
            bell.wake();
        }
        if self.alive.get(i).is_some_and(|a| a.load(Ordering::Acquire)) {
            let handle = self.handles[i].load(Ordering::Acquire);
            // SAFETY: hv_vcpus_exit may be called from any thread; it reads one handle. A vCPU
            // destroyed just after the check makes it fail harmlessly.
            unsafe { hv_vcpus_exit(&handle, 1) };
        }
    }
}

/// The userspace GIC's way to reach vCPUs. Weak, because the GIC lives inside [`VmShared`].
struct Waker(Weak<VmShared>);

impl VcpuWaker for Waker {
    fn wake(&self, vcpu: u32) {
        if let Some(vm) = self.0.upgrade() {
            vm.interrupt(vcpu);
        }
    }
}

/// The process's one VM.
pub struct HvfVm {
    shared: Arc<VmShared>,
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
        let configured = configure(config, ipa, options.nested);
        let created = configured.and_then(|()| {
            // SAFETY: `config` is a live configuration (or null: the defaults).
            check(unsafe { hv_vm_create(config) }, "hv_vm_create")
        });
        if !config.is_null() {
            // SAFETY: we own the one reference hv_vm_config_create gave us.
            unsafe { os_release(config) };
        }
        created?;
        // From here on, dropping `vm` destroys the framework's VM.
        let gic = match caps.gic {
            Some(api) => GicBackend::InKernel(api),
            None => GicBackend::Userspace(UserspaceGic::new(spec.vcpus).map_err(|e| {
                HvError::new("creating the userspace GIC", std::io::Error::other(e))
            })?),
        };
        let vm = HvfVm { shared: Arc::new(shared_state(gic, options, spec)) };
        match &vm.shared.gic {
            GicBackend::InKernel(api) => gic::create(api)?,
            GicBackend::Userspace(u) => {
                u.gic.set_waker(Arc::new(Waker(Arc::downgrade(&vm.shared))))
            }
        }
        Ok(vm)
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

fn shared_state(gic: GicBackend, options: &HvfOptions, spec: &VmSpec) -> VmShared {
    // SAFETY: mach_absolute_time has no preconditions.
    let vtimer = VtimerOffset::starting_at(unsafe { mach_absolute_time() });
    VmShared {
        power: VcpuPowerStates::new((0..spec.vcpus).map(mpidr_for_vcpu).collect()),
        doorbells: (0..spec.vcpus).map(|_| Arc::new(Doorbell::new())).collect(),
        alive: (0..spec.vcpus).map(|_| AtomicBool::new(false)).collect(),
        handles: (0..spec.vcpus).map(|_| AtomicU64::new(0)).collect(),
        gic,
        undefined_sysregs: UndefinedSysRegs::default(),
        injected_logged: AtomicBool::new(false),
        el2: options.nested,
        vtimer_offset: vtimer.offset(),
        counter_hz: counter_frequency(),
        wfi_spin: options.wfi_spin,
    }
}

/// Ticks per second of `mach_absolute_time`: `ns = ticks * numer / denom`, so
/// `hz = 1e9 * denom / numer` (24 MHz on Apple Silicon).
fn counter_frequency() -> u64 {
    let mut info = mach_timebase_info_data_t::default();
    // SAFETY: writes the two fields of `info`.
    let ret = unsafe { mach_timebase_info(&mut info) };
    if ret != 0 || info.numer == 0 {
        return 24_000_000;
    }
    1_000_000_000 * u64::from(info.denom) / u64::from(info.numer)
}

impl Drop for HvfVm {
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
                vm: self.shared.clone(),
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
