//! The bookkeeping behind kicks and WFI sleeps, portable and unit-tested; on macOS
//! [`Doorbell::kick_vcpu`] and [`Doorbell::interrupt_vcpu`] add `hv_vcpus_exit`.
//!
//! A vCPU thread is in one of three places when something wants it:
//! - inside `hv_vcpu_run`: `hv_vcpus_exit` makes the run return `HV_EXIT_REASON_CANCELED`;
//! - about to call `hv_vcpu_run`: `hv_vcpus_exit` on a vCPU that is not running makes its next
//!   run return at once (`hv_vcpu.h`, `hv_vcpus_exit`), and [`Doorbell::take_kick`] before each
//!   run catches the kick in any case;
//! - asleep in hvrun itself (an emulated WFI, or a powered-off vCPU waiting for CPU_ON): the
//!   framework knows nothing of that sleep, so the doorbell's condition variable wakes it.
//!
//! `hv_vcpus_exit` is needed only in the first two places, so the thread marks them
//! ([`Doorbell::enter_guest`] .. [`Doorbell::leave_guest`], around its last checks and the
//! run) and a kick or wake calls it only inside that window: a vCPU woken from its WFI sleep
//! does not pay an empty CANCELED exit per interrupt. The mark and the caller's state change
//! are ordered like KVM's `vcpu->mode = IN_GUEST_MODE; smp_mb()` against `kvm_vcpu_kick`:
//! either the vCPU's checks after its mark see the new state, or the caller sees the mark
//! and interrupts the run (a SeqCst fence on each side; the Dekker pattern).
//!
//! Two kinds of ring: a *kick* (the VMM wants the thread to return from `run`, e.g. to stop)
//! and a *wake* (an interrupt may now be pending for this vCPU: end a WFI sleep, nothing more).

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Why [`Doorbell::sleep`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A kick (consumed).
    Kicked,
    /// An interrupt may be pending (consumed).
    Woken,
    /// The deadline passed.
    Deadline,
}

#[derive(Debug, Default)]
struct Bell {
    kicked: bool,
    woken: bool,
}

/// One vCPU's doorbell, shared between its thread and everyone who kicks or wakes it.
#[derive(Debug, Default)]
pub struct Doorbell {
    bell: Mutex<Bell>,
    rung: Condvar,
    /// The framework's handle of the vCPU, valid while `attached`.
    handle: AtomicU64,
    /// The vCPU exists, so `hv_vcpus_exit` may be called on `handle`.
    attached: AtomicBool,
    /// The vCPU's thread is about to enter, or is in, the guest.
    in_guest: AtomicBool,
}

impl Doorbell {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Bell> {
        // The lock guards two flags; a panic while holding it leaves them valid.
        self.bell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the vCPU thread to return from `run`; remembered until taken.
    pub fn kick(&self) {
        self.lock().kicked = true;
        self.rung.notify_all();
    }

    /// Tells a sleeping vCPU that an interrupt may be pending; remembered until the next sleep
    /// or [`Doorbell::clear_wake`].
    pub fn wake(&self) {
        self.lock().woken = true;
        self.rung.notify_all();
    }

    /// Takes a pending kick: `true` means "return `VmExit::Kicked` instead of running".
    pub fn take_kick(&self) -> bool {
        std::mem::take(&mut self.lock().kicked)
    }

    /// Forgets earlier wakes. A WFI handler calls this *before* it looks at the interrupt
    /// controller, so an interrupt raised after that look still ends the sleep that follows.
    pub fn clear_wake(&self) {
        self.lock().woken = false;
    }

    /// The vCPU's thread created it with this framework handle: others may now make it leave
    /// the guest.
    pub fn attach(&self, handle: u64) {
        self.handle.store(handle, Ordering::Release);
        self.attached.store(true, Ordering::Release);
    }

    /// The vCPU's thread is destroying it: nobody may call `hv_vcpus_exit` on it any more.
    pub fn detach(&self) {
        self.attached.store(false, Ordering::Release);
    }

    /// The vCPU's thread is about to make its last checks (kicks, interrupts) and enter the
    /// guest: from now until [`Self::leave_guest`] a kick or wake also interrupts the run.
    pub fn enter_guest(&self) {
        self.in_guest.store(true, Ordering::Relaxed);
        // Orders the mark before the thread's checks (see the module docs).
        fence(Ordering::SeqCst);
    }

    /// The run returned: the doorbell alone reaches the thread again.
    pub fn leave_guest(&self) {
        self.in_guest.store(false, Ordering::Release);
    }

    /// The handle to pass to `hv_vcpus_exit` after a kick or wake, if the vCPU exists and may
    /// be in (or entering) the guest; `None` when the doorbell alone reaches its thread. A
    /// vCPU destroyed just after this returns makes that call fail harmlessly.
    pub fn exit_target(&self) -> Option<u64> {
        // Orders the caller's state change (a kick, a raised interrupt) before the look at the
        // mark (see the module docs).
        fence(Ordering::SeqCst);
        let reachable =
            self.attached.load(Ordering::Acquire) && self.in_guest.load(Ordering::Relaxed);
        reachable.then(|| self.handle.load(Ordering::Acquire))
    }

    /// Sleeps until a kick, a wake, or `deadline` (`None`: no deadline). Returns at once if a
    /// kick or wake is already pending.
    pub fn sleep(&self, deadline: Option<Instant>) -> Wake {
        let mut bell = self.lock();
        loop {
            if std::mem::take(&mut bell.kicked) {
                return Wake::Kicked;
            }
            if std::mem::take(&mut bell.woken) {
                return Wake::Woken;
            }
            bell = match deadline {
                None => self.rung.wait(bell).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Wake::Deadline;
                    }
                    self.rung
                        .wait_timeout(bell, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(target_os = "macos")]
impl Doorbell {
    /// Makes the vCPU return from `run`: out of the guest, out of a WFI sleep, or at once on
    /// its next entry.
    pub fn kick_vcpu(&self) {
        self.kick();
        self.exit_guest();
    }

    /// Tells the vCPU an interrupt may be pending: it leaves the guest (its IRQ line is set
    /// before each entry) or its WFI sleep.
    pub fn interrupt_vcpu(&self) {
        self.wake();
        self.exit_guest();
    }

    fn exit_guest(&self) {
        if let Some(handle) = self.exit_target() {
            // SAFETY: hv_vcpus_exit may be called from any thread; it reads one handle.
            let ret = unsafe { hv_sys::hv_vcpus_exit(&handle, 1) };
            if ret != hv_sys::HV_SUCCESS {
                log::debug!("hv_vcpus_exit: {ret:#x}");
            }
        }
    }
}

/// The doorbells of every vCPU of a VM, indexed by vCPU. Shared (in an `Arc`) by the vCPU
/// threads and by everything that wakes them: interrupt lines and the userspace GIC.
#[derive(Debug)]
pub struct Doorbells(Vec<Arc<Doorbell>>);

impl Doorbells {
    /// One doorbell per vCPU.
    pub fn new(vcpus: u32) -> Self {
        Doorbells((0..vcpus).map(|_| Arc::new(Doorbell::new())).collect())
    }

    /// vCPU `index`'s doorbell.
    pub fn get(&self, index: u32) -> Option<&Arc<Doorbell>> {
        self.0.get(index as usize)
    }

    /// Ends the WFI sleep of every vCPU (an interrupt may be pending for one of them).
    pub fn wake_all(&self) {
        for bell in &self.0 {
            bell.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_kick_before_the_run_is_not_lost() {
        let bell = Doorbell::new();
        bell.kick();
        assert!(bell.take_kick());
        assert!(!bell.take_kick(), "taken once");
    }

    #[test]
    fn a_pending_kick_or_wake_ends_the_sleep_at_once() {
        let bell = Doorbell::new();
        bell.kick();
        assert_eq!(bell.sleep(None), Wake::Kicked);
        bell.wake();
        assert_eq!(bell.sleep(None), Wake::Woken);
        assert!(!bell.take_kick(), "the sleep consumed the kick");
    }

    #[test]
    fn clear_wake_forgets_earlier_interrupts_but_not_kicks() {
        let bell = Doorbell::new();
        bell.wake();
        bell.kick();
        bell.clear_wake();
        assert_eq!(bell.sleep(Some(Instant::now())), Wake::Kicked);
        assert_eq!(bell.sleep(Some(Instant::now())), Wake::Deadline);
    }

    /// Finding 13 of reviews/hvf-review.md: hv_vcpus_exit only for a vCPU in (or entering)
    /// the guest.
    #[test]
    fn only_a_vcpu_in_the_guest_is_a_target_for_hv_vcpus_exit() {
        let bell = Doorbell::new();
        assert_eq!(bell.exit_target(), None, "not created yet");
        bell.attach(7);
        assert_eq!(bell.exit_target(), None, "created, not running: the doorbell suffices");
        bell.enter_guest();
        assert_eq!(bell.exit_target(), Some(7), "entering or in the guest");
        bell.leave_guest();
        assert_eq!(bell.exit_target(), None, "back in hvrun (an exit, a WFI sleep)");
        bell.enter_guest();
        bell.detach();
        assert_eq!(bell.exit_target(), None, "destroyed");
    }

    /// The race the mark closes: a waker that changes state while the vCPU thread makes its
    /// last checks either is seen by those checks or sees the mark (and would interrupt the
    /// run). Never neither — that would be a lost wake-up.
    #[test]
    fn a_wake_during_entry_is_never_lost() {
        for _ in 0..2000 {
            let bell = Arc::new(Doorbell::new());
            bell.attach(1);
            let pending = Arc::new(AtomicBool::new(false));
            let waker = {
                let (bell, pending) = (bell.clone(), pending.clone());
                std::thread::spawn(move || {
                    pending.store(true, Ordering::Relaxed);
                    bell.exit_target().is_some()
                })
            };
            bell.enter_guest();
            let seen_by_vcpu = pending.load(Ordering::Relaxed);
            let exit_called = waker.join().unwrap();
            bell.leave_guest();
            assert!(seen_by_vcpu || exit_called, "a wake-up was lost");
        }
    }

    #[test]
    fn wake_all_reaches_every_vcpu_and_nothing_else() {
        let bells = Doorbells::new(3);
        bells.wake_all();
        for i in 0..3 {
            let bell = bells.get(i).unwrap();
            assert_eq!(bell.sleep(Some(Instant::now())), Wake::Woken, "vCPU {i}");
            assert!(!bell.take_kick(), "a wake is not a kick");
        }
        assert!(bells.get(3).is_none());
    }

    #[test]
    fn the_deadline_ends_the_sleep() {
        let bell = Doorbell::new();
        let start = Instant::now();
        assert_eq!(bell.sleep(Some(start + Duration::from_millis(20))), Wake::Deadline);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn another_thread_wakes_a_sleeper() {
        let bell = Arc::new(Doorbell::new());
        let ringer = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                bell.wake();
            })
        };
        assert_eq!(bell.sleep(Some(Instant::now() + Duration::from_secs(30))), Wake::Woken);
        ringer.join().unwrap();
        let kicker = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                bell.kick();
            })
        };
        assert_eq!(bell.sleep(None), Wake::Kicked);
        kicker.join().unwrap();
    }
}
