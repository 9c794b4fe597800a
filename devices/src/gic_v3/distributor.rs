//! The distributor frame (GICD, 64 KiB): global enables and the configuration and routing of
//! SPIs. Affinity routing is always on (GICD_CTLR.ARE = 1, RAO/WI) and there is one security
//! state (DS = 1), so SGIs and PPIs live in the redistributors and the GICD copies of their
//! registers are RAZ/WI (IHI0069 §12.9, "when affinity routing is enabled").
//!
//! Every register is 32-bit except IPRIORITYR (also byte-accessible) and IROUTER (64-bit, or
//! two 32-bit halves). Other sizes, and offsets that name nothing, read as zero and ignore
//! writes: guest input never panics.

use super::banks::{self, BitBank};
use super::state::{GicState, Irq, FIRST_SPI};

/// Size of the distributor frame.
pub const GICD_FRAME_SIZE: u64 = 0x1_0000;

const CTLR: u64 = 0x0000;
const TYPER: u64 = 0x0004;
const IIDR: u64 = 0x0008;
const IPRIORITYR: u64 = 0x0400;
const IPRIORITYR_END: u64 = 0x0800;
const ICFGR: u64 = 0x0c00;
const ICFGR_END: u64 = 0x0d00;
const IROUTER: u64 = 0x6000;
const IROUTER_END: u64 = 0x8000;
/// Peripheral ID2: Linux refuses a distributor whose ArchRev (bits [7:4]) is not 3 or 4.
pub const PIDR2: u64 = 0xffe8;

/// GICD_CTLR bits (single security state view, §12.9.4).
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// GICD_IIDR / GICR_IIDR: implementer 0x43b (Arm's JEP106 code) with product 0, the value
/// QEMU's emulated GICv3 reports; it matches no Linux erratum workaround.
pub const IIDR_VALUE: u32 = 0x0000_043b;
/// GICD_PIDR2 / GICR_PIDR2: ArchRev 3 (GICv3) in [7:4], JEDEC-assigned bit 3, DES_1 = 3.
pub const PIDR2_VALUE: u32 = 0x3b;

/// A distributor read at `offset` of `size` bytes.
pub fn read(gic: &GicState, offset: u64, size: u8) -> u64 {
    match (offset, size) {
        (IPRIORITYR..IPRIORITYR_END, 1 | 4) => {
            let first = (offset - IPRIORITYR) as usize;
            spi_range_from(first).map_or(0, |first| banks::read_priorities(&gic.spis, first, size))
        }
        (IROUTER..IROUTER_END, 4 | 8) => read_router(gic, offset, size),
        (_, 4) => u64::from(read_word(gic, offset)),
        _ => 0,
    }
}

/// A distributor write of the low `size` bytes of `value` at `offset`.
pub fn write(gic: &mut GicState, offset: u64, size: u8, value: u64) {
    match (offset, size) {
        (IPRIORITYR..IPRIORITYR_END, 1 | 4) => {
            if let Some(first) = spi_range_from((offset - IPRIORITYR) as usize) {
                banks::write_priorities(&mut gic.spis, first, size, value);
            }
        }
        (IROUTER..IROUTER_END, 4 | 8) => write_router(gic, offset, size, value),
        (_, 4) => write_word(gic, offset, value as u32),
        _ => {}
    }
}

fn read_word(gic: &GicState, offset: u64) -> u32 {
    match offset {
        CTLR => {
            let mut v = CTLR_ARE | CTLR_DS;
            if gic.enable_grp0 {
                v |= CTLR_ENABLE_GRP0;
            }
            if gic.enable_grp1 {
                v |= CTLR_ENABLE_GRP1;
            }
            v
        }
        TYPER => typer(gic),
        IIDR => IIDR_VALUE,
        ICFGR..ICFGR_END => {
            let word = ((offset - ICFGR) / 4) as usize;
            spi_slice(&gic.spis, word * 16, 16).map_or(0, banks::read_config)
        }
        PIDR2 => PIDR2_VALUE,
        _ => match BitBank::at(offset) {
            Some((bank, word)) => spi_slice(&gic.spis, word * 32, 32).map_or(0, |s| bank.read(s)),
            None => 0,
        },
    }
}

fn write_word(gic: &mut GicState, offset: u64, value: u32) {
    match offset {
        CTLR => {
            gic.enable_grp0 = value & CTLR_ENABLE_GRP0 != 0;
            gic.enable_grp1 = value & CTLR_ENABLE_GRP1 != 0;
        }
        ICFGR..ICFGR_END => {
            let word = ((offset - ICFGR) / 4) as usize;
            if let Some(s) = spi_slice_mut(&mut gic.spis, word * 16, 16) {
                banks::write_config(s, value);
            }
        }
        _ => {
            if let Some((bank, word)) = BitBank::at(offset) {
                if let Some(s) = spi_slice_mut(&mut gic.spis, word * 32, 32) {
                    bank.write(s, value);
                }
            }
        }
    }
}

/// GICD_TYPER (§12.9.38): ITLinesNumber = N/32 - 1, CPUNumber (only meaningful without
/// affinity routing, capped at 8), IDbits = 10 bits of INTID (value 9), no LPIs, no MBIs,
/// no Aff3 (A3V = 0), RSS = 0 (SGI targets Aff0 0..15: hvrun's MPIDRs never go higher).
fn typer(gic: &GicState) -> u32 {
    let it_lines = (gic.nr_irqs() / 32).saturating_sub(1) & 0x1f;
    let cpus = (gic.cpus.len().clamp(1, 8) - 1) as u32;
    it_lines | (cpus << 5) | (9 << 19)
}

/// Maps a position in an INTID-indexed register (INTID `first`) to the SPI index, or `None`
/// for the private range (RAZ/WI here).
fn spi_range_from(first: usize) -> Option<usize> {
    first.checked_sub(FIRST_SPI as usize)
}

/// The SPIs covered by `count` interrupts starting at INTID `first` (private INTIDs excluded).
fn spi_slice(spis: &[Irq], first: usize, count: usize) -> Option<&[Irq]> {
    let start = spi_range_from(first)?;
    spis.get(start..(start + count).min(spis.len()))
}

fn spi_slice_mut(spis: &mut [Irq], first: usize, count: usize) -> Option<&mut [Irq]> {
    let start = spi_range_from(first)?;
    let end = (start + count).min(spis.len());
    spis.get_mut(start..end)
}

/// GICD_IROUTER<n> at 0x6000 + 8n, for SPIs only. A 4-byte access reads/writes one half.
fn read_router(gic: &GicState, offset: u64, size: u8) -> u64 {
    let rel = offset - IROUTER;
    let Some(route) = spi_range_from((rel / 8) as usize).and_then(|i| gic.routes.get(i)) else {
        return 0;
    };
    match (size, rel % 8) {
        (8, 0) => *route,
        (4, 0) => *route & 0xffff_ffff,
        (4, 4) => *route >> 32,
        _ => 0,
    }
}

/// Writes IROUTER; only the affinity fields and IRM are kept (the rest is RES0).
fn write_router(gic: &mut GicState, offset: u64, size: u8, value: u64) {
    let rel = offset - IROUTER;
    let Some(route) = spi_range_from((rel / 8) as usize).and_then(|i| gic.routes.get_mut(i)) else {
        return;
    };
    let new = match (size, rel % 8) {
        (8, 0) => value,
        (4, 0) => (*route & !0xffff_ffff) | (value & 0xffff_ffff),
        (4, 4) => (*route & 0xffff_ffff) | (value << 32),
        _ => return,
    };
    *route = new & (super::state::AFFINITY_MASK | super::state::IROUTER_IRM);
}
