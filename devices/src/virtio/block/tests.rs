//! virtio-blk driven through the real virtio-mmio transport, the way the guest driver does:
//! every request type, and the malformed and hostile chains a guest can build.

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::irq::test_support::RecordingLine;
use crate::virtio::test_support::*;
use crate::virtio::MmioTransport;

const HEADER: u64 = BUFFERS;
const DATA: u64 = BUFFERS + 0x1000;
const STATUS: u64 = BUFFERS + 0x3_0000;

struct Rig {
    mem: Mem,
    path: std::path::PathBuf,
}

impl Rig {
    /// A 1 MiB image whose byte `i` is `i % 251`, and guest RAM.
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hvrun-blk-{name}-{}", std::process::id()));
        let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, pattern).unwrap();
        Rig { mem: guest_memory(), path }
    }

    fn transport(&self, read_only: bool) -> MmioTransport {
        let disk = DiskImage::open(&self.path, read_only, SyncMode::Full).unwrap();
        let dev = VirtioBlock::new(Arc::new(disk), "SERIAL-1");
        MmioTransport::new(Box::new(dev), self.mem.clone(), Arc::new(RecordingLine::default()))
            .unwrap()
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts the transport with one queue and runs the chain at descriptor 0; returns the used
/// length the device reported.
fn run_chain(t: &mut MmioTransport, ring: &TestRing<'_>) -> u32 {
    ring.publish(0);
    t.write(u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0);
    t.serve_notified_queues();
    let used = ring.used();
    assert_eq!(used.len(), 1, "the request must complete");
    used[0].1
}

/// A three-part request: header, `data_len` bytes of data (`data_flags`), status.
fn three_part(ring: &TestRing<'_>, data_len: u32, data_flags: u32) {
    ring.set_desc(0, HEADER, 16, NEXT, 1);
    ring.set_desc(1, DATA, data_len, data_flags | NEXT, 2);
    ring.set_desc(2, STATUS, 1, WRITE, 0);
}

fn started<'a>(rig: &'a Rig, read_only: bool) -> (MmioTransport, TestRing<'a>) {
    let mut t = rig.transport(read_only);
    let ring = ring_at(&rig.mem, 0, 256);
    let status = start(&mut t, 0, &[&ring]);
    assert_ne!(status & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK, 0);
    (t, ring)
}

#[test]
fn config_space_and_features() {
    let rig = Rig::new("config");
    let mut t = rig.transport(false);
    let capacity = t.read(0x100, 8);
    assert_eq!(capacity, (1 << 20) / 512);
    assert_eq!(t.read(0x100 + 20, 4), 512, "blk_size");
    assert_eq!(t.read(0x100 + 12, 4), u64::from(SEG_MAX));
    drop(t); // releases the image's write lock
    let dev =
        VirtioBlock::new(Arc::new(DiskImage::open(&rig.path, true, SyncMode::None).unwrap()), "");
    assert_ne!(dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(dev.features() & 1 << VIRTIO_BLK_F_DISCARD, 0);
}

#[test]
fn read_returns_the_image_bytes() {
    let rig = Rig::new("read");
    let (mut t, ring) = started(&rig, false);
    rig.header(VIRTIO_BLK_T_IN, 2);
    three_part(&ring, 1024, WRITE);
    assert_eq!(run_chain(&mut t, &ring), 1025);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let mut data = vec![0u8; 1024];
    rig.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, rig.image()[1024..2048]);
}

#[test]
fn write_then_flush_reaches_the_image() {
    let rig = Rig::new("write");
    let (mut t, ring) = started(&rig, false);
    rig.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    rig.header(VIRTIO_BLK_T_OUT, 3);
    three_part(&ring, 512, 0);
    assert_eq!(run_chain(&mut t, &ring), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert!(rig.image()[1536..2048].iter().all(|&b| b == 0x5a));

    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    ring.set_desc(0, HEADER, 16, NEXT, 2);
    ring.publish(0);
    t.write(u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0);
    t.serve_notified_queues();
    assert_eq!(ring.used()[1].1, 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn get_id_returns_the_serial() {
    let rig = Rig::new("id");
    let (mut t, ring) = started(&rig, false);
    rig.header(VIRTIO_BLK_T_GET_ID, 0);
    three_part(&ring, 20, WRITE);
    assert_eq!(run_chain(&mut t, &ring), 21);
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"SERIAL-1");
    assert!(id[8..].iter().all(|&b| b == 0));
}

#[test]
fn errors_get_an_error_status_and_leave_the_image_alone() {
    let before = Rig::new("errors-ref").image();
    let cases: [(&str, u32, u64, u32, u32, u8); 6] = [
        ("past the end", VIRTIO_BLK_T_IN, 2047, 1024, WRITE, VIRTIO_BLK_S_IOERR as u8),
        ("huge sector", VIRTIO_BLK_T_OUT, u64::MAX / 256, 512, 0, VIRTIO_BLK_S_IOERR as u8),
        ("read into a readable buffer", VIRTIO_BLK_T_IN, 0, 512, 0, VIRTIO_BLK_S_IOERR as u8),
        ("write from a writable buffer", VIRTIO_BLK_T_OUT, 0, 512, WRITE, VIRTIO_BLK_S_IOERR as u8),
        ("partial sector", VIRTIO_BLK_T_OUT, 0, 100, 0, VIRTIO_BLK_S_IOERR as u8),
        ("unknown type", 0x77, 0, 512, WRITE, VIRTIO_BLK_S_UNSUPP as u8),
    ];
    for (what, request_type, sector, len, flags, expected) in cases {
        let rig = Rig::new("errors");
        let (mut t, ring) = started(&rig, false);
        rig.header(request_type, sector);
        three_part(&ring, len, flags);
        run_chain(&mut t, &ring);
        assert_eq!(rig.status(), expected, "{what}");
        assert_eq!(rig.image(), before, "{what}: the image changed");
    }
}

#[test]
fn read_only_disks_refuse_writes() {
    let rig = Rig::new("ro");
    let before = rig.image();
    let (mut t, ring) = started(&rig, true);
    rig.header(VIRTIO_BLK_T_OUT, 0);
    three_part(&ring, 512, 0);
    run_chain(&mut t, &ring);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.image(), before);
}

#[test]
fn discard_and_write_zeroes_clear_the_range() {
    let rig = Rig::new("discard");
    let (mut t, ring) = started(&rig, false);
    for (request_type, sector) in [(VIRTIO_BLK_T_DISCARD, 8u64), (VIRTIO_BLK_T_WRITE_ZEROES, 16)] {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        rig.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        rig.header(request_type, 0);
        three_part(&ring, 16, 0);
        ring.publish(0);
        t.write(u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0);
        t.serve_notified_queues();
        assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
        let image = rig.image();
        let range = sector as usize * 512..(sector as usize + 8) * 512;
        assert!(image[range.clone()].iter().all(|&b| b == 0), "range {range:?} not zero");
        assert_ne!(image[range.end], 0, "bytes after the range are untouched");
    }
}

#[test]
fn hostile_chains_never_panic_or_hang() {
    let rig = Rig::new("hostile");
    let (mut t, ring) = started(&rig, false);

    // Header outside guest RAM: the status byte is still reachable, so IOERR.
    ring.set_desc(0, 0x1000, 16, NEXT, 1);
    ring.set_desc(1, STATUS, 1, WRITE, 0);
    rig.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    run_chain(&mut t, &ring);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);

    // Status descriptor of zero length: nothing can be reported; completed with length 0.
    let rig = Rig::new("hostile-2");
    let (mut t, ring) = started(&rig, false);
    rig.header(VIRTIO_BLK_T_IN, 0);
    ring.set_desc(0, HEADER, 16, NEXT, 1);
    ring.set_desc(1, STATUS, 0, WRITE, 0);
    assert_eq!(run_chain(&mut t, &ring), 0);

    // A descriptor loop (1 -> 2 -> 1 ...): virtio-queue stops after queue-size descriptors,
    // and more descriptors than seg_max allows is an error.
    let rig = Rig::new("hostile-3");
    let (mut t, ring) = started(&rig, false);
    rig.header(VIRTIO_BLK_T_IN, 0);
    ring.set_desc(0, HEADER, 16, NEXT, 1);
    ring.set_desc(1, DATA, 512, WRITE | NEXT, 2);
    ring.set_desc(2, STATUS, 1, WRITE | NEXT, 1);
    run_chain(&mut t, &ring);

    // The device still serves good requests afterwards.
    rig.header(VIRTIO_BLK_T_IN, 0);
    three_part(&ring, 512, WRITE);
    ring.publish(0);
    t.write(u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0);
    t.serve_notified_queues();
    assert_eq!(ring.used().len(), 2);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
}
