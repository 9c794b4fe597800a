//! Table tests for exception injection: routing to EL1 or EL2, vectors, syndromes, and the
//! PSTATE the guest finds at its vector (PAN per SCTLR.SPAN).

use super::*;

const VBAR1: u64 = 0xffff_8000_1001_0000;
const VBAR2: u64 = 0xffff_8000_2002_0000;
/// SCTLR_EL1 with SPAN set (Linux sets it: it manages PAN itself) and without.
const SCTLR_SPAN_SET: u64 = 0x30d0_0800 | SCTLR_SPAN;
const SCTLR_SPAN_CLEAR: u64 = 0x30d0_0800 & !SCTLR_SPAN;

fn to_el1(sctlr: u64) -> TargetState {
    TargetState { el: TargetEl::El1, vbar: VBAR1, sctlr, hcr_el2: 0 }
}

#[test]
fn undef_from_the_kernel_uses_the_current_el_spx_vector() {
    let from = FromState { pstate: 0x3c5, pc: 0xffff_8000_1000_1234 };
    let inj = inject(GuestException::Undefined, from, to_el1(SCTLR_SPAN_SET));
    assert_eq!(inj.el, TargetEl::El1);
    assert_eq!(inj.esr, 0x0200_0000);
    assert_eq!(inj.far, None);
    assert_eq!(inj.elr, from.pc);
    assert_eq!(inj.spsr, 0x3c5);
    assert_eq!(inj.pstate, 0x3c5);
    assert_eq!(inj.pc, VBAR1 + 0x200);
}

#[test]
fn data_abort_from_user_space_uses_the_lower_el_vector() {
    let from = FromState { pstate: 0x0, pc: 0x40_1000 };
    let inj = inject(GuestException::DataAbort { far: 0xdead_b000 }, from, to_el1(SCTLR_SPAN_SET));
    assert_eq!(inj.esr, 0x9200_0010);
    assert_eq!(inj.far, Some(0xdead_b000));
    assert_eq!(inj.pc, VBAR1 + 0x400);
    assert_eq!(inj.spsr, 0);
}

#[test]
fn instruction_abort_from_the_kernel() {
    let from = FromState { pstate: 0x3c5, pc: 0x7000_0000 };
    let inj = inject(GuestException::InstructionAbort { far: 0x7000_0000 }, from, to_el1(0));
    assert_eq!(inj.esr, 0x8600_0010);
    assert_eq!(inj.far, Some(0x7000_0000));
    assert_eq!(inj.pc, VBAR1 + 0x200);
}

#[test]
fn data_abort_from_el1_on_sp_el0_is_a_same_el_abort() {
    let from = FromState { pstate: 0x3c4, pc: 0x1000 };
    let inj = inject(GuestException::DataAbort { far: 0x0a00_0000 }, from, to_el1(0));
    assert_eq!(inj.esr >> 26, 0x25);
    assert_eq!(inj.pc, VBAR1);
}

/// Finding 3 of reviews/hvf-review.md: a guest at EL2 takes its exceptions at EL2.
#[test]
fn routing_table() {
    use TargetEl::*;
    let tge = HCR_TGE | HCR_E2H;
    let table = [
        // (PSTATE, HCR_EL2 if the guest has EL2) → target
        (0x3c5, None, El1),          // EL1h, no EL2
        (0x000, None, El1),          // EL0t, no EL2
        (0x3c9, Some(HCR_E2H), El2), // EL2h: never to a lower EL
        (0x3c8, Some(0), El2),       // EL2t
        (0x3c5, Some(tge), El1),     // EL1 under a guest hypervisor: its own EL1 vectors
        (0x000, Some(HCR_E2H), El1), // EL0 of a guest's guest (TGE = 0)
        (0x000, Some(tge), El2),     // EL0 of a VHE host (TGE = 1)
        (0x3c9, None, El1),          // EL2 without EL2 cannot happen; never pick EL2 then
    ];
    for (pstate, hcr, want) in table {
        assert_eq!(target_el(pstate, hcr), want, "PSTATE {pstate:#x} HCR_EL2 {hcr:x?}");
    }
}

#[test]
fn undef_at_el2_lands_on_the_el2_vectors_in_el2h() {
    let from = FromState { pstate: 0x3c9, pc: 0xffff_8000_0800_0000 };
    let target = TargetState { el: TargetEl::El2, vbar: VBAR2, sctlr: 0x30c5_0830, hcr_el2: 0 };
    let inj = inject(GuestException::Undefined, from, target);
    assert_eq!(inj.el, TargetEl::El2);
    assert_eq!(inj.esr, 0x0200_0000);
    assert_eq!(inj.spsr, 0x3c9);
    assert_eq!(inj.pstate, 0x3c9, "EL2h, DAIF masked; no PAN at a non-host EL2");
    assert_eq!(inj.pc, VBAR2 + 0x200);
}

#[test]
fn abort_from_a_vhe_hosts_user_space_goes_to_el2_as_a_lower_el_abort() {
    let from = FromState { pstate: 0x8000_0000, pc: 0x40_2000 };
    let hcr = HCR_TGE | HCR_E2H;
    assert_eq!(target_el(from.pstate, Some(hcr)), TargetEl::El2);
    let target = TargetState { el: TargetEl::El2, vbar: VBAR2, sctlr: 0, hcr_el2: hcr };
    let inj = inject(GuestException::DataAbort { far: 0x40_3000 }, from, target);
    assert_eq!(inj.esr >> 26, 0x24, "from a lower EL");
    assert_eq!(inj.pc, VBAR2 + 0x400);
    // N kept; E2H = 1 makes EL2 a host EL, so SPAN = 0 sets PAN.
    assert_eq!(inj.pstate, 0x8000_0000 | PAN | DAIF | MODE_EL2H);
}

#[test]
fn pan_follows_sctlr_span_and_flags_are_kept() {
    // EL1h with N and Z set, PAN clear, SS (21) and BTYPE (11:10) set: those two are cleared.
    let pstate = 0xc000_0000 | (1 << 21) | (0b11 << 10) | 0x5;
    let from = FromState { pstate, pc: 0x1000 };
    let set = inject(GuestException::Undefined, from, to_el1(SCTLR_SPAN_CLEAR));
    assert_eq!(set.pstate, 0xc000_0000 | PAN | DAIF | MODE_EL1H, "SPAN = 0: PAN set");
    let kept = inject(GuestException::Undefined, from, to_el1(SCTLR_SPAN_SET));
    assert_eq!(kept.pstate, 0xc000_0000 | DAIF | MODE_EL1H, "SPAN = 1: PAN unchanged (0)");
    let from_pan = FromState { pstate: pstate | PAN, pc: 0x1000 };
    let still = inject(GuestException::Undefined, from_pan, to_el1(SCTLR_SPAN_SET));
    assert_eq!(still.pstate & PAN, PAN, "SPAN = 1: PAN unchanged (1)");
    let dssbs = inject(GuestException::Undefined, from, to_el1(SCTLR_SPAN_SET | SCTLR_DSSBS));
    assert_eq!(dssbs.pstate & SSBS, SSBS, "SSBS takes SCTLR.DSSBS");
    assert_eq!(set.spsr, pstate, "SPSR keeps the state exactly");
}
