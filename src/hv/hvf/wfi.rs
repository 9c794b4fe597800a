//! The WFI spin threshold knob. The WFI and vtimer rules themselves are the shared policy in
//! `arch::aarch64::timer`.

use std::time::Duration;

/// The environment variable that overrides `arch::aarch64::timer::DEFAULT_SPIN_THRESHOLD`, in
/// microseconds (for benchmarking the WFI path; 0 always sleeps).
pub const SPIN_THRESHOLD_ENV: &str = "HVRUN_WFI_SPIN_US";

/// Parses the value of [`SPIN_THRESHOLD_ENV`].
pub fn parse_spin_threshold(text: &str) -> Result<Duration, String> {
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
}
