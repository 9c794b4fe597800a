//! What the user chooses about the Hypervisor.framework backend: `--nested`, and the WFI spin
//! threshold knob (`HVRUN_WFI_SPIN_US`, for benchmarking). The WFI and vtimer rules themselves
//! are the shared policy in `arch::aarch64::timer`.

use std::time::Duration;

use crate::arch::aarch64::timer::DEFAULT_SPIN_THRESHOLD;

/// The environment variable that overrides [`DEFAULT_SPIN_THRESHOLD`], in microseconds (0
/// always sleeps).
pub const SPIN_THRESHOLD_ENV: &str = "HVRUN_WFI_SPIN_US";

/// Choices the user makes about the Hypervisor.framework backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvfOptions {
    /// Give the guest EL2 (`--nested`): macOS 15 on M3 or later.
    pub nested: bool,
    /// WFI does not sleep when the virtual timer is due sooner than this.
    pub wfi_spin: Duration,
}

impl Default for HvfOptions {
    fn default() -> Self {
        HvfOptions { nested: false, wfi_spin: DEFAULT_SPIN_THRESHOLD }
    }
}

impl HvfOptions {
    /// The options for `--nested` (or not), with the WFI spin threshold taken from
    /// [`SPIN_THRESHOLD_ENV`] when it is set. The error is a message for the user.
    pub fn from_env(nested: bool) -> Result<Self, String> {
        Self::with_spin_threshold(nested, std::env::var(SPIN_THRESHOLD_ENV).ok().as_deref())
    }

    /// As [`Self::from_env`], with the variable's value passed in.
    fn with_spin_threshold(nested: bool, env_value: Option<&str>) -> Result<Self, String> {
        let wfi_spin = match env_value {
            Some(text) => parse_spin_threshold(text)?,
            None => DEFAULT_SPIN_THRESHOLD,
        };
        Ok(HvfOptions { nested, wfi_spin })
    }
}

/// Parses the value of [`SPIN_THRESHOLD_ENV`].
fn parse_spin_threshold(text: &str) -> Result<Duration, String> {
    text.trim().parse::<u64>().map(Duration::from_micros).map_err(|_| {
        format!("{SPIN_THRESHOLD_ENV}={text}: expected a whole number of microseconds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_threshold_from_the_environment() {
        assert_eq!(parse_spin_threshold("500"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_spin_threshold(" 0\n"), Ok(Duration::ZERO));
        assert!(parse_spin_threshold("2ms").unwrap_err().contains("HVRUN_WFI_SPIN_US=2ms"));
    }

    #[test]
    fn options_take_the_knob_or_the_default() {
        let unset = HvfOptions::with_spin_threshold(true, None).unwrap();
        assert_eq!(unset, HvfOptions { nested: true, wfi_spin: DEFAULT_SPIN_THRESHOLD });
        let set = HvfOptions::with_spin_threshold(false, Some("250")).unwrap();
        assert_eq!(set, HvfOptions { nested: false, wfi_spin: Duration::from_micros(250) });
        assert!(HvfOptions::with_spin_threshold(false, Some("-1")).is_err());
    }
}
