//! What the vCPU threads of one Hypervisor.framework VM share: PSCI power states, doorbells,
//! the interrupt controller, the vtimer offset and counter frequency, and the once-only logs.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::gic::GicBackend;
use super::kick::Doorbells;
use crate::arch::aarch64::power::VcpuPowerStates;
use crate::arch::aarch64::sysreg::UndefinedSysRegs;
use crate::arch::aarch64::timer::CounterRates;

/// What a VM's vCPU threads share.
pub struct VmShared {
    /// PSCI power states and the CPU_ON mailbox.
    pub power: VcpuPowerStates,
    /// One per vCPU: kicks, WFI wake-ups, and the handle `hv_vcpus_exit` needs.
    pub doorbells: Arc<Doorbells>,
    pub gic: GicBackend,
    /// Guest accesses to system registers hvrun does not emulate (each got an UNDEF).
    pub undefined_sysregs: UndefinedSysRegs,
    /// An injected exception for an unemulated trap was logged (once per VM).
    pub injected_logged: AtomicBool,
    /// A VTIMER_ACTIVATED exit with the in-kernel GIC was logged (once per VM).
    pub vtimer_exit_logged: AtomicBool,
    /// An implausibly distant timer deadline was logged (once per VM).
    pub timer_warned: AtomicBool,
    /// The guest runs at EL2 (`--nested`).
    pub el2: bool,
    /// The VM's guest physical address width (ID_AA64MMFR0_EL1.PARange is clamped to it).
    pub ipa_bits: u32,
    /// One vtimer offset for every vCPU: booting.rst requires CNTVOFF to be the same on all
    /// CPUs. `CNTVCT_EL0 = mach_absolute_time() - offset` (`hv_vcpu.h`), in host clock ticks,
    /// so the guest's count starts at 0.
    pub vtimer_offset: u64,
    /// The guest counter's rate (CNTFRQ_EL0) and the host clock's, to convert between them.
    pub counter: CounterRates,
    /// WFI does not sleep when the timer is due sooner than this.
    pub wfi_spin: Duration,
}
