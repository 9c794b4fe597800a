//! GIC tests of delivery: the CPU interface (acknowledge, priority masking, preemption, EOI and
//! deactivation), SGI routing, SPI/PPI delivery to the right vCPU, level and edge inputs, and
//! which vCPUs get woken.

use super::tests::{mpidr, Rig};
use super::*;
use IccRegister::*;

const SGI_BASE: u64 = 0x1_0000;

/// Enables SPI `intid` (>= 32) at `priority`, routed to vCPU `cpu`, with the given trigger.
fn spi(rig: &Rig, intid: u64, priority: u8, cpu: u32, edge: bool) {
    rig.d_write(0x400 + intid, 1, u64::from(priority));
    // IROUTER takes the affinity fields only: MPIDR bit 31 (RES1) would be IRM here.
    rig.d_write(0x6000 + 8 * intid, 8, affinity(cpu));
    let cfg = 0xc00 + intid / 16 * 4;
    let bit = 1 << ((intid % 16) * 2 + 1);
    let old = rig.d_read(cfg, 4);
    rig.d_write(cfg, 4, if edge { old | bit } else { old & !bit });
    rig.d_write(0x100 + intid / 32 * 4, 4, 1 << (intid % 32));
}

/// Enables private interrupt `intid` (< 32) of `cpu` at `priority`.
fn private(rig: &Rig, cpu: u32, intid: u64, priority: u8) {
    rig.r_write(u64::from(cpu), SGI_BASE + 0x400 + intid, 1, u64::from(priority));
    rig.r_write(u64::from(cpu), SGI_BASE + 0x100, 4, 1 << intid);
}

/// vCPU `cpu`'s affinity as Linux writes it to IROUTER (`gic_cpu_to_affinity`).
fn affinity(cpu: u32) -> u64 {
    mpidr(cpu) & 0xff_00ff_ffff
}

fn line(rig: &Rig, intid: u32) -> std::sync::Arc<dyn IrqLine> {
    rig.gic.spi_line(intid - 32).unwrap()
}

#[test]
fn nothing_pending_acknowledges_spurious() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    assert!(!rig.gic.has_pending(0));
    assert_eq!(rig.gic.icc_read(0, Iar1), 1023);
    assert_eq!(rig.gic.icc_read(0, Hppir1), 1023);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0xff, "idle");
    assert_eq!(rig.gic.icc_read(0, Sre), 0x7);
    assert_eq!(rig.gic.icc_read(0, Iar0), 1023, "no Group 0");
    assert!(!rig.gic.has_pending(7), "unknown vCPU");
}

#[test]
fn enables_gate_delivery() {
    let rig = Rig::new(1);
    spi(&rig, 40, 0x80, 0, false);
    let l = line(&rig, 40);
    l.set_level(true);
    rig.gic.icc_write(0, Pmr, 0xff);
    assert!(!rig.gic.has_pending(0), "distributor Group 1 and ICC_IGRPEN1 still off");
    rig.d_write(0x0, 4, 0x12);
    assert!(!rig.gic.has_pending(0), "ICC_IGRPEN1 still off");
    rig.gic.icc_write(0, Igrpen1, 1);
    assert!(rig.gic.has_pending(0));
    rig.d_write(0x184, 4, 1 << 8);
    assert!(!rig.gic.has_pending(0), "SPI 40 disabled");
    assert_eq!(rig.d_read(0x204, 4), 1 << 8, "still pending while disabled");
    rig.d_write(0x104, 4, 1 << 8);
    rig.d_write(0x84, 4, !(1 << 8));
    assert!(!rig.gic.has_pending(0), "Group 0 is never signalled");
}

#[test]
fn priority_mask_and_running_priority() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    spi(&rig, 40, 0xa0, 0, true);
    spi(&rig, 41, 0x60, 0, true);
    rig.gic.icc_write(0, Pmr, 0xa0);
    line(&rig, 40).pulse();
    assert!(!rig.gic.has_pending(0), "priority 0xa0 is not below PMR 0xa0");
    assert_eq!(rig.gic.icc_read(0, Hppir1), 40, "HPPIR ignores the mask");
    assert_eq!(rig.gic.icc_read(0, Iar1), 1023);
    rig.gic.icc_write(0, Pmr, 0xf0);
    assert_eq!(rig.gic.icc_read(0, Pmr), 0xf0);
    assert!(rig.gic.has_pending(0));
    assert_eq!(rig.gic.icc_read(0, Iar1), 40);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0xa0);
    assert!(!rig.gic.has_pending(0), "40 is active, not pending");
    // A higher-priority interrupt preempts the running one; an equal one does not.
    line(&rig, 41).pulse();
    assert!(rig.gic.has_pending(0));
    assert_eq!(rig.gic.icc_read(0, Iar1), 41);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0x60);
    assert_eq!(rig.gic.icc_read(0, Ap1r(0)), (1 << (0x60 >> 3)) | (1 << (0xa0 >> 3)));
    line(&rig, 41).pulse();
    assert!(!rig.gic.has_pending(0), "41 pending again, but 0x60 does not preempt 0x60");
    rig.gic.icc_write(0, Eoir1, 41);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0xa0, "priority dropped to the interrupted level");
    assert!(rig.gic.has_pending(0), "the second 41 preempts 0xa0");
    assert_eq!(rig.gic.icc_read(0, Iar1), 41);
    rig.gic.icc_write(0, Eoir1, 41);
    rig.gic.icc_write(0, Eoir1, 40);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0xff);
    assert_eq!(rig.d_read(0x304, 4), 0, "nothing active");
}

#[test]
fn binary_point_groups_priorities() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    rig.gic.icc_write(0, Bpr1, 0);
    assert_eq!(rig.gic.icc_read(0, Bpr1), 3, "below the minimum reads the minimum");
    spi(&rig, 40, 0x88, 0, true);
    spi(&rig, 41, 0x80, 0, true);
    rig.gic.icc_write(0, Bpr1, 4); // group priority = bits [7:4]
    line(&rig, 40).pulse();
    assert_eq!(rig.gic.icc_read(0, Iar1), 40);
    line(&rig, 41).pulse();
    assert!(!rig.gic.has_pending(0), "0x80 is in the same group as 0x88: no preemption");
    assert_eq!(rig.gic.icc_read(0, Rpr), 0x80, "running priority is the group priority");
    rig.gic.icc_write(0, Eoir1, 40);
    assert_eq!(rig.gic.icc_read(0, Iar1), 41);
    rig.gic.icc_write(0, Eoir1, 41);
    // With BPR1 = 3 every priority bit counts: 0x80 preempts 0x88.
    rig.gic.icc_write(0, Bpr1, 3);
    line(&rig, 40).pulse();
    assert_eq!(rig.gic.icc_read(0, Iar1), 40);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0x88);
    line(&rig, 41).pulse();
    assert!(rig.gic.has_pending(0));
}

#[test]
fn eoi_mode_1_splits_priority_drop_and_deactivation() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    rig.gic.icc_write(0, Ctlr, 0b10);
    assert_eq!(rig.gic.icc_read(0, Ctlr), (4 << 8) | 0b10, "PRIbits = 4, EOImode");
    spi(&rig, 50, 0x40, 0, true);
    line(&rig, 50).pulse();
    assert_eq!(rig.gic.icc_read(0, Iar1), 50);
    rig.gic.icc_write(0, Eoir1, 50);
    assert_eq!(rig.gic.icc_read(0, Rpr), 0xff);
    assert_eq!(rig.d_read(0x304, 4), 1 << 18, "still active until DIR");
    line(&rig, 50).pulse();
    assert!(!rig.gic.has_pending(0), "an active interrupt is not signalled again");
    rig.gic.icc_write(0, Dir, 50);
    assert_eq!(rig.d_read(0x304, 4), 0);
    assert_eq!(rig.gic.icc_read(0, Iar1), 50);
    // Special and out-of-range INTIDs never panic.
    for intid in [1020u64, 1023, 5000, u64::MAX] {
        rig.gic.icc_write(0, Eoir1, intid);
        rig.gic.icc_write(0, Dir, intid);
    }
}

#[test]
fn level_interrupt_follows_its_line() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    spi(&rig, 64, 0x80, 0, false);
    let l = line(&rig, 64);
    l.set_level(true);
    assert!(rig.gic.has_pending(0));
    l.set_level(false);
    assert!(!rig.gic.has_pending(0), "deassert clears a level interrupt's pending state");
    assert_eq!(rig.d_read(0x208, 4), 0);
    l.set_level(true);
    assert_eq!(rig.gic.icc_read(0, Iar1), 64);
    assert_eq!(rig.d_read(0x208, 4), 1, "active and still pending: the line is high");
    rig.gic.icc_write(0, Eoir1, 64);
    assert!(rig.gic.has_pending(0), "still asserted after EOI: signalled again");
    rig.d_write(0x288, 4, 1);
    assert!(rig.gic.has_pending(0), "ICPENDR cannot clear an asserted level interrupt");
    l.set_level(false);
    assert!(!rig.gic.has_pending(0));
    // A software-pended level interrupt is pending until acknowledged or cleared.
    rig.d_write(0x208, 4, 1);
    assert!(rig.gic.has_pending(0));
    rig.d_write(0x288, 4, 1);
    assert!(!rig.gic.has_pending(0));
}

#[test]
fn edge_interrupt_latches_until_acknowledged() {
    let rig = Rig::new(1);
    rig.linux_init(1);
    spi(&rig, 33, 0x80, 0, true);
    let l = line(&rig, 33);
    l.set_level(true);
    l.set_level(true); // no new edge
    l.set_level(false);
    assert!(rig.gic.has_pending(0), "the edge was latched");
    assert_eq!(rig.gic.icc_read(0, Iar1), 33);
    rig.gic.icc_write(0, Eoir1, 33);
    assert!(!rig.gic.has_pending(0), "one edge, one interrupt");
}

#[test]
fn spis_and_ppis_reach_only_their_vcpu() {
    let rig = Rig::new(3);
    rig.linux_init(3);
    spi(&rig, 40, 0x80, 2, false);
    rig.waker.take();
    line(&rig, 40).set_level(true);
    assert_eq!([0, 1, 2].map(|c| rig.gic.has_pending(c)), [false, false, true]);
    assert_eq!(rig.waker.take(), vec![2], "only the target is woken");
    line(&rig, 40).set_level(true);
    assert_eq!(rig.waker.take(), Vec::<u32>::new(), "no wake when nothing changed");
    assert_eq!(rig.gic.icc_read(0, Iar1), 1023, "vCPU 0 cannot take vCPU 2's SPI");
    assert_eq!(rig.gic.icc_read(2, Iar1), 40);
    rig.gic.icc_write(2, Eoir1, 40);
    line(&rig, 40).set_level(false);
    // Rerouting a pending SPI moves it, and wakes the new target.
    line(&rig, 40).set_level(true);
    rig.waker.take();
    rig.d_write(0x6000 + 8 * 40, 8, affinity(1));
    assert_eq!([0, 1, 2].map(|c| rig.gic.has_pending(c)), [false, true, false]);
    assert_eq!(rig.waker.take(), vec![1]);
    // A route to an affinity no vCPU has delivers nowhere.
    rig.d_write(0x6000 + 8 * 40, 8, 0x7_0000);
    assert_eq!([0, 1, 2].map(|c| rig.gic.has_pending(c)), [false, false, false]);
    // 1-of-N goes to the first vCPU with Group 1 enabled.
    rig.gic.icc_write(0, Igrpen1, 0);
    rig.d_write(0x6000 + 8 * 40, 8, 1 << 31);
    assert_eq!([0, 1, 2].map(|c| rig.gic.has_pending(c)), [false, true, false]);

    // The timer PPI of vCPU 1 only.
    private(&rig, 1, u64::from(VTIMER_PPI), 0xa0);
    rig.waker.take();
    rig.gic.set_ppi_level(1, VTIMER_PPI, true);
    assert_eq!(rig.waker.take(), Vec::<u32>::new(), "vCPU 1 was already signalled");
    line(&rig, 40).set_level(false);
    assert!(rig.gic.has_pending(1));
    assert_eq!(rig.gic.icc_read(1, Iar1), 27);
    assert!(!rig.gic.has_pending(2));
    rig.gic.icc_write(1, Eoir1, 27);
    rig.gic.set_ppi_level(1, VTIMER_PPI, false);
    assert!(!rig.gic.has_pending(1));
    rig.gic.set_ppi_level(1, VTIMER_PPI, true);
    assert_eq!(rig.waker.take(), vec![1]);
    // SGI INTIDs and SPIs are not PPIs; unknown vCPUs are ignored.
    rig.gic.set_ppi_level(0, 3, true);
    rig.gic.set_ppi_level(0, 40, true);
    rig.gic.set_ppi_level(9, VTIMER_PPI, true);
    assert!(!rig.gic.has_pending(0));
}

#[test]
fn sgi_routing_by_target_list_affinity_and_irm() {
    // 18 vCPUs: 0..16 have Aff1 = 0, 16 and 17 have Aff1 = 1.
    let rig = Rig::new(18);
    rig.linux_init(18);
    for cpu in 0..18 {
        private(&rig, cpu, 5, 0x80);
    }
    let pending = |rig: &Rig| (0..18).filter(|&c| rig.gic.has_pending(c)).collect::<Vec<_>>();
    let ack_all = |rig: &Rig| {
        for c in 0..18 {
            if rig.gic.icc_read(c, Iar1) == 5 {
                rig.gic.icc_write(c, Eoir1, 5);
            }
        }
    };
    // TargetList bits 1 and 3, Aff1 = 0.
    rig.waker.take();
    rig.gic.icc_write(0, Sgi1r, (5 << 24) | 0b1010);
    assert_eq!(pending(&rig), vec![1, 3]);
    let mut woken = rig.waker.take();
    woken.sort();
    assert_eq!(woken, vec![1, 3]);
    ack_all(&rig);
    // Aff1 = 1: bit 1 is vCPU 17.
    rig.gic.icc_write(0, Sgi1r, (5 << 24) | (1 << 16) | 0b10);
    assert_eq!(pending(&rig), vec![17]);
    ack_all(&rig);
    // To itself.
    rig.gic.icc_write(4, Sgi1r, (5 << 24) | (1 << 4));
    assert_eq!(pending(&rig), vec![4]);
    ack_all(&rig);
    // IRM: everyone but the sender.
    rig.gic.icc_write(2, Sgi1r, (5 << 24) | (1 << 40));
    assert_eq!(pending(&rig), (0..18).filter(|&c| c != 2).collect::<Vec<_>>());
    ack_all(&rig);
    // Range selector RS = 1 means Aff0 16..31: no hvrun vCPU has those.
    rig.gic.icc_write(0, Sgi1r, (5 << 24) | (1 << 44) | 0xffff);
    assert_eq!(pending(&rig), Vec::<u32>::new());
    // Aff2 / Aff3 that no vCPU has.
    rig.gic.icc_write(0, Sgi1r, (5 << 24) | (1 << 32) | 1);
    rig.gic.icc_write(0, Sgi1r, (5 << 24) | (1 << 48) | 1);
    assert_eq!(pending(&rig), Vec::<u32>::new());
    // A disabled SGI is pending but not signalled.
    rig.r_write(0, SGI_BASE + 0x180, 4, 1 << 5);
    rig.gic.icc_write(1, Sgi1r, (5 << 24) | 1);
    assert_eq!(pending(&rig), Vec::<u32>::new());
    assert_eq!(rig.r_read(0, SGI_BASE + 0x200, 4), 1 << 5);
}

#[test]
fn icc_register_encodings() {
    let table = [
        ((3, 0, 4, 6, 0), Some(Pmr)),
        ((3, 0, 12, 12, 0), Some(Iar1)),
        ((3, 0, 12, 12, 1), Some(Eoir1)),
        ((3, 0, 12, 12, 2), Some(Hppir1)),
        ((3, 0, 12, 12, 3), Some(Bpr1)),
        ((3, 0, 12, 12, 4), Some(Ctlr)),
        ((3, 0, 12, 12, 5), Some(Sre)),
        ((3, 0, 12, 12, 7), Some(Igrpen1)),
        ((3, 0, 12, 11, 1), Some(Dir)),
        ((3, 0, 12, 11, 3), Some(Rpr)),
        ((3, 0, 12, 11, 5), Some(Sgi1r)),
        ((3, 0, 12, 9, 0), Some(Ap1r(0))),
        ((3, 0, 12, 9, 3), Some(Ap1r(3))),
        ((3, 0, 12, 8, 4), Some(Ap0r(0))),
        ((3, 0, 12, 12, 6), Some(Igrpen0)),
        ((3, 4, 12, 12, 5), None), // ICC_SRE_EL2
        ((3, 6, 12, 12, 5), None), // ICC_SRE_EL3
        ((3, 0, 12, 10, 0), None),
        ((2, 0, 12, 12, 0), None),
    ];
    for ((op0, op1, crn, crm, op2), want) in table {
        assert_eq!(IccRegister::from_encoding(op0, op1, crn, crm, op2), want);
    }
}

#[test]
fn device_lines_work_across_threads() {
    let rig = Rig::new(2);
    rig.linux_init(2);
    spi(&rig, 40, 0x80, 1, true);
    let l = line(&rig, 40);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    l.pulse();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(rig.gic.has_pending(1));
    assert!(rig.waker.take().iter().all(|&v| v == 1));
}
