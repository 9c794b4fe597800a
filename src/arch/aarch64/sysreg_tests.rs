//! Table tests for the system-register trap policy: ISS decoding, the class of each register
//! group, unknown registers → UNDEF, and GIC registers handed back as data. (The userspace GIC
//! serving them is tested in `hv::hvf::gic`.)

use super::regs::*;
use super::*;

/// The ISS of a trapped access (the inverse of `SysRegAccess::decode`, written out per field).
fn iss(reg: SysReg, rt: u8, read: bool) -> u32 {
    (u32::from(reg.op0) << 20)
        | (u32::from(reg.op2) << 17)
        | (u32::from(reg.op1) << 14)
        | (u32::from(reg.crn) << 10)
        | (u32::from(rt) << 5)
        | (u32::from(reg.crm) << 1)
        | u32::from(read)
}

#[test]
fn decodes_the_iss() {
    // mrs x1, icc_iar1_el1 traps with ESR_EL2 = 0x6230_3039 (EC 0x18, IL, ISS 0x30_3039).
    let a = SysRegAccess::decode(0x6230_3039 & 0x1ff_ffff);
    assert_eq!(a, SysRegAccess { reg: ICC_IAR1_EL1, rt: 1, read: true });
    // msr oslar_el1, xzr
    let a = SysRegAccess::decode(iss(OSLAR_EL1, 31, false));
    assert_eq!(a, SysRegAccess { reg: OSLAR_EL1, rt: 31, read: false });
    assert_eq!(format!("{:?}", a.reg), "S2_0_C1_C0_4");
    for reg in [PMCCFILTR_EL0, ICC_PMR_EL1, MDCCSR_EL0, SysReg::new(3, 7, 15, 15, 7)] {
        for rt in [0, 17, 31] {
            for read in [false, true] {
                assert_eq!(
                    SysRegAccess::decode(iss(reg, rt, read)),
                    SysRegAccess { reg, rt, read }
                );
            }
        }
    }
}

#[test]
fn policy_table() {
    use SysRegClass::*;
    let table = [
        (ICC_IAR1_EL1, GicCpuInterface),
        (ICC_SRE_EL1, GicCpuInterface),
        (ICC_PMR_EL1, GicCpuInterface),
        (SysReg::new(3, 0, 12, 11, 5), GicCpuInterface), // ICC_SGI1R_EL1
        (SysReg::new(3, 0, 12, 9, 3), GicCpuInterface),  // ICC_AP1R3_EL1
        (SysReg::new(3, 0, 12, 8, 0), GicCpuInterface),  // ICC_IAR0_EL1
        (SysReg::new(3, 0, 12, 10, 0), Undefined),       // no ICC register at CRm 10
        (SysReg::new(3, 0, 4, 6, 1), Undefined),         // next to ICC_PMR_EL1
        (SysReg::new(3, 0, 12, 0, 0), Undefined),        // VBAR_EL1: not ours to trap
        (PMCR_EL0, Constant(0)),
        (PMCNTENSET_EL0, Constant(0)),
        (PMCNTENCLR_EL0, Constant(0)),
        (PMOVSCLR_EL0, Constant(0)),
        (PMOVSSET_EL0, Constant(0)),
        (PMSELR_EL0, Constant(0)),
        (PMCCNTR_EL0, Constant(0)),
        (PMUSERENR_EL0, Constant(0)),
        (PMINTENSET_EL1, Constant(0)),
        (PMINTENCLR_EL1, Constant(0)),
        (PMCCFILTR_EL0, Constant(0)),
        (SysReg::new(3, 3, 14, 8, 0), Constant(0)), // PMEVCNTR0_EL0
        (SysReg::new(3, 3, 14, 11, 6), Constant(0)), // PMEVCNTR30_EL0
        (SysReg::new(3, 3, 14, 12, 0), Constant(0)), // PMEVTYPER0_EL0
        (SysReg::new(3, 3, 9, 13, 1), Constant(0)), // PMXEVTYPER_EL0
        (OSLAR_EL1, Constant(0)),
        (OSLSR_EL1, Constant(0b1000)),
        (OSDLR_EL1, Constant(0)),
        (MDSCR_EL1, Constant(0)),
        (MDCCINT_EL1, Constant(0)),
        (DBGCLAIMSET_EL1, Constant(0)),
        (SysReg::new(2, 0, 0, 0, 4), Constant(0)), // DBGBVR0_EL1
        (SysReg::new(2, 0, 0, 15, 5), Constant(0)), // DBGBCR15_EL1
        (SysReg::new(2, 0, 0, 3, 6), Constant(0)), // DBGWVR3_EL1
        (SysReg::new(2, 0, 0, 1, 7), Constant(0)), // DBGWCR1_EL1
        (ID_AA64PFR0_EL1, Constant(0)),
        (SysReg::new(3, 0, 0, 1, 0), Constant(0)), // ID_PFR0_EL1
        (SysReg::new(3, 0, 0, 7, 7), Constant(0)), // unallocated ID space
        (SysReg::new(3, 0, 0, 0, 5), Undefined),   // MPIDR_EL1: not ours
        (SysReg::new(3, 0, 1, 0, 0), Undefined),   // SCTLR_EL1
        (SysReg::new(3, 4, 12, 12, 5), Undefined), // ICC_SRE_EL2
        (SysReg::new(3, 3, 14, 0, 2), Undefined),  // CNTVCT_EL0: the framework never traps it
        (SysReg::new(3, 7, 15, 2, 0), Undefined),  // IMPLEMENTATION DEFINED
        (SysReg::new(1, 0, 7, 5, 0), Undefined),   // a system instruction (IC IALLU)
        (SysReg::new(2, 0, 0, 2, 3), Undefined),   // not a debug register
    ];
    for (reg, want) in table {
        assert_eq!(classify(reg, EL1), want, "{reg:?}");
    }
}

const EL1: SysRegContext = SysRegContext { el2: false, in_kernel_gic: false };
const NESTED: SysRegContext = SysRegContext { el2: true, in_kernel_gic: true };
const EL1_WITH_GIC: SysRegContext = SysRegContext { el2: false, in_kernel_gic: true };

/// Finding 1 of reviews/hvf-review.md: what an EL2 guest's Linux touches in `init_el2`.
#[test]
fn el2_registers_hvf_traps_go_to_the_hypervisor_with_nested() {
    use SysRegClass::*;
    let table = [
        // (register, EL1 guest, EL2 guest)
        (CNTHCTL_EL2, Undefined, Hypervisor),
        (MDCCINT_EL1, Constant(0), Hypervisor),
        (LORC_EL1, Constant(0), Constant(0)),
        (OSLAR_EL1, Constant(0), Constant(0)),
        (SysReg::new(3, 4, 1, 1, 0), Undefined, Undefined), // HCR_EL2: never traps to us
    ];
    for (reg, el1, el2) in table {
        assert_eq!(classify(reg, EL1), el1, "{reg:?} at EL1");
        assert_eq!(classify(reg, NESTED), el2, "{reg:?} with EL2");
    }
    // msr cnthctl_el2, x3 / mrs x5, cnthctl_el2 / msr lorc_el1, xzr
    let write = emulate(&SysRegAccess { reg: CNTHCTL_EL2, rt: 3, read: false }, 0x3, NESTED);
    let want = ForwardedAccess { reg: CNTHCTL_EL2, op: ForwardedOp::Write(0x3) };
    assert_eq!(write, SysRegOutcome::Hypervisor(want));
    let read = emulate(&SysRegAccess { reg: CNTHCTL_EL2, rt: 5, read: true }, 0, NESTED);
    let want = ForwardedAccess { reg: CNTHCTL_EL2, op: ForwardedOp::Read { rt: Some(5) } };
    assert_eq!(read, SysRegOutcome::Hypervisor(want));
    let lorc = emulate(&SysRegAccess { reg: LORC_EL1, rt: 31, read: false }, 0, NESTED);
    assert_eq!(lorc, SysRegOutcome::Complete(None));
    let lorc = emulate(&SysRegAccess { reg: LORC_EL1, rt: 2, read: true }, 0, EL1);
    assert_eq!(lorc, SysRegOutcome::Complete(Some((2, 0))), "reads as zero");
}

/// Finding 8 of reviews/hvf-review.md: the counter and timer registers QEMU answers for EL1
/// guests.
#[test]
fn physical_counter_and_timer() {
    use SysRegClass::*;
    let table = [
        // (register, userspace GIC, in-kernel GIC)
        (CNTPCT_EL0, PhysicalCount, PhysicalCount),
        (CNTPCTSS_EL0, PhysicalCount, PhysicalCount),
        (CNTP_CTL_EL0, Constant(0), Hypervisor),
        (CNTP_CVAL_EL0, Constant(0), Hypervisor),
        (CNTP_TVAL_EL0, Constant(0), Hypervisor),
    ];
    for (reg, userspace, in_kernel) in table {
        assert_eq!(classify(reg, EL1), userspace, "{reg:?}");
        assert_eq!(classify(reg, EL1_WITH_GIC), in_kernel, "{reg:?} with the in-kernel GIC");
    }
    let mrs = |reg, rt, ctx| emulate(&SysRegAccess { reg, rt, read: true }, 0, ctx);
    let msr = |reg, ctx| emulate(&SysRegAccess { reg, rt: 1, read: false }, 0x5, ctx);
    assert_eq!(mrs(CNTPCT_EL0, 7, EL1), SysRegOutcome::ReadVirtualCount { rt: Some(7) });
    assert_eq!(mrs(CNTPCT_EL0, 31, NESTED), SysRegOutcome::ReadVirtualCount { rt: None });
    assert_eq!(msr(CNTPCT_EL0, EL1), SysRegOutcome::Undefined, "read-only");
    // macOS's boot-time "disable the physical timer" write is ignored; it reads as disabled.
    assert_eq!(msr(CNTP_CTL_EL0, EL1), SysRegOutcome::Complete(None));
    assert_eq!(mrs(CNTP_CTL_EL0, 2, EL1), SysRegOutcome::Complete(Some((2, 0))));
    let want = ForwardedAccess { reg: CNTP_CTL_EL0, op: ForwardedOp::Write(0x5) };
    assert_eq!(msr(CNTP_CTL_EL0, EL1_WITH_GIC), SysRegOutcome::Hypervisor(want));
}

#[test]
fn emulation() {
    let read = |reg, rt| emulate(&SysRegAccess { reg, rt, read: true }, 0xdead, EL1);
    let write = |reg| emulate(&SysRegAccess { reg, rt: 2, read: false }, 0xdead, EL1);
    assert_eq!(read(OSLSR_EL1, 3), SysRegOutcome::Complete(Some((3, 0b1000))));
    assert_eq!(read(PMCR_EL0, 0), SysRegOutcome::Complete(Some((0, 0))));
    assert_eq!(read(PMCR_EL0, 31), SysRegOutcome::Complete(None), "XZR discards the result");
    assert_eq!(write(OSLAR_EL1), SysRegOutcome::Complete(None));
    assert_eq!(write(PMCR_EL0), SysRegOutcome::Complete(None));
    assert_eq!(read(SysReg::new(3, 0, 1, 0, 0), 0), SysRegOutcome::Undefined);
    assert_eq!(write(SysReg::new(3, 0, 1, 0, 0)), SysRegOutcome::Undefined);
}

#[test]
fn gic_registers_are_handed_back_as_data() {
    let forwarded = |access: SysRegAccess, rt_value| match emulate(&access, rt_value, EL1) {
        SysRegOutcome::GicCpuInterface(f) => f,
        other => panic!("{access:?}: {other:?}"),
    };
    let iar = forwarded(SysRegAccess { reg: ICC_IAR1_EL1, rt: 9, read: true }, 0xdead);
    assert_eq!(iar, ForwardedAccess { reg: ICC_IAR1_EL1, op: ForwardedOp::Read { rt: Some(9) } });
    assert_eq!(iar.completion(1023), Some((9, 1023)));
    let iar_xzr = forwarded(SysRegAccess { reg: ICC_IAR1_EL1, rt: 31, read: true }, 0);
    assert_eq!(iar_xzr.op, ForwardedOp::Read { rt: None });
    assert_eq!(iar_xzr.completion(1023), None, "XZR: acknowledged, value dropped");
    let pmr = forwarded(SysRegAccess { reg: ICC_PMR_EL1, rt: 4, read: false }, 0xf7);
    assert_eq!(pmr.op, ForwardedOp::Write(0xf7));
    assert_eq!(pmr.completion(0), None);
    // msr icc_pmr_el1, xzr writes zero whatever the caller passed.
    let pmr_xzr = forwarded(SysRegAccess { reg: ICC_PMR_EL1, rt: 31, read: false }, 0xff);
    assert_eq!(pmr_xzr.op, ForwardedOp::Write(0));
}

#[test]
fn undefined_registers_are_counted_and_logged_once() {
    let undefined = UndefinedSysRegs::default();
    let a = SysRegAccess { reg: SysReg::new(3, 7, 15, 2, 0), rt: 0, read: true };
    for _ in 0..1000 {
        undefined.record(&a);
    }
    for n in 0..100 {
        undefined.record(&SysRegAccess { reg: SysReg::new(3, 5, 15, n % 16, n / 16), ..a });
    }
    assert_eq!(undefined.count(), 1100);
    assert_eq!(undefined.logged.lock().unwrap().len(), UNDEFINED_LOG_LIMIT);
}
