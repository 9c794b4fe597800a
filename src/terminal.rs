//! hvrun's stdin and stdout as the guest's console: the 16550 UART (`ttyS0`) or, with
//! `--console virtio`, virtio-console (`hvc0`).
//!
//! When stdin is a terminal it is put in raw mode, so keys (Ctrl-C included) go to the guest, and
//! restored on every way out: normal return, error, panic, SIGTERM/SIGHUP/SIGQUIT. `Ctrl-A x`
//! quits hvrun; `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest. A single reader thread lives for
//! the whole process and feeds whichever console device the current VM has (a reboot makes a new
//! one).

use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::{ConsoleInputPort, Uart16550};

use crate::control::{StopSignal, VmOutcome};

/// The escape key: Ctrl-A, as in QEMU's `-nographic` and screen.
const ESCAPE: u8 = 0x01;
/// After the escape key, this quits.
const QUIT: u8 = b'x';
/// How long the reader waits for the guest to drain a full receive FIFO.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// The terminal settings to restore; set once when raw mode is entered.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

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

/// Where console input goes right now.
#[derive(Default)]
struct Target {
    sink: Option<Arc<dyn InputSink>>,
    stop: Option<Arc<StopSignal>>,
}

/// The console: owns raw mode (restored on drop) and the stdin reader.
pub struct Console {
    target: Arc<Mutex<Target>>,
    raw_mode: bool,
}

impl Console {
    /// Starts reading stdin; enters raw mode if stdin is a terminal.
    pub fn start() -> Self {
        let raw_mode = enter_raw_mode();
        let target = Arc::new(Mutex::new(Target::default()));
        let reader_target = target.clone();
        let spawned = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || read_stdin(reader_target, raw_mode));
        if let Err(e) = spawned {
            log::warn!("no console input: cannot start the reader thread: {e}");
        }
        Console { target, raw_mode }
    }

    /// Sends input to `sink`; the quit key stops `stop`'s VM.
    pub fn attach(&self, sink: Arc<dyn InputSink>, stop: Arc<StopSignal>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) =
            Target { sink: Some(sink), stop: Some(stop) };
    }

    /// Stops sending input anywhere (the VM is gone).
    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Target::default();
    }

    /// Whether the terminal is in raw mode (so the quit key works).
    pub fn is_raw(&self) -> bool {
        self.raw_mode
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads stdin until EOF, handling the escape key in raw mode.
fn read_stdin(target: Arc<Mutex<Target>>, escapes: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    let mut after_escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("console input stopped: {e}");
                return;
            }
        };
        let mut input = Vec::with_capacity(n);
        for &byte in &buf[..n] {
            if !escapes {
                input.push(byte);
            } else if after_escape {
                after_escape = false;
                match byte {
                    QUIT => {
                        let stop = target.lock().unwrap_or_else(|p| p.into_inner()).stop.clone();
                        if let Some(stop) = stop {
                            stop.request(VmOutcome::Quit);
                        }
                    }
                    ESCAPE => input.push(ESCAPE),
                    _ => {}
                }
            } else if byte == ESCAPE {
                after_escape = true;
            } else {
                input.push(byte);
            }
        }
        deliver(&target, &input);
    }
}

/// Hands `input` to the current console device, waiting while it is full — or while there is
/// none yet: input piped in before the VM is built (or typed during a reboot) waits for it.
fn deliver(target: &Mutex<Target>, mut input: &[u8]) {
    while !input.is_empty() {
        let sink = target.lock().unwrap_or_else(|p| p.into_inner()).sink.clone();
        let taken = sink.map_or(0, |sink| sink.enqueue_input(input));
        input = &input[taken..];
        if taken == 0 {
            std::thread::sleep(FIFO_FULL_BACKOFF);
        }
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
        return true; // already raw (a second Console in the same process)
    }
    install_restore_on_exit();
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

/// Makes panics and fatal signals restore the terminal before the process dies.
fn install_restore_on_exit() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the handler only calls async-signal-safe functions (tcsetattr, signal, raise).
        unsafe { libc::signal(signal, restore_and_reraise as *const () as libc::sighandler_t) };
    }
}

extern "C" fn restore_and_reraise(signal: libc::c_int) {
    restore_terminal();
    // SAFETY: restoring the default disposition and re-raising ends the process the way the
    // signal would have; both calls are async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
