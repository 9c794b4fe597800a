//! One worker thread per virtio device: where the device's I/O happens, on every backend.
//!
//! A driver's QueueNotify write rings the queue's [`Notifier`]: on KVM the kernel rings it
//! directly (the notifier is an eventfd registered as an ioeventfd, so the write never exits to
//! hvrun), on Hypervisor.framework the transport rings it from the vCPU thread that took the
//! MMIO exit. Either way the vCPU goes straight back into the guest, and the worker — asleep in
//! `poll(2)` on the queue notifiers, the device's own host descriptors (a tap, a socket) and a
//! stop notifier — wakes and serves the queue through [`SharedDevice`]. A vCPU therefore never
//! blocks on host I/O, and a device behaves the same on both backends.
//!
//! `poll` rather than epoll or kqueue: it is the same call on Linux and macOS, and a device has
//! a handful of descriptors. The poll set is rebuilt in place each round (no allocation once it
//! has grown to its size), because what a device waits on changes: a network device stops
//! waiting for frames while the guest has no receive buffers, instead of spinning on them.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::shared::{HostWait, SharedDevice};
use crate::notifier::Notifier;

/// A running worker thread; stopped and joined on drop.
pub struct DeviceWorker {
    stop: Arc<Notifier>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceWorker {
    /// Starts serving `device`: `queue_notifiers[i]` rung means queue `i` has work.
    pub fn spawn(
        name: &str,
        device: Arc<SharedDevice>,
        queue_notifiers: Vec<Arc<Notifier>>,
    ) -> io::Result<Self> {
        let stop = Arc::new(Notifier::new()?);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-worker"))
            .spawn(move || serve(&device, &queue_notifiers, &thread_stop))?;
        Ok(DeviceWorker { stop, thread: Some(thread) })
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        self.stop.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The worker's loop: wait, then serve whatever is ready, until the stop notifier rings.
fn serve(device: &SharedDevice, queues: &[Arc<Notifier>], stop: &Notifier) {
    let mut waits: Vec<HostWait> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let pollfd = |fd, events| libc::pollfd { fd, events, revents: 0 };
    loop {
        waits.clear();
        let timer = device.host_waits(&mut waits);
        fds.clear();
        fds.push(pollfd(stop.as_raw_fd(), libc::POLLIN));
        fds.extend(queues.iter().map(|n| pollfd(n.as_raw_fd(), libc::POLLIN)));
        fds.extend(waits.iter().map(|w| pollfd(w.fd, w.events)));
        let timeout_ms = timer.map_or(-1, |at| {
            let left = at.saturating_duration_since(Instant::now());
            // Round up, so the timer is due when poll returns.
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        // SAFETY: `fds` is a valid array of pollfd of the given length for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Nothing sensible is left to do: the device's notifications go unanswered, which
            // stalls this device in the guest but nothing else.
            log::error!("virtio device type {}: worker poll failed: {e}", device.device_type());
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (index, (notifier, fd)) in queues.iter().zip(&fds[1..]).enumerate() {
            if fd.revents != 0 {
                // Drain first: a notification that arrives while we serve rings again.
                notifier.drain();
                device.serve_queue(index as u16);
            }
        }
        for (wait, fd) in waits.iter().zip(&fds[1 + queues.len()..]) {
            if fd.revents != 0 {
                device.host_ready(wait.token, fd.revents);
            }
        }
        if timer.is_some_and(|at| Instant::now() >= at) {
            device.timer_expired();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::mpsc;
    use std::time::Duration;

    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    use crate::irq::test_support::RecordingLine;
    use crate::virtio::{VirtioDevice, VirtioError, VirtioInterrupt};

    /// A device that reports every call to a channel and waits on one host descriptor.
    struct Probe {
        calls: mpsc::Sender<String>,
        host: Option<i32>,
        timer: Option<Instant>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            99
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 8]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn activate(
            &mut self,
            _: u64,
            _: GuestMemoryMmap,
            _: Vec<Queue>,
            _: Arc<VirtioInterrupt>,
        ) -> Result<(), VirtioError> {
            Ok(())
        }
        fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
            let _ = self.calls.send(format!("queue {index}"));
            Ok(())
        }
        fn reset(&mut self) {}
        fn host_waits(&self, waits: &mut Vec<HostWait>) {
            if let Some(fd) = self.host {
                waits.push(HostWait { fd, events: libc::POLLIN, token: 7 });
            }
        }
        fn host_ready(&mut self, token: u32, revents: i16) -> Result<(), VirtioError> {
            let mut byte = [0u8; 1];
            // SAFETY: reads one byte into a valid buffer from the test's own pipe.
            unsafe { libc::read(self.host.unwrap_or(-1), byte.as_mut_ptr().cast(), 1) };
            let _ = self.calls.send(format!("host {token} {}", revents & libc::POLLIN != 0));
            Ok(())
        }
        fn next_timer(&self) -> Option<Instant> {
            self.timer
        }
        fn timer_expired(&mut self) -> Result<(), VirtioError> {
            self.timer = None;
            let _ = self.calls.send("timer".into());
            Ok(())
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both were just created and are owned only here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn the_worker_serves_rung_queues_host_descriptors_and_timers_then_stops() {
        let (tx, rx) = mpsc::channel();
        let (host_read, host_write) = pipe();
        let timer = Some(Instant::now() + Duration::from_millis(20));
        let probe = Probe { calls: tx, host: Some(host_read.as_raw_fd()), timer };
        let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(RecordingLine::default())));
        let device = Arc::new(SharedDevice::new(Box::new(probe), interrupt));
        let queues = vec![Arc::new(Notifier::new().unwrap()), Arc::new(Notifier::new().unwrap())];
        let worker = DeviceWorker::spawn("probe", device, queues.clone()).unwrap();
        let next = || rx.recv_timeout(Duration::from_secs(10)).expect("the worker answers");

        assert_eq!(next(), "timer", "the timer fires without any other event");
        queues[1].notify();
        assert_eq!(next(), "queue 1");
        // Two rings give one pass, or two if the worker looked in between: which one depends on
        // the scheduler (the notifier's own test pins the coalescing), never more.
        queues[0].notify();
        queues[0].notify();
        // SAFETY: writes one byte from a valid buffer to our pipe.
        unsafe { libc::write(host_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        let mut seen = vec![next()];
        while let Ok(call) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(call);
        }
        let queue_passes = seen.iter().filter(|c| *c == "queue 0").count();
        assert!((1..=2).contains(&queue_passes), "{seen:?}");
        assert_eq!(seen.iter().filter(|c| *c == "host 7 true").count(), 1, "{seen:?}");
        assert_eq!(seen.len(), queue_passes + 1, "nothing else happened: {seen:?}");

        drop(worker); // returns only once the thread has ended
        queues[0].notify();
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "a stopped worker serves nothing"
        );
    }
}
