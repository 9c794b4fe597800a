//! The bench device: one 4 KiB page per vCPU (so parallel vCPUs never share a device lock) with
//! a DATA register the `mmio-read`/`mmio-write` cases hit, and a DONE register each vCPU writes
//! once when it has stored its results. When every vCPU is done, the VM is stopped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use devices::BusDevice;

use crate::control::{VmControl, VmOutcome};

/// Offset of the DATA register: reads return the last value written (initially `"hvru"`).
pub const DATA: u64 = 0x0;
/// Offset of the DONE register: any write says "this vCPU has finished".
pub const DONE: u64 = 0x8;

/// One vCPU's page of the bench device.
pub struct BenchDevice {
    value: u64,
    reported: bool,
    /// vCPUs done so far, shared by all pages.
    done: Arc<AtomicU32>,
    vcpus: u32,
    control: Arc<VmControl>,
}

impl BenchDevice {
    /// A page for one of `vcpus` vCPUs; `done` is shared by all of them.
    pub fn new(done: Arc<AtomicU32>, vcpus: u32, control: Arc<VmControl>) -> Self {
        BenchDevice {
            value: u64::from(u32::from_le_bytes(*b"hvru")),
            reported: false,
            done,
            vcpus,
            control,
        }
    }
}

impl BusDevice for BenchDevice {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        match offset {
            DATA => self.value,
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        match offset {
            DATA => self.value = value,
            DONE if !self.reported => {
                self.reported = true;
                if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.vcpus {
                    self.control.request_stop(VmOutcome::PowerOff);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_reads_back_and_the_last_done_stops_the_vm() {
        let control = Arc::new(VmControl::new());
        let done = Arc::new(AtomicU32::new(0));
        let mut a = BenchDevice::new(done.clone(), 2, control.clone());
        let mut b = BenchDevice::new(done, 2, control.clone());
        assert_eq!(a.read(DATA, 4), 0x7572_7668);
        a.write(DATA, 4, 42);
        assert_eq!(a.read(DATA, 4), 42);
        a.write(DONE, 4, 0);
        a.write(DONE, 4, 0);
        assert!(!control.is_stopping(), "one vCPU of two, counted once");
        b.write(DONE, 4, 0);
        assert!(control.is_stopping());
    }
}
