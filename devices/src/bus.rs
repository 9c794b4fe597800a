//! The MMIO bus: maps a guest physical address to the device that owns it.
//!
//! Every MMIO exit ends here: the vCPU loop calls [`MmioBus::read`] or [`MmioBus::write`] with the
//! faulting address, and the bus forwards the access to the device with the offset into the
//! device's region. The bus is built before the vCPUs start and never changes afterwards, so
//! lookups take no lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device reachable through MMIO. Accesses are 1, 2, 4 or 8 bytes, little-endian, and never
/// cross the end of the device's region (the bus checks).
pub trait BusDevice: Send {
    /// A guest load of `size` bytes at `offset`; the value is zero-extended to 64 bits.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// A guest store of the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, size: u8, value: u64);
}

/// Errors while building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device {name} at {base:#x}+{size:#x} overlaps {other}")]
    Overlap { name: String, base: u64, size: u64, other: String },
    #[error("device {0} has an empty or wrapping address range")]
    BadRange(String),
}

/// One device's window on the bus.
struct BusEntry {
    base: u64,
    size: u64,
    name: String,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// All MMIO devices of one VM, sorted by address.
#[derive(Default)]
pub struct MmioBus {
    entries: Vec<BusEntry>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + size)`; `name` appears in logs and traces.
    pub fn insert(
        &mut self,
        base: u64,
        size: u64,
        name: impl Into<String>,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let name = name.into();
        let end = match base.checked_add(size) {
            Some(end) if size > 0 => end,
            _ => return Err(BusError::BadRange(name)),
        };
        let at = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = at > 0 && {
            let prev = &self.entries[at - 1];
            prev.base + prev.size > base
        };
        let overlaps_next = self.entries.get(at).is_some_and(|next| next.base < end);
        if overlaps_prev || overlaps_next {
            let other = if overlaps_prev { &self.entries[at - 1] } else { &self.entries[at] };
            return Err(BusError::Overlap { name, base, size, other: other.name.clone() });
        }
        self.entries.insert(at, BusEntry { base, size, name, device });
        Ok(())
    }

    /// The device whose region holds all of `[addr, addr + size)`, with the offset of `addr`.
    fn find(&self, addr: u64, size: u8) -> Option<(&BusEntry, u64)> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset.checked_add(u64::from(size))? <= entry.size).then_some((entry, offset))
    }

    /// Name of the device at `addr`, for traces and error messages.
    pub fn device_name(&self, addr: u64) -> Option<&str> {
        self.find(addr, 1).map(|(e, _)| e.name.as_str())
    }

    /// Performs a guest load. `None` means no device claims the access.
    pub fn read(&self, addr: u64, size: u8) -> Option<u64> {
        let (entry, offset) = self.find(addr, size)?;
        let mut device = entry.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(device.read(offset, size) & size_mask(size))
    }

    /// Performs a guest store. `false` means no device claims the access.
    pub fn write(&self, addr: u64, size: u8, value: u64) -> bool {
        let Some((entry, offset)) = self.find(addr, size) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        device.write(offset, size, value & size_mask(size));
        true
    }
}

/// The low `size` bytes of a u64.
pub fn size_mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16 bytes of memory-like registers.
    #[derive(Default)]
    struct Scratch([u8; 16]);

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, size: u8) -> u64 {
            let mut v = [0u8; 8];
            let o = offset as usize;
            v[..size as usize].copy_from_slice(&self.0[o..o + size as usize]);
            u64::from_le_bytes(v)
        }
        fn write(&mut self, offset: u64, size: u8, value: u64) {
            let o = offset as usize;
            self.0[o..o + size as usize].copy_from_slice(&value.to_le_bytes()[..size as usize]);
        }
    }

    fn scratch() -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Scratch::default()))
    }

    #[test]
    fn routes_by_address_with_offsets() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 16, "a", scratch()).unwrap();
        bus.insert(0x2000, 16, "b", scratch()).unwrap();
        assert!(bus.write(0x1004, 4, 0xdead_beef));
        assert!(bus.write(0x2000, 8, 0x0102_0304_0506_0708));
        assert_eq!(bus.read(0x1004, 4), Some(0xdead_beef));
        assert_eq!(bus.read(0x1004, 2), Some(0xbeef));
        assert_eq!(bus.read(0x1006, 1), Some(0xad));
        assert_eq!(bus.read(0x2000, 8), Some(0x0102_0304_0506_0708));
        assert_eq!(bus.device_name(0x200f), Some("b"));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 16, "a", scratch()).unwrap();
        assert_eq!(bus.read(0xfff, 1), None);
        assert_eq!(bus.read(0x1010, 1), None);
        assert_eq!(bus.read(0x100c, 8), None, "crosses the end of the region");
        assert_eq!(bus.read(u64::MAX, 8), None);
        assert!(!bus.write(0, 4, 1));
        assert_eq!(bus.device_name(0x5000), None);
    }

    #[test]
    fn overlapping_devices_are_rejected() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, "a", scratch()).unwrap();
        let err = bus.insert(0x10ff, 1, "b", scratch()).unwrap_err();
        assert!(matches!(err, BusError::Overlap { ref other, .. } if other == "a"));
        assert!(bus.insert(0xf00, 0x101, "c", scratch()).is_err());
        assert!(bus.insert(0xf00, 0x100, "d", scratch()).is_ok());
        assert!(bus.insert(0x1100, 0x100, "e", scratch()).is_ok());
        assert_eq!(bus.insert(0x9000, 0, "z", scratch()), Err(BusError::BadRange("z".into())));
        assert!(bus.insert(u64::MAX, 2, "w", scratch()).is_err());
    }

    #[test]
    fn values_are_masked_to_the_access_size() {
        assert_eq!(size_mask(1), 0xff);
        assert_eq!(size_mask(2), 0xffff);
        assert_eq!(size_mask(4), 0xffff_ffff);
        assert_eq!(size_mask(8), u64::MAX);
    }
}
