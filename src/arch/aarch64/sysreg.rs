//! Trapped MSR/MRS (ESR_EL2.EC 0x18): decoding the access and the policy for each register
//! group a hypervisor without a vPMU, a debug model or an in-kernel GIC sees trapping. Pure
//! decisions: an access another part of the VMM must perform (the userspace GIC's CPU
//! interface) comes back as data ([`SysRegOutcome::GicCpuInterface`]), so this module knows no
//! device and no hypervisor.
//!
//! ISS layout: Arm ARM D24.2.40, "ISS encoding for an exception from MSR, MRS, or System
//! instruction execution in AArch64 state". Register encodings: Arm ARM D23 (op0, op1, CRn,
//! CRm, op2 of each register) and IHI0069 §12.1.5 for the GIC CPU interface.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A system register, named by its encoding (op0, op1, CRn, CRm, op2).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SysReg {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysReg {
    /// The register `S<op0>_<op1>_C<crn>_C<crm>_<op2>`.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        SysReg { op0, op1, crn, crm, op2 }
    }
}

/// Printed as the assembler's generic name, `S3_0_C12_C12_0`, so unknown registers can be
/// looked up in the Arm ARM.
impl std::fmt::Debug for SysReg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SysReg { op0, op1, crn, crm, op2 } = *self;
        write!(f, "S{op0}_{op1}_C{crn}_C{crm}_{op2}")
    }
}

/// Registers the policy names (Arm ARM D23.2 / D23.3 / D23.5).
pub mod regs {
    use super::SysReg;
    pub const OSLAR_EL1: SysReg = SysReg::new(2, 0, 1, 0, 4);
    pub const OSLSR_EL1: SysReg = SysReg::new(2, 0, 1, 1, 4);
    pub const OSDLR_EL1: SysReg = SysReg::new(2, 0, 1, 3, 4);
    pub const MDSCR_EL1: SysReg = SysReg::new(2, 0, 0, 2, 2);
    pub const MDCCINT_EL1: SysReg = SysReg::new(2, 0, 0, 2, 0);
    pub const OSECCR_EL1: SysReg = SysReg::new(2, 0, 0, 6, 2);
    pub const MDRAR_EL1: SysReg = SysReg::new(2, 0, 1, 0, 0);
    pub const DBGPRCR_EL1: SysReg = SysReg::new(2, 0, 1, 4, 4);
    pub const DBGCLAIMSET_EL1: SysReg = SysReg::new(2, 0, 7, 8, 6);
    pub const DBGCLAIMCLR_EL1: SysReg = SysReg::new(2, 0, 7, 9, 6);
    pub const DBGAUTHSTATUS_EL1: SysReg = SysReg::new(2, 0, 7, 14, 6);
    pub const MDCCSR_EL0: SysReg = SysReg::new(2, 3, 0, 1, 0);
    pub const PMCR_EL0: SysReg = SysReg::new(3, 3, 9, 12, 0);
    pub const PMCNTENSET_EL0: SysReg = SysReg::new(3, 3, 9, 12, 1);
    pub const PMCNTENCLR_EL0: SysReg = SysReg::new(3, 3, 9, 12, 2);
    pub const PMOVSCLR_EL0: SysReg = SysReg::new(3, 3, 9, 12, 3);
    pub const PMSELR_EL0: SysReg = SysReg::new(3, 3, 9, 12, 5);
    pub const PMCCNTR_EL0: SysReg = SysReg::new(3, 3, 9, 13, 0);
    pub const PMUSERENR_EL0: SysReg = SysReg::new(3, 3, 9, 14, 0);
    pub const PMOVSSET_EL0: SysReg = SysReg::new(3, 3, 9, 14, 3);
    pub const PMINTENSET_EL1: SysReg = SysReg::new(3, 0, 9, 14, 1);
    pub const PMINTENCLR_EL1: SysReg = SysReg::new(3, 0, 9, 14, 2);
    pub const PMCCFILTR_EL0: SysReg = SysReg::new(3, 3, 14, 15, 7);
    pub const ICC_SRE_EL1: SysReg = SysReg::new(3, 0, 12, 12, 5);
    pub const ICC_IAR1_EL1: SysReg = SysReg::new(3, 0, 12, 12, 0);
    pub const ICC_PMR_EL1: SysReg = SysReg::new(3, 0, 4, 6, 0);
    pub const ID_AA64PFR0_EL1: SysReg = SysReg::new(3, 0, 0, 4, 0);
    pub const LORC_EL1: SysReg = SysReg::new(3, 0, 10, 4, 3);
    pub const CNTPCT_EL0: SysReg = SysReg::new(3, 3, 14, 0, 1);
    pub const CNTPCTSS_EL0: SysReg = SysReg::new(3, 3, 14, 0, 5);
    pub const CNTP_TVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 0);
    pub const CNTP_CTL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 1);
    pub const CNTP_CVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 2);
    pub const CNTHCTL_EL2: SysReg = SysReg::new(3, 4, 14, 1, 0);
}

/// One trapped access, decoded from the ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    pub reg: SysReg,
    /// The general-purpose register: 0..=30, or 31 for XZR.
    pub rt: u8,
    /// MRS (read into Rt) rather than MSR.
    pub read: bool,
}

impl SysRegAccess {
    /// Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10], Rt [9:5], CRm [4:1], Direction [0]
    /// (1 = read).
    pub fn decode(iss: u32) -> Self {
        let field = |shift: u32, bits: u32| ((iss >> shift) & ((1 << bits) - 1)) as u8;
        SysRegAccess {
            reg: SysReg::new(field(20, 2), field(14, 3), field(10, 4), field(1, 4), field(17, 3)),
            rt: field(5, 5),
            read: iss & 1 != 0,
        }
    }
}

/// OSLSR_EL1 as reported: OSLM = 0b10 (the OS lock is implemented, bits {3,0}) and OSLK = 0
/// (unlocked). Writes to OSLAR_EL1 are ignored, so "unlocked" stays true; Linux only ever
/// unlocks it at boot. KVM reports OSLM the same way.
pub const OSLSR_EL1_VALUE: u64 = 0b1000;

/// What about the VM changes the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysRegContext {
    /// The guest has EL2 (`--nested`).
    pub el2: bool,
    /// The hypervisor provides the GIC (Hypervisor.framework's, macOS 15), and with it the EL1
    /// physical timer registers (CNTP_*: `hv_vcpu_types.h` lists them only for VMs with
    /// `hv_gic_create`).
    pub in_kernel_gic: bool,
}

/// How hvrun treats a trapped register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysRegClass {
    /// A GIC CPU-interface register (ICC_*_EL1): handled by the userspace GIC when there is
    /// one; with an in-kernel GIC these do not trap at all.
    GicCpuInterface,
    /// The hypervisor traps the access but keeps the register itself: read or write its copy
    /// (`hv_vcpu_{get,set}_sys_reg`). With EL2 enabled Hypervisor.framework traps CNTHCTL_EL2
    /// and MDCCINT_EL1 and expects the VMM to pass them through (QEMU, "hvf: arm: ... HVF traps
    /// accesses to CNTHCTL_EL2"); Linux writes CNTHCTL_EL2 in `__init_el2_timers` on every
    /// boot at EL2 (arch/arm64/include/asm/el2_setup.h).
    Hypervisor,
    /// CNTPCT_EL0 (and CNTPCTSS_EL0): reads return the guest's virtual count — the guest sees
    /// a physical counter with CNTVOFF = 0, as QEMU's HVF backend answers; writes are UNDEF
    /// (read-only register). Traps when the hypervisor withholds the physical counter from EL1.
    PhysicalCount,
    /// Reads return the value, writes are ignored. PMU registers (no vPMU: PMCR_EL0.N = 0, no
    /// counters), the OS lock and debug registers (no self-hosted debug: MDSCR_EL1 and the
    /// breakpoint/watchpoint registers read 0, so the guest sees none armed), and the ID
    /// space a trap can reach (op0=3, op1=0, CRn=0, CRm=1..7: unallocated IDs read as zero).
    Constant(u64),
    /// Not emulated: inject UNDEF (EC 0x00) into the guest, as the architecture does for an
    /// unimplemented register. Log once per register and count it.
    Undefined,
}

/// The policy: what a trapped access to `reg` means in a VM like `ctx`.
pub fn classify(reg: SysReg, ctx: SysRegContext) -> SysRegClass {
    use regs::*;
    let SysReg { op0, op1, crn, crm, op2 } = reg;
    if is_gic_cpu_interface(reg) {
        return SysRegClass::GicCpuInterface;
    }
    if ctx.el2 && (reg == CNTHCTL_EL2 || reg == MDCCINT_EL1) {
        return SysRegClass::Hypervisor;
    }
    if reg == OSLSR_EL1 {
        return SysRegClass::Constant(OSLSR_EL1_VALUE);
    }
    // LORegions are not implemented (ID_AA64MMFR1_EL1.LO reads 0 on Apple cores), yet Linux
    // zeroes LORC_EL1 in `__init_el2_lor` when it boots at EL2 without checking: RAZ/WI, as
    // QEMU's HVF backend does ("Stub out LORC_EL1 accesses").
    if reg == LORC_EL1 {
        return SysRegClass::Constant(0);
    }
    if reg == CNTPCT_EL0 || reg == CNTPCTSS_EL0 {
        return SysRegClass::PhysicalCount;
    }
    // The EL1 physical timer exists only with the hypervisor's GIC (its interrupt would need
    // one); otherwise a guest's writes are ignored and it reads as disabled, since guests such
    // as macOS disable it at boot without checking (QEMU ignores the CNTP_CTL_EL0 write).
    // Linux at EL1 uses the virtual timer and never touches it.
    if [CNTP_TVAL_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0].contains(&reg) {
        return if ctx.in_kernel_gic { SysRegClass::Hypervisor } else { SysRegClass::Constant(0) };
    }
    let debug_fixed = [
        OSLAR_EL1,
        OSDLR_EL1,
        MDSCR_EL1,
        MDCCINT_EL1,
        OSECCR_EL1,
        MDRAR_EL1,
        DBGPRCR_EL1,
        DBGCLAIMSET_EL1,
        DBGCLAIMCLR_EL1,
        DBGAUTHSTATUS_EL1,
        MDCCSR_EL0,
    ];
    // DBGBVR<n>/DBGBCR<n>/DBGWVR<n>/DBGWCR<n>_EL1: op0=2, op1=0, CRn=0, CRm=n, op2=4..7.
    let breakpoint_or_watchpoint = op0 == 2 && op1 == 0 && crn == 0 && (4..=7).contains(&op2);
    // PMU (Arm ARM D23.5): CRn=9, CRm=12..14 at EL0 (op1=3) or PMINTEN*/PMMIR at EL1 (op1=0),
    // and PMEVCNTR<n>/PMEVTYPER<n>/PMCCFILTR: op1=3, CRn=14, CRm=8..15.
    let pmu = op0 == 3
        && ((crn == 9 && ((op1 == 3 && (12..=14).contains(&crm)) || (op1 == 0 && crm == 14)))
            || (op1 == 3 && crn == 14 && crm >= 8));
    let id_space = op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm);
    if debug_fixed.contains(&reg) || breakpoint_or_watchpoint || pmu || id_space {
        return SysRegClass::Constant(0);
    }
    SysRegClass::Undefined
}

/// Whether `reg` lies where the EL1 GIC CPU-interface registers are (IHI0069 §12.1.5,
/// Table 12-2): op0=3, op1=0 and CRn=12 with CRm 8, 9, 11 or 12, or ICC_PMR_EL1 (CRn=4, CRm=6,
/// op2=0). Which register of the group it is, and whether the GIC model has it, is the GIC's
/// business.
pub fn is_gic_cpu_interface(reg: SysReg) -> bool {
    let SysReg { op0, op1, crn, crm, op2 } = reg;
    (op0, op1) == (3, 0)
        && ((crn == 12 && matches!(crm, 8 | 9 | 11 | 12)) || (crn, crm, op2) == (4, 6, 0))
}

/// An access another part of the VMM performs for the guest (the userspace GIC's CPU
/// interface): read `reg` into Rt, or write a value to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedAccess {
    pub reg: SysReg,
    pub op: ForwardedOp,
}

/// The direction of a [`ForwardedAccess`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedOp {
    /// MRS: the value read goes to general register `rt` (`None`: XZR, the value is dropped).
    Read { rt: Option<u8> },
    /// MSR of this value (XZR already made 0).
    Write(u64),
}

impl ForwardedAccess {
    /// The register write that finishes the access once `read_value` is known (reads), as
    /// [`SysRegOutcome::Complete`] carries it.
    pub fn completion(&self, read_value: u64) -> Option<(u8, u64)> {
        match self.op {
            ForwardedOp::Read { rt } => rt.map(|rt| (rt, read_value)),
            ForwardedOp::Write(_) => None,
        }
    }
}

/// What the backend does to finish a trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysRegOutcome {
    /// Done: write `Some((rt, value))` to the register (never for XZR), then PC += 4.
    Complete(Option<(u8, u64)>),
    /// A GIC CPU-interface register: the VM's userspace GIC performs the access, then the
    /// backend finishes it as [`Self::Complete`]. Without a userspace GIC (or if the GIC does
    /// not implement the register) the backend injects UNDEF.
    GicCpuInterface(ForwardedAccess),
    /// The hypervisor's own copy of the register: the backend reads or writes it, then
    /// finishes as [`Self::Complete`] (UNDEF if the hypervisor refuses).
    Hypervisor(ForwardedAccess),
    /// Write the guest's virtual count now to `rt` (`None`: XZR, nothing to write), PC += 4.
    ReadVirtualCount { rt: Option<u8> },
    /// Inject UNDEF at the instruction (the PC stays on it).
    Undefined,
}

/// Emulates one trapped access in a VM like `ctx`. `rt_value` is the value of Rt for a write
/// (ignored for reads; XZR is taken as 0 here).
pub fn emulate(access: &SysRegAccess, rt_value: u64, ctx: SysRegContext) -> SysRegOutcome {
    let rt = (access.rt != 31).then_some(access.rt);
    let write_value = if rt.is_some() { rt_value } else { 0 };
    let forward = |reg| ForwardedAccess {
        reg,
        op: if access.read { ForwardedOp::Read { rt } } else { ForwardedOp::Write(write_value) },
    };
    match classify(access.reg, ctx) {
        SysRegClass::GicCpuInterface => SysRegOutcome::GicCpuInterface(forward(access.reg)),
        SysRegClass::Hypervisor => SysRegOutcome::Hypervisor(forward(access.reg)),
        SysRegClass::PhysicalCount if access.read => SysRegOutcome::ReadVirtualCount { rt },
        SysRegClass::PhysicalCount => SysRegOutcome::Undefined,
        SysRegClass::Constant(value) if access.read => {
            SysRegOutcome::Complete(rt.map(|rt| (rt, value)))
        }
        SysRegClass::Constant(_) => SysRegOutcome::Complete(None),
        SysRegClass::Undefined => SysRegOutcome::Undefined,
    }
}

/// Counts accesses to registers hvrun does not emulate and logs each register the first time
/// (a guest probing a register in a loop must not flood the log). One per VM.
#[derive(Default)]
pub struct UndefinedSysRegs {
    count: AtomicU64,
    logged: Mutex<Vec<SysReg>>,
}

/// Distinct registers logged before going quiet.
const UNDEFINED_LOG_LIMIT: usize = 32;

impl UndefinedSysRegs {
    /// Records one UNDEF access; logs it if this register was not logged before.
    pub fn record(&self, access: &SysRegAccess) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.logged.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if logged.len() < UNDEFINED_LOG_LIMIT && !logged.contains(&access.reg) {
            logged.push(access.reg);
            let (dir, what) = if access.read { ("read", "MRS") } else { ("write", "MSR") };
            log::warn!(
                "guest {what} {:?} (x{}): {dir} of a system register hvrun does not emulate; \
                 injected UNDEF (logged once per register)",
                access.reg,
                access.rt
            );
        }
    }

    /// How many UNDEF accesses so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "sysreg_tests.rs"]
mod tests;
