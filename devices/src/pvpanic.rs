//! pvpanic: a one-byte MMIO register the guest kernel writes to when it panics, so the VMM can end
//! the run with a distinct status instead of waiting on a guest that will never power off.
//!
//! Protocol: QEMU docs/specs/pvpanic.rst. Reading returns the events the device supports; the
//! guest's `pvpanic-mmio` driver (bound through the `qemu,pvpanic-mmio` FDT node) writes
//! `PANICKED` from its panic notifier.

use crate::bus::BusDevice;

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// A crash kernel is loaded and will take over (kdump): the guest keeps running.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPanic {
    /// The kernel panicked and will not recover.
    Panicked,
    /// The kernel crashed into a loaded kdump kernel.
    CrashLoaded,
}

/// The pvpanic device; `on_panic` is called (on the vCPU thread) for each event.
pub struct PvPanic {
    on_panic: Box<dyn Fn(GuestPanic) + Send>,
}

impl PvPanic {
    /// A pvpanic device that reports events through `on_panic`.
    pub fn new(on_panic: impl Fn(GuestPanic) + Send + 'static) -> Self {
        PvPanic { on_panic: Box::new(on_panic) }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if offset == 0 {
            u64::from(PVPANIC_PANICKED | PVPANIC_CRASH_LOADED)
        } else {
            0
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset != 0 {
            return;
        }
        let events = value as u8;
        if events & PVPANIC_PANICKED != 0 {
            (self.on_panic)(GuestPanic::Panicked);
        } else if events & PVPANIC_CRASH_LOADED != 0 {
            (self.on_panic)(GuestPanic::CrashLoaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reports_supported_events_and_forwards_writes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut dev = PvPanic::new(move |e| sink.lock().unwrap().push(e));
        assert_eq!(dev.read(0, 1), 3);
        assert_eq!(dev.read(1, 1), 0);
        dev.write(0, 1, 0); // no event bits: nothing happens
        dev.write(1, 1, 1); // wrong offset: ignored
        dev.write(0, 1, u64::from(PVPANIC_CRASH_LOADED));
        dev.write(0, 1, u64::from(PVPANIC_PANICKED));
        assert_eq!(*seen.lock().unwrap(), vec![GuestPanic::CrashLoaded, GuestPanic::Panicked]);
    }
}
