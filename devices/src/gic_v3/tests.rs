//! GIC tests through the guest's MMIO view: identification registers Linux checks, the SPI and
//! SGI/PPI register banks, routing, level/edge inputs, and RAZ/WI for everything else.

use std::sync::{Arc, Mutex};

use super::*;

/// Records every wake, in order.
#[derive(Default)]
pub(super) struct RecordingWaker(pub Mutex<Vec<u32>>);

impl VcpuWaker for RecordingWaker {
    fn wake(&self, vcpu: u32) {
        self.0.lock().unwrap().push(vcpu);
    }
}

impl RecordingWaker {
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// hvrun's MPIDR layout (bit 31 RES1, index in Aff0 then Aff1).
pub(super) fn mpidr(i: u32) -> u64 {
    (1 << 31) | u64::from(i & 0xf) | (u64::from(i >> 4) << 8)
}

/// A GIC for `n` vCPUs with 128 interrupt IDs, as hvrun configures it, plus MMIO handles.
pub(super) struct Rig {
    pub gic: GicV3,
    pub gicd: Arc<Mutex<dyn BusDevice>>,
    pub gicr: Arc<Mutex<dyn BusDevice>>,
    pub waker: Arc<RecordingWaker>,
}

impl Rig {
    pub fn new(n: u32) -> Self {
        let gic = GicV3::new((0..n).map(mpidr).collect(), 128).unwrap();
        let waker = Arc::new(RecordingWaker::default());
        gic.set_waker(waker.clone());
        Rig { gicd: gic.distributor(), gicr: gic.redistributors(), gic, waker }
    }

    pub fn d_read(&self, off: u64, size: u8) -> u64 {
        self.gicd.lock().unwrap().read(off, size)
    }
    pub fn d_write(&self, off: u64, size: u8, v: u64) {
        self.gicd.lock().unwrap().write(off, size, v)
    }
    pub fn r_read(&self, cpu: u64, off: u64, size: u8) -> u64 {
        self.gicr.lock().unwrap().read(cpu * GICR_FRAME_SIZE + off, size)
    }
    pub fn r_write(&self, cpu: u64, off: u64, size: u8, v: u64) {
        self.gicr.lock().unwrap().write(cpu * GICR_FRAME_SIZE + off, size, v)
    }

    /// What Linux's GICv3 driver does at boot, for the distributor and every vCPU.
    pub fn linux_init(&self, cpus: u32) {
        self.d_write(0x0, 4, 0x13); // GICD_CTLR: ARE_NS | EnableGrp1A | EnableGrp1
        for cpu in 0..cpus {
            self.r_write(u64::from(cpu), 0x14, 4, 0); // GICR_WAKER: wake up
            self.r_write(u64::from(cpu), 0x1_0080, 4, 0xffff_ffff); // IGROUPR0: Group 1
            for reg in [IccRegister::Pmr, IccRegister::Igrpen1] {
                self.gic.icc_write(cpu, reg, if reg == IccRegister::Pmr { 0xf0 } else { 1 });
            }
        }
    }
}

const SGI_BASE: u64 = 0x1_0000;

#[test]
fn identification_registers_linux_checks() {
    let rig = Rig::new(3);
    assert_eq!(rig.d_read(0xffe8, 4) & 0xf0, 0x30, "GICD_PIDR2.ArchRev = GICv3");
    assert_eq!(rig.r_read(2, 0xffe8, 4) & 0xf0, 0x30, "GICR_PIDR2.ArchRev = GICv3");
    let typer = rig.d_read(0x4, 4);
    assert_eq!(typer & 0x1f, 3, "ITLinesNumber: 128 interrupt IDs");
    assert_eq!((typer >> 5) & 7, 2, "CPUNumber = 3 - 1");
    assert_eq!((typer >> 19) & 0x1f, 9, "IDbits: 10-bit INTIDs");
    assert_eq!(typer & (1 << 17), 0, "no LPIs");
    let ctlr = rig.d_read(0x0, 4);
    assert_eq!(ctlr & 0x50, 0x50, "ARE and DS are fixed at 1");
    assert_eq!(rig.d_read(0x8, 4), 0x43b);
    assert_eq!(rig.r_read(0, 0x4, 4), 0x43b);
}

#[test]
fn redistributor_typer_names_each_vcpu_and_the_last() {
    let rig = Rig::new(18);
    for cpu in [0u32, 1, 16, 17] {
        let t = rig.r_read(u64::from(cpu), 0x8, 8);
        let m = mpidr(cpu);
        assert_eq!(t >> 32, m & 0xff_ffff, "Affinity_Value of vCPU {cpu}");
        assert_eq!((t >> 8) & 0xffff, u64::from(cpu), "Processor_Number");
        assert_eq!(t & (1 << 4) != 0, cpu == 17, "Last");
        assert_eq!(rig.r_read(u64::from(cpu), 0x8, 4), t & 0xffff_ffff);
        assert_eq!(rig.r_read(u64::from(cpu), 0xc, 4), t >> 32);
    }
    assert_eq!(rig.gic.redistributors_size(), 18 * 0x2_0000);
    assert_eq!(rig.r_read(18, 0x8, 8), 0, "past the last frame: RAZ");
}

#[test]
fn waker_sleep_handshake() {
    let rig = Rig::new(1);
    assert_eq!(rig.r_read(0, 0x14, 4), 0b110, "reset: ProcessorSleep and ChildrenAsleep");
    rig.r_write(0, 0x14, 4, 0);
    assert_eq!(rig.r_read(0, 0x14, 4), 0, "children wake at once");
    rig.r_write(0, 0x14, 4, 0b10);
    assert_eq!(rig.r_read(0, 0x14, 4), 0b110);
}

#[test]
fn spi_banks_set_clear_and_read_back() {
    let rig = Rig::new(1);
    // SPI 40 and 63 are bits 8 and 31 of word 1; SPI 64 is bit 0 of word 2.
    rig.d_write(0x104, 4, (1 << 8) | (1 << 31));
    rig.d_write(0x108, 4, 1);
    assert_eq!(rig.d_read(0x104, 4), (1 << 8) | (1 << 31));
    rig.d_write(0x184, 4, 1 << 31);
    assert_eq!(rig.d_read(0x104, 4), 1 << 8);
    assert_eq!(rig.d_read(0x184, 4), 1 << 8, "ICENABLER reads the enables too");
    assert_eq!(rig.d_read(0x108, 4), 1);
    // Pending and active, set and clear.
    rig.d_write(0x204, 4, 0b11);
    assert_eq!(rig.d_read(0x284, 4), 0b11);
    rig.d_write(0x284, 4, 0b01);
    assert_eq!(rig.d_read(0x204, 4), 0b10);
    rig.d_write(0x304, 4, 0b100);
    assert_eq!(rig.d_read(0x384, 4), 0b100);
    rig.d_write(0x384, 4, 0b100);
    assert_eq!(rig.d_read(0x304, 4), 0);
    // Groups default to 1 and can be changed.
    assert_eq!(rig.d_read(0x84, 4), 0xffff_ffff);
    rig.d_write(0x84, 4, 0xffff_fffe);
    assert_eq!(rig.d_read(0x84, 4), 0xffff_fffe);
    // Words beyond the 128 implemented interrupt IDs and word 0 (private, in the GICR): RAZ/WI.
    for off in [0x100, 0x110, 0x17c, 0x200, 0x080] {
        rig.d_write(off, 4, 0xffff_ffff);
        assert_eq!(rig.d_read(off, 4), 0, "{off:#x}");
    }
}

#[test]
fn priorities_are_byte_accessible_and_keep_five_bits() {
    let rig = Rig::new(1);
    rig.d_write(0x400 + 40, 4, 0x1234_5678);
    assert_eq!(rig.d_read(0x400 + 40, 4), 0x1030_5078);
    rig.d_write(0x400 + 41, 1, 0xff);
    assert_eq!(rig.d_read(0x400 + 41, 1), 0xf8);
    assert_eq!(rig.d_read(0x400 + 40, 4), 0x1030_f878);
    rig.d_write(0x400 + 4, 4, u64::MAX);
    assert_eq!(rig.d_read(0x400 + 4, 4), 0, "private priorities are in the GICR");
    rig.d_write(0x400 + 127, 4, u64::MAX);
    assert_eq!(rig.d_read(0x400 + 127, 1), 0xf8, "last implemented INTID");
    assert_eq!(rig.d_read(0x400 + 128, 1), 0, "beyond: RAZ");
    rig.r_write(1, SGI_BASE + 0x41c, 4, 0xa0a0_a0a0); // vCPU 1 does not exist: ignored
    rig.r_write(0, SGI_BASE + 0x41b, 1, 0xa7); // PPI 27
    assert_eq!(rig.r_read(0, SGI_BASE + 0x418, 4), 0xa000_0000);
}

#[test]
fn trigger_configuration() {
    let rig = Rig::new(1);
    rig.d_write(0xc08, 4, 0b10 << 2); // ICFGR2: INTID 33 edge
    assert_eq!(rig.d_read(0xc08, 4), 0b1000);
    assert_eq!(rig.d_read(0xc00, 4), 0, "SGI configuration is in the GICR");
    assert_eq!(rig.r_read(0, SGI_BASE + 0xc00, 4), 0xaaaa_aaaa, "SGIs are edge, read-only");
    rig.r_write(0, SGI_BASE + 0xc00, 4, 0);
    assert_eq!(rig.r_read(0, SGI_BASE + 0xc00, 4), 0xaaaa_aaaa);
    rig.r_write(0, SGI_BASE + 0xc04, 4, 0x8000_0000);
    assert_eq!(rig.r_read(0, SGI_BASE + 0xc04, 4), 0x8000_0000);
}

#[test]
fn irouter_is_64_bit_with_32_bit_halves() {
    let rig = Rig::new(2);
    let at = 0x6000 + 8 * 40;
    rig.d_write(at, 8, 0xffff_ffff_ffff_ffff);
    assert_eq!(rig.d_read(at, 8), 0xff_80ff_ffff, "only Aff3..Aff0 and IRM are kept");
    rig.d_write(at, 4, 0x1);
    rig.d_write(at + 4, 4, 0);
    assert_eq!(rig.d_read(at, 8), 1);
    assert_eq!(rig.d_read(at, 4), 1);
    assert_eq!(rig.d_read(at + 4, 4), 0);
    assert_eq!(rig.d_read(0x6000 + 8 * 5, 8), 0, "no IROUTER for private INTIDs");
    rig.d_write(0x6000 + 8 * 200, 8, 1);
    assert_eq!(rig.d_read(0x6000 + 8 * 200, 8), 0, "no IROUTER beyond the last SPI");
}

#[test]
fn unknown_offsets_and_bad_sizes_never_panic() {
    let rig = Rig::new(2);
    rig.linux_init(2);
    // A deterministic stream of offsets, sizes and values over both frames and ICC registers.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let (a, b, v) = (next(), next(), next());
        let size = [0u8, 1, 2, 3, 4, 5, 8, 16, 255][(a % 9) as usize];
        let dist_off = b % 0x1_0000;
        let redist_off = b % (3 * GICR_FRAME_SIZE);
        if a & 0x100 != 0 {
            rig.d_write(dist_off, size, v);
            rig.gicr.lock().unwrap().write(redist_off, size, v);
        } else {
            rig.d_read(dist_off, size);
            rig.gicr.lock().unwrap().read(redist_off, size);
        }
        let (op1, crm, op2) = ((a >> 20) as u8 & 7, (a >> 24) as u8 & 15, (a >> 28) as u8 & 7);
        if let Some(reg) = IccRegister::from_encoding(3, op1, 12, crm, op2) {
            rig.gic.icc_write((v % 4) as u32, reg, v);
            rig.gic.icc_read((v % 4) as u32, reg);
        }
        rig.gic.set_ppi_level((v % 4) as u32, (b % 64) as u32, a & 1 != 0);
    }
    // Still a working GIC: reset the CPU interfaces' priority state and deliver an SGI.
    rig.linux_init(2);
    for cpu in 0..2 {
        rig.gic.icc_write(cpu, IccRegister::Ap1r(0), 0);
    }
    rig.r_write(1, SGI_BASE + 0x100, 4, 1 << 3);
    rig.r_write(1, SGI_BASE + 0x400, 4, 0);
    rig.r_write(1, SGI_BASE + 0x380, 4, u64::MAX);
    rig.gic.icc_write(0, IccRegister::Sgi1r, (3 << 24) | 0b10);
    assert_eq!(rig.gic.icc_read(1, IccRegister::Iar1), 3);
}

#[test]
fn unknown_registers_read_as_zero() {
    let rig = Rig::new(1);
    for off in [0x10u64, 0x40, 0x800, 0xd00, 0xe00, 0xf00, 0x5000, 0xfff0] {
        rig.d_write(off, 4, 0xffff_ffff);
        assert_eq!(rig.d_read(off, 4), 0, "GICD {off:#x}");
    }
    for off in [0x0u64, 0x10, 0x70, 0x78, 0x1_0084, 0x1_0d00, 0x1_0e00, 0x1_f000] {
        rig.r_write(0, off, 4, 0xffff_ffff);
        assert_eq!(rig.r_read(0, off, 4), 0, "GICR {off:#x}");
    }
}

#[test]
fn bad_configurations_are_errors() {
    assert_eq!(GicV3::new(vec![], 128).err(), Some(GicError::NoVcpus));
    assert_eq!(GicV3::new(vec![0; 129], 128).err(), Some(GicError::TooManyVcpus(129)));
    assert_eq!(GicV3::new(vec![0], 100).err(), Some(GicError::BadIrqCount(100)));
    assert_eq!(GicV3::new(vec![0], 32).err(), Some(GicError::BadIrqCount(32)));
    assert!(GicV3::new(vec![0], 1024).is_err());
    let gic = GicV3::new(vec![0], 64).unwrap();
    assert!(gic.spi_line(31).is_some());
    assert!(gic.spi_line(32).is_none());
    assert!(gic.spi_line(u32::MAX).is_none());
}
