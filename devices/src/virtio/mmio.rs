//! The virtio-mmio transport, version 2 (modern) only: the register block of VIRTIO 1.2 §4.2.2 on
//! the MMIO bus, feature negotiation, the device status state machine (§2.1, §3.1.1) and queue
//! setup, in front of one [`VirtioDevice`].

use std::sync::Arc;

use log::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::queue_config::{QueueConfig, Ring};
use super::{SharedDevice, VirtioDevice, VirtioError, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::notifier::Notifier;

/// "virt" in little-endian ASCII (VIRTIO 1.2 §4.2.2).
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern register layout; hvrun never offers the legacy (version 1) one.
const VERSION: u32 = 2;
/// The VendorID register: "HVRN" in little-endian ASCII, the way QEMU reports "QEMU". Drivers
/// match on DeviceID, not on this; it only tells a curious guest whose device it is.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"HVRN");
/// Device-specific config space starts here (VIRTIO 1.2 §4.2.2).
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;
/// The size of one virtio-mmio slot on the bus.
pub const MMIO_REGION_SIZE: u64 = 0x1000;

/// Offset of QueueNotify, the register a driver writes a queue's index to (§4.2.2): the one
/// write a hypervisor can complete without the VMM (KVM's ioeventfd).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Bit of `VIRTIO_F_VERSION_1`, which the transport offers and requires.
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// A virtio device behind a virtio-mmio register block. Put it on the bus with
/// [`MMIO_REGION_SIZE`] bytes; its interrupt line is level-triggered.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use devices::virtio::{MmioTransport, VirtioRng, MMIO_REGION_SIZE};
/// use devices::{IrqLine, MmioBus};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// struct Spi; // the backend's line: KVM_IRQ_LINE or hv_gic_set_spi
/// impl IrqLine for Spi {
///     fn set_level(&self, _high: bool) {}
/// }
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x4000_0000), 1 << 20)])?;
/// let rng = MmioTransport::new(Box::new(VirtioRng::new()?), mem.clone(), Arc::new(Spi))?;
/// let mut bus = MmioBus::new();
/// bus.insert(0x0a00_0000, MMIO_REGION_SIZE, "virtio-rng", Arc::new(Mutex::new(rng)))?;
/// assert_eq!(bus.read(0x0a00_0000, 4), Some(0x7472_6976)); // "virt"
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MmioTransport {
    /// The device, shared with its worker thread (see [`DeviceWorker`](super::DeviceWorker)).
    device: Arc<SharedDevice>,
    /// One per queue: QueueNotify rings it, the device's worker waits on it.
    notifiers: Vec<Arc<Notifier>>,
    /// Read from the device once: the feature registers are read often and never change.
    device_features: u64,
    mem: GuestMemoryMmap,
    queues: Vec<QueueConfig>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    /// The device was activated: notifications reach its worker.
    active: bool,
}

impl MmioTransport {
    /// A transport for `device`, which will see guest memory `mem` and interrupt through `irq`.
    /// Nothing serves the device's queues until a [`DeviceWorker`](super::DeviceWorker) is
    /// started on [`shared_device`](Self::shared_device) and
    /// [`queue_notifiers`](Self::queue_notifiers) (or a test calls
    /// [`serve_notified_queues`](Self::serve_notified_queues)).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
    ) -> Result<Self, VirtioError> {
        let device_type = device.device_type();
        if device.queue_max_sizes().is_empty() {
            return Err(VirtioError::NoQueues(device_type));
        }
        let queues = (device.queue_max_sizes().iter().enumerate())
            .map(|(queue, &max)| {
                QueueConfig::new(max).ok_or(VirtioError::InvalidQueueMax {
                    device_type,
                    queue,
                    max,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let notifiers = (0..queues.len())
            .map(|_| Notifier::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::Notifier)?;
        let device_features = device.features();
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        Ok(MmioTransport {
            device: Arc::new(SharedDevice::new(device, interrupt)),
            notifiers,
            device_features,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            active: false,
        })
    }

    /// The interrupt shared with the device, e.g. for a host-side event (console resize) that
    /// changes config space while the VMM, not the device, holds the news.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        self.device.interrupt()
    }

    /// The device as its worker thread reaches it.
    pub fn shared_device(&self) -> &Arc<SharedDevice> {
        &self.device
    }

    /// The queue notifiers, in queue order: the worker waits on them, KVM can ring them
    /// (ioeventfd), and the host side of a device rings one when it has something for that
    /// queue (console input for the receive queue).
    pub fn queue_notifiers(&self) -> &[Arc<Notifier>] {
        &self.notifiers
    }

    /// Serves, on the calling thread, every queue whose notifier has rung — what the device's
    /// worker does. For tests and fuzzing, which want it deterministic.
    pub fn serve_notified_queues(&self) {
        for (index, notifier) in self.notifiers.iter().enumerate() {
            if notifier.is_rung() {
                notifier.drain();
                self.device.serve_queue(index as u16);
            }
        }
    }

    /// Everything the transport offers: the device's features plus `VIRTIO_F_VERSION_1`.
    fn offered_features(&self) -> u64 {
        self.device_features | VERSION_1
    }

    /// Applies a queue-setup write to the selected queue, if the driver may still configure it:
    /// before DRIVER_OK and, for everything but QueueReady itself, before the queue is enabled
    /// (VIRTIO 1.2 §4.2.2.1, §4.2.3.2). A nonexistent queue ignores the write.
    fn configure_queue(&mut self, even_if_ready: bool, write: impl FnOnce(&mut QueueConfig)) {
        if self.status & DRIVER_OK != 0 {
            debug!("virtio-mmio: queue setup after DRIVER_OK ignored");
            return;
        }
        let Some(queue) = self.queues.get_mut(self.queue_sel as usize) else {
            debug!("virtio-mmio: setup of nonexistent queue {} ignored", self.queue_sel);
            return;
        };
        if queue.ready() && !even_if_ready {
            debug!("virtio-mmio: setup of ready queue {} ignored", self.queue_sel);
            return;
        }
        write(queue);
    }

    fn set_driver_features(&mut self, value: u32) {
        // VIRTIO 1.2 §3.1.1: features are fixed once the driver sets FEATURES_OK.
        if self.status & FEATURES_OK != 0 {
            debug!("virtio-mmio: DriverFeatures write after FEATURES_OK ignored");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            sel => debug!("virtio-mmio: DriverFeatures write with DriverFeaturesSel {sel} ignored"),
        }
    }

    /// A driver write to Status: VIRTIO 1.2 §2.1 and the init sequence of §3.1.1.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit (§2.1.2): the driver cannot set it (the
        // register read adds it while the device has failed).
        let wanted = value & 0xff & !NEEDS_RESET;
        if wanted & self.status != self.status {
            debug!("virtio-mmio: status {value:#x} clears bits of {:#x}; ignored", self.status);
            return;
        }
        let in_order = |s: u32, bit: u32, needs: u32| s & bit == 0 || s & needs != 0;
        if !(in_order(wanted, DRIVER, ACKNOWLEDGE)
            && in_order(wanted, FEATURES_OK, DRIVER)
            && in_order(wanted, DRIVER_OK, FEATURES_OK))
        {
            debug!("virtio-mmio: status {value:#x} skips an init step (§3.1.1); ignored");
            return;
        }
        let added = wanted & !self.status;
        self.status = wanted;
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            // §3.1.1 step 6: the driver reads Status back, finds FEATURES_OK unset and gives up.
            self.status &= !(FEATURES_OK | DRIVER_OK);
            return;
        }
        if added & DRIVER_OK != 0 && self.status & FAILED == 0 {
            match self.activate() {
                Ok(()) => self.active = true,
                Err(e) => {
                    let _device = self.device.lock();
                    self.device.fail(e);
                }
            }
        }
    }

    /// The driver accepted VERSION_1 and nothing the transport did not offer (§6.1, §2.2).
    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.offered_features();
        if self.driver_features & VERSION_1 == 0 {
            debug!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused");
            false
        } else if unknown != 0 {
            debug!(
                "virtio-mmio: driver accepted unoffered features {unknown:#x}; FEATURES_OK refused"
            );
            false
        } else {
            true
        }
    }

    /// Hands the configured queues to the device once they all check out against guest memory.
    fn activate(&mut self) -> Result<(), VirtioError> {
        if !self.queues.iter().any(QueueConfig::ready) {
            return Err(VirtioError::NoReadyQueue);
        }
        for (i, config) in self.queues.iter().enumerate().filter(|(_, q)| q.ready()) {
            if let Some(problem) = config.problem(&self.mem) {
                return Err(VirtioError::BadQueueConfig { queue: i as u16, problem });
            }
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = (self.queues.iter().enumerate())
            .map(|(i, config)| {
                config
                    .device_queue(event_idx)
                    .map_err(|source| VirtioError::BrokenQueue { queue: i as u16, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (features, mem, irq) =
            (self.driver_features, self.mem.clone(), self.interrupt().clone());
        self.device.lock().activate(features, mem, queues, irq)
    }

    /// QueueNotify: rings the queue's notifier, and the device's worker serves the queue. The
    /// vCPU is back in the guest before the device even looks.
    fn notify(&mut self, index: u32) {
        if !self.active || self.device.failed() {
            debug!("virtio-mmio: QueueNotify {index} while the device is not running; ignored");
            return;
        }
        // Without VIRTIO_F_NOTIFICATION_DATA the value is just the queue index (§4.2.3.3).
        match self.notifiers.get(index as usize) {
            Some(notifier) => notifier.notify(),
            None => debug!("virtio-mmio: QueueNotify for nonexistent queue {index}; ignored"),
        }
    }

    /// Status 0: back to the state right after construction (§2.4, §4.2.2.1).
    fn reset(&mut self) {
        {
            // Waits for the request the worker may be serving: after this the device touches
            // no ring (§2.4).
            let mut device = self.device.lock();
            device.reset();
            self.device.clear_failure();
        }
        self.queues.iter_mut().for_each(QueueConfig::reset);
        self.interrupt().reset();
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.active = false;
    }

    fn read_register(&self, reg: u32) -> u32 {
        let selected = self.queues.get(self.queue_sel as usize).map(QueueConfig::queue);
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            // A nonexistent queue reads QueueNumMax 0: "not available" (§4.2.3.2).
            VIRTIO_MMIO_QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => selected.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt().status(),
            // DEVICE_NEEDS_RESET is the device's bit, set by its worker (§2.1.2).
            VIRTIO_MMIO_STATUS if self.device.failed() => self.status | NEEDS_RESET,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt().config_generation(),
            // No shared memory regions: a length (and base) of -1 says so (§4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {reg:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) {
        if let Some((ring, high)) = ring_register(reg) {
            self.configure_queue(false, |q| q.set_ring_half(ring, high, value));
            return;
        }
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.set_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue(false, |q| q.set_size(value)),
            VIRTIO_MMIO_QUEUE_READY => self.configure_queue(true, |q| q.set_ready(value == 1)),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt().ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => debug!("virtio-mmio: write of read-only or unknown register {reg:#x} ignored"),
        }
    }
}

/// The QueueDesc/QueueDriver/QueueDevice Low/High registers: which ring, and which half.
fn ring_register(reg: u32) -> Option<(Ring, bool)> {
    match reg {
        VIRTIO_MMIO_QUEUE_DESC_LOW => Some((Ring::Desc, false)),
        VIRTIO_MMIO_QUEUE_DESC_HIGH => Some((Ring::Desc, true)),
        VIRTIO_MMIO_QUEUE_AVAIL_LOW => Some((Ring::Avail, false)),
        VIRTIO_MMIO_QUEUE_AVAIL_HIGH => Some((Ring::Avail, true)),
        VIRTIO_MMIO_QUEUE_USED_LOW => Some((Ring::Used, false)),
        VIRTIO_MMIO_QUEUE_USED_HIGH => Some((Ring::Used, true)),
        _ => None,
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= CONFIG_SPACE {
            // Config space is byte-granular and little-endian (§4.2.2.2, §2.5).
            let mut bytes = [0u8; 8];
            let len = usize::from(size).min(8);
            self.device.lock().read_config(offset - CONFIG_SPACE, &mut bytes[..len]);
            return u64::from_le_bytes(bytes);
        }
        // §4.2.2.2: the driver MUST use aligned 32-bit accesses for the registers.
        if size != 4 || offset % 4 != 0 {
            debug!("virtio-mmio: {size}-byte read at {offset:#x} is not an aligned 32-bit access");
            return 0;
        }
        u64::from(self.read_register(offset as u32))
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= CONFIG_SPACE {
            let len = usize::from(size).min(8);
            self.device.lock().write_config(offset - CONFIG_SPACE, &value.to_le_bytes()[..len]);
            return;
        }
        if size != 4 || offset % 4 != 0 {
            debug!("virtio-mmio: {size}-byte write at {offset:#x} is not an aligned 32-bit access");
            return;
        }
        self.write_register(offset as u32, value as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::test_support::RecordingLine;
    use crate::virtio::test_support::*;

    const V1: u64 = VERSION_1;
    const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    /// A device-specific feature bit the test device offers.
    const DEV_F: u64 = 1 << 3;

    fn transport(device: TestDevice, mem: &Mem) -> (MmioTransport, Arc<RecordingLine>) {
        let line = Arc::new(RecordingLine::default());
        let t = MmioTransport::new(Box::new(device), mem.clone(), line.clone()).unwrap();
        (t, line)
    }

    fn last_level(line: &RecordingLine) -> Option<bool> {
        line.0.lock().unwrap().last().copied()
    }

    #[test]
    fn identifies_itself_as_a_modern_virtio_mmio_device() {
        let mem = guest_memory();
        let (mut t, _) = transport(TestDevice::new(DEV_F, &[16]).0, &mem);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_ID), TEST_DEVICE_TYPE);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_VENDOR_ID), 0x4E52_5648);
        assert_eq!(&VENDOR_ID.to_le_bytes(), b"HVRN");
        // Features come in 32-bit halves; VERSION_1 (bit 32) is added by the transport.
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), DEV_F as u32);
        set_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        set_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        // No shared memory regions.
        assert_eq!(reg(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn devices_with_impossible_queues_are_refused_at_construction() {
        let mem = guest_memory();
        let line: Arc<dyn IrqLine> = Arc::new(RecordingLine::default());
        for sizes in [&[][..], &[0], &[100], &[16, 65535]] {
            let device = Box::new(TestDevice::new(0, sizes).0);
            let err = MmioTransport::new(device, mem.clone(), line.clone()).err();
            assert!(
                matches!(err, Some(VirtioError::NoQueues(_) | VirtioError::InvalidQueueMax { .. })),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn full_init_sequence_activates_the_device_and_delivers_notifications() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(DEV_F, &[16, 8]);
        let (mut t, _) = transport(device, &mem);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), 0);

        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE);
        let status = negotiate(&mut t, V1 | DEV_F);
        assert_eq!(status, ACKNOWLEDGE | DRIVER | FEATURES_OK);

        // Queue 0 gets 8 of its 16 entries; queue 1 is left disabled, which is allowed.
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        let ring = ring_at(&mem, 0, 8);
        setup_queue(&mut t, 0, &ring);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert!(log.lock().unwrap().activations.is_empty(), "not before DRIVER_OK");

        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | DRIVER_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), status | DRIVER_OK);
        {
            let log = log.lock().unwrap();
            assert_eq!(log.activations, [(V1 | DEV_F, vec![(true, 8, false), (false, 8, false)])]);
        }

        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 2); // no such queue
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0x1_0000);
        assert!(log.lock().unwrap().notified.is_empty(), "served by the worker, not the vCPU");
        t.serve_notified_queues();
        assert_eq!(log.lock().unwrap().notified, [0, 1]);
    }

    #[test]
    fn feature_negotiation_requires_version_1_and_only_offered_bits() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(DEV_F | EVENT_IDX, &[16]);
        let (mut t, _) = transport(device, &mem);

        // A legacy driver (no VERSION_1) reads FEATURES_OK back unset and must give up (§3.1.1).
        assert_eq!(negotiate(&mut t, DEV_F), ACKNOWLEDGE | DRIVER);
        // So does one accepting a bit nobody offered, in either half.
        assert_eq!(negotiate(&mut t, V1 | 1 << 5), ACKNOWLEDGE | DRIVER);
        assert_eq!(negotiate(&mut t, V1 | 1 << 40), ACKNOWLEDGE | DRIVER);
        // DRIVER_OK cannot follow a refused FEATURES_OK.
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        assert!(log.lock().unwrap().activations.is_empty());

        // A subset of what was offered is fine; later DriverFeatures writes are ignored.
        assert_eq!(negotiate(&mut t, V1 | EVENT_IDX), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        set_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        set_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, DEV_F as u32);
        let ring = ring_at(&mem, 0, 16);
        setup_queue(&mut t, 0, &ring);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        // The negotiated EVENT_IDX reaches the queues the device gets.
        assert_eq!(log.lock().unwrap().activations, [(V1 | EVENT_IDX, vec![(true, 16, true)])]);
    }

    #[test]
    fn status_steps_out_of_order_or_backwards_are_ignored() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, _) = transport(device, &mem);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, DRIVER); // without ACKNOWLEDGE
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), 0);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK); // skips FEATURES_OK
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), 0);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE); // clearing DRIVER without a reset
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        // The driver cannot set the device's NEEDS_RESET bit.
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | NEEDS_RESET);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);

        // FAILED is recorded, and a DRIVER_OK alongside it starts nothing.
        let status = negotiate(&mut t, V1);
        setup_queue(&mut t, 0, &ring_at(&mem, 0, 16));
        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | FAILED);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), status | FAILED);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | FAILED | DRIVER_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS) & FAILED, FAILED);
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn reset_clears_everything_and_lowers_the_line() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(DEV_F, &[16]);
        let (mut t, line) = transport(device, &mem);
        let ring = ring_at(&mem, 0, 16);
        assert_eq!(start(&mut t, DEV_F, &[&ring]) & DRIVER_OK, DRIVER_OK);
        let irq = log.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_used_queue();
        assert_eq!(last_level(&line), Some(true));
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
        // `start` began with a reset of its own.
        assert_eq!(log.lock().unwrap().resets, 1);

        set_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(last_level(&line), Some(false));
        assert_eq!(log.lock().unwrap().resets, 2);
        assert!(log.lock().unwrap().interrupt.is_none(), "device dropped its interrupt");
        // QueueSel back to 0, the queue disabled and back to its maximum size.
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.queues[0].queue().size(), 16);
        // Notifications no longer reach the device.
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.serve_notified_queues();
        assert!(log.lock().unwrap().notified.is_empty());
        // Driver features are forgotten: FEATURES_OK without writing any is refused.
        set_reg(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        // And the device starts again as new.
        assert_eq!(start(&mut t, DEV_F, &[&ring]) & DRIVER_OK, DRIVER_OK);
        assert_eq!(log.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn queue_setup_is_frozen_once_ready_and_after_driver_ok() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16, 16]);
        let (mut t, _) = transport(device, &mem);
        let status = negotiate(&mut t, V1);
        let ring = ring_at(&mem, 0, 8);
        setup_queue(&mut t, 0, &ring);
        // Queue 0 is ready: its size and addresses no longer change.
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        assert_eq!(t.queues[0].queue().size(), 8);
        assert_eq!(t.queues[0].queue().desc_table(), ring.mock.desc_table_addr().0);

        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | DRIVER_OK);
        assert_eq!(log.lock().unwrap().activations.len(), 1);
        // After DRIVER_OK nothing about any queue changes, not even QueueReady.
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.queues[1].queue().size(), 16);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
    }

    /// Sets up queue 0 from `ring`, lets `spoil` rewrite a register, and asserts that DRIVER_OK
    /// then fails with DEVICE_NEEDS_RESET and a config interrupt instead of activating.
    fn assert_activation_refused(spoil: impl FnOnce(&mut MmioTransport)) {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, line) = transport(device, &mem);
        let status = negotiate(&mut t, V1);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        spoil(&mut t);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | DRIVER_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), status | DRIVER_OK | NEEDS_RESET);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(last_level(&line), Some(true));
        assert!(log.lock().unwrap().activations.is_empty());
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.serve_notified_queues();
        assert!(log.lock().unwrap().notified.is_empty());
    }

    fn ring_with(
        size: u16,
        spoil: impl FnOnce(&mut MmioTransport),
    ) -> impl FnOnce(&mut MmioTransport) {
        move |t| {
            let mem = t.mem.clone();
            let ring = ring_at(&mem, 0, 16);
            setup_queue(t, 0, &TestRing { mock: ring.mock, size });
            // Rewrites go to an unready queue: disable, spoil, re-enable.
            set_reg(t, VIRTIO_MMIO_QUEUE_READY, 0);
            spoil(t);
            set_reg(t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
    }

    #[test]
    fn bad_queue_sizes_make_activation_fail() {
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_NUM, 32)));
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_NUM, 12)));
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_NUM, 0)));
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_NUM, 1 << 16)));
    }

    #[test]
    fn misaligned_or_unmapped_rings_make_activation_fail() {
        let base = RAM_BASE as u32;
        assert_activation_refused(ring_with(16, |t| {
            set_reg(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base + 8)
        }));
        assert_activation_refused(ring_with(16, |t| {
            set_reg(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 1)
        }));
        assert_activation_refused(ring_with(16, |t| {
            set_reg(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 2)
        }));
        // A later high-half write does not launder a misaligned low half.
        assert_activation_refused(ring_with(16, |t| {
            set_reg(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 2);
            set_reg(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        }));
        // Aligned, but outside guest RAM.
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1)));
        assert_activation_refused(ring_with(16, |t| set_reg(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0)));
        // No queue enabled at all.
        assert_activation_refused(|_| {});
    }

    #[test]
    fn a_later_valid_write_repairs_a_refused_one() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, _) = transport(device, &mem);
        let status = negotiate(&mut t, V1);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 12);
        setup_queue(&mut t, 0, &ring_at(&mem, 0, 16));
        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | DRIVER_OK);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), status | DRIVER_OK);
        assert_eq!(log.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn device_errors_set_needs_reset_and_a_reset_recovers() {
        let mem = guest_memory();
        let ring = ring_at(&mem, 0, 16);

        let (mut device, log) = TestDevice::new(0, &[16]);
        device.fail_activate = true;
        let (mut t, _) = transport(device, &mem);
        assert_ne!(start(&mut t, 0, &[&ring]) & NEEDS_RESET, 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert!(log.lock().unwrap().activations.is_empty());

        let (mut device, log) = TestDevice::new(0, &[16]);
        device.fail_process = true;
        let (mut t, line) = transport(device, &mem);
        let status = start(&mut t, 0, &[&ring]);
        assert_eq!(status & NEEDS_RESET, 0);
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.serve_notified_queues();
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), status | NEEDS_RESET);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0, "config itself unchanged");
        // The broken device hears nothing more until the driver resets it.
        set_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.serve_notified_queues();
        assert_eq!(log.lock().unwrap().notified, [0]);
        set_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(last_level(&line), Some(false));
        assert_eq!(start(&mut t, 0, &[&ring]), status);
    }

    #[test]
    fn interrupt_status_and_ack_drive_a_level_triggered_line() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, line) = transport(device, &mem);
        start(&mut t, 0, &[&ring_at(&mem, 0, 16)]);
        let irq = log.lock().unwrap().interrupt.clone().unwrap();
        assert!(Arc::ptr_eq(&irq, t.interrupt()));

        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(last_level(&line), Some(true));
        set_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(last_level(&line), Some(true), "still pending, line stays high");
        set_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(last_level(&line), Some(false));
        // InterruptStatus is read-only; InterruptACK reads as nothing.
        set_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS, 3);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK), 0);
        assert_eq!(line.rising_edges(), 1);
    }

    #[test]
    fn config_space_reads_every_width_little_endian_and_tracks_generation() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, _) = transport(device, &mem);
        assert_eq!(t.read(0x100, 1), 0x01);
        assert_eq!(t.read(0x101, 1), 0x02);
        assert_eq!(t.read(0x102, 2), 0x0403);
        assert_eq!(t.read(0x104, 4), 0x0807_0605);
        assert_eq!(t.read(0x100, 8), 0x0807_0605_0403_0201);
        // A read running past the end of config space gets zeros for the missing bytes.
        assert_eq!(t.read(0x10a, 4), 0x0c0b);
        assert_eq!(t.read(0xffc, 4), 0);

        t.write(0x104, 2, 0xbeef);
        t.write(0x108, 8, 0x1122_3344_5566_7788);
        let writes = log.lock().unwrap().config_writes.clone();
        assert_eq!(
            writes,
            [(4, vec![0xef, 0xbe]), (8, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec())]
        );

        assert_eq!(reg(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        t.interrupt().signal_config_change();
        assert_eq!(reg(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        t.interrupt().signal_config_change();
        assert_eq!(reg(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 2);
    }

    #[test]
    fn misaligned_or_narrow_register_accesses_are_ignored() {
        let mem = guest_memory();
        let (device, _) = TestDevice::new(0, &[16]);
        let (mut t, _) = transport(device, &mem);
        assert_eq!(t.read(0, 2), 0, "16-bit read of MagicValue");
        assert_eq!(t.read(0, 8), 0, "64-bit read of MagicValue");
        assert_eq!(t.read(2, 4), 0, "misaligned read");
        assert_eq!(t.read(0x0f0, 4), 0, "unknown register");
        t.write(u64::from(VIRTIO_MMIO_STATUS), 1, u64::from(ACKNOWLEDGE));
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, 4, u64::from(ACKNOWLEDGE));
        t.write(u64::from(VIRTIO_MMIO_STATUS), 8, u64::from(ACKNOWLEDGE));
        assert_eq!(reg(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Read-only registers ignore writes.
        set_reg(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
        set_reg(&mut t, VIRTIO_MMIO_DEVICE_ID, 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_ID), TEST_DEVICE_TYPE);
    }

    #[test]
    fn nonexistent_queues_read_as_unavailable_and_ignore_setup() {
        let mem = guest_memory();
        let (device, log) = TestDevice::new(0, &[16]);
        let (mut t, _) = transport(device, &mem);
        let status = negotiate(&mut t, V1);
        for sel in [1, 255, u32::MAX] {
            set_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, sel);
            assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
            set_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
            set_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, RAM_BASE as u32);
            set_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        // Only the real queue counts: with it unset, DRIVER_OK fails.
        set_reg(&mut t, VIRTIO_MMIO_STATUS, status | DRIVER_OK);
        assert_ne!(reg(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
        assert!(log.lock().unwrap().activations.is_empty());
    }
}
