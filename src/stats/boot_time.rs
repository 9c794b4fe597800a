//! How long the guest took to boot: from the moment hvrun starts building the VM to the guest's
//! write to the boot-time probe (`devices::BootProbe`), in wall-clock time and in CPU time of
//! the hvrun process.
//!
//! The CPU figure is the whole process's (`CLOCK_PROCESS_CPUTIME_ID`): on KVM the time the guest
//! runs on a vCPU thread is charged to that thread too, as it is in Firecracker's figure of the
//! same name, so it reads "CPU the VM cost the host", not "CPU hvrun's own code used".

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One guest boot, measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBootTime {
    /// Wall-clock time from the start of the VM build to the probe write.
    pub wall: Duration,
    /// CPU time the hvrun process used over the same span.
    pub vmm_cpu: Duration,
}

impl fmt::Display for GuestBootTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest booted in {} ms (VMM CPU {} ms)",
            self.wall.as_millis(),
            self.vmm_cpu.as_millis()
        )
    }
}

/// Started when a VM build starts; read when the guest reports it has booted.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    wall: Instant,
    cpu: Duration,
}

impl BootClock {
    /// Starts timing now.
    pub fn start() -> Self {
        BootClock { wall: Instant::now(), cpu: process_cpu_time() }
    }

    /// The time since [`start`](Self::start).
    pub fn elapsed(&self) -> GuestBootTime {
        GuestBootTime {
            wall: self.wall.elapsed(),
            vmm_cpu: process_cpu_time().saturating_sub(self.cpu),
        }
    }
}

/// Where the probe's callback leaves the figure for the rest of hvrun (the log, `--stats`,
/// benchmarks). Shared between the vCPU thread that sees the probe write and the VMM thread.
pub type BootTimeSlot = Arc<Mutex<Option<GuestBootTime>>>;

/// CPU time used by every thread of this process so far (zero if the clock is unavailable).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the call only fills it in.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_measures_wall_and_cpu_time() {
        let clock = BootClock::start();
        // Burn a little CPU so the CPU clock visibly moves, and sleep so wall time does.
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::thread::sleep(Duration::from_millis(20));
        let t = clock.elapsed();
        assert!(t.wall >= Duration::from_millis(20), "{t:?}");
        assert!(t.vmm_cpu > Duration::ZERO, "{t:?}");
    }

    #[test]
    fn the_line_is_what_the_docs_promise() {
        let t = GuestBootTime {
            wall: Duration::from_micros(1_234_567),
            vmm_cpu: Duration::from_millis(89),
        };
        assert_eq!(t.to_string(), "guest booted in 1234 ms (VMM CPU 89 ms)");
    }
}
