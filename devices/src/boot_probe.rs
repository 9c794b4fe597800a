//! The boot-time probe: a one-byte MMIO register the guest's init writes a magic value to as
//! userspace starts, so the VMM can say how long the guest took to boot.
//!
//! This is Firecracker's method (its "boot timer" device and the value 123), so the figures
//! compare across VMMs. Nothing in the guest kernel knows the device: init writes it through
//! `/dev/mem` (`devmem 0x09020000 8 123`), hence no device-tree node.

use crate::bus::BusDevice;

/// The value that means "the guest's userspace has started".
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// The probe; `on_boot` runs (on the vCPU thread) at the first magic write after each reset of
/// the VM. Later writes, other values, other offsets and reads change nothing.
pub struct BootProbe {
    on_boot: Box<dyn FnMut() + Send>,
    fired: bool,
}

impl BootProbe {
    /// A probe that reports the guest's boot through `on_boot`.
    pub fn new(on_boot: impl FnMut() + Send + 'static) -> Self {
        BootProbe { on_boot: Box::new(on_boot), fired: false }
    }
}

impl BusDevice for BootProbe {
    /// Reads as zero: there is nothing to discover.
    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        0
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset == 0 && value as u8 == BOOT_COMPLETE_MAGIC && !self.fired {
            self.fired = true;
            (self.on_boot)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn probe() -> (BootProbe, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        (BootProbe::new(move || _ = seen.fetch_add(1, Ordering::Relaxed)), count)
    }

    #[test]
    fn the_first_magic_write_reports_the_boot_once() {
        let (mut p, count) = probe();
        p.write(0, 1, 122);
        p.write(4, 1, 123);
        assert_eq!(count.load(Ordering::Relaxed), 0, "wrong value or offset");
        p.write(0, 1, 123);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        p.write(0, 1, 123);
        assert_eq!(count.load(Ordering::Relaxed), 1, "reported once per boot");
    }

    #[test]
    fn wider_writes_count_their_low_byte_and_reads_are_zero() {
        let (mut p, count) = probe();
        p.write(0, 4, 0xffff_ff00 | 123);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(p.read(0, 8), 0);
    }
}
