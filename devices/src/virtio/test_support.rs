//! Test helpers for the virtio modules: real guest RAM, split virtqueues laid out in it with
//! virtio-queue's mock, a minimal driver that talks to a transport only through its registers,
//! and a recording device for exercising the transport on its own.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{VirtioDevice, VirtioError, VirtioInterrupt};
use crate::bus::BusDevice;

/// Guest RAM starts where hvrun's arm64 layout puts it, so address 0 is outside RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: usize = 1 << 20;
/// Data buffers live here, clear of the rings tests put at the start of RAM.
pub const BUFFERS: u64 = RAM_BASE + 0x8_0000;

pub type Mem = GuestMemoryMmap;

/// 1 MiB of real, mmap-backed guest RAM at [`RAM_BASE`].
pub fn guest_memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)]).unwrap()
}

/// A split virtqueue laid out in guest RAM, seen from the driver's side.
pub struct TestRing<'a> {
    pub mock: MockSplitQueue<'a, Mem>,
    pub size: u16,
}

/// A split virtqueue of `size` entries whose rings start `offset` bytes into RAM.
pub fn ring_at(mem: &Mem, offset: u64, size: u16) -> TestRing<'_> {
    TestRing { mock: MockSplitQueue::create(mem, GuestAddress(RAM_BASE + offset), size), size }
}

impl TestRing<'_> {
    /// Writes descriptor `index` of the table.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let desc = Descriptor::new(addr, len, flags as u16, next);
        self.mock.desc_table().store(index, RawDescriptor::from(desc)).unwrap();
    }

    /// Makes the chain starting at `head` available, as a driver does (§2.7.13).
    pub fn publish(&self, head: u16) {
        let idx = u16::from_le(self.mock.avail().idx().load());
        let slot = usize::from(idx % self.size);
        self.mock.avail().ring().ref_at(slot).unwrap().store(head.to_le());
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// Writes the avail ring's index directly, the way a buggy or hostile driver might.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mock.avail().idx().store(idx.to_le());
    }

    /// The used ring's entries so far, as (descriptor id, written length).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let idx = u16::from_le(self.mock.used().idx().load());
        (0..idx)
            .map(|i| {
                let slot = usize::from(i % self.size);
                let elem = self.mock.used().ring().ref_at(slot).unwrap().load();
                (elem.id(), elem.len())
            })
            .collect()
    }
}

pub fn reg(t: &mut dyn BusDevice, reg: u32) -> u32 {
    t.read(u64::from(reg), 4) as u32
}

pub fn set_reg(t: &mut dyn BusDevice, reg: u32, value: u32) {
    t.write(u64::from(reg), 4, u64::from(value));
}

/// §3.1.1 steps 1–6: reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK. Returns Status
/// as the driver reads it back.
pub fn negotiate(t: &mut dyn BusDevice, features: u64) -> u32 {
    set_reg(t, VIRTIO_MMIO_STATUS, 0);
    set_reg(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    set_reg(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    for sel in 0..2 {
        set_reg(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        set_reg(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let status = reg(t, VIRTIO_MMIO_STATUS);
    set_reg(t, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_FEATURES_OK);
    reg(t, VIRTIO_MMIO_STATUS)
}

/// §4.2.3.2: configures queue `index` with `ring`'s size and addresses, then enables it.
pub fn setup_queue(t: &mut dyn BusDevice, index: u32, ring: &TestRing<'_>) {
    let q = &ring.mock;
    set_reg(t, VIRTIO_MMIO_QUEUE_SEL, index);
    set_reg(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
    for (low, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr()),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr()),
        (VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr()),
    ] {
        set_reg(t, low, addr.0 as u32);
        set_reg(t, low + 4, (addr.0 >> 32) as u32);
    }
    set_reg(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// The whole init sequence with VERSION_1 plus `features`, queue `i` set up as `rings[i]`;
/// ends with DRIVER_OK. Returns Status as read back.
pub fn start(t: &mut dyn BusDevice, features: u64, rings: &[&TestRing<'_>]) -> u32 {
    let status = negotiate(t, features | 1 << VIRTIO_F_VERSION_1);
    assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0, "features refused");
    for (i, ring) in rings.iter().enumerate() {
        setup_queue(t, i as u32, ring);
    }
    set_reg(t, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
    reg(t, VIRTIO_MMIO_STATUS)
}

/// A queue as the device received it at activation: (ready, size, event_idx enabled).
pub type QueueSeen = (bool, u16, bool);

/// What a [`TestDevice`] saw, shared with the test after the device is boxed into a transport.
#[derive(Default)]
pub struct DeviceLog {
    /// Per activation: negotiated features, and per queue (ready, size, event_idx).
    pub activations: Vec<(u64, Vec<QueueSeen>)>,
    pub notified: Vec<u16>,
    pub resets: usize,
    pub config_writes: Vec<(u64, Vec<u8>)>,
    pub interrupt: Option<Arc<VirtioInterrupt>>,
}

/// A device that records what the transport does to it. Config space is the 12 bytes 1..=12.
pub struct TestDevice {
    pub log: Arc<Mutex<DeviceLog>>,
    pub features: u64,
    pub queue_sizes: Vec<u16>,
    pub fail_activate: bool,
    pub fail_process: bool,
}

pub const TEST_DEVICE_TYPE: u32 = 42;
pub const TEST_CONFIG: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

impl TestDevice {
    pub fn new(features: u64, queue_sizes: &[u16]) -> (Self, Arc<Mutex<DeviceLog>>) {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        let device = TestDevice {
            log: log.clone(),
            features,
            queue_sizes: queue_sizes.to_vec(),
            fail_activate: false,
            fail_process: false,
        };
        (device, log)
    }
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        TEST_DEVICE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            if let Some(v) = TEST_CONFIG.get(offset as usize + i) {
                *byte = *v;
            }
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log.lock().unwrap().config_writes.push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        features: u64,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        if self.fail_activate {
            return Err(VirtioError::QueueNotReady(0));
        }
        let queues = queues.iter().map(|q| (q.ready(), q.size(), q.event_idx_enabled())).collect();
        let mut log = self.log.lock().unwrap();
        log.activations.push((features, queues));
        log.interrupt = Some(interrupt);
        Ok(())
    }
    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        self.log.lock().unwrap().notified.push(index);
        if self.fail_process {
            let source = virtio_queue::Error::InvalidAvailRingIndex;
            return Err(VirtioError::BrokenQueue { queue: index, source });
        }
        Ok(())
    }
    fn reset(&mut self) {
        let mut log = self.log.lock().unwrap();
        log.resets += 1;
        log.interrupt = None;
    }
}
