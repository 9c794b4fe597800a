//! PSCI 1.1 and the SMCCC architecture calls, as a pure decision: from the trapped call's
//! function ID and arguments to what the VMM must do ([`PsciAction`]). No registers, no threads:
//! the backend applies the action (x0, starting or stopping a vCPU, ending the VM).
//!
//! Specs: Arm DEN0022 "Power State Coordination Interface" (PSCI 1.1: §5 function list, §5.2.2
//! return codes) and Arm DEN0028 "SMC Calling Convention" (SMCCC 1.1: §2.5 function ID layout,
//! §7 SMCCC_VERSION / SMCCC_ARCH_FEATURES).

use boot::PsciConduit;

/// PSCI and SMCCC function IDs (DEN0022 §5.1, DEN0028 §7). `_32` / `_64`: SMC32 and SMC64
/// calling conventions (bit 30 of the ID).
pub mod function {
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xc400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    pub const MIGRATE_32: u32 = 0x8400_0005;
    pub const MIGRATE_64: u32 = 0xc400_0005;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const MIGRATE_INFO_UP_CPU_32: u32 = 0x8400_0007;
    pub const MIGRATE_INFO_UP_CPU_64: u32 = 0xc400_0007;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
}

/// PSCI return codes (DEN0022 §5.2.2), as the 64-bit two's-complement value written to x0.
pub mod ret {
    pub const SUCCESS: u64 = 0;
    pub const NOT_SUPPORTED: u64 = -1i64 as u64;
    pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
    pub const ALREADY_ON: u64 = -4i64 as u64;
    pub const ON_PENDING: u64 = -5i64 as u64;
}

/// PSCI 1.1: major 1 in bits [31:16], minor 1 in [15:0] (DEN0022 §5.3).
pub const PSCI_VERSION_1_1: u64 = 0x1_0001;
/// SMCCC 1.1, same layout (DEN0028 §7.1). 1.1 is the first version with SMCCC_ARCH_FEATURES.
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// MIGRATE_INFO_TYPE = 2: "Trusted OS is either not present or does not require migration"
/// (DEN0022 §5.9); MIGRATE and MIGRATE_INFO_UP_CPU are then NOT_SUPPORTED.
pub const MIGRATE_INFO_TYPE_NOT_REQUIRED: u64 = 2;

/// AFFINITY_INFO results (DEN0022 §5.7).
pub mod affinity {
    pub const ON: u64 = 0;
    pub const OFF: u64 = 1;
    pub const ON_PENDING: u64 = 2;
}

/// The affinity fields of an MPIDR: Aff3 [39:32] and Aff2..Aff0 [23:0]. PSCI's `target_cpu`
/// uses this layout (DEN0022 §5.1.4) and may leave out bit 31 (RES1) and MT/U.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// A trapped HVC or SMC: the immediate and the SMCCC argument registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmcccCall {
    /// The instruction's 16-bit immediate (ESR ISS[15:0] for EC 0x16/0x17). SMCCC calls use 0.
    pub imm16: u16,
    /// x0 of the caller. Only W0 is the function ID (DEN0028 §2.5: "bits [63:32] are ignored").
    pub x0: u64,
    /// x1..x3: the call's arguments.
    pub args: [u64; 3],
}

impl SmcccCall {
    /// A call from an EC 0x16/0x17 ISS and the caller's x0..x3.
    pub fn new(iss: u32, x0: u64, x1: u64, x2: u64, x3: u64) -> Self {
        SmcccCall { imm16: iss as u16, x0, args: [x1, x2, x3] }
    }

    /// The 32-bit function ID.
    pub fn function_id(&self) -> u32 {
        self.x0 as u32
    }

    /// Argument `n` (0 = x1) as the calling convention sees it: an SMC32 call (bit 30 clear)
    /// passes 32-bit values and the upper halves are not defined (DEN0028 §2.6).
    fn arg(&self, n: usize) -> u64 {
        let value = self.args[n];
        if self.function_id() & (1 << 30) == 0 {
            value & 0xffff_ffff
        } else {
            value
        }
    }
}

/// A validated CPU_ON. The backend passes it to [`super::power::VcpuPowerStates::cpu_on`], which
/// re-checks and changes the target's state atomically (two vCPUs may race to start the same
/// target) and whose return value is the caller's x0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOnRequest {
    /// Index of the vCPU to start.
    pub target: u32,
    /// The MPIDR the caller named.
    pub target_mpidr: u64,
    /// Where the target starts, at EL1 with the MMU off (DEN0022 §6.4).
    pub entry: u64,
    /// The target's x0 at `entry`.
    pub context_id: u64,
}

/// What the VMM does with one PSCI/SMCCC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciAction {
    /// Write the value to the caller's x0 and resume it.
    Return(u64),
    /// Start another vCPU; write the result of `VcpuPowerStates::cpu_on` to x0 and resume.
    CpuOn(CpuOnRequest),
    /// Power off the calling vCPU: it does not return from the call; its thread waits for a
    /// later CPU_ON (`VcpuPowerStates::cpu_off`, then `wait_for_start`).
    CpuOff,
    /// CPU_SUSPEND: behave like WFI (sleep until an interrupt or kick), then write SUCCESS to
    /// x0. Allowed by DEN0022 §5.4.2 (a standby state may be entered as a WFI); KVM does this.
    Suspend,
    /// PSCI SYSTEM_OFF: end the VM.
    SystemOff,
    /// PSCI SYSTEM_RESET: reset (or, with `--no-reboot`, end) the VM.
    SystemReset,
}

/// A vCPU's PSCI power state (DEN0022 §5.7, AFFINITY_INFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Not running; its thread waits for CPU_ON.
    Off,
    /// CPU_ON accepted; its thread has not yet entered the guest.
    OnPending,
    /// Running guest code (or sleeping in WFI, which is still On).
    On,
}

/// What PSCI needs to know about the VM's vCPUs. Implemented by
/// [`super::power::VcpuPowerStates`]; tests use a plain slice.
pub trait PowerStateView {
    /// The vCPU whose MPIDR has these affinity fields ([`MPIDR_AFFINITY_MASK`] is applied).
    fn vcpu_for_mpidr(&self, mpidr: u64) -> Option<u32>;
    /// The power state of vCPU `index` ([`PowerState::Off`] for an index that does not exist).
    fn power_state(&self, index: u32) -> PowerState;
}

/// A slice of `(mpidr, state)` is a view: handy for tests and for single-threaded callers.
impl PowerStateView for [(u64, PowerState)] {
    fn vcpu_for_mpidr(&self, mpidr: u64) -> Option<u32> {
        let want = mpidr & MPIDR_AFFINITY_MASK;
        let at = self.iter().position(|&(m, _)| m & MPIDR_AFFINITY_MASK == want)?;
        u32::try_from(at).ok()
    }

    fn power_state(&self, index: u32) -> PowerState {
        self.get(index as usize).map_or(PowerState::Off, |&(_, s)| s)
    }
}

/// Decides what a PSCI/SMCCC call means. Never panics: any call hvrun does not implement
/// returns NOT_SUPPORTED (SMCCC §5.2: "Unknown Function Identifier" is -1).
pub fn handle_call(call: &SmcccCall, vcpus: &(impl PowerStateView + ?Sized)) -> PsciAction {
    use function::*;
    if call.imm16 != 0 {
        // SMCCC calls are `hvc #0` / `smc #0`; other immediates are not ours to interpret.
        return PsciAction::Return(ret::NOT_SUPPORTED);
    }
    match call.function_id() {
        PSCI_VERSION => PsciAction::Return(PSCI_VERSION_1_1),
        CPU_SUSPEND_32 | CPU_SUSPEND_64 => PsciAction::Suspend,
        CPU_OFF => PsciAction::CpuOff,
        CPU_ON_32 | CPU_ON_64 => cpu_on(call, vcpus),
        AFFINITY_INFO_32 | AFFINITY_INFO_64 => affinity_info(call, vcpus),
        MIGRATE_INFO_TYPE => PsciAction::Return(MIGRATE_INFO_TYPE_NOT_REQUIRED),
        SYSTEM_OFF => PsciAction::SystemOff,
        SYSTEM_RESET => PsciAction::SystemReset,
        PSCI_FEATURES => PsciAction::Return(features(call.arg(0) as u32)),
        SMCCC_VERSION => PsciAction::Return(SMCCC_VERSION_1_1),
        // No architectural workaround or discovery call is implemented: the firmware
        // mitigations belong to the host's hypervisor, and -1 is the honest answer (§7.2).
        SMCCC_ARCH_FEATURES => PsciAction::Return(ret::NOT_SUPPORTED),
        // MIGRATE, MIGRATE_INFO_UP_CPU, SYSTEM_RESET2, MEM_PROTECT, vendor calls, ...
        _ => PsciAction::Return(ret::NOT_SUPPORTED),
    }
}

/// PSCI_FEATURES (DEN0022 §5.15): 0 for an implemented function, NOT_SUPPORTED otherwise. For
/// CPU_SUSPEND the 0 also means "original power_state format, no OS-initiated mode".
fn features(function_id: u32) -> u64 {
    use function::*;
    match function_id {
        PSCI_VERSION | CPU_SUSPEND_32 | CPU_SUSPEND_64 | CPU_OFF | CPU_ON_32 | CPU_ON_64
        | AFFINITY_INFO_32 | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET
        | PSCI_FEATURES | SMCCC_VERSION => ret::SUCCESS,
        _ => ret::NOT_SUPPORTED,
    }
}

/// CPU_ON (DEN0022 §5.6): unknown target → INVALID_PARAMETERS; on → ALREADY_ON; starting →
/// ON_PENDING. The entry address is not checked against RAM (INVALID_ADDRESS is optional):
/// a bad entry faults in the target, as it would on hardware.
fn cpu_on(call: &SmcccCall, vcpus: &(impl PowerStateView + ?Sized)) -> PsciAction {
    let target_mpidr = call.arg(0);
    let Some(target) = vcpus.vcpu_for_mpidr(target_mpidr) else {
        return PsciAction::Return(ret::INVALID_PARAMETERS);
    };
    match vcpus.power_state(target) {
        PowerState::On => PsciAction::Return(ret::ALREADY_ON),
        PowerState::OnPending => PsciAction::Return(ret::ON_PENDING),
        PowerState::Off => PsciAction::CpuOn(CpuOnRequest {
            target,
            target_mpidr,
            entry: call.arg(1),
            context_id: call.arg(2),
        }),
    }
}

/// AFFINITY_INFO (DEN0022 §5.7). Only affinity level 0 (one vCPU) is supported; higher levels
/// are INVALID_PARAMETERS, which §5.7.1 allows from PSCI 1.0 on.
fn affinity_info(call: &SmcccCall, vcpus: &(impl PowerStateView + ?Sized)) -> PsciAction {
    if call.arg(1) != 0 {
        return PsciAction::Return(ret::INVALID_PARAMETERS);
    }
    let Some(index) = vcpus.vcpu_for_mpidr(call.arg(0)) else {
        return PsciAction::Return(ret::INVALID_PARAMETERS);
    };
    PsciAction::Return(match vcpus.power_state(index) {
        PowerState::On => affinity::ON,
        PowerState::Off => affinity::OFF,
        PowerState::OnPending => affinity::ON_PENDING,
    })
}

/// The PC to resume the caller at after a PSCI call.
///
/// HVC and SMC trap differently (Arm ARM D1.10.2, "preferred return address"): for HVC the
/// exception return address is the instruction *after* the HVC, so the trapped PC (ELR_EL2,
/// which Hypervisor.framework reports as PC) already points past it. A trapped SMC
/// (HCR_EL2.TSC) is reported at the SMC itself, so the VMM must step over it. QEMU's HVF
/// backend does the same (advance only for EC_AA64_SMC).
pub fn pc_after_call(conduit: PsciConduit, trapped_pc: u64) -> u64 {
    match conduit {
        PsciConduit::Hvc => trapped_pc,
        PsciConduit::Smc => trapped_pc.wrapping_add(4),
    }
}

#[cfg(test)]
#[path = "psci_tests.rs"]
mod tests;
