//! SIGTERM, SIGHUP and SIGINT stop the VM the way Ctrl-A x does: the vCPUs leave the guest, the
//! devices finish the request in hand, statistics are printed, the terminal is restored, and
//! hvrun exits with 128 + the signal's number. A second such signal ends hvrun at once.
//!
//! The signals are blocked in every thread (the mask is inherited, so this runs before any
//! other thread exists) and taken by one thread with `sigwait`, where calling into the VM's
//! control is safe — unlike in a signal handler. SIGQUIT keeps its default (a core dump) but
//! restores the terminal first.

use std::sync::Arc;

use crate::control::{VmControl, VmOutcome};

/// The signals that mean "stop, cleanly".
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT];

/// Blocks the stop signals here (and so in every thread started later) and starts the thread
/// that turns them into a stop of `control`'s VM.
pub(super) fn stop_on_termination(control: Arc<VmControl>) {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only edit it and this thread's mask.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0
    };
    if !blocked {
        log::warn!("cannot block termination signals; SIGTERM will end hvrun without cleanup");
        return;
    }
    // SAFETY: installing a handler whose body only calls async-signal-safe functions.
    unsafe { libc::signal(libc::SIGQUIT, restore_and_reraise as *const () as libc::sighandler_t) };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut stopping = false;
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` and `signal` are valid for the call; sigwait only reads and writes them.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            if stopping {
                super::restore_terminal();
                eprintln!("hvrun: second signal {signal}: exiting now");
                std::process::exit(128 + signal);
            }
            stopping = true;
            log::info!("signal {signal}: stopping the VM");
            control.request_stop(VmOutcome::Signal(signal));
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}); SIGTERM will be ignored");
    }
}

extern "C" fn restore_and_reraise(signal: libc::c_int) {
    super::restore_terminal();
    // SAFETY: restoring the default disposition and re-raising ends the process the way the
    // signal would have; both calls are async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
