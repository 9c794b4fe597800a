//! Guest console output on its way to stdout, through a bounded buffer and a writer thread.
//!
//! Console devices write from vCPU threads (the UART) and device workers (virtio-console).
//! Writing to stdout there would let a terminal that stops reading — a paused pager, XOFF, a
//! full pipe — freeze the guest and, through the device lock, the quit key. So devices append to
//! a buffer (never blocking) and one thread does the blocking writes. If the buffer is full the
//! newest bytes are dropped and counted, and hvrun says so: losing console output is better than
//! a stuck VM. As a side effect the UART's byte-at-a-time output reaches stdout in batches.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much guest output may wait for stdout before more is dropped.
pub const OUTPUT_CAPACITY: usize = 1 << 20;

#[derive(Default)]
struct Pending {
    bytes: VecDeque<u8>,
    /// Bytes dropped because the buffer was full, not yet reported.
    dropped: u64,
    /// No more output will come: the writer ends once the buffer is empty.
    closed: bool,
    /// The writer is writing a batch it took out of the buffer.
    writing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The output side of the terminal: owns the writer thread.
pub struct ConsoleOutput {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleOutput {
    /// Starts the writer thread on stdout.
    pub fn start() -> Self {
        Self::start_on(Box::new(io::stdout()))
    }

    /// Starts the writer thread on `out` (stdout, or a test's pipe).
    pub fn start_on(out: Box<dyn Write + Send>) -> Self {
        let shared =
            Arc::new(Shared { pending: Mutex::new(Pending::default()), changed: Condvar::new() });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || write_out(&writer_shared, out))
            .map_err(|e| log::warn!("no console output thread ({e}): guest output is dropped"))
            .ok();
        ConsoleOutput { shared, thread }
    }

    /// A writer for one console device.
    pub fn writer(&self) -> OutputWriter {
        OutputWriter { shared: self.shared.clone() }
    }

    /// Lets the writer finish what is buffered, waiting at most `timeout` (stdout may be stuck
    /// for good); afterwards nothing more is written.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending = self.shared.lock();
        pending.closed = true;
        self.shared.changed.notify_all();
        while (!pending.bytes.is_empty() || pending.writing) && self.thread.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "{} bytes of guest output not written: stdout did not drain",
                    pending.bytes.len()
                );
                return; // the thread stays blocked in write; the process ends anyway
            }
            pending = self
                .shared
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(pending);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: takes everything buffered, writes it, repeats.
fn write_out(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    let mut failed = false;
    loop {
        let dropped;
        {
            let mut pending = shared.lock();
            pending.writing = false;
            shared.changed.notify_all();
            while pending.bytes.is_empty() && !pending.closed {
                pending = shared.changed.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            if pending.bytes.is_empty() {
                return; // closed and drained
            }
            batch.clear();
            batch.extend(pending.bytes.drain(..));
            dropped = std::mem::take(&mut pending.dropped);
            pending.writing = true;
        }
        if dropped > 0 {
            log::warn!("{dropped} bytes of guest console output dropped: stdout is not draining");
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            if !failed {
                log::warn!("console output failed, guest output is being dropped: {e}");
                failed = true;
            }
        }
    }
}

/// What a console device writes to: appends to the buffer and returns at once.
#[derive(Clone)]
pub struct OutputWriter {
    shared: Arc<Shared>,
}

impl Write for OutputWriter {
    /// Takes all of `buf`: what does not fit is dropped (and reported by the writer thread), so
    /// the guest never waits for the host's terminal.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        if !pending.closed {
            let room = OUTPUT_CAPACITY.saturating_sub(pending.bytes.len());
            let taken = buf.len().min(room);
            pending.bytes.extend(&buf[..taken]);
            pending.dropped += (buf.len() - taken) as u64;
            if taken > 0 {
                self.shared.changed.notify_all();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose writes block until the test opens the gate.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cond) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cond.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_a_device_and_the_excess_is_dropped() {
        let gate = Gate { open: Arc::default(), got: Arc::default() };
        let mut output = ConsoleOutput::start_on(Box::new(gate.clone()));
        let mut device = output.writer();
        let started = Instant::now();
        // Twice the capacity while stdout is stuck: every write returns at once.
        for _ in 0..2 * OUTPUT_CAPACITY / 4096 {
            assert_eq!(device.write(&[b'x'; 4096]).unwrap(), 4096);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "writes never wait for stdout");
        let (lock, cond) = &*gate.open;
        *lock.lock().unwrap() = true;
        cond.notify_all();
        device.write_all(b"end").unwrap();
        output.drain(Duration::from_secs(30));
        let got = gate.got.lock().unwrap();
        // Up to the capacity (plus the batch the writer already held) arrived; the rest was
        // dropped, and nothing arrives out of order.
        assert!(got.len() <= 2 * OUTPUT_CAPACITY && got.len() >= OUTPUT_CAPACITY, "{}", got.len());
        assert!(got.iter().all(|&b| b == b'x' || b"end".contains(&b)));
    }

    #[test]
    fn everything_written_reaches_the_sink_in_order() {
        let gate = Gate { open: Arc::new((Mutex::new(true), Condvar::new())), got: Arc::default() };
        let mut output = ConsoleOutput::start_on(Box::new(gate.clone()));
        let mut a = output.writer();
        for i in 0..1000u32 {
            a.write_all(format!("{i},").as_bytes()).unwrap();
        }
        output.drain(Duration::from_secs(30));
        let expected: String = (0..1000u32).map(|i| format!("{i},")).collect();
        assert_eq!(String::from_utf8(gate.got.lock().unwrap().clone()).unwrap(), expected);
        // After the drain nothing more is written.
        a.write_all(b"late").unwrap();
        assert!(!String::from_utf8_lossy(&gate.got.lock().unwrap()).contains("late"));
    }
}
