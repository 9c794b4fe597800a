//! The vz engine's console input: hvrun's terminal reader (raw mode, Ctrl-A x) writes the keys
//! into a pipe whose other end is the guest's virtio console. VZ reads its file handle itself, so
//! handing it stdin directly would bypass hvrun's escape key; the guest's output goes to stdout
//! directly.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::terminal::InputSink;

/// A pipe for console input: VZ reads `read`; the terminal writes through `input`.
pub struct ConsolePipe {
    pub read: OwnedFd,
    pub input: PipeInput,
}

/// The writing end, non-blocking: a guest that does not read never stalls the terminal reader
/// (which must still see Ctrl-A x).
pub struct PipeInput {
    write: OwnedFd,
}

impl ConsolePipe {
    /// Creates the pipe (both ends close-on-exec).
    pub fn new() -> std::io::Result<ConsolePipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            // SAFETY: F_SETFD on a descriptor we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let nonblocking = flags | libc::O_NONBLOCK;
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, nonblocking) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ConsolePipe { read, input: PipeInput { write } })
    }
}

impl InputSink for PipeInput {
    fn enqueue_input(&self, input: &[u8]) -> usize {
        // SAFETY: writes from a valid slice to a descriptor we own.
        let n = unsafe { libc::write(self.write.as_raw_fd(), input.as_ptr().cast(), input.len()) };
        if n >= 0 {
            return n as usize;
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            // Full: the guest is not reading; the terminal reader retries shortly.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => 0,
            // The VM closed its end (it stopped): the input has nowhere to go, drop it.
            _ => {
                log::debug!("console input dropped: {err}");
                input.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_some(fd: &OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 20];
        // SAFETY: reads into a valid buffer from a descriptor we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        buf
    }

    #[test]
    fn keys_reach_the_reading_end() {
        let pipe = ConsolePipe::new().unwrap();
        assert_eq!(pipe.input.enqueue_input(b"ls\r"), 3);
        assert_eq!(read_some(&pipe.read), b"ls\r");
    }

    #[test]
    fn a_full_pipe_takes_nothing_instead_of_blocking() {
        let pipe = ConsolePipe::new().unwrap();
        let chunk = vec![b'x'; 4096];
        let mut written = 0;
        loop {
            let n = pipe.input.enqueue_input(&chunk);
            if n == 0 {
                break;
            }
            written += n;
            assert!(written < 64 << 20, "the pipe never filled");
        }
        assert!(written > 0);
        assert_eq!(pipe.input.enqueue_input(b"y"), 0, "still full");
        let drained = read_some(&pipe.read).len();
        assert!(drained > 0);
        assert!(pipe.input.enqueue_input(b"y") == 1, "room again after the guest read");
    }

    #[test]
    fn input_for_a_stopped_vm_is_dropped_not_retried() {
        let ConsolePipe { read, input } = ConsolePipe::new().unwrap();
        drop(read);
        // EPIPE (Rust ignores SIGPIPE): everything is "taken", so the reader moves on.
        assert_eq!(input.enqueue_input(b"abc"), 3);
    }
}
