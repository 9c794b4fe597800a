//! Ctrl-C while hvrun waits on Virtualization.framework (an install, a download, a VM with a
//! window): SIGINT only counts, and the waiting loop decides — cancel the install, ask the guest
//! to shut down, or (the second time) stop it hard. The terminal is not in raw mode then, so
//! Ctrl-C arrives as SIGINT.

use std::sync::atomic::{AtomicU32, Ordering};

/// SIGINTs received while a [`SigintCounter`] is installed.
static SIGINTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_sigint(_signal: libc::c_int) {
    // An atomic add is async-signal-safe.
    SIGINTS.fetch_add(1, Ordering::SeqCst);
}

/// Counts SIGINT instead of dying from it, until dropped (then the previous handler is back).
pub struct SigintCounter {
    previous: libc::sigaction,
    start: u32,
}

impl SigintCounter {
    /// Installs the counting handler.
    pub fn install() -> std::io::Result<SigintCounter> {
        // SAFETY: sigaction is plain data; all-zero is a valid empty value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = count_sigint as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above; filled in by sigaction.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid; the handler only does an atomic add.
        if unsafe { libc::sigaction(libc::SIGINT, &action, &mut previous) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SigintCounter { previous, start: SIGINTS.load(Ordering::SeqCst) })
    }

    /// How many times Ctrl-C was pressed since [`SigintCounter::install`].
    pub fn count(&self) -> u32 {
        SIGINTS.load(Ordering::SeqCst).wrapping_sub(self.start)
    }
}

impl Drop for SigintCounter {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved by install.
        unsafe { libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigint_is_counted_not_fatal() {
        let counter = SigintCounter::install().unwrap();
        assert_eq!(counter.count(), 0);
        // SAFETY: raising SIGINT runs the counting handler installed above.
        unsafe { libc::raise(libc::SIGINT) };
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGINT) };
        assert_eq!(counter.count(), 2);
        drop(counter);
        // The previous disposition (the test harness's default) is back.
        // SAFETY: reads the current disposition into a zeroed sigaction.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries.
        unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut now) };
        assert_ne!(now.sa_sigaction, count_sigint as *const () as libc::sighandler_t);
    }
}
