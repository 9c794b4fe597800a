//! hvrun's process exit codes, so scripts can tell how a guest ended.

use crate::control::VmOutcome;

/// The guest powered off (PSCI SYSTEM_OFF).
pub const POWER_OFF: i32 = 0;
/// hvrun failed while running the VM (the message says why).
pub const FAILED: i32 = 1;
/// Bad command line, unusable input file, or a host that cannot run arm64 guests.
pub const USAGE: i32 = 2;
/// The guest reset (PSCI SYSTEM_RESET) and `--no-reboot` was given.
pub const RESET: i32 = 3;
/// The guest kernel panicked (reported through pvpanic).
pub const GUEST_PANIC: i32 = 4;
/// The user quit with Ctrl-A x.
pub const QUIT: i32 = 130;
/// hvrun stopped the VM because of a termination signal: 128 + its number, as a shell reports
/// a process a signal ended (SIGTERM: 143). hvrun exits this way only after a clean stop.
pub const SIGNAL_BASE: i32 = 128;

/// The exit code for how the VM ended.
pub fn for_outcome(outcome: &VmOutcome) -> i32 {
    match outcome {
        VmOutcome::PowerOff => POWER_OFF,
        VmOutcome::Reset => RESET,
        VmOutcome::GuestPanic => GUEST_PANIC,
        VmOutcome::Quit => QUIT,
        VmOutcome::Signal(signal) => SIGNAL_BASE + signal,
        VmOutcome::Failed(_) => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_have_distinct_codes() {
        let codes = [
            for_outcome(&VmOutcome::PowerOff),
            for_outcome(&VmOutcome::Reset),
            for_outcome(&VmOutcome::GuestPanic),
            for_outcome(&VmOutcome::Quit),
            for_outcome(&VmOutcome::Signal(libc::SIGTERM)),
            for_outcome(&VmOutcome::Failed(String::new())),
            USAGE,
        ];
        let mut unique = codes.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(codes[0], 0);
    }
}
