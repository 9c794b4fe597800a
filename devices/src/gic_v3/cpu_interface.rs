//! The CPU interface: the ICC_*_EL1 system registers a vCPU uses to acknowledge, complete, mask
//! and send interrupts. Without an in-kernel GIC the hypervisor traps them (MSR/MRS, EC 0x18)
//! and the backend forwards them here with the calling vCPU's index. IHI0069 §12.2 lists the
//! registers; §4.8 is the priority logic behind IAR/EOIR/RPR.

use super::state::SPURIOUS_INTID;
use super::state::{GicState, VcpuSet, AFFINITY_MASK, MIN_BPR0, MIN_BPR1, PRIORITY_MASK};

/// The ICC registers the model implements (Group 0 ones are accepted but never deliver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IccRegister {
    Pmr,
    Iar0,
    Eoir0,
    Hppir0,
    Bpr0,
    /// ICC_AP0R<n>_EL1, n = 0..3.
    Ap0r(u8),
    /// ICC_AP1R<n>_EL1, n = 0..3.
    Ap1r(u8),
    Dir,
    Rpr,
    Sgi1r,
    Asgi1r,
    Sgi0r,
    Iar1,
    Eoir1,
    Hppir1,
    Bpr1,
    Ctlr,
    Sre,
    Igrpen0,
    Igrpen1,
}

impl IccRegister {
    /// The register with this MSR/MRS encoding (op0, op1, CRn, CRm, op2), if it is an EL1
    /// CPU-interface register (IHI0069 §12.1.5, Table 12-2).
    pub fn from_encoding(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Option<Self> {
        use IccRegister::*;
        if (op0, op1) != (3, 0) {
            return None;
        }
        Some(match (crn, crm, op2) {
            (4, 6, 0) => Pmr,
            (12, 8, 0) => Iar0,
            (12, 8, 1) => Eoir0,
            (12, 8, 2) => Hppir0,
            (12, 8, 3) => Bpr0,
            (12, 8, n @ 4..=7) => Ap0r(n - 4),
            (12, 9, n @ 0..=3) => Ap1r(n),
            (12, 11, 1) => Dir,
            (12, 11, 3) => Rpr,
            (12, 11, 5) => Sgi1r,
            (12, 11, 6) => Asgi1r,
            (12, 11, 7) => Sgi0r,
            (12, 12, 0) => Iar1,
            (12, 12, 1) => Eoir1,
            (12, 12, 2) => Hppir1,
            (12, 12, 3) => Bpr1,
            (12, 12, 4) => Ctlr,
            (12, 12, 5) => Sre,
            (12, 12, 6) => Igrpen0,
            (12, 12, 7) => Igrpen1,
            _ => return None,
        })
    }
}

/// ICC_SRE_EL1 reads SRE | DFB | DIB = 0x7: the system-register interface is the only one
/// (§12.2.22); writes are ignored.
pub const SRE_VALUE: u64 = 0x7;
/// ICC_CTLR_EL1 read-only fields: PRIbits = 4 (5 priority bits) in [10:8], IDbits = 0 (16-bit
/// INTIDs), no SEI, no Aff3 (A3V = 0), RSS = 0.
const CTLR_FIXED: u64 = 4 << 8;
const CTLR_CBPR: u64 = 1 << 0;
const CTLR_EOIMODE: u64 = 1 << 1;

/// Reads an ICC register of vCPU `cpu`. Reading ICC_IAR1_EL1 acknowledges an interrupt, hence
/// `&mut`. Write-only registers read as zero.
pub fn read(gic: &mut GicState, cpu: usize, reg: IccRegister) -> u64 {
    use IccRegister::*;
    if cpu >= gic.cpus.len() {
        return 0;
    }
    let state = &gic.cpus[cpu];
    match reg {
        Pmr => u64::from(state.pmr),
        Bpr0 => u64::from(state.bpr0),
        Bpr1 => u64::from(state.bpr1),
        Ap0r(0) => u64::from(state.ap0r0),
        Ap1r(0) => u64::from(state.ap1r0),
        Rpr => u64::from(state.running_priority()),
        Ctlr => {
            let mut v = CTLR_FIXED;
            if state.cbpr {
                v |= CTLR_CBPR;
            }
            if state.eoi_mode_drop_only {
                v |= CTLR_EOIMODE;
            }
            v
        }
        Sre => SRE_VALUE,
        Igrpen0 => u64::from(state.igrpen0),
        Igrpen1 => u64::from(state.igrpen1),
        Iar1 => u64::from(acknowledge(gic, cpu)),
        Hppir1 => u64::from(gic.highest_pending(cpu).map_or(SPURIOUS_INTID, |(intid, _)| intid)),
        // Group 0 is never signalled.
        Iar0 | Hppir0 => u64::from(SPURIOUS_INTID),
        Ap0r(_) | Ap1r(_) | Eoir0 | Eoir1 | Dir | Sgi1r | Asgi1r | Sgi0r => 0,
    }
}

/// Writes an ICC register of vCPU `cpu`. Returns the vCPUs an SGI was sent to (empty for
/// every other register). Read-only registers ignore writes.
pub fn write(gic: &mut GicState, cpu: usize, reg: IccRegister, value: u64) -> VcpuSet {
    use IccRegister::*;
    if cpu >= gic.cpus.len() {
        return VcpuSet::default();
    }
    let state = &mut gic.cpus[cpu];
    match reg {
        Pmr => state.pmr = value as u8 & PRIORITY_MASK,
        // A binary point below the minimum is set to the minimum (§12.2.4).
        Bpr0 => state.bpr0 = (value as u8 & 7).max(MIN_BPR0),
        Bpr1 => state.bpr1 = (value as u8 & 7).max(MIN_BPR1),
        Ap0r(0) => state.ap0r0 = value as u32,
        Ap1r(0) => state.ap1r0 = value as u32,
        Ctlr => {
            state.cbpr = value & CTLR_CBPR != 0;
            state.eoi_mode_drop_only = value & CTLR_EOIMODE != 0;
        }
        Igrpen0 => state.igrpen0 = value & 1 != 0,
        Igrpen1 => state.igrpen1 = value & 1 != 0,
        Eoir1 => end_of_interrupt(gic, cpu, value as u32 & 0xff_ffff),
        Dir => deactivate(gic, cpu, value as u32 & 0xff_ffff),
        Sgi1r => return send_sgi(gic, cpu, value),
        // Group 0 and the "other security state" SGIs do not exist with one security state
        // and no Group 0 delivery.
        Eoir0 | Asgi1r | Sgi0r => {}
        Ap0r(_) | Ap1r(_) | Iar0 | Iar1 | Hppir0 | Hppir1 | Rpr | Sre => {}
    }
    VcpuSet::default()
}

/// ICC_IAR1_EL1 (§12.2.13): takes the signalled interrupt from pending to active and raises
/// the running priority to its group priority; 1023 if nothing can be taken.
fn acknowledge(gic: &mut GicState, cpu: usize) -> u32 {
    let Some((intid, priority)) = gic.signalled(cpu) else {
        return SPURIOUS_INTID;
    };
    let group_priority = gic.cpus[cpu].group_priority(priority);
    gic.cpus[cpu].ap1r0 |= 1 << (group_priority >> 3);
    if let Some(irq) = gic.irq_mut(cpu, intid) {
        irq.active = true;
        // An edge (or ISPENDR) latch is consumed; a level line still held high keeps the
        // interrupt pending as well as active.
        irq.pending_latch = false;
    }
    intid
}

/// ICC_EOIR1_EL1 (§12.2.10): drops the running priority (clears the highest-priority active
/// bit) and, unless EOImode = 1, deactivates the interrupt. Special INTIDs 1020..1023 do
/// nothing.
fn end_of_interrupt(gic: &mut GicState, cpu: usize, intid: u32) {
    if (1020..=1023).contains(&intid) {
        return;
    }
    let state = &mut gic.cpus[cpu];
    if state.ap1r0 != 0 {
        state.ap1r0 &= state.ap1r0 - 1;
    }
    if !state.eoi_mode_drop_only {
        deactivate(gic, cpu, intid);
    }
}

/// ICC_DIR_EL1 (§12.2.6): active → inactive. An INTID that does not exist is ignored.
fn deactivate(gic: &mut GicState, cpu: usize, intid: u32) {
    if intid >= gic.nr_irqs() {
        return;
    }
    if let Some(irq) = gic.irq_mut(cpu, intid) {
        irq.active = false;
    }
}

/// ICC_SGI1R_EL1 (§12.2.21): INTID [27:24]; IRM [40] = every vCPU but the sender; otherwise
/// the vCPUs with affinity Aff3 [55:48].Aff2 [39:32].Aff1 [23:16] and an Aff0 of
/// RS [47:44] × 16 + n for each bit n of TargetList [15:0].
fn send_sgi(gic: &mut GicState, sender: usize, value: u64) -> VcpuSet {
    let intid = ((value >> 24) & 0xf) as usize;
    let irm = value & (1 << 40) != 0;
    let target_list = value & 0xffff;
    let range_base = ((value >> 44) & 0xf) * 16;
    // The upper affinity levels of the targets, in MPIDR layout.
    let upper =
        ((value >> 16) & 0xff) << 8 | ((value >> 32) & 0xff) << 16 | ((value >> 48) & 0xff) << 32;
    let mut targets = VcpuSet::default();
    for (cpu, &mpidr) in gic.mpidrs.iter().enumerate() {
        let hit = if irm {
            cpu != sender
        } else {
            let aff0 = mpidr & 0xff;
            (mpidr & AFFINITY_MASK & !0xff) == upper
                && (range_base..range_base + 16).contains(&aff0)
                && target_list & (1 << (aff0 - range_base)) != 0
        };
        if hit {
            targets.insert(cpu);
            gic.cpus[cpu].private[intid].pending_latch = true;
        }
    }
    targets
}
