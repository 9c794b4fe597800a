//! The virtual timer rules the backend applies around WFI and VTIMER_ACTIVATED exits.
//! Portable and unit-tested. (The shared WFI/vtimer policy is being written in
//! `arch::aarch64`; once it lands, this module becomes a thin adapter to it.)
//!
//! CNTV_CTL_EL0 (Arm ARM D24.12): bit 0 ENABLE, bit 1 IMASK, bit 2 ISTATUS (condition met).

use std::time::Duration;

const ENABLE: u64 = 1 << 0;
const IMASK: u64 = 1 << 1;
const ISTATUS: u64 = 1 << 2;

/// The default for not sleeping when the timer is due this soon: a sleep and wake-up cost more
/// than spinning through a few more WFI exits (QEMU's HVF backend does not sleep under 2 ms).
pub const DEFAULT_SPIN_THRESHOLD: Duration = Duration::from_millis(2);

/// The environment variable that overrides [`DEFAULT_SPIN_THRESHOLD`], in microseconds (for
/// benchmarking the WFI path; 0 always sleeps).
pub const SPIN_THRESHOLD_ENV: &str = "HVRUN_WFI_SPIN_US";

/// Parses the value of [`SPIN_THRESHOLD_ENV`].
pub fn parse_spin_threshold(text: &str) -> Result<Duration, String> {
    text.trim().parse::<u64>().map(Duration::from_micros).map_err(|_| {
        format!("{SPIN_THRESHOLD_ENV}={text}: expected a whole number of microseconds")
    })
}

/// Whether the timer's interrupt line is high: enabled, condition met, not masked.
pub fn vtimer_line(ctl: u64) -> bool {
    ctl & (ENABLE | IMASK | ISTATUS) == ENABLE | ISTATUS
}

/// What a WFI should do, given CNTV_CTL_EL0, CNTV_CVAL_EL0 and the guest's virtual count now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WfiSleep {
    /// Return to the guest at once (the timer is due, or due too soon to sleep).
    Resume,
    /// Sleep until a kick or an interrupt; the timer will not fire.
    UntilWoken,
    /// Sleep at most this many counter ticks.
    Ticks(u64),
}

/// Decides how long a WFI may sleep. `spin_ticks`: the spin threshold in counter ticks.
pub fn wfi_sleep(ctl: u64, cval: u64, now: u64, spin_ticks: u64) -> WfiSleep {
    if ctl & ENABLE == 0 || ctl & IMASK != 0 {
        return WfiSleep::UntilWoken;
    }
    if ctl & ISTATUS != 0 || cval <= now {
        return WfiSleep::Resume;
    }
    let ticks = cval - now;
    if ticks < spin_ticks {
        WfiSleep::Resume
    } else {
        WfiSleep::Ticks(ticks)
    }
}

/// Converts counter ticks to time, for a counter of `frequency` Hz (0 is treated as 1 GHz so a
/// broken frequency cannot divide by zero).
pub fn ticks_to_duration(ticks: u64, frequency: u64) -> Duration {
    let frequency = if frequency == 0 { 1_000_000_000 } else { frequency };
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(frequency);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Converts a duration to counter ticks at `frequency` Hz.
pub fn duration_to_ticks(duration: Duration, frequency: u64) -> u64 {
    let ticks = duration.as_nanos() * u128::from(frequency) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_high_only_when_enabled_met_and_unmasked() {
        assert!(vtimer_line(ENABLE | ISTATUS));
        assert!(!vtimer_line(ENABLE | ISTATUS | IMASK));
        assert!(!vtimer_line(ISTATUS));
        assert!(!vtimer_line(ENABLE));
    }

    #[test]
    fn wfi_with_the_timer_disabled_or_masked_sleeps_until_woken() {
        assert_eq!(wfi_sleep(0, 100, 0, 10), WfiSleep::UntilWoken);
        assert_eq!(wfi_sleep(ENABLE | IMASK, 100, 0, 10), WfiSleep::UntilWoken);
    }

    #[test]
    fn wfi_with_the_timer_past_due_resumes() {
        assert_eq!(wfi_sleep(ENABLE, 100, 100, 10), WfiSleep::Resume);
        assert_eq!(wfi_sleep(ENABLE | ISTATUS, 1000, 0, 10), WfiSleep::Resume);
    }

    #[test]
    fn wfi_with_the_timer_in_the_future_sleeps_unless_it_is_too_soon() {
        assert_eq!(wfi_sleep(ENABLE, 1000, 100, 10), WfiSleep::Ticks(900));
        assert_eq!(wfi_sleep(ENABLE, 105, 100, 10), WfiSleep::Resume);
    }

    #[test]
    fn spin_threshold_from_the_environment() {
        assert_eq!(parse_spin_threshold("500"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_spin_threshold("0"), Ok(Duration::ZERO));
        assert!(parse_spin_threshold("2ms").unwrap_err().contains("HVRUN_WFI_SPIN_US=2ms"));
    }

    #[test]
    fn tick_conversions_at_24_mhz() {
        assert_eq!(ticks_to_duration(24_000_000, 24_000_000), Duration::from_secs(1));
        assert_eq!(duration_to_ticks(Duration::from_millis(2), 24_000_000), 48_000);
        assert_eq!(ticks_to_duration(u64::MAX, 1), Duration::from_nanos(u64::MAX));
        assert_eq!(ticks_to_duration(5, 0), Duration::from_nanos(5));
    }
}
