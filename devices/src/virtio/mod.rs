//! Virtio: the seam between a transport (virtio-mmio, [`MmioTransport`]) and the device models
//! behind it (block, console, entropy). The transport owns the registers, feature negotiation
//! and the status state machine; a [`VirtioDevice`] only serves its queues.
//!
//! Threading: the transport runs on whichever vCPU thread touched a register. The device's I/O
//! runs on the device's own [`DeviceWorker`] thread, woken by a per-queue [`Notifier`] that the
//! driver's QueueNotify rings (see `worker.rs`); the two meet in [`SharedDevice`].
//!
//! [`Notifier`]: crate::notifier::Notifier

pub mod block;
pub mod console;
pub mod interrupt;
pub mod mmio;
mod queue_config;
pub mod rng;
mod shared;
pub mod worker;

#[cfg(test)]
pub(crate) mod test_support;

use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

pub use console::{ConsoleInput, ConsoleInputPort, VirtioConsole};
pub use interrupt::VirtioInterrupt;
pub use mmio::{MmioTransport, MMIO_REGION_SIZE, QUEUE_NOTIFY_OFFSET};
pub use rng::VirtioRng;
pub use shared::{HostWait, SharedDevice};
pub use worker::DeviceWorker;

/// Device types (VIRTIO 1.2 §5), as the DeviceID register reports them.
pub use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_RNG};

/// A virtio device model, driven by a transport.
///
/// Lifecycle: the transport reads [`features`](Self::features), [`queue_max_sizes`](Self::queue_max_sizes)
/// and config space while the driver initialises; on DRIVER_OK it hands over the negotiated
/// features, guest memory, the configured queues and the interrupt through
/// [`activate`](Self::activate); from then on each QueueNotify becomes a call to
/// [`process_queue`](Self::process_queue) on the device's worker thread; a driver reset becomes
/// [`reset`](Self::reset), after which the device can be activated again.
///
/// A device with a host side of its own (a tap, a socket, a timer) tells its worker what to wait
/// on through [`host_waits`](Self::host_waits) and [`next_timer`](Self::next_timer).
pub trait VirtioDevice: Send {
    /// The virtio device type (VIRTIO 1.2 §5), e.g. [`VIRTIO_ID_RNG`].
    fn device_type(&self) -> u32;

    /// One entry per virtqueue: its maximum size, a power of two no larger than 32768
    /// (VIRTIO 1.2 §2.7). The transport builds its queues from this once, at construction.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific and ring feature bits (e.g. `VIRTIO_RING_F_EVENT_IDX`) the device offers.
    /// The transport adds `VIRTIO_F_VERSION_1` itself: every hvrun device is a modern device, and
    /// the transport is what refuses drivers that are not (VIRTIO 1.2 §6.1).
    fn features(&self) -> u64;

    /// Reads `data.len()` bytes of device config space at `offset`, little-endian. Bytes past the
    /// end of the device's config read as zero: `data` arrives zero-filled, so leave them alone.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes `data` into config space at `offset`. Most config fields are read-only to the
    /// driver, hence the default that ignores the write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!("virtio: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    /// Starts the device: the driver set DRIVER_OK (VIRTIO 1.2 §3.1.1). `features` is what the
    /// driver accepted; `queues` has one entry per [`queue_max_sizes`](Self::queue_max_sizes)
    /// entry, each already validated against `mem` if ready (queues the driver did not enable
    /// arrive with `ready() == false`). Signal used buffers and config changes through
    /// `interrupt`. An error makes the transport set DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError>;

    /// The driver notified queue `index` (VIRTIO 1.2 §4.2.3.3): serve what it made available.
    /// Return an error only when the queue is broken beyond recovery (the driver corrupted the
    /// ring); the transport then sets DEVICE_NEEDS_RESET and stops delivering notifications. A
    /// single bad request is not such an error: complete or drop it and carry on.
    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError>;

    /// Back to the state before activation: drop the queues, memory and interrupt (VIRTIO 1.2
    /// §2.4). Nothing is reported to the guest; the transport clears its own state. Also called
    /// on a device that was never activated, so it must be harmless then.
    fn reset(&mut self);

    /// Host descriptors the worker should wait on besides the queue notifiers, with the poll
    /// events wanted *now* (e.g. readable only while the guest has posted receive buffers, so
    /// the worker sleeps instead of spinning on data it cannot deliver). Asked again after every
    /// call into the device. None by default.
    fn host_waits(&self, waits: &mut Vec<HostWait>) {
        let _ = waits;
    }

    /// A descriptor from [`host_waits`](Self::host_waits) is ready (`revents` as poll(2) set
    /// them). An error means DEVICE_NEEDS_RESET, as for [`process_queue`](Self::process_queue).
    fn host_ready(&mut self, token: u32, revents: i16) -> Result<(), VirtioError> {
        let _ = (token, revents);
        Ok(())
    }

    /// When [`timer_expired`](Self::timer_expired) should next be called, if ever.
    fn next_timer(&self) -> Option<Instant> {
        None
    }

    /// The time [`next_timer`](Self::next_timer) named has come.
    fn timer_expired(&mut self) -> Result<(), VirtioError> {
        Ok(())
    }
}

/// Serves what the driver made available on `queue` (number `index`): each chain goes to
/// `serve`, which returns how many bytes it wrote into the chain's device-writable buffers; the
/// chain then goes on the used ring, and the driver is interrupted if it asked to be.
///
/// At most one queue's worth per notification, so a guest that keeps adding buffers cannot hold
/// the worker (and the device lock) forever; nothing is lost, since notifications are never suppressed and each
/// later buffer comes with a QueueNotify of its own. `iter` rather than `pop_descriptor_chain`:
/// the latter turns a corrupt avail index (more entries than the queue holds, VIRTIO 1.2 §2.7.13)
/// into "empty", hiding a broken driver.
pub fn serve_available(
    queue: &mut Queue,
    index: u16,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<(), VirtioError> {
    let broken = |source| VirtioError::BrokenQueue { queue: index, source };
    let mut completed = 0u32;
    for _ in 0..queue.size() {
        let Some(chain) = queue.iter(mem).map_err(broken)?.next() else { break };
        let head = chain.head_index();
        let written = serve(chain);
        queue.add_used(mem, head, written).map_err(broken)?;
        completed += 1;
    }
    if completed > 0 && queue.needs_notification(mem).map_err(broken)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}

/// The one queue of a single-queue device, which the driver must have made ready.
pub fn single_ready_queue(queues: Vec<Queue>) -> Result<Queue, VirtioError> {
    let got = queues.len();
    let Ok::<[Queue; 1], _>([queue]) = queues.try_into() else {
        return Err(VirtioError::QueueCount { expected: 1, got });
    };
    if !queue.ready() {
        return Err(VirtioError::QueueNotReady(0));
    }
    Ok(queue)
}

/// What can go wrong between a virtio transport, its device and the driver.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(
        "virtio device type {device_type}: queue {queue} has maximum size {max}, which is not a \
         power of two in 1..=32768; fix the device's queue_max_sizes"
    )]
    InvalidQueueMax { device_type: u32, queue: usize, max: u16 },
    #[error("virtio device type {0} has no queues; a device must declare at least one in queue_max_sizes")]
    NoQueues(u32),
    #[error(
        "the device has {expected} queues but was activated with {got}; activate it with one \
         queue per queue_max_sizes entry"
    )]
    QueueCount { expected: usize, got: usize },
    #[error("the driver did not make queue {0} ready; it must enable it before DRIVER_OK")]
    QueueNotReady(u16),
    #[error("the driver set DRIVER_OK without making any queue ready; enable a queue first")]
    NoReadyQueue,
    #[error(
        "the driver configured queue {queue} with {problem}; it must reset the device and set the \
         queue up again"
    )]
    BadQueueConfig { queue: u16, problem: &'static str },
    #[error("cannot create the queue notifiers of a virtio device: {0}")]
    Notifier(#[source] std::io::Error),
    #[error(
        "the driver broke virtqueue {queue} ({source}); the device is stopped until the guest \
         resets it"
    )]
    BrokenQueue {
        queue: u16,
        #[source]
        source: virtio_queue::Error,
    },
}
