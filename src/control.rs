//! How a running VM comes to an end: any thread (a vCPU that saw PSCI SYSTEM_OFF, the pvpanic
//! device, the console's quit key) records *why* and kicks every vCPU out of the guest; the
//! main thread waits for that, then joins the vCPU threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off (PSCI SYSTEM_OFF).
    PowerOff,
    /// The guest asked for a reset (PSCI SYSTEM_RESET).
    Reset,
    /// The guest kernel panicked (pvpanic) or reported a crash.
    GuestPanic,
    /// The user quit from the console (Ctrl-A x).
    Quit,
    /// hvrun could not go on; the message says why.
    Failed(String),
}

/// A kick function for one vCPU.
type Kick = Box<dyn Fn() + Send + Sync>;

/// Shared by all threads of one VM.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    outcome: Mutex<Option<VmOutcome>>,
    stopped: Condvar,
    kicks: Mutex<Vec<Kick>>,
}

impl StopSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the VM is stopping; vCPU loops check this after every exit (one relaxed load).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Registers how to kick one vCPU out of the guest.
    pub fn add_kick(&self, kick: impl Fn() + Send + Sync + 'static) {
        self.kicks.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(kick));
    }

    /// Stops the VM for `outcome`. The first request wins; later ones are logged and dropped.
    pub fn request(&self, outcome: VmOutcome) {
        let mut current = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = current.as_ref() {
            log::debug!("already stopping ({first:?}); ignoring {outcome:?}");
            return;
        }
        *current = Some(outcome);
        self.stopping.store(true, Ordering::SeqCst);
        // Kick while holding `outcome`: `wait` cannot disarm the kicks before they are delivered.
        for kick in self.kicks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            kick();
        }
        drop(current);
        self.stopped.notify_all();
    }

    /// Blocks until some thread requests a stop; then disarms the kicks (the vCPU threads are
    /// about to be joined, and a joined thread must never be signalled) and returns the outcome.
    pub fn wait(&self) -> VmOutcome {
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        while outcome.is_none() {
            outcome = self.stopped.wait(outcome).unwrap_or_else(|p| p.into_inner());
        }
        let result = outcome.clone().unwrap_or(VmOutcome::Quit);
        drop(outcome);
        self.kicks.lock().unwrap_or_else(|p| p.into_inner()).clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn first_request_wins_and_kicks_everyone() {
        let stop = Arc::new(StopSignal::new());
        let kicked = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let k = kicked.clone();
            stop.add_kick(move || {
                k.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(!stop.is_stopping());
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait())
        };
        stop.request(VmOutcome::PowerOff);
        stop.request(VmOutcome::Reset);
        assert!(stop.is_stopping());
        assert_eq!(waiter.join().unwrap(), VmOutcome::PowerOff);
        assert_eq!(kicked.load(Ordering::SeqCst), 3);
        // After wait() the kicks are disarmed.
        stop.request(VmOutcome::Quit);
        assert_eq!(kicked.load(Ordering::SeqCst), 3);
    }
}
