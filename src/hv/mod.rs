//! The hypervisor abstraction: what hvrun needs from KVM or Hypervisor.framework, and nothing more.
//!
//! The seam is plain data. [`Vcpu::run`] takes a [`VmEntry`] (what to complete before re-entering
//! the guest) and returns a [`VmExit`] (why the guest stopped). No callbacks and no borrowed
//! buffers cross it, so decoding an exit, dispatching it to a device and completing it are separate
//! steps that can each be timed and unit-tested — and the same loop in `vmm/vcpu.rs` drives both
//! backends.
//!
//! The shape follows Hypervisor.framework, the stricter of the two: a vCPU is created on the thread
//! that runs it ([`Vm::create_vcpu`] is called there), memory is mapped by host address, guest
//! address, size and permissions, and a running vCPU is stopped from another thread with a
//! [`Kicker`].

use std::sync::Arc;

use boot::PsciConduit;
use devices::{IrqLine, Notifier};

/// The register names of the seam are arm64's; they live with the other arm64 facts.
pub use crate::arch::aarch64::Reg;

pub mod capabilities;
pub mod hvf;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
pub mod kvm;

/// Why the guest stopped running, as plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// A load (`write: None`) or store (`write: Some(value)`) of `size` bytes (1, 2, 4 or 8) to
    /// guest physical address `addr` that no memory backs. A load is completed by passing
    /// [`VmEntry::MmioData`] to the next [`Vcpu::run`].
    Mmio { addr: u64, size: u8, write: Option<u64> },
    /// The guest asked to power off, reset, or reported a crash (PSCI SYSTEM_OFF/SYSTEM_RESET).
    System(SystemEvent),
    /// [`Kicker::kick`] interrupted the run; nothing to do for the guest.
    Kicked,
    /// An exit the backend finished itself with the portable policy in `arch::aarch64` (KVM does
    /// these in the kernel; Hypervisor.framework hands them to hvrun). Returned, rather than
    /// looped over inside the backend, so exit statistics see every exit. Nothing left to do.
    Handled(HandledExit),
    /// An exit the VMM does not handle; `detail` carries the backend's raw reason or syndrome.
    Unhandled { reason: &'static str, detail: u64 },
}

/// The kinds of exit a backend completes on its own ([`VmExit::Handled`]). A new kind is one
/// variant here plus its line in [`ALL`](Self::ALL) and [`name`](Self::name); statistics and
/// traces pick it up from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandledExit {
    /// A PSCI or other SMCCC call (HVC or SMC).
    Hypercall,
    /// A trapped MSR/MRS system-register access, emulated.
    SysReg,
    /// WFI: the vCPU slept until an interrupt, its timer, or a kick.
    Wfi,
    /// WFE: skipped.
    Wfe,
    /// The virtual timer fired and its interrupt was raised.
    VtimerActivated,
    /// A cache maintenance instruction on an address without memory: skipped.
    CacheMaintenance,
    /// An access to the registers of an interrupt controller the backend emulates itself (the
    /// userspace GICv3 Hypervisor.framework needs before macOS 15).
    GicMmio,
    /// The guest did something the VMM cannot emulate (an unknown system register, an MMIO
    /// access without a valid syndrome) and got an exception injected back.
    ExceptionInjected,
}

impl HandledExit {
    /// Every kind, in declaration order (`ALL[k as usize] == k`).
    pub const ALL: [HandledExit; 8] = [
        HandledExit::Hypercall,
        HandledExit::SysReg,
        HandledExit::Wfi,
        HandledExit::Wfe,
        HandledExit::VtimerActivated,
        HandledExit::CacheMaintenance,
        HandledExit::GicMmio,
        HandledExit::ExceptionInjected,
    ];

    /// Short name used in tables, traces and JSON.
    pub fn name(self) -> &'static str {
        match self {
            HandledExit::Hypercall => "hypercall",
            HandledExit::SysReg => "sysreg",
            HandledExit::Wfi => "wfi",
            HandledExit::Wfe => "wfe",
            HandledExit::VtimerActivated => "vtimer",
            HandledExit::CacheMaintenance => "cache-maintenance",
            HandledExit::GicMmio => "gic-mmio",
            HandledExit::ExceptionInjected => "exception-injected",
        }
    }
}

/// Machine-wide requests from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// The guest crashed (KVM_SYSTEM_EVENT_CRASH).
    Crash,
}

impl SystemEvent {
    /// Name used in traces.
    pub fn name(self) -> &'static str {
        match self {
            SystemEvent::PowerOff => "power-off",
            SystemEvent::Reset => "reset",
            SystemEvent::Crash => "crash",
        }
    }
}

/// What to finish before entering the guest again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEntry {
    /// Nothing pending: just run.
    Resume,
    /// The value of the MMIO load from the previous exit (zero-extended; the backend applies the
    /// access width and any sign extension the instruction asked for).
    MmioData(u64),
}

/// Access rights of a guest memory mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPerms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl MemoryPerms {
    /// Ordinary RAM.
    pub const RWX: MemoryPerms = MemoryPerms { read: true, write: true, exec: true };
}

/// What the host can give a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Most vCPUs in one VM.
    pub max_vcpus: u32,
    /// Widest guest physical address space, in bits.
    pub max_ipa_bits: u32,
    /// The host's physical RAM: more guest RAM than this cannot be backed.
    pub host_ram_bytes: u64,
}

/// The host's physical RAM in bytes (0 if the OS does not say).
pub fn host_ram_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) =
        unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page_size <= 0 {
        return 0;
    }
    (pages as u64).saturating_mul(page_size as u64)
}

/// The shape of the VM to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Number of vCPUs (the GIC's redistributors are sized for them).
    pub vcpus: u32,
    /// Guest physical address bits needed to reach all of RAM.
    pub ipa_bits: u32,
}

/// A backend failure; `context` says what hvrun was doing.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct HvError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

impl HvError {
    /// Wraps an OS error with what hvrun was doing.
    pub fn new(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        HvError { context: context.into(), source: source.into() }
    }
}

/// Result of backend operations.
pub type Result<T> = std::result::Result<T, HvError>;

/// A hypervisor on this host: opens VMs.
pub trait Hypervisor {
    type Vm: Vm;

    /// Short name for messages ("KVM", "Hypervisor.framework").
    fn name(&self) -> &'static str;
    /// What the host allows.
    fn limits(&self) -> HostLimits;
    /// How the guest's PSCI calls reach this backend; the FDT must say the same.
    fn psci_conduit(&self) -> PsciConduit;
    /// Creates a VM with an in-kernel GICv3 at the addresses in `boot::layout`.
    fn create_vm(&self, spec: &VmSpec) -> Result<Self::Vm>;
}

/// One VM. Shared by all vCPU threads, hence `Send + Sync`.
pub trait Vm: Send + Sync + 'static {
    type Vcpu: Vcpu;

    /// Makes `size` bytes at `host_addr` the guest's memory at `guest_addr`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a mapping that stays valid, and is not unmapped or
    /// reused, for as long as this VM exists: the guest reads and writes it at any time.
    unsafe fn map_memory(
        &self,
        host_addr: *mut u8,
        guest_addr: u64,
        size: u64,
        perms: MemoryPerms,
    ) -> Result<()>;

    /// Creates vCPU `index`. Must be called on the thread that will run it. vCPU 0 starts
    /// running at the registers the caller sets; the others start powered off and are started by
    /// the guest through PSCI CPU_ON.
    fn create_vcpu(&self, index: u32) -> Result<Self::Vcpu>;

    /// Called once after every vCPU exists and before any runs (KVM initialises the vGIC here).
    fn vcpus_created(&self) -> Result<()>;

    /// The interrupt line of shared peripheral interrupt `spi` (interrupt ID `32 + spi`).
    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine>;

    /// Asks the hypervisor to ring `notifier` itself, instead of exiting to hvrun, when the
    /// guest writes the 4-byte value `value` to `addr` — KVM's ioeventfd (api.rst §4.59). Other
    /// writes to the address still exit as MMIO. Returns `false` when the backend has no such
    /// mechanism (Hypervisor.framework): the write then exits to hvrun as ordinary MMIO, and the
    /// device's transport rings the same notifier.
    fn ring_on_write(&self, addr: u64, value: u32, notifier: &Notifier) -> Result<bool> {
        let _ = (addr, value, notifier);
        Ok(false)
    }
}

/// One virtual CPU, owned by the thread that created it.
pub trait Vcpu {
    type Kicker: Kicker;

    /// Writes a register.
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<()>;
    /// Reads a register.
    fn get_reg(&mut self, reg: Reg) -> Result<u64>;
    /// Completes `entry`, runs the guest until it exits, and says why.
    fn run(&mut self, entry: VmEntry) -> Result<VmExit>;
    /// A handle other threads use to make a blocked or running [`Vcpu::run`] return
    /// [`VmExit::Kicked`].
    fn kicker(&self) -> Self::Kicker;
}

/// Makes one vCPU leave the guest, from any thread.
pub trait Kicker: Send + Sync + 'static {
    /// Forces the vCPU out of [`Vcpu::run`] (now, or at its next entry if it is not in the guest).
    fn kick(&self);
}
