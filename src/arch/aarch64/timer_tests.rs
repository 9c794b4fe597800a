//! Tests for the WFI/vtimer policy, tick conversion and the pause-aware vtimer offset.

use super::*;

const EN: u64 = CNTV_CTL_ENABLE;
const MASK: u64 = CNTV_CTL_IMASK;
const MET: u64 = CNTV_CTL_ISTATUS;
/// Apple Silicon's counter runs at 24 MHz.
const HZ: u64 = 24_000_000;

fn wfi(ctl: u64, cval: u64, now: u64, pending: bool) -> WfiDecision {
    let inputs = WfiInputs {
        cntv_ctl: ctl,
        cntv_cval: cval,
        cntvct: now,
        cntfrq_hz: HZ,
        interrupt_pending: pending,
    };
    wfi_decision(&inputs, DEFAULT_SPIN_THRESHOLD)
}

#[test]
fn wfi_table() {
    use WfiDecision::*;
    let ms = |n: u64| n * HZ / 1000;
    let table = [
        // (CNTV_CTL, CVAL, now, interrupt pending) → decision
        ((EN, ms(100), 0, true), Resume),
        ((0, ms(100), 0, true), Resume),
        ((0, ms(100), 0, false), SleepUntilKick),
        ((EN | MASK, ms(100), 0, false), SleepUntilKick),
        ((EN | MASK | MET, 0, ms(1), false), SleepUntilKick),
        ((MET, 0, ms(1), false), SleepUntilKick),
        ((EN | MET, 0, ms(1), false), Resume),
        ((EN, ms(5), ms(5), false), Resume),
        ((EN, ms(5), ms(6), false), Resume),
        ((EN, ms(5), ms(5) - 1, false), Resume),
        ((EN, ms(2) - 1, 0, false), Resume),
        ((EN, ms(2), 0, false), SleepFor(Duration::from_millis(2))),
        ((EN, ms(100) + 24, ms(50), false), SleepFor(Duration::from_nanos(50_001_000))),
        ((EN, u64::MAX, 0, false), SleepFor(Duration::new(768_614_336_404, 564_650_625))),
    ];
    for ((ctl, cval, now, pending), want) in table {
        assert_eq!(wfi(ctl, cval, now, pending), want, "ctl {ctl:#b} cval {cval} now {now}");
    }
}

#[test]
fn spin_threshold_is_a_knob() {
    let inputs = WfiInputs {
        cntv_ctl: EN,
        cntv_cval: 2400,
        cntvct: 0,
        cntfrq_hz: HZ,
        interrupt_pending: false,
    };
    assert_eq!(
        wfi_decision(&inputs, Duration::ZERO),
        WfiDecision::SleepFor(Duration::from_micros(100))
    );
    assert_eq!(
        wfi_decision(&inputs, Duration::from_micros(100)),
        WfiDecision::SleepFor(Duration::from_micros(100))
    );
    assert_eq!(wfi_decision(&inputs, Duration::from_micros(101)), WfiDecision::Resume);
    let broken = WfiInputs { cntfrq_hz: 0, ..inputs };
    assert_eq!(wfi_decision(&broken, Duration::ZERO), WfiDecision::Resume, "0 Hz: never sleep");
}

#[test]
fn tick_conversion_is_exact_and_overflow_free() {
    assert_eq!(ticks_to_duration(HZ, HZ), Some(Duration::from_secs(1)));
    assert_eq!(ticks_to_duration(48_000, HZ), Some(Duration::from_millis(2)));
    assert_eq!(ticks_to_duration(1, HZ), Some(Duration::from_nanos(41)), "rounded down");
    assert_eq!(ticks_to_duration(0, HZ), Some(Duration::ZERO));
    assert_eq!(ticks_to_duration(5, 0), None);
    assert_eq!(ticks_to_duration(u64::MAX, 1), Some(Duration::from_secs(u64::MAX)));
    assert_eq!(ticks_to_duration(u64::MAX, u64::MAX), Some(Duration::from_secs(1)));
    assert_eq!(ticks_to_duration(u64::MAX - 1, u64::MAX), Some(Duration::from_nanos(999_999_999)));
    // 1 GHz counter: ticks are nanoseconds.
    assert_eq!(
        ticks_to_duration(123_456_789_012, 1_000_000_000),
        Some(Duration::from_nanos(123_456_789_012))
    );
}

/// Finding 5 of reviews/hvf-review.md: the conversions at both counter rates Apple chips use.
#[test]
fn counter_conversions_at_24_mhz_and_1_ghz() {
    const GHZ: u64 = 1_000_000_000;
    // mach_timebase_info of a 24 MHz and a 1 GHz clock.
    assert_eq!(timebase_hz(125, 3), Some(HZ));
    assert_eq!(timebase_hz(1, 1), Some(GHZ));
    assert_eq!(timebase_hz(0, 1), None);
    assert_eq!(timebase_hz(1, 0), None);
    // One tick, one second, and a deadline 10 ms away, at each rate.
    assert_eq!(ticks_to_duration(1, HZ), Some(Duration::from_nanos(41)));
    assert_eq!(ticks_to_duration(1, GHZ), Some(Duration::from_nanos(1)));
    assert_eq!(ticks_to_duration(HZ, HZ), Some(Duration::from_secs(1)));
    assert_eq!(ticks_to_duration(GHZ, GHZ), Some(Duration::from_secs(1)));
    for hz in [HZ, GHZ] {
        let now = 7 * hz; // 7 s after the vtimer offset
        let inputs = WfiInputs {
            cntv_ctl: EN,
            cntv_cval: now + hz / 100,
            cntvct: now,
            cntfrq_hz: hz,
            interrupt_pending: false,
        };
        assert_eq!(
            wfi_decision(&inputs, DEFAULT_SPIN_THRESHOLD),
            WfiDecision::SleepFor(Duration::from_millis(10)),
            "{hz} Hz"
        );
    }
    // Host clock at 24 MHz, guest counter scaled to 1 GHz (M4, recent SDK): 1 s of host
    // ticks is 1e9 guest ticks, and a host count never overflows in the conversion.
    let m4 = CounterRates::new(GHZ, timebase_hz(125, 3));
    assert_eq!(m4, CounterRates { counter_hz: GHZ, host_hz: HZ });
    assert!(!m4.agree());
    assert_eq!(m4.to_counter_ticks(HZ), GHZ);
    assert_eq!(m4.to_counter_ticks(3), 125);
    assert_eq!(m4.to_counter_ticks(u64::MAX), u64::MAX, "saturates");
    let m1 = CounterRates::new(HZ, timebase_hz(125, 3));
    assert!(m1.agree());
    assert_eq!(m1.to_counter_ticks(123_456_789), 123_456_789, "same rate: unchanged");
    // Reading "now" at the host rate and comparing it with a 1 GHz deadline is the bug the
    // conversion prevents: the 10 ms wait would look like 41.7x longer.
    let host_now = 7 * HZ;
    let mixed = WfiInputs {
        cntv_ctl: EN,
        cntv_cval: m4.to_counter_ticks(host_now) + GHZ / 100,
        cntvct: m4.to_counter_ticks(host_now),
        cntfrq_hz: m4.counter_hz,
        interrupt_pending: false,
    };
    assert_eq!(
        wfi_decision(&mixed, DEFAULT_SPIN_THRESHOLD),
        WfiDecision::SleepFor(Duration::from_millis(10))
    );
}

#[test]
fn counter_rates_fall_back_when_a_value_is_missing() {
    assert_eq!(CounterRates::new(0, Some(HZ)), CounterRates { counter_hz: HZ, host_hz: HZ });
    assert_eq!(CounterRates::new(HZ, None), CounterRates { counter_hz: HZ, host_hz: HZ });
    assert_eq!(CounterRates::new(0, None), CounterRates { counter_hz: HZ, host_hz: HZ });
    assert_eq!(CounterRates::new(HZ, Some(0)), CounterRates { counter_hz: HZ, host_hz: HZ });
    assert_eq!(rescale(10, 0, HZ), 10, "a 0 Hz source is not divided by");
}

#[test]
fn vtimer_line_and_unmask_rule() {
    for ctl in 0..8u64 {
        let high = ctl == EN | MET;
        assert_eq!(vtimer_line_high(ctl), high, "ctl {ctl:#b}");
        assert_eq!(vtimer_should_unmask(ctl), !high, "ctl {ctl:#b}");
    }
    assert!(vtimer_line_high(EN | MET | 0xf0), "RES0 bits do not matter");
}

#[test]
fn offset_freezes_guest_time_across_a_pause() {
    let mut t = VtimerOffset::starting_at(1_000);
    assert_eq!(t.offset(), 1_000);
    assert_eq!(t.guest_count(1_000), 0);
    assert_eq!(t.guest_count(1_500), 500);
    t.pause(1_500);
    assert!(t.is_paused());
    assert_eq!(t.guest_count(9_999), 500, "frozen while paused");
    t.pause(2_000);
    assert_eq!(t.guest_count(9_999), 500, "a second pause keeps the first time");
    assert_eq!(t.resume(4_500), 4_000, "3000 ticks paused");
    assert!(!t.is_paused());
    assert_eq!(t.guest_count(4_500), 500, "continues from where it stopped");
    assert_eq!(t.guest_count(4_600), 600);
    assert_eq!(t.resume(5_000), 4_000, "resume without pause changes nothing");
}

#[test]
fn offset_arithmetic_wraps_instead_of_panicking() {
    let mut t = VtimerOffset::starting_at(u64::MAX - 10);
    assert_eq!(t.guest_count(5), 16, "host counter wrapped");
    t.pause(5);
    t.resume(u64::MAX);
    assert_eq!(t.guest_count(u64::MAX), 16);
    assert_eq!(t.guest_count(u64::MAX.wrapping_add(4)), 20);
}
