//! hvrun's terminal: stdin and stdout as the guest's console (the 16550 UART, `ttyS0`, or with
//! `--console virtio` virtio-console, `hvc0`), and the signals that end hvrun.
//!
//! When stdin is a terminal it is put in raw mode, so keys (Ctrl-C included) go to the guest, and
//! restored on every way out: normal return, error, panic, a termination signal. `Ctrl-A x`
//! quits hvrun; `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest (`input.rs`). Guest output goes
//! to stdout through a bounded buffer and a writer thread of its own (`output.rs`), so a
//! terminal that stops reading never stalls a vCPU. SIGTERM, SIGHUP and SIGINT stop the VM
//! cleanly (`signals.rs`). One terminal lives for the whole process and serves whichever VM runs
//! (a reboot makes new console devices).

mod input;
mod output;
mod signals;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::{ConsoleInputPort, Uart16550};

use crate::control::VmControl;
pub use output::{ConsoleOutput, OutputWriter, OUTPUT_CAPACITY};

/// The terminal settings to restore; set once when raw mode is entered.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

/// How long hvrun waits, when it exits, for guest output still buffered to reach stdout.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest device that takes console input.
pub trait InputSink: Send + Sync {
    /// Takes what fits of `input` now; returns how many bytes (0 while the guest is not
    /// reading, and the reader retries shortly).
    fn enqueue_input(&self, input: &[u8]) -> usize;
}

impl InputSink for Mutex<Uart16550> {
    fn enqueue_input(&self, input: &[u8]) -> usize {
        self.lock().unwrap_or_else(|p| p.into_inner()).enqueue_input(input)
    }
}

impl InputSink for ConsoleInputPort {
    fn enqueue_input(&self, input: &[u8]) -> usize {
        self.send(input)
    }
}

/// The terminal: raw mode (restored on drop), the stdin reader, the stdout writer and the
/// termination signals, all steering one [`VmControl`].
pub struct Terminal {
    input: Arc<input::InputTarget>,
    output: ConsoleOutput,
    raw_mode: bool,
}

impl Terminal {
    /// Takes over stdin (raw mode if it is a terminal), stdout and the termination signals.
    /// Call it before any other thread starts: the signals are blocked in every thread created
    /// afterwards and received by one thread of the terminal's own.
    pub fn start(control: Arc<VmControl>) -> Self {
        signals::stop_on_termination(control.clone());
        Self::start_keeping_signals(control)
    }

    /// Like [`start`](Self::start), but leaves SIGTERM, SIGHUP and SIGINT alone, for an engine
    /// that answers them itself (the Virtualization.framework engine asks the guest to shut
    /// down first).
    pub fn start_keeping_signals(control: Arc<VmControl>) -> Self {
        let raw_mode = enter_raw_mode();
        let input = input::start_reader(control, raw_mode);
        Terminal { input, output: ConsoleOutput::start(), raw_mode }
    }

    /// A writer for a console device: what the guest prints goes to stdout, never blocking.
    pub fn output(&self) -> OutputWriter {
        self.output.writer()
    }

    /// Sends input to `sink` (the current VM's console device).
    pub fn attach(&self, sink: Arc<dyn InputSink>) {
        self.input.set(Some(sink));
    }

    /// Stops sending input anywhere (the VM is gone); input waits for the next one.
    pub fn detach(&self) {
        self.input.set(None);
    }

    /// Whether the terminal is in raw mode (so the quit key works).
    pub fn is_raw(&self) -> bool {
        self.raw_mode
    }
}

impl Drop for Terminal {
    /// Writes out the guest output still buffered (bounded by a timeout, in case stdout no
    /// longer drains) and restores the terminal.
    fn drop(&mut self) {
        self.output.drain(OUTPUT_DRAIN_TIMEOUT);
        restore_terminal();
    }
}

/// Puts the terminal on stdin into raw mode; false if stdin is not a terminal.
fn enter_raw_mode() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return false;
    }
    // SAFETY: termios is plain data; all-zero is a valid value to be overwritten by tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid, writable termios.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
        return false;
    }
    if SAVED_TERMIOS.set(saved).is_err() {
        return true; // already raw (a second Terminal in the same process)
    }
    install_restore_on_panic();
    let mut raw = saved;
    // SAFETY: `raw` is a valid termios; cfmakeraw only edits its flags.
    unsafe { libc::cfmakeraw(&mut raw) };
    // SAFETY: `raw` is a valid termios for this terminal.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) == 0 }
}

/// Restores the terminal settings saved by [`enter_raw_mode`]. Async-signal-safe.
fn restore_terminal() {
    if let Some(saved) = SAVED_TERMIOS.get() {
        // SAFETY: `saved` is the termios tcgetattr returned for this terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}

/// Makes a panic restore the terminal before the message is printed.
fn install_restore_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
}
