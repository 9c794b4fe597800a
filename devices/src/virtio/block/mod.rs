//! virtio-blk (VIRTIO 1.2 §5.2): a raw disk image as a guest block device (`/dev/vda`, ...).
//!
//! One request queue, served by the device's worker thread (`virtio/worker.rs`). The image is
//! opened and locked by [`DiskImage`]; requests are parsed and performed by [`request::handle`].

pub mod disk;
pub mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::virtio::{VirtioDevice, VirtioError, VirtioInterrupt, VIRTIO_ID_BLOCK};
pub use disk::{DiskError, DiskImage, SyncMode, SECTOR_SIZE};
use request::BlockLimits;

/// Descriptors in the request queue.
const QUEUE_SIZE: u16 = 256;
/// Largest single data segment the driver may use (config `size_max`).
const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request (config `seg_max`); header and status come on top.
const SEG_MAX: u32 = 126;
/// Most sectors per discard/write-zeroes range: 2 GiB.
const MAX_DISCARD_SECTORS: u32 = (2 << 30) / SECTOR_SIZE as u32;
/// Most ranges per discard/write-zeroes request.
const MAX_DISCARD_SEGMENTS: u32 = 32;

/// The running state, present between DRIVER_OK and reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-blk device over one disk image.
pub struct VirtioBlock {
    disk: Arc<DiskImage>,
    serial: Vec<u8>,
    config: [u8; 60],
    active: Option<Active>,
}

impl VirtioBlock {
    /// A block device for `disk`; GET_ID answers `serial` (`/sys/block/vdX/serial`, at most
    /// 20 bytes are used). The image is shared so it stays open and locked across guest reboots.
    pub fn new(disk: Arc<DiskImage>, serial: &str) -> Self {
        let config = config_space(&disk);
        VirtioBlock { disk, serial: serial.as_bytes().to_vec(), config, active: None }
    }

    fn limits() -> BlockLimits {
        BlockLimits {
            max_descriptors: SEG_MAX as usize + 2,
            max_data_bytes: (SEG_MAX as usize) * (SIZE_MAX as usize),
            max_discard_segments: MAX_DISCARD_SEGMENTS as usize,
            max_discard_sectors: MAX_DISCARD_SECTORS,
        }
    }
}

/// `struct virtio_blk_config` (§5.2.4), little-endian.
fn config_space(disk: &DiskImage) -> [u8; 60] {
    let mut c = [0u8; 60];
    let mut put =
        |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &(disk.size() / SECTOR_SIZE).to_le_bytes()); // capacity, in 512-byte sectors
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes()); // max_discard_seg
    put(44, &8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB, the host's block size
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut features = [
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
        ]
        .iter()
        .fold(0u64, |f, bit| f | 1 << bit);
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = (offset as usize).min(self.config.len());
        let end = start.saturating_add(data.len()).min(self.config.len());
        data[..end - start].copy_from_slice(&self.config[start..end]);
    }

    fn activate(
        &mut self,
        _features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        let queue = crate::virtio::single_ready_queue(queues)?;
        self.active = Some(Active { mem, queue, interrupt });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        let Some(Active { mem, queue, interrupt }) = self.active.as_mut() else {
            return Ok(()); // notified before DRIVER_OK: nothing to serve yet
        };
        if index != 0 {
            return Ok(());
        }
        let limits = Self::limits();
        let (disk, serial) = (&self.disk, &self.serial);
        crate::virtio::serve_available(queue, index, mem, interrupt, |chain| {
            request::handle(chain, mem, disk, serial, &limits)
        })
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
