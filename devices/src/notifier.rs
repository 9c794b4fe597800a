//! A doorbell between threads that `poll(2)` can wait on: one side rings it, the other wakes up
//! and clears it. Rings coalesce — ten rings before the waiter looks are one wake-up — which is
//! all a virtqueue notification needs (one pass over the queue serves every buffer announced).
//!
//! On Linux it is an eventfd, which KVM can ring from the kernel when the guest writes a
//! register (KVM_IOEVENTFD, api.rst §4.59): the notification then never reaches hvrun as an
//! exit. Elsewhere (macOS) it is a non-blocking pipe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A level-triggered, coalescing wake-up.
#[derive(Debug)]
pub struct Notifier {
    /// The end `poll` waits on.
    read: OwnedFd,
    /// The end `notify` writes; `None` when it is the same descriptor (an eventfd).
    write: Option<OwnedFd>,
}

impl Notifier {
    /// A notifier nobody has rung.
    pub fn new() -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: eventfd has no memory arguments; it returns a new descriptor or -1.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            Ok(Notifier { read: unsafe { OwnedFd::from_raw_fd(fd) }, write: None })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe(2) succeeded, so both descriptors are open and owned only here.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            for fd in [&read, &write] {
                set_nonblocking_cloexec(fd.as_raw_fd())?;
            }
            Ok(Notifier { read, write: Some(write) })
        }
    }

    /// Rings: the waiter's descriptor becomes readable. Never blocks; a full pipe or a saturated
    /// counter means it is already rung, which is all that matters.
    pub fn notify(&self) {
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one = 1u64.to_ne_bytes();
        // An eventfd wants exactly 8 bytes; a pipe takes them as a token.
        // SAFETY: writes 8 bytes from a valid buffer to a descriptor we own.
        let n = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                log::error!("notifier: cannot ring descriptor {fd}: {e}");
            }
        }
    }

    /// Clears every ring so far (call after `poll` said the descriptor is readable).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads at most 64 bytes into a valid 64-byte buffer.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // An eventfd returns its whole count in one read; a pipe may hold more tokens.
            if n <= 0 || self.write.is_none() {
                return;
            }
        }
    }

    /// Whether it was rung and not drained since (without draining it).
    pub fn is_rung(&self) -> bool {
        let mut pollfd =
            libc::pollfd { fd: self.read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pollfd, 1, 0) == 1 && pollfd.revents & libc::POLLIN != 0 }
    }
}

impl AsRawFd for Notifier {
    /// The descriptor to wait on for readability. On Linux it is an eventfd, so a hypervisor
    /// can ring it too.
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_coalesce_until_drained() {
        let n = Notifier::new().unwrap();
        assert!(!n.is_rung());
        n.notify();
        n.notify();
        n.notify();
        assert!(n.is_rung());
        n.drain();
        assert!(!n.is_rung(), "one drain clears every ring");
        n.notify();
        assert!(n.is_rung());
    }

    #[test]
    fn ringing_never_blocks_even_when_nobody_drains() {
        let n = Notifier::new().unwrap();
        // Far more than a pipe buffer holds (64 KiB / 8 bytes); an eventfd counter just grows.
        for _ in 0..20_000 {
            n.notify();
        }
        assert!(n.is_rung());
        n.drain();
        assert!(!n.is_rung());
    }
}
