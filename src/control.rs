//! Steering a running VM from outside its vCPUs: stop it (the first reason wins), pause and
//! resume it, and ask it things through requests that the VM-owning thread serves.
//!
//! Every vCPU loop reads one atomic word after every exit ([`VmControl::needs_attention`]); it
//! is zero while nothing is asked of the vCPUs, so the hot path pays one relaxed load. Whoever
//! wants the vCPUs' attention (a stop, a pause, a statistics snapshot) sets a bit there and
//! kicks every vCPU out of the guest; each vCPU then calls [`VmControl::attend`], which tells it
//! what to do and, while the VM is paused, parks it on a condition variable — no spinning, and
//! no interrupt is lost, because the interrupt controller keeps whatever became pending and the
//! vCPU sees it when it re-enters the guest.
//!
//! The VM-owning thread (the one that built the VM) waits in [`VmControl::next_event`] for a
//! stop or a [`VmRequest`]; the REST API and the terminal only ever talk to this type.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::stats::RunStats;

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
    /// hvrun got a termination signal (SIGTERM, SIGHUP, SIGINT): its number.
    Signal(i32),
    /// hvrun could not go on; the message says why.
    Failed(String),
}

/// What the VM is doing, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// A stop was requested; the vCPUs are leaving.
    Stopping,
}

impl RunState {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
        }
    }
}

/// Something asked of a running VM that the VM-owning thread answers.
#[derive(Debug)]
pub enum VmRequest {
    /// The exit statistics so far (with `--stats`), including the runs before any reboot.
    Stats(Sender<Option<RunStats>>),
}

/// What [`VmControl::next_event`] hands the VM-owning thread.
#[derive(Debug)]
pub enum ControlEvent {
    /// The VM is stopping for this reason; the vCPUs have been kicked.
    Stopped(VmOutcome),
    /// Answer this, then wait again.
    Request(VmRequest),
}

/// What a vCPU must do after [`VmControl::attend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Enter the guest again.
    Run,
    /// Leave the run loop: the VM is stopping.
    Exit,
    /// Publish your exit statistics with [`VmControl::snapshot_published`], then attend again.
    PublishStats,
}

/// A control operation that cannot be done in the VM's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is already paused; resume it first")]
    AlreadyPaused,
    #[error("the VM is not paused; there is nothing to resume")]
    NotPaused,
    #[error("the VM is stopping; it can no longer be paused, resumed or asked anything")]
    Stopping,
    #[error("the vCPUs did not answer within {0:?}; the VM may be wedged in a device")]
    Timeout(Duration),
}

/// Bits of the attention word.
const STOP: u32 = 1;
const PAUSE: u32 = 2;
const SNAPSHOT: u32 = 4;

/// How long [`VmControl::pause`] and snapshots wait for every vCPU to answer. A vCPU answers
/// as soon as it leaves the guest, which a kick forces at once; only a vCPU stuck inside a
/// device's MMIO handler can take longer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A kick function for one vCPU.
type Kick = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    outcome: Option<VmOutcome>,
    paused: bool,
    /// vCPU threads inside their run loops (attending or running).
    vcpus: u32,
    /// vCPUs parked because the VM is paused.
    parked: u32,
    /// Snapshot round: incremented per request; a vCPU publishes once per round.
    snapshot_round: u64,
    /// vCPUs that still have to publish in the current round.
    snapshot_missing: u32,
    requests: VecDeque<VmRequest>,
}

/// The control state of one VM, shared by every thread that touches it.
#[derive(Default)]
pub struct VmControl {
    attention: AtomicU32,
    state: Mutex<State>,
    changed: Condvar,
    kicks: Mutex<Vec<Kick>>,
}

impl VmControl {
    /// A running VM nobody has asked anything of yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn kick_all(&self) {
        for kick in self.kicks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            kick();
        }
    }

    /// Registers how to kick one vCPU out of the guest.
    pub fn add_kick(&self, kick: impl Fn() + Send + Sync + 'static) {
        self.kicks.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(kick));
    }

    // --- anyone -------------------------------------------------------------------------

    /// Stops the VM for `outcome`. The first request wins; later ones are logged and dropped.
    pub fn request_stop(&self, outcome: VmOutcome) {
        let mut state = self.lock();
        match state.outcome.as_ref() {
            None => {}
            // A guest reset is a stop too, but one that the owner answers with a reboot; a
            // user's stop (a signal, the quit key, the API) that comes before the reboot must
            // not be lost to it.
            Some(VmOutcome::Reset) if outcome != VmOutcome::Reset => {
                log::debug!("stopping for {outcome:?} instead of rebooting");
            }
            Some(first) => {
                log::debug!("already stopping ({first:?}); ignoring {outcome:?}");
                return;
            }
        }
        state.outcome = Some(outcome);
        self.attention.fetch_or(STOP, Ordering::SeqCst);
        // Kick while holding the state: `next_event` cannot disarm the kicks before they are
        // delivered.
        self.kick_all();
        drop(state);
        self.changed.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.attention.load(Ordering::Relaxed) & STOP != 0
    }

    /// Running, paused or stopping.
    pub fn state(&self) -> RunState {
        let state = self.lock();
        if state.outcome.is_some() {
            RunState::Stopping
        } else if state.paused {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    /// Pauses the VM: returns once every vCPU has left the guest and parked.
    pub fn pause(&self) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        if state.paused {
            return Err(ControlError::AlreadyPaused);
        }
        state.paused = true;
        self.attention.fetch_or(PAUSE, Ordering::SeqCst);
        self.kick_all();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while state.parked < state.vcpus && state.outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The vCPUs that have not parked yet will when they next leave the guest.
                return Err(ControlError::Timeout(ANSWER_TIMEOUT));
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        Ok(())
    }

    /// Resumes a paused VM: the parked vCPUs re-enter the guest.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        if !state.paused {
            return Err(ControlError::NotPaused);
        }
        state.paused = false;
        self.attention.fetch_and(!PAUSE, Ordering::SeqCst);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Queues `request` for the VM-owning thread.
    pub fn send(&self, request: VmRequest) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        state.requests.push_back(request);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    // --- the VM-owning thread -----------------------------------------------------------

    /// Blocks until the VM stops or a request arrives. On a stop, disarms the kicks first: the
    /// vCPU threads are about to be joined, and a joined thread must never be signalled.
    pub fn next_event(&self) -> ControlEvent {
        let mut state = self.lock();
        loop {
            if let Some(outcome) = state.outcome.clone() {
                drop(state);
                self.kicks.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return ControlEvent::Stopped(outcome);
            }
            if let Some(request) = state.requests.pop_front() {
                return ControlEvent::Request(request);
            }
            state = self.wait(state);
        }
    }

    /// After the vCPUs of a VM that the guest reset have been joined: makes the control ready
    /// for the rebooted VM. If a final stop (a signal, the quit key, the API) came in meanwhile,
    /// returns it instead and stays stopping.
    pub fn rearm_for_reboot(&self) -> Result<(), VmOutcome> {
        let mut state = self.lock();
        match state.outcome.take() {
            Some(VmOutcome::Reset) | None => {}
            Some(outcome) => {
                state.outcome = Some(outcome.clone());
                return Err(outcome);
            }
        }
        state.paused = false;
        state.parked = 0;
        state.vcpus = 0;
        state.snapshot_missing = 0;
        self.attention.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Asks every vCPU to publish its exit statistics and waits until all have (or the VM
    /// stops, or [`ANSWER_TIMEOUT`] passes). Each vCPU is told by [`Directive::PublishStats`].
    pub fn collect_snapshot(&self) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        state.snapshot_round += 1;
        state.snapshot_missing = state.vcpus;
        self.attention.fetch_or(SNAPSHOT, Ordering::SeqCst);
        self.kick_all();
        // Parked vCPUs publish too: wake them.
        self.changed.notify_all();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while state.snapshot_missing > 0 && state.outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.attention.fetch_and(!SNAPSHOT, Ordering::SeqCst);
                return Err(ControlError::Timeout(ANSWER_TIMEOUT));
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        self.attention.fetch_and(!SNAPSHOT, Ordering::SeqCst);
        if state.outcome.is_some() {
            return Err(ControlError::Stopping);
        }
        Ok(())
    }

    // --- vCPU threads --------------------------------------------------------------------

    /// Whether the vCPU loop must call [`attend`](Self::attend) before entering the guest again.
    /// One relaxed load: the per-exit cost of the whole control seam.
    #[inline]
    pub fn needs_attention(&self) -> bool {
        self.attention.load(Ordering::Relaxed) != 0
    }

    /// A vCPU thread enters its run loop. Returns its handle for [`attend`](Self::attend).
    pub fn vcpu_started(&self) -> VcpuSeat {
        let mut state = self.lock();
        state.vcpus += 1;
        VcpuSeat { published_round: state.snapshot_round }
    }

    /// A vCPU thread leaves its run loop for good.
    pub fn vcpu_finished(&self) {
        let mut state = self.lock();
        state.vcpus = state.vcpus.saturating_sub(1);
        drop(state);
        self.changed.notify_all();
    }

    /// Tells a vCPU that saw [`needs_attention`](Self::needs_attention) what to do. While the
    /// VM is paused this blocks (parked, not spinning) until it is resumed or stopped.
    pub fn attend(&self, seat: &mut VcpuSeat) -> Directive {
        let mut state = self.lock();
        let mut parked = false;
        let directive = loop {
            if state.outcome.is_some() {
                break Directive::Exit;
            }
            if seat.published_round != state.snapshot_round && state.snapshot_missing > 0 {
                break Directive::PublishStats;
            }
            if !state.paused {
                break Directive::Run;
            }
            if !parked {
                parked = true;
                state.parked += 1;
                self.changed.notify_all();
            }
            state = self.wait(state);
        };
        if parked {
            state.parked -= 1;
        }
        if directive == Directive::PublishStats {
            seat.published_round = state.snapshot_round;
        }
        directive
    }

    /// A vCPU has published its statistics for the current snapshot round.
    pub fn snapshot_published(&self) {
        let mut state = self.lock();
        state.snapshot_missing = state.snapshot_missing.saturating_sub(1);
        drop(state);
        self.changed.notify_all();
    }
}

/// One vCPU's place at the control table: which snapshot round it last answered.
#[derive(Debug)]
pub struct VcpuSeat {
    published_round: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn first_stop_wins_and_kicks_everyone() {
        let control = Arc::new(VmControl::new());
        let kicked = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let k = kicked.clone();
            control.add_kick(move || {
                k.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(!control.is_stopping() && !control.needs_attention());
        let waiter = {
            let control = control.clone();
            std::thread::spawn(move || match control.next_event() {
                ControlEvent::Stopped(outcome) => outcome,
                other => panic!("unexpected {other:?}"),
            })
        };
        control.request_stop(VmOutcome::PowerOff);
        control.request_stop(VmOutcome::Reset);
        assert!(control.is_stopping());
        assert_eq!(control.state(), RunState::Stopping);
        assert_eq!(waiter.join().unwrap(), VmOutcome::PowerOff);
        assert_eq!(kicked.load(Ordering::SeqCst), 3);
        // After next_event reported the stop, the kicks are disarmed.
        control.request_stop(VmOutcome::Quit);
        assert_eq!(kicked.load(Ordering::SeqCst), 3);
        assert_eq!(control.pause(), Err(ControlError::Stopping));
    }

    /// A pretend vCPU: "runs" (sleeps briefly) until told to stop, attending when asked, and
    /// counts the times it entered the guest.
    fn fake_vcpu(
        control: Arc<VmControl>,
        entries: Arc<AtomicUsize>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut seat = control.vcpu_started();
            loop {
                if control.needs_attention() {
                    match control.attend(&mut seat) {
                        Directive::Exit => break,
                        Directive::PublishStats => {
                            control.snapshot_published();
                            continue;
                        }
                        Directive::Run => {}
                    }
                }
                entries.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            control.vcpu_finished();
        })
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_lets_them_run() {
        let control = Arc::new(VmControl::new());
        let entries = Arc::new(AtomicUsize::new(0));
        let vcpus: Vec<_> = (0..3).map(|_| fake_vcpu(control.clone(), entries.clone())).collect();
        while control.lock().vcpus < 3 {
            std::thread::yield_now();
        }
        control.pause().unwrap();
        assert_eq!(control.state(), RunState::Paused);
        assert_eq!(control.lock().parked, 3);
        let frozen = entries.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(entries.load(Ordering::SeqCst), frozen, "no vCPU ran while paused");
        assert_eq!(control.pause(), Err(ControlError::AlreadyPaused));

        control.resume().unwrap();
        assert_eq!(control.resume(), Err(ControlError::NotPaused));
        let deadline = Instant::now() + Duration::from_secs(10);
        while entries.load(Ordering::SeqCst) < frozen + 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(entries.load(Ordering::SeqCst) >= frozen + 3, "the vCPUs run again");

        // A stop while paused releases parked vCPUs too.
        control.pause().unwrap();
        control.request_stop(VmOutcome::Quit);
        for vcpu in vcpus {
            vcpu.join().unwrap();
        }
        assert_eq!(control.lock().vcpus, 0);
    }

    #[test]
    fn snapshots_reach_running_and_parked_vcpus() {
        let control = Arc::new(VmControl::new());
        let entries = Arc::new(AtomicUsize::new(0));
        let vcpus: Vec<_> = (0..2).map(|_| fake_vcpu(control.clone(), entries.clone())).collect();
        while control.lock().vcpus < 2 {
            std::thread::yield_now();
        }
        control.collect_snapshot().unwrap();
        control.collect_snapshot().unwrap();
        control.pause().unwrap();
        control.collect_snapshot().unwrap();
        assert_eq!(control.state(), RunState::Paused, "a snapshot does not resume the VM");
        control.request_stop(VmOutcome::PowerOff);
        for vcpu in vcpus {
            vcpu.join().unwrap();
        }
    }

    #[test]
    fn a_user_stop_beats_a_guest_reset_and_a_reset_rearms() {
        let control = VmControl::new();
        control.request_stop(VmOutcome::Reset);
        assert!(matches!(control.next_event(), ControlEvent::Stopped(VmOutcome::Reset)));
        assert_eq!(control.rearm_for_reboot(), Ok(()));
        assert!(!control.is_stopping() && !control.needs_attention());
        assert_eq!(control.state(), RunState::Running);

        control.request_stop(VmOutcome::Reset);
        control.request_stop(VmOutcome::Signal(15));
        control.request_stop(VmOutcome::Quit);
        assert_eq!(control.rearm_for_reboot(), Err(VmOutcome::Signal(15)));
        assert!(control.is_stopping());
    }

    #[test]
    fn requests_reach_the_owner_in_order_until_the_stop() {
        let control = Arc::new(VmControl::new());
        let (tx, rx) = std::sync::mpsc::channel();
        control.send(VmRequest::Stats(tx.clone())).unwrap();
        control.send(VmRequest::Stats(tx)).unwrap();
        for _ in 0..2 {
            match control.next_event() {
                ControlEvent::Request(VmRequest::Stats(reply)) => reply.send(None).unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(rx.iter().take(2).count(), 2);
        control.request_stop(VmOutcome::PowerOff);
        assert!(matches!(
            control.send(VmRequest::Stats(std::sync::mpsc::channel().0)),
            Err(ControlError::Stopping)
        ));
        assert!(matches!(control.next_event(), ControlEvent::Stopped(VmOutcome::PowerOff)));
    }
}
