//! The redistributor frames: per vCPU, an RD_base frame (control, identification, power) and an
//! SGI_base frame (the SGI and PPI configuration), 64 KiB each, back to back, in vCPU order
//! (IHI0069 §12.10, §12.11). No LPIs: GICR_TYPER.PLPIS = 0 and the LPI registers are RAZ/WI.

use super::banks::{self, BitBank};
use super::distributor::{IIDR_VALUE, PIDR2, PIDR2_VALUE};
use super::state::{CpuState, GicState};

/// One vCPU's redistributor region: RD_base + SGI_base.
pub const GICR_FRAME_SIZE: u64 = 0x2_0000;
/// Offset of SGI_base within a vCPU's region.
const SGI_BASE: u64 = 0x1_0000;

const CTLR: u64 = 0x0000;
const IIDR: u64 = 0x0004;
const TYPER: u64 = 0x0008;
const TYPER_HI: u64 = 0x000c;
const WAKER: u64 = 0x0014;

/// GICR_WAKER.ProcessorSleep and ChildrenAsleep (§12.11.41). Linux clears ProcessorSleep and
/// polls until ChildrenAsleep reads 0; here the children follow at once.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

const IPRIORITYR: u64 = 0x0400;
const IPRIORITYR_END: u64 = 0x0420;
const ICFGR0: u64 = 0x0c00;
const ICFGR1: u64 = 0x0c04;
/// GICR_ICFGR0: SGIs are edge-triggered, read-only (§12.11.7).
const ICFGR0_VALUE: u32 = 0xaaaa_aaaa;

/// A read at `offset` into the whole redistributor window (all vCPUs).
pub fn read(gic: &GicState, offset: u64, size: u8) -> u64 {
    let Some((cpu, rel)) = locate(gic, offset) else {
        return 0;
    };
    let state = &gic.cpus[cpu];
    match (rel, size) {
        (TYPER, 8) => typer(gic, cpu),
        (TYPER, 4) => typer(gic, cpu) & 0xffff_ffff,
        (TYPER_HI, 4) => typer(gic, cpu) >> 32,
        (r, 1 | 4) if (SGI_BASE + IPRIORITYR..SGI_BASE + IPRIORITYR_END).contains(&r) => {
            let first = (r - SGI_BASE - IPRIORITYR) as usize;
            banks::read_priorities(&state.private, first, size)
        }
        (r, 4) if r < SGI_BASE => u64::from(read_rd(state, r)),
        (r, 4) => u64::from(read_sgi(state, r - SGI_BASE)),
        _ => 0,
    }
}

/// A write at `offset` into the whole redistributor window.
pub fn write(gic: &mut GicState, offset: u64, size: u8, value: u64) {
    let Some((cpu, rel)) = locate(gic, offset) else {
        return;
    };
    let state = &mut gic.cpus[cpu];
    match (rel, size) {
        (r, 1 | 4) if (SGI_BASE + IPRIORITYR..SGI_BASE + IPRIORITYR_END).contains(&r) => {
            let first = (r - SGI_BASE - IPRIORITYR) as usize;
            banks::write_priorities(&mut state.private, first, size, value);
        }
        (WAKER, 4) => state.processor_sleep = value as u32 & WAKER_PROCESSOR_SLEEP != 0,
        (r, 4) if r >= SGI_BASE => write_sgi(state, r - SGI_BASE, value as u32),
        // GICR_CTLR (no LPIs to enable), PROPBASER/PENDBASER, TYPER (read-only): ignored.
        _ => {}
    }
}

/// Which vCPU's region holds `offset`, and the offset within it.
fn locate(gic: &GicState, offset: u64) -> Option<(usize, u64)> {
    let cpu = usize::try_from(offset / GICR_FRAME_SIZE).ok()?;
    (cpu < gic.cpus.len()).then_some((cpu, offset % GICR_FRAME_SIZE))
}

/// GICR_TYPER (§12.11.40): Affinity_Value [63:32] = Aff3.Aff2.Aff1.Aff0 of the vCPU,
/// Processor_Number [23:8] = its index, Last [4] on the final redistributor of the region.
fn typer(gic: &GicState, cpu: usize) -> u64 {
    let mpidr = gic.mpidrs[cpu];
    let affinity = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    let last = u64::from(cpu + 1 == gic.cpus.len()) << 4;
    (affinity << 32) | (((cpu as u64) & 0xffff) << 8) | last
}

fn read_rd(state: &CpuState, rel: u64) -> u32 {
    match rel {
        CTLR => 0,
        IIDR => IIDR_VALUE,
        WAKER if state.processor_sleep => WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
        PIDR2 => PIDR2_VALUE,
        _ => 0,
    }
}

fn read_sgi(state: &CpuState, rel: u64) -> u32 {
    match rel {
        ICFGR0 => ICFGR0_VALUE,
        ICFGR1 => banks::read_config(&state.private[16..]),
        // Only word 0 of each bank exists in SGI_base.
        _ => match BitBank::at(rel) {
            Some((bank, 0)) => bank.read(&state.private),
            _ => 0,
        },
    }
}

fn write_sgi(state: &mut CpuState, rel: u64, value: u32) {
    match rel {
        ICFGR1 => banks::write_config(&mut state.private[16..], value),
        _ => {
            if let Some((bank, 0)) = BitBank::at(rel) {
                bank.write(&mut state.private, value);
            }
        }
    }
}
