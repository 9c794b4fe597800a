//! Virtqueue notifications that never reach hvrun as exits (KVM's ioeventfd).
//!
//! Without it, a driver's QueueNotify write is a full exit: guest → KVM → hvrun's vCPU thread,
//! which then serves the queue before the guest runs again. With it, KVM completes the write in
//! the kernel and signals an eventfd; the guest continues at once, and a [`QueueNotifyThread`]
//! per device serves the queue in parallel (`MmioTransport::host_event`, the same path host-side
//! events take). Hypervisor.framework has no such mechanism, so there the plain MMIO path is
//! the only one — and it stays correct on KVM too: a write the eventfd does not match (another
//! value, another size) still exits as MMIO.
//!
//! `HVRUN_IOEVENTFD=off` turns it off, to measure the difference.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::MmioTransport;

/// The environment variable that turns ioeventfd off (`off` or `0`).
pub const IOEVENTFD_ENV: &str = "HVRUN_IOEVENTFD";

/// Whether queue notifications should bypass hvrun where the backend allows it.
pub fn ioeventfd_enabled() -> bool {
    ioeventfd_setting(std::env::var(IOEVENTFD_ENV).ok().as_deref())
}

/// [`IOEVENTFD_ENV`]'s meaning: on unless `off` or `0`.
fn ioeventfd_setting(value: Option<&str>) -> bool {
    !matches!(value.map(str::trim), Some("off" | "0"))
}

/// The thread that serves one device's queue notifications; stopped and joined on drop.
pub struct QueueNotifyThread {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl QueueNotifyThread {
    /// Starts serving the notifiers of the virtio device behind `transport`: for each
    /// (descriptor, queue index), a readable descriptor means the driver notified that queue.
    pub fn spawn(
        name: &str,
        transport: Arc<Mutex<MmioTransport>>,
        notifiers: Vec<(OwnedFd, u16)>,
    ) -> io::Result<Self> {
        Self::spawn_with(name, notifiers, move |queue| {
            transport.lock().unwrap_or_else(|p| p.into_inner()).host_event(queue);
        })
    }

    /// Like [`spawn`](Self::spawn), with `on_notify(queue)` called for each notification.
    fn spawn_with(
        name: &str,
        notifiers: Vec<(OwnedFd, u16)>,
        on_notify: impl FnMut(u16) + Send + 'static,
    ) -> io::Result<Self> {
        let (stop_read, stop_write) = pipe()?;
        let name = format!("{name}-notify");
        let log_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(&log_name, &notifiers, &stop_read, on_notify))?;
        Ok(QueueNotifyThread { stop: stop_write, thread: Some(thread) })
    }
}

impl Drop for QueueNotifyThread {
    fn drop(&mut self) {
        // SAFETY: writes one byte from a valid buffer to a pipe we own.
        unsafe { libc::write(self.stop.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits for notifications (or the stop byte) and reports each. Nothing is allocated per
/// notification: the poll set is built once.
fn serve(name: &str, notifiers: &[(OwnedFd, u16)], stop: &OwnedFd, mut on_notify: impl FnMut(u16)) {
    let mut fds: Vec<libc::pollfd> = (notifiers.iter().map(|(fd, _)| fd.as_raw_fd()))
        .chain([stop.as_raw_fd()])
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let stop_index = fds.len() - 1;
    loop {
        // SAFETY: `fds` is a valid array of pollfd of the given length for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("{name}: waiting for queue notifications failed: {e}");
            return;
        }
        if fds[stop_index].revents != 0 {
            return;
        }
        for (pollfd, (_, queue)) in fds.iter_mut().zip(notifiers) {
            if pollfd.revents & libc::POLLIN == 0 {
                continue;
            }
            pollfd.revents = 0;
            // An eventfd counts notifications; one read clears them all, and one pass over the
            // queue serves every buffer they announced.
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a valid 8-byte buffer.
            unsafe { libc::read(pollfd.fd, count.as_mut_ptr().cast(), count.len()) };
            on_notify(*queue);
        }
    }
}

/// A pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe(2) succeeded, so both descriptors are open and now owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn signal(fd: &OwnedFd) {
        // SAFETY: writes 8 bytes from a valid buffer to a pipe we own.
        unsafe { libc::write(fd.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
    }

    #[test]
    fn each_signalled_descriptor_reports_its_queue_and_drop_stops_the_thread() {
        let (q0_read, q0_write) = pipe().unwrap();
        let (q3_read, q3_write) = pipe().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = QueueNotifyThread::spawn_with("test", vec![(q0_read, 0), (q3_read, 3)], {
            move |queue| tx.send(queue).unwrap()
        })
        .unwrap();
        signal(&q3_write);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
        signal(&q0_write);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(0));
        drop(thread); // returns only once the thread has seen the stop byte and ended
        assert!(rx.recv().is_err(), "the callback is gone with the thread");
    }

    #[test]
    fn the_knob_turns_it_off_and_anything_else_leaves_it_on() {
        assert!(!ioeventfd_setting(Some("off")));
        assert!(!ioeventfd_setting(Some("0")));
        assert!(!ioeventfd_setting(Some(" off\n")));
        assert!(ioeventfd_setting(None));
        assert!(ioeventfd_setting(Some("on")));
        assert!(ioeventfd_setting(Some("1")));
    }
}
