//! Kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! The kicker sends a real-time signal to the vCPU's thread. The handler sets `immediate_exit` in
//! that thread's `kvm_run` (Documentation/virt/kvm/api.rst §5 "immediate_exit"), so the kick is
//! never lost: if the thread is inside `KVM_RUN`, the signal makes it return `EINTR`; if it is
//! about to enter, `immediate_exit` makes the entry return `EINTR` at once.

use std::cell::Cell;
use std::ptr;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::hv::{HvError, Kicker, Result};

thread_local! {
    /// This thread's `kvm_run`, for the signal handler; null when the thread runs no vCPU.
    static THIS_THREAD_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The signal used for kicks: the first real-time signal, which nothing else in hvrun uses.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = THIS_THREAD_KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by this very thread to its vCPU's kvm_run mapping, which
        // stays mapped until `forget_kvm_run` clears the pointer; a volatile byte store is what
        // KVM polls.
        unsafe { ptr::write_volatile(ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// Installs the process-wide handler for the kick signal (once, at backend start).
pub fn install_handler() -> Result<()> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| HvError::new("cannot install the vCPU kick signal handler", e))
}

/// Tells the handler where the calling thread's `kvm_run` is.
pub fn remember_kvm_run(run: *mut kvm_run) {
    THIS_THREAD_KVM_RUN.with(|p| p.set(run));
}

/// Forgets the calling thread's `kvm_run` (before the vCPU is destroyed).
pub fn forget_kvm_run() {
    THIS_THREAD_KVM_RUN.with(|p| p.set(ptr::null_mut()));
}

/// Kicks one vCPU thread.
#[derive(Clone, Copy, Debug)]
pub struct KvmKicker {
    thread: libc::pthread_t,
}

impl KvmKicker {
    /// A kicker for the calling thread.
    pub fn for_this_thread() -> Self {
        // SAFETY: pthread_self has no preconditions.
        KvmKicker { thread: unsafe { libc::pthread_self() } }
    }
}

impl Kicker for KvmKicker {
    fn kick(&self) {
        // SAFETY: the thread id came from pthread_self on a vCPU thread; the VMM stops kicking
        // before it joins (and so frees) vCPU threads. A thread that already returned from its
        // loop but is not joined yet is still a valid target; the signal is then ignored.
        let ret = unsafe { libc::pthread_kill(self.thread, kick_signal()) };
        if ret != 0 {
            log::debug!("kick: pthread_kill failed: {}", std::io::Error::from_raw_os_error(ret));
        }
    }
}
