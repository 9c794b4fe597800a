//! virtio-rng, the entropy device (VIRTIO 1.2 §5.4): fills the guest's buffers with bytes from
//! the host's CSPRNG, so the guest kernel's `hwrng` seeds its pool at boot instead of waiting.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{VirtioDevice, VirtioError, VirtioInterrupt};

/// At most this many bytes per request: a guest asking for 4 GiB must not stall its vCPU while
/// the host produces them. The driver accepts short answers; it reads the used length (§5.4.6).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The one queue, `requestq` (§5.4.2); 256 entries is what other VMMs offer and Linux uses.
const QUEUE_SIZES: [u16; 1] = [256];

/// Where the entropy comes from.
///
/// `/dev/urandom` rather than `getrandom(2)`: it is the same kernel CSPRNG on Linux, it exists
/// on macOS too (which has no `getrandom`), and it makes the source a plain [`Read`] so tests
/// can substitute a file they control.
const HOST_ENTROPY: &str = "/dev/urandom";

/// What the device holds between DRIVER_OK and reset.
struct Running {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// The virtio entropy device.
pub struct VirtioRng {
    source: Box<dyn Read + Send>,
    running: Option<Running>,
    /// Set after the first failed read of the source, so the log says so once, not per request.
    source_failed: bool,
}

impl VirtioRng {
    /// An entropy device reading the host's `/dev/urandom`.
    pub fn new() -> io::Result<Self> {
        let file = File::open(HOST_ENTROPY).map_err(|e| {
            io::Error::new(e.kind(), format!("virtio-rng: cannot open {HOST_ENTROPY}: {e}"))
        })?;
        Ok(Self::with_source(Box::new(file)))
    }

    /// An entropy device reading `source` (tests; or a host that wants another source).
    pub fn with_source(source: Box<dyn Read + Send>) -> Self {
        VirtioRng { source, running: None, source_failed: false }
    }

    /// Fills the device-writable part of one chain; returns the bytes written. A chain whose
    /// buffers lie outside guest memory is dropped (0 bytes): the driver gets its buffer back
    /// unfilled, and the device stays usable.
    fn fill<'m>(
        source: &mut dyn Read,
        source_failed: &mut bool,
        mem: &'m GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&'m GuestMemoryMmap>,
    ) -> u32 {
        let mut writer = match chain.writer(mem) {
            Ok(writer) => writer,
            Err(e) => {
                log::debug!("virtio-rng: dropping request with unusable buffers: {e}");
                return 0;
            }
        };
        let want = writer.available_bytes().min(MAX_BYTES_PER_REQUEST) as u64;
        // io::copy goes through a stack buffer: no allocation per request.
        if let Err(e) = io::copy(&mut source.take(want), &mut writer) {
            if !*source_failed {
                log::warn!("virtio-rng: host entropy source failed, answering short: {e}");
                *source_failed = true;
            }
        }
        // At most MAX_BYTES_PER_REQUEST, so it fits.
        writer.bytes_written() as u32
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    /// No device features exist (§5.4.3). VIRTIO_RING_F_EVENT_IDX is not offered either: entropy
    /// requests are rare and tiny, so suppressing interrupts would buy nothing.
    fn features(&self) -> u64 {
        0
    }

    /// No config space (§5.4.4): every byte reads as zero.
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn activate(
        &mut self,
        _features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        let queue = super::single_ready_queue(queues)?;
        self.running = Some(Running { mem, queue, interrupt });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        let Some(Running { mem, queue, interrupt }) = self.running.as_mut() else {
            return Ok(());
        };
        if index != 0 {
            return Ok(());
        }
        let (source, failed) = (&mut *self.source, &mut self.source_failed);
        super::serve_available(queue, index, mem, interrupt, |chain| {
            Self::fill(source, failed, mem, chain)
        })
    }

    fn reset(&mut self) {
        self.running = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::irq::test_support::RecordingLine;
    use crate::virtio::test_support::*;
    use crate::virtio::MmioTransport;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET;
    use virtio_bindings::virtio_mmio::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    const W: u32 = VRING_DESC_F_WRITE;
    const WN: u32 = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;

    /// A host entropy source that has stopped working.
    struct BrokenSource;
    impl Read for BrokenSource {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("entropy source gone"))
        }
    }

    fn rng_on_bus(mem: &Mem, rng: VirtioRng) -> (MmioTransport, Arc<RecordingLine>) {
        let line = Arc::new(RecordingLine::default());
        let t = MmioTransport::new(Box::new(rng), mem.clone(), line.clone()).unwrap();
        (t, line)
    }

    /// An rng driven through virtio-mmio, with its queue of `size` entries at the start of RAM.
    fn running(mem: &Mem, size: u16) -> (MmioTransport, Arc<RecordingLine>, TestRing<'_>) {
        let (mut t, line) = rng_on_bus(mem, VirtioRng::new().unwrap());
        let ring = ring_at(mem, 0, size);
        let status = start(&mut t, 0, &[&ring]);
        assert_eq!(status & NEEDS_RESET, 0);
        (t, line, ring)
    }

    fn notify(t: &mut MmioTransport) {
        set_reg(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.serve_notified_queues();
    }

    fn guest_bytes(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn status(t: &mut MmioTransport) -> u32 {
        reg(t, VIRTIO_MMIO_STATUS)
    }

    #[test]
    fn describes_itself_as_an_entropy_device() {
        let mem = guest_memory();
        let (mut t, _) = rng_on_bus(&mem, VirtioRng::new().unwrap());
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_ID), 4);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0, "no EVENT_IDX, no INDIRECT_DESC");
        assert_eq!(t.read(0x100, 8), 0, "no config space");
    }

    #[test]
    fn fills_every_writable_buffer_with_random_bytes_and_reports_the_length() {
        let mem = guest_memory();
        let (mut t, line, ring) = running(&mem, 16);
        ring.set_desc(0, BUFFERS, 100, WN, 1);
        ring.set_desc(1, BUFFERS + 0x1000, 300, W, 0);
        ring.publish(0);
        notify(&mut t);

        assert_eq!(ring.used(), [(0, 400)]);
        let bytes =
            [guest_bytes(&mem, BUFFERS, 100), guest_bytes(&mem, BUFFERS + 0x1000, 300)].concat();
        let mut distinct = bytes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 100, "400 random bytes have many distinct values: {distinct:?}");
        // Nothing outside the buffers was touched.
        assert!(guest_bytes(&mem, BUFFERS + 100, 0x1000 - 100).iter().all(|&b| b == 0));
        assert!(guest_bytes(&mem, BUFFERS + 0x1000 + 300, 64).iter().all(|&b| b == 0));
        // The used buffer is signalled on the level-triggered line.
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        assert_eq!(line.rising_edges(), 1);
    }

    #[test]
    fn serves_every_pending_chain_with_one_interrupt_and_caps_large_requests() {
        let mem = guest_memory();
        let (mut t, line, ring) = running(&mem, 16);
        ring.set_desc(0, BUFFERS, 8, W, 0);
        ring.set_desc(1, BUFFERS + 0x100, 0x2_0000, W, 0); // 128 KiB
        ring.set_desc(2, BUFFERS + 0x40, 16, W, 0);
        for head in 0..3 {
            ring.publish(head);
        }
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 8), (1, MAX_BYTES_PER_REQUEST as u32), (2, 16)]);
        let past_cap = BUFFERS + 0x100 + MAX_BYTES_PER_REQUEST as u64;
        assert!(guest_bytes(&mem, past_cap, 256).iter().all(|&b| b == 0));
        assert_eq!(line.rising_edges(), 1);
        // Nothing new: a spurious notification completes nothing and raises nothing.
        set_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        notify(&mut t);
        assert_eq!(ring.used().len(), 3);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn read_only_and_zero_length_chains_complete_with_length_zero() {
        let mem = guest_memory();
        let (mut t, _, ring) = running(&mem, 16);
        ring.set_desc(0, BUFFERS, 64, 0, 0); // device-readable only
        ring.set_desc(1, BUFFERS + 0x100, 0, W, 0); // zero-length
        ring.set_desc(2, BUFFERS + 0x200, 0, WN, 3); // zero-length, then 8 bytes
        ring.set_desc(3, BUFFERS + 0x300, 8, W, 0);
        for head in [0, 1, 2] {
            ring.publish(head);
        }
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 0), (1, 0), (2, 8)]);
        assert!(
            guest_bytes(&mem, BUFFERS, 64).iter().all(|&b| b == 0),
            "readable buffer untouched"
        );
    }

    #[test]
    fn buffers_outside_guest_ram_are_dropped_and_the_device_stays_usable() {
        let mem = guest_memory();
        let (mut t, _, ring) = running(&mem, 16);
        let ram_end = RAM_BASE + RAM_SIZE as u64;
        ring.set_desc(0, 0, 64, W, 0); // below RAM
        ring.set_desc(1, ram_end - 8, 64, W, 0); // straddles the end of RAM
        ring.set_desc(2, u64::MAX - 8, 64, W, 0); // wraps the address space
        ring.set_desc(3, BUFFERS, 32, WN, 4); // good, then bad: the whole request is dropped
        ring.set_desc(4, ram_end, 32, W, 0);
        ring.set_desc(5, BUFFERS + 0x100, 32, W, 0); // good
        for head in [0, 1, 2, 3, 5] {
            ring.publish(head);
        }
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 0), (1, 0), (2, 0), (3, 0), (5, 32)]);
        assert!(guest_bytes(&mem, ram_end - 8, 8).iter().all(|&b| b == 0));
        assert_eq!(status(&mut t) & NEEDS_RESET, 0);
    }

    #[test]
    fn descriptor_loops_and_overlong_chains_end_at_the_queue_size() {
        let mem = guest_memory();
        let (mut t, _, ring) = running(&mem, 4);
        // 0 -> 1 -> 0 -> ...: virtio-queue stops after queue-size (4) descriptors.
        ring.set_desc(0, BUFFERS, 16, WN, 1);
        ring.set_desc(1, BUFFERS + 0x100, 16, WN, 0);
        ring.publish(0);
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 4 * 16)]);

        // 2 -> 2: a descriptor that is its own successor.
        ring.set_desc(2, BUFFERS + 0x200, 8, WN, 2);
        ring.publish(2);
        // 3 -> 200: a successor beyond the table ends the chain after the first descriptor.
        ring.set_desc(3, BUFFERS + 0x300, 8, WN, 200);
        ring.publish(3);
        notify(&mut t);
        assert_eq!(ring.used()[1..], [(2, 4 * 8), (3, 8)]);
        assert_eq!(status(&mut t) & NEEDS_RESET, 0);
    }

    #[test]
    fn an_indirect_table_longer_than_the_queue_terminates() {
        let mem = guest_memory();
        let (mut t, _, ring) = running(&mem, 4);
        // 64 chained writable descriptors in an indirect table, the last one looping to the first.
        let table = BUFFERS + 0x1_0000;
        for i in 0..64u64 {
            let desc = virtio_queue::desc::split::Descriptor::new(
                BUFFERS + 8 * i,
                8,
                WN as u16,
                ((i + 1) % 64) as u16,
            );
            mem.write_obj(desc, GuestAddress(table + 16 * i)).unwrap();
        }
        ring.set_desc(0, table, 64 * 16, VRING_DESC_F_INDIRECT, 0);
        ring.publish(0);
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 64 * 8)]);
        assert_eq!(status(&mut t) & NEEDS_RESET, 0);
    }

    #[test]
    fn a_runaway_avail_index_needs_a_reset_and_the_reset_recovers() {
        let mem = guest_memory();
        let (mut t, line, ring) = running(&mem, 4);
        ring.set_desc(0, BUFFERS, 8, W, 0);
        ring.set_avail_idx(5); // five new entries in a four-entry ring (§2.7.13 forbids it)
        notify(&mut t);
        assert!(ring.used().is_empty());
        assert_ne!(status(&mut t) & NEEDS_RESET, 0);
        assert_eq!(reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(line.0.lock().unwrap().last(), Some(&true));

        // The driver resets and sets the queue up afresh; the device serves it again.
        let ring = ring_at(&mem, 0, 4);
        assert_eq!(start(&mut t, 0, &[&ring]) & NEEDS_RESET, 0);
        ring.set_desc(0, BUFFERS, 8, W, 0);
        ring.publish(0);
        notify(&mut t);
        assert_eq!(ring.used(), [(0, 8)]);
    }

    #[test]
    fn a_head_index_beyond_the_queue_needs_a_reset() {
        let mem = guest_memory();
        let (mut t, _, ring) = running(&mem, 4);
        ring.publish(9); // no descriptor 9 in a four-entry table: nothing can be returned
        notify(&mut t);
        assert!(ring.used().is_empty());
        assert_ne!(status(&mut t) & NEEDS_RESET, 0);
    }

    #[test]
    fn a_failing_entropy_source_gives_short_answers_not_a_hang() {
        let mem = guest_memory();
        for (source, expect) in [
            (Box::new(BrokenSource) as Box<dyn Read + Send>, 0),
            (Box::new(io::empty()), 0),
            (Box::new((&b"0123456789"[..]).chain(BrokenSource)), 10),
        ] {
            let (mut t, _) = rng_on_bus(&mem, VirtioRng::with_source(source));
            let ring = ring_at(&mem, 0, 4);
            start(&mut t, 0, &[&ring]);
            ring.set_desc(0, BUFFERS, 64, W, 0);
            ring.publish(0);
            notify(&mut t);
            assert_eq!(ring.used(), [(0, expect)]);
            assert_eq!(status(&mut t) & NEEDS_RESET, 0);
        }
    }

    #[test]
    fn activation_checks_the_queue_and_reset_stops_service() {
        let mem = guest_memory();
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(RecordingLine::default())));
        let mut rng = VirtioRng::with_source(Box::new(io::repeat(7)));
        assert!(rng.process_queue(0).is_ok(), "a notification before activation is harmless");
        let err = rng.activate(0, mem.clone(), vec![], irq.clone()).unwrap_err();
        assert!(matches!(err, VirtioError::QueueCount { expected: 1, got: 0 }));
        let unready = Queue::new(4).unwrap();
        let err = rng.activate(0, mem.clone(), vec![unready], irq.clone()).unwrap_err();
        assert!(matches!(err, VirtioError::QueueNotReady(0)));

        let ring = ring_at(&mem, 0, 4);
        let queue: Queue = ring.mock.create_queue().unwrap();
        rng.activate(0, mem.clone(), vec![queue], irq.clone()).unwrap();
        ring.set_desc(0, BUFFERS, 4, W, 0);
        ring.publish(0);
        rng.process_queue(0).unwrap();
        assert_eq!(ring.used(), [(0, 4)]);
        assert_eq!(guest_bytes(&mem, BUFFERS, 4), [7; 4]);

        rng.reset();
        ring.publish(0);
        rng.process_queue(0).unwrap();
        assert_eq!(ring.used().len(), 1, "a reset device serves nothing");
    }
}
