//! A virtio device as two threads reach it: the transport (on a vCPU thread, for registers,
//! config space, activation and reset) and the device's worker (for queue notifications and
//! host-side events, where all the I/O happens).
//!
//! The device sits behind its own mutex, separate from the transport's register state: a vCPU
//! reading InterruptStatus or writing QueueNotify never waits for a disk flush or a socket.
//! Only the calls that must be ordered with the I/O — config-space access, DRIVER_OK, reset —
//! take the device lock; a reset therefore returns only once the worker has finished the
//! request in flight, which is what VIRTIO 1.2 §2.4 asks of a device ("the device MUST NOT
//! ... consume buffers ... after reset").

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

use super::{VirtioDevice, VirtioError, VirtioInterrupt};

/// A host descriptor a device wants its worker to wait on (a tap, a socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostWait {
    pub fd: RawFd,
    /// `libc::POLLIN` and/or `libc::POLLOUT`.
    pub events: i16,
    /// Handed back to [`VirtioDevice::host_ready`].
    pub token: u32,
}

/// The device, its interrupt, and whether it broke.
pub struct SharedDevice {
    device: Mutex<Box<dyn VirtioDevice>>,
    interrupt: Arc<VirtioInterrupt>,
    /// The device hit an error it cannot recover from without a driver reset (VIRTIO 1.2
    /// §2.1.2, DEVICE_NEEDS_RESET): the worker serves nothing until the transport resets it.
    failed: AtomicBool,
    device_type: u32,
}

impl SharedDevice {
    pub(crate) fn new(device: Box<dyn VirtioDevice>, interrupt: Arc<VirtioInterrupt>) -> Self {
        let device_type = device.device_type();
        SharedDevice {
            device: Mutex::new(device),
            interrupt,
            failed: AtomicBool::new(false),
            device_type,
        }
    }

    /// The device, locked. Held only for config access, activation, reset and one serving
    /// pass; a panic elsewhere cannot leave the device half-updated in a way the lock protects.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Box<dyn VirtioDevice>> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtio device type (VIRTIO 1.2 §5).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The interrupt the device raises.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Whether the device is in DEVICE_NEEDS_RESET.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// §2.1.2: "the device MUST send a device configuration change notification to the driver"
    /// when it sets DEVICE_NEEDS_RESET. Call with the device locked, so a concurrent reset
    /// (which takes the lock) always comes after and clears it.
    pub(crate) fn fail(&self, error: VirtioError) {
        log::warn!("virtio device type {}: {error}", self.device_type);
        self.failed.store(true, Ordering::Release);
        // The config itself did not change, so the generation stays.
        self.interrupt.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Back to working order after a driver reset (device locked by the caller).
    pub(crate) fn clear_failure(&self) {
        self.failed.store(false, Ordering::Release);
    }

    /// Runs `call` on the device unless it has failed; an error puts it in DEVICE_NEEDS_RESET.
    fn serve(&self, call: impl FnOnce(&mut dyn VirtioDevice) -> Result<(), VirtioError>) {
        let mut device = self.lock();
        if self.failed() {
            return;
        }
        if let Err(e) = call(device.as_mut()) {
            self.fail(e);
        }
    }

    /// The driver notified queue `index` (or the host rang it for the device): serve it.
    pub fn serve_queue(&self, index: u16) {
        self.serve(|device| device.process_queue(index));
    }

    /// A descriptor from [`host_waits`](Self::host_waits) is ready.
    pub fn host_ready(&self, token: u32, revents: i16) {
        self.serve(|device| device.host_ready(token, revents));
    }

    /// The device's timer is due.
    pub fn timer_expired(&self) {
        self.serve(|device| device.timer_expired());
    }

    /// Fills `waits` with what the worker should wait on now and returns the next timer.
    /// Nothing while the device is failed.
    pub fn host_waits(&self, waits: &mut Vec<HostWait>) -> Option<Instant> {
        let device = self.lock();
        if self.failed() {
            return None;
        }
        device.host_waits(waits);
        device.next_timer()
    }
}
