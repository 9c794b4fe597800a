//! Driving a running hvrun from a test: wait for lines, act (signal it, type into its
//! terminal), and see how long it took to exit after the guest's last line. Also a CPU hog, for
//! tests that must pass on a loaded machine, and guest scripts on a disk.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{drain, Scratch, DEADLINE};

/// A running hvrun whose stdout is read line by line.
pub struct Session {
    child: Child,
    lines: mpsc::Receiver<(String, Instant)>,
    stderr: mpsc::Receiver<Vec<u8>>,
    seen: Vec<String>,
    last_line_at: Instant,
    started: Instant,
}

/// How a session ended.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From the last line hvrun printed on stdout to its exit.
    pub exit_after_last_line: Duration,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?} ({:?} after the last line)\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.exit_after_last_line, self.stdout, self.stderr
        )
    }
}

impl Session {
    /// Starts `cmd` (its stdout and stderr are piped here; stdin is left as configured).
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start hvrun");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = drain(child.stderr.take());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            // Byte by byte, so a line's time is when its newline arrived.
            while let Ok(1) = reader.read(&mut byte) {
                if byte[0] == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                    if tx.send((text, Instant::now())).is_err() {
                        return;
                    }
                    line.clear();
                } else {
                    line.push(byte[0]);
                }
            }
        });
        let now = Instant::now();
        Session { child, lines, stderr, seen: Vec::new(), last_line_at: now, started: now }
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads lines until one contains `pattern`; panics (after killing hvrun) if hvrun ends or
    /// [`DEADLINE`] passes first.
    pub fn wait_for(&mut self, pattern: &str) {
        loop {
            let left = DEADLINE.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok((line, at)) => {
                    self.last_line_at = at;
                    let found = line.contains(pattern);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "no line with {pattern:?} before hvrun ended or {DEADLINE:?} passed; it printed:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for hvrun to exit (killing it after [`DEADLINE`]) and collects what it printed.
    pub fn finish(mut self) -> Finished {
        loop {
            let left = DEADLINE.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok((line, at)) => {
                    self.last_line_at = at;
                    self.seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "hvrun did not exit within {DEADLINE:?}; it printed:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
        // Stdout closed: the process is exiting; reap it.
        let status = self.child.wait().expect("waiting for hvrun");
        let exited = Instant::now();
        Finished {
            code: status.code(),
            stdout: self.seen.join("\n"),
            stderr: String::from_utf8_lossy(&self.stderr.recv().unwrap_or_default()).into_owned(),
            exit_after_last_line: exited.saturating_duration_since(self.last_line_at),
        }
    }
}

/// Threads that keep the CPUs busy until dropped, as other work on a CI machine does.
pub struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    /// `threads` spinning threads.
    pub fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A read-only disk image holding a shell script, for guests whose command is longer than the
/// kernel lets init have (32 words): the guest runs it with `sh /dev/vdX`. Padded with newlines
/// to whole sectors; the script should end with an `exit`.
pub fn script_disk(scratch: &Scratch, name: &str, script: &str) -> PathBuf {
    let mut bytes = script.as_bytes().to_vec();
    bytes.push(b'\n');
    bytes.resize(bytes.len().next_multiple_of(4096), b'\n');
    let path = scratch.path(name);
    std::fs::write(&path, bytes).expect("cannot write the script disk");
    path
}
