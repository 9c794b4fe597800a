//! The stdin reader: one thread for the whole process, feeding whichever console device the
//! current VM has, and watching for the escape key (Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::InputSink;
use crate::control::{VmControl, VmOutcome};

/// The escape key: Ctrl-A, as in QEMU's `-nographic` and screen.
const ESCAPE: u8 = 0x01;
/// After the escape key, this quits.
const QUIT: u8 = b'x';
/// How long the reader waits for the guest to drain a full receive FIFO.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Where console input goes right now.
#[derive(Default)]
pub(super) struct InputTarget {
    sink: Mutex<Option<Arc<dyn InputSink>>>,
}

impl InputTarget {
    pub(super) fn set(&self, sink: Option<Arc<dyn InputSink>>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    fn get(&self) -> Option<Arc<dyn InputSink>> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts the reader thread; escapes are honoured only in raw mode (otherwise Ctrl-A is just a
/// byte, and the shell's Ctrl-C is a signal).
pub(super) fn start_reader(control: Arc<VmControl>, escapes: bool) -> Arc<InputTarget> {
    let target = Arc::new(InputTarget::default());
    let reader_target = target.clone();
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || read_stdin(&reader_target, &control, escapes));
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start the reader thread: {e}");
    }
    target
}

/// What one chunk of stdin means: bytes for the guest, and whether the quit key came.
#[derive(Debug, Default, PartialEq, Eq)]
struct Keys {
    input: Vec<u8>,
    quit: bool,
}

/// Splits `bytes` into guest input and escape commands; `after_escape` carries a trailing
/// Ctrl-A over to the next chunk.
fn decode(bytes: &[u8], escapes: bool, after_escape: &mut bool) -> Keys {
    let mut keys = Keys { input: Vec::with_capacity(bytes.len()), quit: false };
    for &byte in bytes {
        if !escapes {
            keys.input.push(byte);
        } else if *after_escape {
            *after_escape = false;
            match byte {
                QUIT => keys.quit = true,
                ESCAPE => keys.input.push(ESCAPE),
                _ => {}
            }
        } else if byte == ESCAPE {
            *after_escape = true;
        } else {
            keys.input.push(byte);
        }
    }
    keys
}

/// Reads stdin until EOF.
fn read_stdin(target: &InputTarget, control: &VmControl, escapes: bool) {
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
        let keys = decode(&buf[..n], escapes, &mut after_escape);
        if keys.quit {
            control.request_stop(VmOutcome::Quit);
        }
        deliver(target, &keys.input);
    }
}

/// Hands `input` to the current console device, waiting while it is full — or while there is
/// none yet: input piped in before the VM is built (or typed during a reboot) waits for it.
fn deliver(target: &InputTarget, mut input: &[u8]) {
    while !input.is_empty() {
        let taken = target.get().map_or(0, |sink| sink.enqueue_input(input));
        input = &input[taken..];
        if taken == 0 {
            std::thread::sleep(FIFO_FULL_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quit_and_pass_a_literal_ctrl_a() {
        let mut after = false;
        assert_eq!(
            decode(b"ab\x01x", true, &mut after),
            Keys { input: b"ab".to_vec(), quit: true }
        );
        assert_eq!(
            decode(b"\x01\x01c", true, &mut after),
            Keys { input: b"\x01c".to_vec(), quit: false }
        );
        // A Ctrl-A at the end of one read applies to the next.
        assert_eq!(decode(b"z\x01", true, &mut after), Keys { input: b"z".to_vec(), quit: false });
        assert!(after);
        assert_eq!(decode(b"x", true, &mut after), Keys { input: vec![], quit: true });
        // Any other key after Ctrl-A is swallowed; without raw mode nothing is special.
        assert_eq!(decode(b"\x01qr", true, &mut after), Keys { input: b"r".to_vec(), quit: false });
        assert_eq!(
            decode(b"\x01x", false, &mut after),
            Keys { input: b"\x01x".to_vec(), quit: false }
        );
    }
}
