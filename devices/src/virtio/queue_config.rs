//! One virtqueue as the driver configures it through transport registers (VIRTIO 1.2 §4.2.3.2),
//! remembering which writes virtio-queue refused, until it is handed to the device.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Which of a queue's three ring addresses a register sets (§2.7).
#[derive(Clone, Copy, Debug)]
pub enum Ring {
    /// The descriptor table, 16-byte aligned.
    Desc,
    /// The driver (available) ring, 2-byte aligned.
    Avail,
    /// The device (used) ring, 4-byte aligned.
    Used,
}

/// Fields the driver wrote with a value virtio-queue refused. virtio-queue keeps the old value on
/// a bad write, and the driver cannot read these registers back, so somebody must remember: else
/// the device would later walk rings that are not where the driver laid them out.
const BAD_SIZE: u8 = 1 << 0;
const BAD_DESC: u8 = 1 << 1;
const BAD_AVAIL: u8 = 1 << 2;
const BAD_USED: u8 = 1 << 3;

/// The transport's record of one queue. The device gets its own [`Queue`] at activation, built
/// by [`QueueConfig::device_queue`]; after that this record no longer changes.
pub struct QueueConfig {
    queue: Queue,
    bad_fields: u8,
}

impl QueueConfig {
    /// A disabled queue of at most `max_size` entries; `None` if that is not a power of two in
    /// 1..=32768.
    pub fn new(max_size: u16) -> Option<Self> {
        Queue::new(max_size).ok().map(|queue| QueueConfig { queue, bad_fields: 0 })
    }

    /// The configuration as virtio-queue holds it.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn ready(&self) -> bool {
        self.queue.ready()
    }

    pub fn set_ready(&mut self, ready: bool) {
        self.queue.set_ready(ready);
    }

    /// QueueNum: virtio-queue accepts powers of two up to QueueNumMax (§2.7).
    pub fn set_size(&mut self, value: u32) {
        let ok = u16::try_from(value).is_ok_and(|size| self.queue.try_set_size(size).is_ok());
        self.mark(BAD_SIZE, !ok);
    }

    /// One 32-bit half of a ring address; virtio-queue checks the alignment (§2.7).
    pub fn set_ring_half(&mut self, ring: Ring, high: bool, value: u32) {
        let q = &mut self.queue;
        let old = match ring {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        };
        let addr = GuestAddress(if high {
            (u64::from(value) << 32) | (old & 0xffff_ffff)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        });
        let (result, field) = match ring {
            Ring::Desc => (q.try_set_desc_table_address(addr), BAD_DESC),
            Ring::Avail => (q.try_set_avail_ring_address(addr), BAD_AVAIL),
            Ring::Used => (q.try_set_used_ring_address(addr), BAD_USED),
        };
        // Only the low half carries alignment, so only it decides; a high write must not clear
        // the mark a misaligned low write left.
        if !high || result.is_err() {
            self.mark(field, result.is_err());
        }
    }

    /// Why the device must not use this queue, if it is ready but unusable: a refused write, or
    /// rings that do not fit in `mem` (virtio-queue's `is_valid`).
    pub fn problem(&self, mem: &GuestMemoryMmap) -> Option<&'static str> {
        match self.bad_fields {
            0 if self.queue.is_valid(mem) => None,
            0 => Some("rings that do not fit in guest memory"),
            b if b & BAD_SIZE != 0 => Some("a QueueNum above QueueNumMax or not a power of two"),
            b if b & BAD_DESC != 0 => Some("a descriptor table not aligned to 16 bytes"),
            b if b & BAD_AVAIL != 0 => Some("a driver (available) ring not aligned to 2 bytes"),
            _ => Some("a device (used) ring not aligned to 4 bytes"),
        }
    }

    /// The device's copy of this queue, with VIRTIO_RING_F_EVENT_IDX as negotiated.
    pub fn device_queue(&self, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
        let mut queue = Queue::try_from(self.queue.state())?;
        queue.set_event_idx(event_idx);
        Ok(queue)
    }

    /// Back to disabled, maximum size, addresses 0 (§4.2.2.1: the values after reset).
    pub fn reset(&mut self) {
        self.queue.reset();
        self.bad_fields = 0;
    }

    fn mark(&mut self, field: u8, bad: bool) {
        if bad {
            self.bad_fields |= field;
        } else {
            self.bad_fields &= !field;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_support::{guest_memory, RAM_BASE};

    /// A ready queue of 16 entries with rings at the start of guest RAM.
    fn good() -> QueueConfig {
        let mut q = QueueConfig::new(16).unwrap();
        q.set_size(16);
        for (i, ring) in [Ring::Desc, Ring::Avail, Ring::Used].into_iter().enumerate() {
            q.set_ring_half(ring, false, RAM_BASE as u32 + 0x1000 * i as u32);
            q.set_ring_half(ring, true, 0);
        }
        q.set_ready(true);
        q
    }

    #[test]
    fn a_well_formed_queue_has_no_problem_and_copies_to_the_device() {
        let mem = guest_memory();
        let q = good();
        assert_eq!(q.problem(&mem), None);
        let copy = q.device_queue(true).unwrap();
        assert_eq!(copy.desc_table(), RAM_BASE);
        assert_eq!(copy.used_ring(), RAM_BASE + 0x2000);
        assert!(copy.ready() && copy.event_idx_enabled());
        assert!(QueueConfig::new(12).is_none() && QueueConfig::new(0).is_none());
    }

    #[test]
    fn refused_writes_are_remembered_until_a_good_write_or_reset() {
        let mem = guest_memory();
        let mut q = good();
        q.set_size(24);
        assert_eq!(q.queue().size(), 16, "virtio-queue kept the old size");
        assert!(q.problem(&mem).unwrap().contains("QueueNum"));
        q.set_size(8);
        assert_eq!(q.problem(&mem), None);

        q.set_ring_half(Ring::Avail, false, RAM_BASE as u32 + 0x1001);
        q.set_ring_half(Ring::Avail, true, 0);
        assert!(q.problem(&mem).unwrap().contains("available"));
        q.reset();
        assert!(!q.ready() && q.queue().size() == 16 && q.queue().avail_ring() == 0);
        q.set_ready(true);
        assert_eq!(q.problem(&mem), Some("rings that do not fit in guest memory"));
    }
}
