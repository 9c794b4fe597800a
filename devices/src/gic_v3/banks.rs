//! Register banks the distributor (SPIs) and the redistributors (SGIs/PPIs) share: one bit per
//! interrupt (IGROUPR, IS/ICENABLER, IS/ICPENDR, IS/ICACTIVER), one byte per interrupt
//! (IPRIORITYR) and two bits per interrupt (ICFGR). IHI0069 §12.9 (GICD) and §12.11 (GICR
//! SGI_base) give the same layouts.

use super::state::{Irq, PRIORITY_MASK};

/// The one-bit-per-interrupt register kinds, by their offset within the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitBank {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitBank {
    /// The bank at `offset` (0x080..0x400, 0x80 bytes each) and the 32-interrupt word index.
    pub fn at(offset: u64) -> Option<(BitBank, usize)> {
        let bank = match offset & !0x7f {
            0x080 => BitBank::Group,
            0x100 => BitBank::SetEnable,
            0x180 => BitBank::ClearEnable,
            0x200 => BitBank::SetPending,
            0x280 => BitBank::ClearPending,
            0x300 => BitBank::SetActive,
            0x380 => BitBank::ClearActive,
            _ => return None,
        };
        Some((bank, ((offset & 0x7f) / 4) as usize))
    }

    /// Reads the bank over `irqs` (up to 32; bit i = irqs[i]).
    pub fn read(self, irqs: &[Irq]) -> u32 {
        let bit = |irq: &Irq| match self {
            BitBank::Group => irq.group1,
            BitBank::SetEnable | BitBank::ClearEnable => irq.enabled,
            BitBank::SetPending | BitBank::ClearPending => irq.pending(),
            BitBank::SetActive | BitBank::ClearActive => irq.active,
        };
        irqs.iter().take(32).enumerate().fold(0, |acc, (i, irq)| acc | (u32::from(bit(irq)) << i))
    }

    /// Writes `value` to the bank: set/clear banks act on the 1 bits only (§12.9.x "writing 0
    /// has no effect"); IGROUPR takes every bit.
    pub fn write(self, irqs: &mut [Irq], value: u32) {
        for (i, irq) in irqs.iter_mut().take(32).enumerate() {
            let one = value & (1 << i) != 0;
            match self {
                BitBank::Group => irq.group1 = one,
                _ if !one => {}
                BitBank::SetEnable => irq.enabled = true,
                BitBank::ClearEnable => irq.enabled = false,
                BitBank::SetPending => irq.pending_latch = true,
                // A level-sensitive interrupt whose line is high stays pending (§4.1.1).
                BitBank::ClearPending => irq.pending_latch = false,
                BitBank::SetActive => irq.active = true,
                BitBank::ClearActive => irq.active = false,
            }
        }
    }
}

/// IPRIORITYR: one byte per interrupt, byte- or word-accessible. Reads the `size` bytes from
/// interrupt `first` on; interrupts past the slice read as zero.
pub fn read_priorities(irqs: &[Irq], first: usize, size: u8) -> u64 {
    (0..usize::from(size)).fold(0, |acc, i| {
        let p = irqs.get(first + i).map_or(0, |irq| irq.priority);
        acc | (u64::from(p) << (8 * i))
    })
}

/// Writes `size` priority bytes from interrupt `first` on; unimplemented low bits are dropped.
pub fn write_priorities(irqs: &mut [Irq], first: usize, size: u8, value: u64) {
    for i in 0..usize::from(size) {
        if let Some(irq) = irqs.get_mut(first + i) {
            irq.priority = (value >> (8 * i)) as u8 & PRIORITY_MASK;
        }
    }
}

/// ICFGR: two bits per interrupt, bit 2i+1 = edge-triggered (bit 2i is RES0 in GICv3).
pub fn read_config(irqs: &[Irq]) -> u32 {
    irqs.iter()
        .take(16)
        .enumerate()
        .fold(0, |acc, (i, irq)| acc | (u32::from(irq.edge) << (2 * i + 1)))
}

/// Writes the trigger modes of up to 16 interrupts.
pub fn write_config(irqs: &mut [Irq], value: u32) {
    for (i, irq) in irqs.iter_mut().take(16).enumerate() {
        irq.edge = value & (1 << (2 * i + 1)) != 0;
    }
}
