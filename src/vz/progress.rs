//! Progress of long VZ operations (downloading a restore image, installing macOS) on the
//! terminal: an indicatif bar when stderr is a terminal, and otherwise one plain line every 10 %
//! (CI logs, `2>file`) — never a flood of carriage returns.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Resolution of fraction-based progress (VZ reports `NSProgress.fractionCompleted`).
pub const FRACTION_STEPS: u64 = 1000;

/// What the numbers count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A fraction in [0, 1] (set with [`Progress::set_fraction`]).
    Fraction,
    /// Bytes, of a total known up front (set with [`Progress::set_units`]).
    Bytes(u64),
}

/// Where progress goes.
enum Output {
    Bar(ProgressBar),
    Lines { out: Box<dyn Write + Send>, last_decile: Option<u64>, started: Instant },
}

/// A progress display for one operation.
pub struct Progress {
    label: String,
    unit: Unit,
    output: Output,
    /// The highest position shown (progress never moves backwards on screen).
    position: u64,
}

impl Progress {
    /// A bar on stderr when it is a terminal, plain lines on stderr otherwise.
    pub fn on_stderr(label: &str, unit: Unit) -> Progress {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Progress::bar(label, unit, ProgressDrawTarget::stderr())
        } else {
            Progress::lines(label, unit, Box::new(std::io::stderr()))
        }
    }

    /// An indicatif bar drawn to `target`.
    pub fn bar(label: &str, unit: Unit, target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total(unit)), target);
        bar.set_style(style(unit));
        bar.set_prefix(label.to_string());
        Progress { label: label.into(), unit, output: Output::Bar(bar), position: 0 }
    }

    /// Plain lines written to `out`, one per 10 %.
    pub fn lines(label: &str, unit: Unit, out: Box<dyn Write + Send>) -> Progress {
        let output = Output::Lines { out, last_decile: None, started: Instant::now() };
        Progress { label: label.into(), unit, output, position: 0 }
    }

    /// Sets a fraction in [0, 1]; NaN and values out of range are clamped.
    pub fn set_fraction(&mut self, fraction: f64) {
        self.set_units(fraction_to_steps(fraction, total(self.unit)));
    }

    /// Sets the count of units done.
    pub fn set_units(&mut self, done: u64) {
        let done = done.min(total(self.unit));
        if done <= self.position && self.position != 0 {
            return;
        }
        self.position = done;
        match &mut self.output {
            Output::Bar(bar) => bar.set_position(done),
            Output::Lines { out, last_decile, started } => {
                let decile = done * 10 / total(self.unit).max(1);
                if *last_decile != Some(decile) {
                    *last_decile = Some(decile);
                    let line = plain_line(&self.label, decile * 10, started.elapsed());
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }

    /// The position shown, in units.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Ends the display with `message` on its own line.
    pub fn finish(self, message: &str) {
        self.end(message);
    }

    /// Ends the display where it stopped (an error or Ctrl-C), with `message`.
    pub fn abandon(self, message: &str) {
        self.end(message);
    }

    fn end(self, message: &str) {
        match self.output {
            Output::Bar(bar) => bar.abandon_with_message(message.to_string()),
            Output::Lines { mut out, .. } => {
                let _ = writeln!(out, "{}: {message}", self.label);
            }
        }
    }
}

fn total(unit: Unit) -> u64 {
    match unit {
        Unit::Fraction => FRACTION_STEPS,
        Unit::Bytes(total) => total.max(1),
    }
}

fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Fraction => "{prefix} [{wide_bar}] {percent:>3}% {elapsed_precise} (~{eta} left) {msg}",
        Unit::Bytes(_) => {
            "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} (~{eta} left) {msg}"
        }
    };
    // The templates are constants checked by a unit test; the default style is a safe fallback.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `fraction` of `total` units, clamped to [0, total]; NaN counts as nothing done.
pub fn fraction_to_steps(fraction: f64, total: u64) -> u64 {
    if fraction.is_nan() {
        return 0;
    }
    (fraction.clamp(0.0, 1.0) * total as f64).round() as u64
}

/// One plain progress line: `macOS install: 40% after 3m10s`.
pub fn plain_line(label: &str, percent: u64, elapsed: Duration) -> String {
    format!("{label}: {percent}% after {}", human_duration(elapsed))
}

/// `42s`, `3m10s`, `1h02m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fractions_are_clamped_and_rounded() {
        assert_eq!(fraction_to_steps(0.4216, 1000), 422);
        assert_eq!(fraction_to_steps(-0.5, 1000), 0);
        assert_eq!(fraction_to_steps(1.7, 1000), 1000);
        assert_eq!(fraction_to_steps(f64::NAN, 1000), 0);
        assert_eq!(fraction_to_steps(f64::INFINITY, 1000), 1000);
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(190)), "3m10s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(
            plain_line("macOS install", 40, Duration::from_secs(190)),
            "macOS install: 40% after 3m10s"
        );
    }

    #[test]
    fn templates_are_valid() {
        for template in [
            "{prefix} [{wide_bar}] {percent:>3}% {elapsed_precise} (~{eta} left) {msg}",
            "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} (~{eta} left) {msg}",
        ] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn the_bar_follows_and_never_goes_back() {
        let mut p = Progress::bar("install", Unit::Fraction, ProgressDrawTarget::hidden());
        p.set_fraction(0.25);
        assert_eq!(p.position(), 250);
        p.set_fraction(0.10);
        assert_eq!(p.position(), 250, "NSProgress may restart a phase; the bar does not");
        let Output::Bar(bar) = &p.output else { panic!() };
        assert_eq!(bar.position(), 250);
        assert_eq!(bar.length(), Some(1000));
        p.finish("done");
    }

    #[test]
    fn plain_output_prints_each_tenth_once() {
        let captured = Captured::default();
        let mut p = Progress::lines("download", Unit::Bytes(1000), Box::new(captured.clone()));
        for done in [0, 50, 99, 100, 150, 420, 421, 999, 1000, 2000] {
            p.set_units(done);
        }
        p.abandon("cancelled");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let percents: Vec<&str> =
            text.lines().map(|l| l.split(' ').nth(1).unwrap_or_default()).collect();
        assert_eq!(percents, ["0%", "10%", "40%", "90%", "100%", "cancelled"], "{text}");
    }
}
