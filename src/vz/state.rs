//! A running VZ VM seen from hvrun's control seam, as plain data: its state, which control
//! actions each state allows (VZ throws on a transition it does not allow, so hvrun checks
//! first and answers with a message), the balloon target, and how a stop maps to hvrun's
//! outcomes and exit codes.

use crate::control::VmOutcome;
use crate::vz::errors::FrameworkError;

/// `VZVirtualMachineState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VzState {
    Stopped,
    Running,
    Paused,
    Error,
    Starting,
    Pausing,
    Resuming,
    Stopping,
    Saving,
    Restoring,
    /// A value a newer framework added.
    Unknown(i64),
}

impl VzState {
    /// From the framework's `NSInteger` (`VZVirtualMachine.h`).
    pub fn from_raw(raw: i64) -> VzState {
        match raw {
            0 => VzState::Stopped,
            1 => VzState::Running,
            2 => VzState::Paused,
            3 => VzState::Error,
            4 => VzState::Starting,
            5 => VzState::Pausing,
            6 => VzState::Resuming,
            7 => VzState::Stopping,
            8 => VzState::Saving,
            9 => VzState::Restoring,
            other => VzState::Unknown(other),
        }
    }

    /// The state in the control API's words: `running`, `paused`, `stopping` or `stopped`.
    pub fn api_name(self) -> &'static str {
        match self {
            VzState::Running | VzState::Starting | VzState::Resuming | VzState::Unknown(_) => {
                "running"
            }
            VzState::Paused | VzState::Pausing | VzState::Saving | VzState::Restoring => "paused",
            VzState::Stopping => "stopping",
            VzState::Stopped | VzState::Error => "stopped",
        }
    }
}

/// What the control seam can ask of a VZ VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VzAction {
    Pause,
    Resume,
    /// Ask the guest to shut down (the power button: `requestStop`).
    RequestStop,
    /// End the VM now (`stop`, like pulling the plug).
    ForceStop,
}

impl VzAction {
    /// The action in a message: "cannot {verb} a VM that is paused".
    pub fn verb(self) -> &'static str {
        match self {
            VzAction::Pause => "pause",
            VzAction::Resume => "resume",
            VzAction::RequestStop => "ask to shut down",
            VzAction::ForceStop => "stop",
        }
    }
}

/// A control request that cannot be done now, or that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VzControlError {
    #[error("cannot {action} a VM that is {}", .state.api_name())]
    NotNow { action: &'static str, state: VzState },
    #[error("balloon target {requested} bytes: {problem}")]
    Balloon { requested: u64, problem: String },
    #[error("{0}")]
    Framework(String),
    #[error("the VM is gone (it stopped)")]
    Gone,
}

/// Whether `state` allows `action` (VZ's own `canPause`/`canResume`/`canRequestStop`/`canStop`
/// are asked too on macOS; this gives the message).
pub fn check_action(state: VzState, action: VzAction) -> Result<(), VzControlError> {
    let allowed = match action {
        VzAction::Pause => state == VzState::Running,
        VzAction::Resume => state == VzState::Paused,
        // A paused guest cannot react to the power button.
        VzAction::RequestStop => state == VzState::Running,
        VzAction::ForceStop => matches!(
            state,
            VzState::Running
                | VzState::Paused
                | VzState::Starting
                | VzState::Pausing
                | VzState::Resuming
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(VzControlError::NotNow { action: action.verb(), state })
    }
}

/// The smallest balloon target hvrun sets: below this a Linux guest is likely to die of OOM
/// rather than give memory back (the same floor as hvrun's `--mem`).
pub const MIN_BALLOON_TARGET: u64 = 64 << 20;

/// Checks a balloon target (the guest memory the VM should keep) and rounds it down to whole
/// MiB, the granularity VZ's traditional balloon works in.
pub fn balloon_target(requested: u64, mem_bytes: u64) -> Result<u64, VzControlError> {
    let problem = |p: String| VzControlError::Balloon { requested, problem: p };
    if requested > mem_bytes {
        return Err(problem(format!(
            "more than the VM's {} MiB; the balloon can only take memory away",
            mem_bytes >> 20
        )));
    }
    let target = requested & !((1 << 20) - 1);
    if target < MIN_BALLOON_TARGET {
        return Err(problem("below 64 MiB; the guest would not survive it".into()));
    }
    Ok(target)
}

/// How VZ reported the end of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VzStop {
    /// `guestDidStopVirtualMachine:` — the guest powered off (or reset: VZ reports both so).
    GuestStopped,
    /// `virtualMachine:didStopWithError:`.
    Error(FrameworkError),
}

/// hvrun's outcome for a stop VZ reported: power-off → 0, an error → 1 (see `exit_code`).
pub fn outcome_of(stop: &VzStop) -> VmOutcome {
    match stop {
        VzStop::GuestStopped => VmOutcome::PowerOff,
        VzStop::Error(error) => VmOutcome::Failed(format!("the VM stopped with an error: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_code;

    #[test]
    fn states_from_the_framework() {
        assert_eq!(VzState::from_raw(0), VzState::Stopped);
        assert_eq!(VzState::from_raw(2), VzState::Paused);
        assert_eq!(VzState::from_raw(9), VzState::Restoring);
        assert_eq!(VzState::from_raw(42), VzState::Unknown(42));
        assert_eq!(VzState::from_raw(1).api_name(), "running");
        assert_eq!(VzState::from_raw(5).api_name(), "paused");
        assert_eq!(VzState::from_raw(7).api_name(), "stopping");
        assert_eq!(VzState::from_raw(3).api_name(), "stopped");
    }

    #[test]
    fn transitions_are_checked_with_a_message() {
        assert!(check_action(VzState::Running, VzAction::Pause).is_ok());
        assert!(check_action(VzState::Paused, VzAction::Resume).is_ok());
        assert!(check_action(VzState::Running, VzAction::RequestStop).is_ok());
        assert!(check_action(VzState::Paused, VzAction::ForceStop).is_ok());
        assert_eq!(
            check_action(VzState::Running, VzAction::Resume).unwrap_err().to_string(),
            "cannot resume a VM that is running"
        );
        assert_eq!(
            check_action(VzState::Paused, VzAction::RequestStop).unwrap_err().to_string(),
            "cannot ask to shut down a VM that is paused"
        );
        assert!(check_action(VzState::Stopped, VzAction::ForceStop).is_err());
        assert!(check_action(VzState::Stopping, VzAction::Pause).is_err());
    }

    #[test]
    fn balloon_targets() {
        let mem = 2 << 30;
        assert_eq!(balloon_target(1 << 30, mem), Ok(1 << 30));
        assert_eq!(balloon_target((512 << 20) + 12345, mem), Ok(512 << 20), "whole MiB");
        assert_eq!(balloon_target(mem, mem), Ok(mem));
        assert!(balloon_target(mem + 1, mem)
            .unwrap_err()
            .to_string()
            .contains("only take memory away"));
        assert!(balloon_target(32 << 20, mem).unwrap_err().to_string().contains("below 64 MiB"));
    }

    #[test]
    fn stops_map_to_outcomes_and_exit_codes() {
        assert_eq!(exit_code::for_outcome(&outcome_of(&VzStop::GuestStopped)), 0);
        let error = FrameworkError {
            domain: "VZErrorDomain".into(),
            code: 1,
            description: "Internal Virtualization error. The virtual machine stopped unexpectedly."
                .into(),
            reason: None,
        };
        let outcome = outcome_of(&VzStop::Error(error));
        assert_eq!(exit_code::for_outcome(&outcome), 1);
        let VmOutcome::Failed(why) = outcome else { panic!() };
        assert!(
            why.starts_with("the VM stopped with an error: Internal Virtualization error."),
            "{why}"
        );
    }
}
