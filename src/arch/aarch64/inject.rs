//! Delivering a synchronous exception to the guest the way the CPU would have taken it (Arm ARM
//! D1.3 "Exception entry", pseudocode `AArch64.TakeException`): to EL1, or to EL2 when the
//! guest has EL2 (`--nested`) and the exception belongs there. Hypervisor.framework has no
//! injection call, so the backend writes the registers itself; this module computes them.

/// ESR_ELx.IL: the faulting instruction was 32 bits (always, for A64 code).
const ESR_IL: u64 = 1 << 25;
/// PSTATE.M[3:0] for EL1 and EL2 using SP_ELx.
const MODE_EL1H: u64 = 0b0101;
const MODE_EL2H: u64 = 0b1001;
/// PSTATE.{D,A,I,F}: exception entry masks all four (D1.3.4).
const DAIF: u64 = 0xf << 6;
/// PSTATE bits exception entry keeps: N, Z, C, V [31:28], DIT [24], PAN [22]. Everything else
/// is either set from the target EL's state below or cleared (SS, IL, BTYPE, UAO, ...).
const KEPT: u64 = (0xf << 28) | (1 << 24) | PAN;
/// PSTATE.PAN (FEAT_PAN) and PSTATE.SSBS (FEAT_SSBS).
const PAN: u64 = 1 << 22;
const SSBS: u64 = 1 << 12;
/// SCTLR_ELx.SPAN: 0 means "set PSTATE.PAN on exception entry to this EL".
const SCTLR_SPAN: u64 = 1 << 23;
/// SCTLR_ELx.DSSBS: the value PSTATE.SSBS takes on exception entry.
const SCTLR_DSSBS: u64 = 1 << 44;
/// HCR_EL2.TGE (bit 27) routes exceptions from EL0 to EL2; HCR_EL2.E2H (bit 34) makes EL2 a
/// host EL (VHE), where PAN applies as at EL1.
const HCR_TGE: u64 = 1 << 27;
const HCR_E2H: u64 = 1 << 34;

/// Which exception to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestException {
    /// "Unknown reason" (EC 0x00): what an unimplemented system register access gets.
    Undefined,
    /// A synchronous external data abort at virtual address `far` (EC 0x24/0x25, DFSC 0x10):
    /// what an MMIO access the VMM cannot emulate gets (as KVM's `kvm_inject_dabt`).
    DataAbort { far: u64 },
    /// A synchronous external instruction abort at `far` (EC 0x20/0x21, IFSC 0x10): what
    /// executing from an address without memory gets (as KVM's `kvm_inject_pabt`).
    InstructionAbort { far: u64 },
}

/// The exception level an exception is taken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetEl {
    El1,
    El2,
}

/// The exception level of PSTATE (M[3:2]).
pub fn current_el(pstate: u64) -> u8 {
    ((pstate >> 2) & 0b11) as u8
}

/// Where a synchronous exception from `pstate` goes. `hcr_el2` is the guest's HCR_EL2 when it
/// has EL2 (`None` without `--nested`). An exception is never taken to a lower EL, so one from
/// EL2 stays at EL2; one from EL0 goes to EL2 when HCR_EL2.TGE routes EL0 there (a VHE host's
/// user space); everything else goes to EL1 (D1.3.1, "Routing synchronous exceptions").
pub fn target_el(pstate: u64, hcr_el2: Option<u64>) -> TargetEl {
    match (current_el(pstate), hcr_el2) {
        (2.., Some(_)) => TargetEl::El2,
        (0, Some(hcr)) if hcr & HCR_TGE != 0 => TargetEl::El2,
        _ => TargetEl::El1,
    }
}

/// The vCPU state the exception is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromState {
    /// PSTATE (CPSR) at the faulting instruction.
    pub pstate: u64,
    /// The faulting instruction's address.
    pub pc: u64,
}

/// The registers of the target EL that shape the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetState {
    pub el: TargetEl,
    /// VBAR_ELx of the target EL.
    pub vbar: u64,
    /// SCTLR_ELx of the target EL (SPAN, DSSBS).
    pub sctlr: u64,
    /// HCR_EL2 (E2H decides whether PAN applies at EL2); 0 without EL2.
    pub hcr_el2: u64,
}

/// The registers to write so the guest takes the exception: ESR/FAR/ELR/SPSR of `el`, then
/// PSTATE and PC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    pub el: TargetEl,
    pub esr: u64,
    /// `Some` for aborts.
    pub far: Option<u64>,
    pub elr: u64,
    pub spsr: u64,
    pub pstate: u64,
    pub pc: u64,
}

/// Computes the register writes that deliver `exception`, taken from `from`, to `target`.
pub fn inject(exception: GuestException, from: FromState, target: TargetState) -> Injection {
    let target_level: u8 = match target.el {
        TargetEl::El1 => 1,
        TargetEl::El2 => 2,
    };
    let from_lower = current_el(from.pstate) < target_level;
    // Vector table offsets (D1.3.2, table "Vector offsets from vector table base address"):
    // current EL with SP_EL0 0x000, current EL with SP_ELx 0x200, lower EL AArch64 0x400;
    // "Synchronous" is the first entry of each group.
    let vector = if from_lower {
        0x400
    } else if from.pstate & 1 == 0 {
        0x000
    } else {
        0x200
    };
    let (esr, far) = match exception {
        GuestException::Undefined => (ESR_IL, None),
        GuestException::DataAbort { far } => {
            let ec: u64 = if from_lower { 0x24 } else { 0x25 };
            (ec << 26 | ESR_IL | 0x10, Some(far))
        }
        GuestException::InstructionAbort { far } => {
            let ec: u64 = if from_lower { 0x20 } else { 0x21 };
            (ec << 26 | ESR_IL | 0x10, Some(far))
        }
    };
    let mode = match target.el {
        TargetEl::El1 => MODE_EL1H,
        TargetEl::El2 => MODE_EL2H,
    };
    // AArch64.TakeException: PAN is set on entry to EL1, or to EL2 when EL2 is a host EL
    // (E2H = 1), if SCTLR_ELx.SPAN is 0; SSBS takes SCTLR_ELx.DSSBS.
    let pan_applies = target.el == TargetEl::El1 || target.hcr_el2 & HCR_E2H != 0;
    let pan = if pan_applies && target.sctlr & SCTLR_SPAN == 0 { PAN } else { 0 };
    let ssbs = if target.sctlr & SCTLR_DSSBS != 0 { SSBS } else { 0 };
    Injection {
        el: target.el,
        esr,
        far,
        elr: from.pc,
        spsr: from.pstate,
        pstate: (from.pstate & KEPT) | pan | ssbs | DAIF | mode,
        pc: target.vbar.wrapping_add(vector),
    }
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
