//! Shared by the end-to-end tests: finds the guest kernel and initramfs built by
//! `tests/guest/build-artifacts.sh`, checks KVM is really there, and runs hvrun with a deadline.
//!
//! The tests fail — loudly, with what to do — when KVM or the artifacts are missing: a skipped
//! e2e test must never look like a passing one.

#![allow(dead_code)]

pub mod session;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A per-test directory under the system temp dir, removed (with its images) when dropped, so
/// runs on a native arm64 host do not pile up disk images in /tmp.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hvrun-e2e-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
        Scratch(dir)
    }

    /// A file path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest's /init prints this once its modules are loaded.
pub const READY: &str = "HVRUN-GUEST-READY";
/// How long one guest may take before the test gives up and kills hvrun.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Where the guest artifacts are.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("HVRUN_GUEST_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/guest-artifacts"))
    });
    for file in ["Image", "Image.gz", "guest-initrd.cpio.gz"] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: build the guest artifacts with tests/guest/build-artifacts.sh",
            dir.join(file).display()
        );
    }
    dir
}

/// Panics unless /dev/kvm is a working KVM (API version 12, VM creation works).
pub fn require_kvm() {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .unwrap_or_else(|e| panic!("e2e tests need arm64 KVM: cannot open /dev/kvm: {e} (run them with tests/run-all.sh)"));
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    assert_eq!(version, 12, "/dev/kvm is not a working KVM (KVM_GET_API_VERSION = {version})");
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    assert!(vm >= 0, "/dev/kvm cannot create a VM: {}", std::io::Error::last_os_error());
    // SAFETY: `vm` is a descriptor we own.
    unsafe { libc::close(vm) };
}

/// The hvrun binary under test.
pub fn hvrun() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hvrun"));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// hvrun booting the test kernel and initramfs; `guest_cmd` runs in the guest, then it powers off.
pub fn guest(extra_args: &[&str], guest_cmd: &str) -> Command {
    guest_with_cmdline(extra_args, &format!("console=ttyS0 quiet -- {guest_cmd}"))
}

/// Linux hands at most 32 words after ` -- ` to init (MAX_INIT_ARGS in init/main.c); with more it
/// panics before the console exists, and the guest hangs in silence. Keep a margin. It also stops
/// at a second `--`, silently dropping the rest.
const MAX_GUEST_WORDS: usize = 30;

/// hvrun booting the test kernel and initramfs with the whole kernel command line given.
pub fn guest_with_cmdline(extra_args: &[&str], cmdline: &str) -> Command {
    guest_with_initrd(&artifacts().join("guest-initrd.cpio.gz"), extra_args, cmdline)
}

/// hvrun booting the test kernel with `initrd` (e.g. the test initramfs with more archives
/// appended) and the whole kernel command line given.
pub fn guest_with_initrd(initrd: &std::path::Path, extra_args: &[&str], cmdline: &str) -> Command {
    if let Some((_, init_args)) = cmdline.split_once(" -- ") {
        let words = init_args.split_whitespace().count();
        assert!(
            words <= MAX_GUEST_WORDS,
            "the guest command has {words} words; the kernel passes at most 32 to init: shorten it"
        );
        assert!(
            !init_args.split_whitespace().any(|w| w == "--"),
            "the kernel drops everything after a second `--` in the guest command: avoid it"
        );
    }
    require_kvm();
    let dir = artifacts();
    let mut cmd = hvrun();
    cmd.arg("--kernel").arg(dir.join("Image"));
    cmd.arg("--initrd").arg(initrd);
    cmd.args(["--cmdline", cmdline]);
    cmd.args(extra_args);
    cmd
}

/// What a finished hvrun run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// For assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it after [`DEADLINE`].
pub fn run(cmd: Command) -> Run {
    run_with_input(cmd, &[])
}

/// Runs `cmd` with `input` on its stdin (then end of file), killing it after [`DEADLINE`].
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Run {
    use std::io::Write;
    if !input.is_empty() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("cannot start hvrun");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).expect("cannot write hvrun's stdin");
    }
    let output = wait_with_deadline(child, DEADLINE);
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `cmd`, and once a line of its stdout contains `prompt`, writes `input` to its stdin
/// (then end of file) — as a person would type an answer. Kills it after [`DEADLINE`].
pub fn run_answering(mut cmd: Command, prompt: &str, input: &[u8]) -> Run {
    use std::io::Write;
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start hvrun");
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = drain(child.stderr.take());
    let rx = lines_of(stdout);
    let start = Instant::now();
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.contains(prompt) {
                    if let Some(mut pipe) = stdin.take() {
                        pipe.write_all(input).expect("cannot write hvrun's stdin");
                    }
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < DEADLINE => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hvrun did not finish within {DEADLINE:?}; it printed:\n{}",
                    lines.join("\n")
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().expect("waiting for hvrun");
    Run {
        code: status.code(),
        stdout: lines.join("\n"),
        stderr: String::from_utf8_lossy(&stderr.recv().unwrap_or_default()).into_owned(),
    }
}

fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for hvrun") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.recv().unwrap_or_default()).into_owned();
            panic!("hvrun did not finish within {deadline:?}; it printed:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.recv().unwrap_or_default(),
        stderr: stderr.recv().unwrap_or_default(),
    }
}

/// Sends each line of `pipe` as it arrives, from a thread of its own.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads a pipe to the end on its own thread.
pub(crate) fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Starts `cmd` and reads its stdout line by line until `stop(line)` returns true or the deadline
/// passes; then kills it. Returns the lines read.
pub fn run_until(mut cmd: Command, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut child = cmd.spawn().expect("cannot start hvrun");
    let stdout = child.stdout.take().expect("piped stdout");
    let rx = lines_of(stdout);
    let start = Instant::now();
    let mut lines = Vec::new();
    let reached = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = stop(&line);
                lines.push(line);
                if done {
                    break true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < DEADLINE => {}
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        reached,
        "hvrun ended or timed out before the expected output; it printed:\n{}",
        lines.join("\n")
    );
    lines
}
