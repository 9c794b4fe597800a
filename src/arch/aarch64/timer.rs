//! The virtual timer rules a backend that traps WFI applies: how long a WFI may sleep, when the
//! timer's interrupt line is high (and so when Hypervisor.framework's vtimer mask may be
//! lifted), counter ticks to time, and the counter offset that freezes guest time across a
//! pause.
//!
//! CNTV_CTL_EL0: Arm ARM D24.11 (bit 0 ENABLE, bit 1 IMASK, bit 2 ISTATUS); the timer condition
//! is CNTVCT_EL0 - CNTV_CVAL_EL0 >= 0 (D12.2.4, "the condition is met when ... the
//! CompareValue is less than or equal to the counter").

use std::time::Duration;

/// CNTV_CTL_EL0.ENABLE: the timer runs.
pub const CNTV_CTL_ENABLE: u64 = 1 << 0;
/// CNTV_CTL_EL0.IMASK: the interrupt is masked (the condition may still be met).
pub const CNTV_CTL_IMASK: u64 = 1 << 1;
/// CNTV_CTL_EL0.ISTATUS: the timer condition is met (read-only).
pub const CNTV_CTL_ISTATUS: u64 = 1 << 2;

/// Below this a WFI does not sleep: a host sleep and wake-up cost more than a few more WFI
/// exits. QEMU's HVF backend uses 2 ms; the backend exposes it as a knob for benchmarking.
pub const DEFAULT_SPIN_THRESHOLD: Duration = Duration::from_millis(2);

/// What a vCPU knows when it traps on WFI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WfiInputs {
    /// CNTV_CTL_EL0.
    pub cntv_ctl: u64,
    /// CNTV_CVAL_EL0: the deadline, in virtual counter ticks.
    pub cntv_cval: u64,
    /// The guest's virtual count now (host counter minus the vtimer offset).
    pub cntvct: u64,
    /// CNTFRQ_EL0: counter ticks per second.
    pub cntfrq_hz: u64,
    /// The GIC has an interrupt for this vCPU (its IRQ line is up).
    pub interrupt_pending: bool,
}

/// What the vCPU thread does for a WFI (the PC is advanced past it in every case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WfiDecision {
    /// Go back to the guest now: an interrupt is pending, the timer is due, or it is due sooner
    /// than the spin threshold (the guest will WFI again, or take the timer interrupt).
    Resume,
    /// The timer cannot wake the vCPU (disabled or masked): sleep until a kick (an interrupt
    /// for this vCPU, CPU_ON, a stop request).
    SleepUntilKick,
    /// Sleep until the timer's deadline, this long from now, or an earlier kick.
    SleepFor(Duration),
}

/// Decides what a WFI does (the HVF.md rules): pending interrupt → resume; timer disabled or
/// masked → sleep until kicked; deadline passed → resume; deadline within `spin_threshold` →
/// resume without sleeping; otherwise sleep until the deadline. A CNTFRQ of 0 (the deadline
/// cannot be converted) resumes: never sleep on a time we cannot compute.
pub fn wfi_decision(inputs: &WfiInputs, spin_threshold: Duration) -> WfiDecision {
    if inputs.interrupt_pending {
        return WfiDecision::Resume;
    }
    let ctl = inputs.cntv_ctl;
    if ctl & CNTV_CTL_ENABLE == 0 || ctl & CNTV_CTL_IMASK != 0 {
        return WfiDecision::SleepUntilKick;
    }
    if ctl & CNTV_CTL_ISTATUS != 0 || inputs.cntv_cval <= inputs.cntvct {
        return WfiDecision::Resume;
    }
    match ticks_to_duration(inputs.cntv_cval - inputs.cntvct, inputs.cntfrq_hz) {
        Some(wait) if wait >= spin_threshold => WfiDecision::SleepFor(wait),
        _ => WfiDecision::Resume,
    }
}

/// `ticks` of a counter running at `frequency_hz`, as a duration; exact to the nanosecond
/// (rounded down) and overflow-free for every `u64` input. `None` for a 0 Hz counter.
pub fn ticks_to_duration(ticks: u64, frequency_hz: u64) -> Option<Duration> {
    if frequency_hz == 0 {
        return None;
    }
    let secs = ticks / frequency_hz;
    // remainder < frequency, so remainder * 1e9 fits in u128 and the quotient is < 1e9.
    let nanos = u128::from(ticks % frequency_hz) * 1_000_000_000 / u128::from(frequency_hz);
    Some(Duration::new(secs, nanos as u32))
}

/// Ticks per second of a Mach-style timebase, where `nanoseconds = ticks * numer / denom`
/// (`mach_timebase_info`: 125/3 on Apple Silicon's 24 MHz counter, 1/1 for a 1 GHz one).
/// `None` for a timebase that cannot be (a zero in either field).
pub fn timebase_hz(numer: u32, denom: u32) -> Option<u64> {
    if numer == 0 || denom == 0 {
        return None;
    }
    Some(1_000_000_000 * u64::from(denom) / u64::from(numer))
}

/// `ticks` of a counter at `from_hz` in ticks of one at `to_hz` (rounded down, saturating).
pub fn rescale(ticks: u64, from_hz: u64, to_hz: u64) -> u64 {
    if from_hz == to_hz || from_hz == 0 {
        return ticks;
    }
    let scaled = u128::from(ticks) * u128::from(to_hz) / u128::from(from_hz);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// The two clocks a backend that emulates WFI must not mix up: the guest's counter (its
/// CNTFRQ_EL0 rate, in which it programs CNTV_CVAL_EL0) and the host clock the vtimer offset
/// is defined against (`hv_vcpu.h`: `CNTVCT_EL0 = mach_absolute_time() - vtimer_offset`).
///
/// On every Apple chip before M4 both run at 24 MHz. On M4-class chips macOS scales CNTFRQ and
/// CNTVCT to 1 GHz for processes built with a recent SDK (and, reportedly, their VMs:
/// utmapp/UTM#6942), while `mach_absolute_time` stays at 24 MHz (wolfpld/tracy#1239): then a
/// host tick count must be rescaled before it is compared with a guest deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRates {
    /// The guest counter's ticks per second (CNTFRQ_EL0).
    pub counter_hz: u64,
    /// The host clock's ticks per second (`mach_timebase_info`).
    pub host_hz: u64,
}

impl CounterRates {
    /// From CNTFRQ_EL0 as read on the host and the host clock's rate. A missing value falls
    /// back to the other, and both missing to Apple Silicon's 24 MHz.
    pub fn new(cntfrq_el0: u64, host_hz: Option<u64>) -> Self {
        const APPLE_COUNTER_HZ: u64 = 24_000_000;
        let host_hz = host_hz.filter(|&hz| hz > 0);
        let counter_hz = match (cntfrq_el0, host_hz) {
            (0, Some(hz)) => hz,
            (0, None) => APPLE_COUNTER_HZ,
            (hz, _) => hz,
        };
        CounterRates { counter_hz, host_hz: host_hz.unwrap_or(counter_hz) }
    }

    /// Whether the guest counter and the host clock tick at the same rate.
    pub fn agree(&self) -> bool {
        self.counter_hz == self.host_hz
    }

    /// A count of host clock ticks (e.g. the guest's count since the vtimer offset) in guest
    /// counter ticks.
    pub fn to_counter_ticks(&self, host_ticks: u64) -> u64 {
        rescale(host_ticks, self.host_hz, self.counter_hz)
    }
}

/// A WFI whose timer is due further away than this is suspicious: Linux keeps its deadlines
/// within seconds. It usually means the counter domains disagree (see [`CounterRates`]).
pub const IMPLAUSIBLE_TIMER_WAIT: Duration = Duration::from_secs(3600);

/// Whether the virtual timer drives its interrupt line (PPI 27) high: ENABLE and ISTATUS set,
/// IMASK clear.
pub fn vtimer_line_high(cntv_ctl: u64) -> bool {
    cntv_ctl & (CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS)
        == CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS
}

/// After a VTIMER_ACTIVATED exit, Hypervisor.framework masks the vtimer so it does not fire
/// again at once. Lift the mask (`hv_vcpu_set_vtimer_mask(false)`) once the guest has handled
/// it, i.e. when the line is no longer high: the guest disabled or masked the timer, or moved
/// the deadline into the future. Until then keep it masked and the PPI asserted.
pub fn vtimer_should_unmask(cntv_ctl: u64) -> bool {
    !vtimer_line_high(cntv_ctl)
}

/// The vtimer offset of a VM (`hv_vcpu_set_vtimer_offset`, the same for every vCPU): the
/// guest's virtual count is the host count minus the offset. Pausing and resuming moves the
/// offset by the paused time, so the guest's counter (and every deadline it set) stands still
/// while the VM is paused. Counts are host counter ticks (`mach_absolute_time` on macOS).
///
/// The host counter also stops while a Mac sleeps, so guest time falls behind wall-clock time
/// after a host sleep; correcting that needs telling the guest (a host-time push), which this
/// type does not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtimerOffset {
    offset: u64,
    paused_at: Option<u64>,
}

impl VtimerOffset {
    /// An offset that makes the guest's counter start from 0 at host count `host_now`.
    pub fn starting_at(host_now: u64) -> Self {
        VtimerOffset { offset: host_now, paused_at: None }
    }

    /// The offset to give every vCPU.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// The guest's virtual count at host count `host_now` (frozen while paused).
    pub fn guest_count(&self, host_now: u64) -> u64 {
        self.paused_at.unwrap_or(host_now).wrapping_sub(self.offset)
    }

    /// The VM stops running at host count `host_now`. Pausing twice keeps the first time.
    pub fn pause(&mut self, host_now: u64) {
        self.paused_at.get_or_insert(host_now);
    }

    /// The VM runs again at host count `host_now`; returns the new offset (the old one plus
    /// the paused time), which every vCPU must be given before it runs. Without a pause this
    /// changes nothing.
    pub fn resume(&mut self, host_now: u64) -> u64 {
        if let Some(paused_at) = self.paused_at.take() {
            self.offset = self.offset.wrapping_add(host_now.wrapping_sub(paused_at));
        }
        self.offset
    }
}

#[cfg(test)]
#[path = "timer_tests.rs"]
mod tests;
