//! The virtio-mmio interrupt: the InterruptStatus bits and ConfigGeneration shared by a transport
//! and its device, driving one level-triggered [`IrqLine`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::irq::IrqLine;

/// Interrupt state of one virtio device.
///
/// VIRTIO 1.2 §4.2.2: the device sets bits in InterruptStatus (bit 0: used buffer, bit 1:
/// configuration change) and the driver clears them by writing InterruptACK. The line is
/// level-triggered and mirrors "any bit set", which is why the FDT describes the SPI as
/// level-high: an interrupt raised while the driver is still acknowledging the previous one is
/// never lost, because the line simply stays high.
pub struct VirtioInterrupt {
    /// InterruptStatus. A mutex rather than an atomic so that the bit change and the matching
    /// line change happen together: otherwise a device raising on one thread and the driver
    /// acknowledging on another could leave the line high with no bit set (a stuck interrupt).
    status: Mutex<u32>,
    /// ConfigGeneration (VIRTIO 1.2 §4.2.2): bumped on every device-side config change so the
    /// driver can detect a torn multi-field read (§2.5.1).
    config_generation: AtomicU32,
    line: Arc<dyn IrqLine>,
}

impl VirtioInterrupt {
    /// Interrupt state driving `line`; no bit set, and the line is assumed low.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        VirtioInterrupt { status: Mutex::new(0), config_generation: AtomicU32::new(0), line }
    }

    /// Tells the driver the device put buffers in a used ring (VIRTIO 1.2 §2.7.10). Call it only
    /// when the queue's `needs_notification` says so.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver the device changed its config space: bumps ConfigGeneration first, so a
    /// driver woken by the interrupt always sees the new generation (VIRTIO 1.2 §2.5.1, §4.2.2).
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The value of the ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// The value of the InterruptStatus register.
    pub fn status(&self) -> u32 {
        *self.lock()
    }

    /// Sets `bits` in InterruptStatus; the line goes high if it was low.
    pub(crate) fn raise(&self, bits: u32) {
        let mut status = self.lock();
        let was = *status;
        *status |= bits;
        if was == 0 && *status != 0 {
            self.line.set_level(true);
        }
    }

    /// InterruptACK: clears `bits`; the line drops once nothing is pending.
    pub(crate) fn ack(&self, bits: u32) {
        let mut status = self.lock();
        let was = *status;
        *status &= !bits;
        if was != 0 && *status == 0 {
            self.line.set_level(false);
        }
    }

    /// Device reset (VIRTIO 1.2 §2.4): nothing pending, line low. The generation keeps counting,
    /// so a driver can never mistake a post-reset config for the one it read before.
    pub(crate) fn reset(&self) {
        let mut status = self.lock();
        *status = 0;
        self.line.set_level(false);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        // The guarded value is a plain u32 that every holder leaves consistent, so a panic on
        // another thread does not make it wrong.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::test_support::RecordingLine;

    fn levels(line: &RecordingLine) -> Vec<bool> {
        line.0.lock().unwrap().clone()
    }

    #[test]
    fn line_follows_any_pending_bit() {
        let line = Arc::new(RecordingLine::default());
        let irq = VirtioInterrupt::new(line.clone());
        irq.signal_used_queue();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(levels(&line), [true]);

        // A second cause while the line is already high does not toggle it.
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(levels(&line), [true]);

        // Acknowledging one cause leaves the line high; acknowledging the last lowers it.
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(levels(&line), [true]);
        irq.ack(VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.status(), 0);
        assert_eq!(levels(&line), [true, false]);

        // Acknowledging nothing pending changes nothing.
        irq.ack(0xffff_ffff);
        assert_eq!(levels(&line), [true, false]);
        assert_eq!(line.rising_edges(), 1);
    }

    #[test]
    fn config_change_bumps_the_generation_and_reset_lowers_the_line() {
        let line = Arc::new(RecordingLine::default());
        let irq = VirtioInterrupt::new(line.clone());
        assert_eq!(irq.config_generation(), 0);
        irq.signal_config_change();
        irq.signal_config_change();
        assert_eq!(irq.config_generation(), 2);
        irq.reset();
        assert_eq!(irq.status(), 0);
        assert_eq!(levels(&line).last(), Some(&false));
        assert_eq!(irq.config_generation(), 2, "generation survives reset");
    }
}
