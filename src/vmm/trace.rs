//! `--trace-exits`: every exit decoded on one line on stderr, for teaching and debugging.
//!
//! A token bucket shared by all vCPUs bounds the output (a busy guest makes hundreds of
//! thousands of exits a second); lines over the budget are counted and the count is reported,
//! both when output resumes and at the end.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use devices::MmioBus;

use super::exit::ExitAction;
use crate::hv::{VmEntry, VmExit};
use crate::stats::ExitKind;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lines a second `--trace-exits` prints at most (after a burst of [`TRACE_BURST`]).
pub const TRACE_RATE: f64 = 200.0;
/// Lines `--trace-exits` may print in one go before the rate applies.
pub const TRACE_BURST: f64 = 1000.0;

struct TraceState {
    bucket: TokenBucket,
    /// Lines dropped since the last printed line.
    dropped_since: u64,
    dropped_total: u64,
    printed: u64,
}

/// The exit tracer of one VM, shared by its vCPU threads.
pub struct ExitTracer {
    state: Mutex<TraceState>,
}

impl Default for ExitTracer {
    fn default() -> Self {
        Self::new(TRACE_RATE, TRACE_BURST)
    }
}

impl ExitTracer {
    /// A tracer printing at most `rate` lines a second after a burst of `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        let state = TraceState {
            bucket: TokenBucket::new(rate, burst, Instant::now()),
            dropped_since: 0,
            dropped_total: 0,
            printed: 0,
        };
        ExitTracer { state: Mutex::new(state) }
    }

    /// Traces one handled exit of vCPU `vcpu` (to stderr, if the budget allows).
    pub fn trace(&self, vcpu: u32, exit: &VmExit, action: &ExitAction, bus: &MmioBus) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.bucket.take(Instant::now()) {
            state.dropped_since += 1;
            state.dropped_total += 1;
            return;
        }
        let mut line = String::with_capacity(96);
        if state.dropped_since > 0 {
            let _ = writeln!(line, "trace: {} exits not shown (rate limit)", state.dropped_since);
            state.dropped_since = 0;
        }
        format_exit(&mut line, vcpu, exit, action, bus);
        state.printed += 1;
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// Lines printed and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.printed, state.dropped_total)
    }

    /// The closing line: how many exits were traced and how many the rate limit dropped.
    pub fn summary(&self) -> String {
        let (printed, dropped) = self.counts();
        format!(
            "trace: {printed} exits shown, {dropped} not shown (rate limit {TRACE_RATE}/s, burst {TRACE_BURST})"
        )
    }
}

/// One exit as one line, e.g.
/// `vcpu0 mmio-read  addr 0x09000005 size 1 value 0x60 (uart)`.
pub fn format_exit(out: &mut String, vcpu: u32, exit: &VmExit, action: &ExitAction, bus: &MmioBus) {
    let kind = ExitKind::of(exit);
    let _ = write!(out, "vcpu{vcpu} {:<10}", kind.name());
    match *exit {
        VmExit::Mmio { addr, size, write } => {
            let value = match (write, action) {
                (Some(v), _) => Some(v),
                (None, ExitAction::Resume(VmEntry::MmioData(v))) => Some(*v),
                (None, _) => None,
            };
            let _ = write!(out, " addr {addr:#010x} size {size}");
            if let Some(v) = value {
                let _ = write!(out, " value {v:#x}");
            }
            let _ = write!(out, " ({})", bus.device_name(addr).unwrap_or("no device"));
        }
        VmExit::System(event) => {
            let _ = write!(out, " {}", event.name());
        }
        VmExit::Unhandled { reason, detail } => {
            let _ = write!(out, " {reason} {detail:#x}");
        }
        VmExit::Handled(_) | VmExit::Kicked => {}
    }
    out.truncate(out.trim_end_matches(' ').len());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::{HandledExit, SystemEvent};
    use std::sync::Arc;
    use std::time::Duration;

    struct Nothing;
    impl devices::BusDevice for Nothing {
        fn read(&mut self, _: u64, _: u8) -> u64 {
            0
        }
        fn write(&mut self, _: u64, _: u8, _: u64) {}
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "burst used up");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(b.take(t0 + Duration::from_millis(110)), "a token after 1/rate");
        assert!(!b.take(t0 + Duration::from_millis(110)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn tracer_counts_what_it_drops() {
        let tracer = ExitTracer::new(0.0, 2.0);
        let bus = MmioBus::new();
        for _ in 0..5 {
            tracer.trace(0, &VmExit::Kicked, &ExitAction::Resume(VmEntry::Resume), &bus);
        }
        assert_eq!(tracer.counts(), (2, 3));
        assert!(tracer.summary().contains("2 exits shown, 3 not shown"));
    }

    #[test]
    fn lines_decode_the_exit() {
        let mut bus = MmioBus::new();
        bus.insert(0x0900_0000, 0x1000, "uart", Arc::new(std::sync::Mutex::new(Nothing))).unwrap();
        let line = |exit: VmExit, action: ExitAction| {
            let mut s = String::new();
            format_exit(&mut s, 1, &exit, &action, &bus);
            s
        };
        let read = VmExit::Mmio { addr: 0x0900_0005, size: 1, write: None };
        assert_eq!(
            line(read, ExitAction::Resume(VmEntry::MmioData(0x60))),
            "vcpu1 mmio-read  addr 0x09000005 size 1 value 0x60 (uart)\n"
        );
        let write = VmExit::Mmio { addr: 0x1234, size: 4, write: Some(7) };
        assert_eq!(
            line(write, ExitAction::Resume(VmEntry::Resume)),
            "vcpu1 mmio-write addr 0x00001234 size 4 value 0x7 (no device)\n"
        );
        let off = VmExit::System(SystemEvent::PowerOff);
        let stop = ExitAction::Stop(crate::control::VmOutcome::PowerOff);
        assert_eq!(line(off, stop), "vcpu1 system     power-off\n");
        let hvc = VmExit::Handled(HandledExit::Hypercall);
        assert_eq!(line(hvc, ExitAction::Resume(VmEntry::Resume)), "vcpu1 hypercall\n");
    }
}
