//! Exit statistics: per-exit-reason counts and VMM-side handling-time histograms (log2 buckets).
//!
//! Each vCPU thread owns one [`ExitStats`] and updates it with plain adds on its own memory: no
//! lock, no atomic, no allocation on the hot path. When the VM stops, the threads hand their stats
//! back and [`RunStats`] merges them into a total. "Handling time" is what hvrun spends between
//! the backend returning an exit and the next entry into the guest (decode, bus, device).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub mod boot_time;

use crate::hv::{HandledExit, VmExit};

/// How `--stats` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatsFormat {
    /// An aligned table on stderr.
    #[default]
    Table,
    /// One JSON object on stderr.
    Json,
}

impl std::str::FromStr for StatsFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" | "" => Ok(StatsFormat::Table),
            "json" => Ok(StatsFormat::Json),
            _ => Err(format!("`{s}`: expected `table` or `json`")),
        }
    }
}

/// The exit reasons statistics tell apart: the exit vocabulary of [`VmExit`], with the exits a
/// backend handled itself told apart by [`HandledExit`] (so a new handled exit needs no edit
/// here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    MmioRead,
    MmioWrite,
    Handled(HandledExit),
    System,
    Kicked,
    Unhandled,
}

/// How many [`ExitKind`]s there are.
const KINDS: usize = 5 + HandledExit::ALL.len();

impl ExitKind {
    /// Every kind, in the order tables list them.
    pub const ALL: [ExitKind; KINDS] = {
        let mut all = [ExitKind::MmioRead; KINDS];
        all[1] = ExitKind::MmioWrite;
        let mut i = 0;
        while i < HandledExit::ALL.len() {
            all[2 + i] = ExitKind::Handled(HandledExit::ALL[i]);
            i += 1;
        }
        all[KINDS - 3] = ExitKind::System;
        all[KINDS - 2] = ExitKind::Kicked;
        all[KINDS - 1] = ExitKind::Unhandled;
        all
    };

    /// The kind of `exit`.
    pub fn of(exit: &VmExit) -> ExitKind {
        match exit {
            VmExit::Mmio { write: None, .. } => ExitKind::MmioRead,
            VmExit::Mmio { write: Some(_), .. } => ExitKind::MmioWrite,
            VmExit::Handled(handled) => ExitKind::Handled(*handled),
            VmExit::System(_) => ExitKind::System,
            VmExit::Kicked => ExitKind::Kicked,
            VmExit::Unhandled { .. } => ExitKind::Unhandled,
        }
    }

    /// Short name used in tables, traces and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Handled(handled) => handled.name(),
            ExitKind::System => "system",
            ExitKind::Kicked => "kicked",
            ExitKind::Unhandled => "unhandled",
        }
    }

    /// Position in [`ALL`](Self::ALL).
    fn index(self) -> usize {
        match self {
            ExitKind::MmioRead => 0,
            ExitKind::MmioWrite => 1,
            ExitKind::Handled(handled) => 2 + handled as usize,
            ExitKind::System => KINDS - 3,
            ExitKind::Kicked => KINDS - 2,
            ExitKind::Unhandled => KINDS - 1,
        }
    }
}

/// Number of log2 buckets: bucket `i` holds durations in `[2^i, 2^(i+1))` ns (bucket 0 also
/// holds 0); 40 buckets reach past 18 minutes.
pub const BUCKETS: usize = 40;

/// A distribution of durations in nanoseconds, in log2 buckets, with exact count/min/max/sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    min_ns: u64,
    max_ns: u64,
    sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: [0; BUCKETS], count: 0, min_ns: u64::MAX, max_ns: 0, sum_ns: 0 }
    }
}

/// The bucket of a duration: floor(log2(ns)), with 0 and 1 in bucket 0.
pub fn bucket_of(ns: u64) -> usize {
    let log2 = 63 - (ns | 1).leading_zeros() as usize;
    log2.min(BUCKETS - 1)
}

impl Histogram {
    /// Adds one sample. Branch-light and allocation-free: it runs once per exit.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.buckets[bucket_of(ns)] += 1;
        self.count += 1;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The per-bucket counts (for plots).
    pub fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// An estimate of the `q` quantile (0.0..=1.0) in ns: the bucket holding that rank, with the
    /// rank's position interpolated linearly inside the bucket (assuming its samples are spread
    /// evenly), clamped to the exact min and max.
    /// Exact to within the bucket (a factor of two); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        // The 1-based rank of the sample we want.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min_ns);
        }
        if rank == self.count {
            return Some(self.max_ns);
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if seen + n >= rank {
                let lo = if i == 0 { 0 } else { 1u64 << i };
                let hi = 1u64 << (i + 1);
                // The middle of the rank's slice of the bucket, so a bucket's last sample stays
                // inside it.
                let frac = ((rank - seen) as f64 - 0.5) / n as f64;
                let estimate = lo + ((hi - lo) as f64 * frac) as u64;
                return Some(estimate.clamp(self.min_ns, self.max_ns));
            }
            seen += n;
        }
        Some(self.max_ns)
    }

    /// min / median / p99 / max / mean, in ns.
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            count: self.count,
            min_ns: (self.count > 0).then_some(self.min_ns)?,
            median_ns: self.quantile(0.5)?,
            p99_ns: self.quantile(0.99)?,
            max_ns: self.max_ns,
            mean_ns: self.sum_ns / self.count,
        })
    }
}

/// A histogram boiled down to the numbers people read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_ns: u64,
    pub median_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

/// One vCPU's exits: a count and a handling-time histogram per [`ExitKind`]. Owned by the vCPU
/// thread; a fixed array, so recording never allocates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    kinds: [Histogram; ExitKind::ALL.len()],
}

impl ExitStats {
    /// Records one exit of `kind` that hvrun handled in `handling`.
    #[inline]
    pub fn record(&mut self, kind: ExitKind, handling: Duration) {
        let ns = u64::try_from(handling.as_nanos()).unwrap_or(u64::MAX);
        self.kinds[kind.index()].record(ns);
    }

    /// Adds `other`'s exits.
    pub fn merge(&mut self, other: &ExitStats) {
        for (a, b) in self.kinds.iter_mut().zip(other.kinds.iter()) {
            a.merge(b);
        }
    }

    /// The histogram of one kind.
    pub fn kind(&self, kind: ExitKind) -> &Histogram {
        &self.kinds[kind.index()]
    }

    /// Exits of every kind together.
    pub fn all(&self) -> Histogram {
        let mut all = Histogram::default();
        for h in &self.kinds {
            all.merge(h);
        }
        all
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.kinds.iter().map(Histogram::count).sum()
    }
}

/// The statistics of a whole run: per vCPU, merged over guest reboots, and the total.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Index = vCPU index.
    pub vcpus: Vec<ExitStats>,
    /// Wall-clock time the vCPUs ran (summed over reboots).
    pub run_time: Duration,
    /// The last boot's time to userspace, when the guest wrote the boot-time probe.
    pub boot_time: Option<boot_time::GuestBootTime>,
}

impl RunStats {
    /// Adds one VM run's per-vCPU stats (a reboot starts a new VM with the same vCPUs).
    pub fn add_run(&mut self, vcpus: Vec<ExitStats>, run_time: Duration) {
        if self.vcpus.len() < vcpus.len() {
            self.vcpus.resize(vcpus.len(), ExitStats::default());
        }
        for (mine, theirs) in self.vcpus.iter_mut().zip(vcpus.iter()) {
            mine.merge(theirs);
        }
        self.run_time += run_time;
    }

    /// All vCPUs together.
    pub fn total(&self) -> ExitStats {
        let mut total = ExitStats::default();
        for v in &self.vcpus {
            total.merge(v);
        }
        total
    }

    /// An aligned table: one block per vCPU (when there is more than one) and the total.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "exit statistics: {} exits in {:.3} s; VMM-side handling time per exit (log2-bucket \
             estimates for median/p99)",
            self.total().total(),
            self.run_time.as_secs_f64()
        );
        if let Some(boot) = self.boot_time {
            let _ = writeln!(out, "{boot}");
        }
        let _ = writeln!(
            out,
            "{:<8} {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "vcpu", "reason", "count", "min", "median", "p99", "max"
        );
        let mut block = |label: &str, stats: &ExitStats| {
            for kind in ExitKind::ALL {
                if let Some(s) = stats.kind(kind).summary() {
                    let _ = writeln!(
                        out,
                        "{:<8} {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        label,
                        kind.name(),
                        s.count,
                        fmt_ns(s.min_ns),
                        fmt_ns(s.median_ns),
                        fmt_ns(s.p99_ns),
                        fmt_ns(s.max_ns)
                    );
                }
            }
        };
        if self.vcpus.len() > 1 {
            for (i, v) in self.vcpus.iter().enumerate() {
                block(&i.to_string(), v);
            }
        }
        block("total", &self.total());
        out
    }

    /// The same numbers as JSON (`--stats json`).
    pub fn to_json(&self) -> serde_json::Value {
        let kinds = |stats: &ExitStats| {
            let mut map = serde_json::Map::new();
            for kind in ExitKind::ALL {
                let h = stats.kind(kind);
                if let Some(s) = h.summary() {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["log2_buckets"] = serde_json::json!(&h.buckets()[..]);
                    map.insert(kind.name().to_string(), v);
                }
            }
            serde_json::Value::Object(map)
        };
        serde_json::json!({
            "run_time_s": self.run_time.as_secs_f64(),
            "boot_time_ms": self.boot_time.map(|b| b.wall.as_secs_f64() * 1e3),
            "boot_vmm_cpu_ms": self.boot_time.map(|b| b.vmm_cpu.as_secs_f64() * 1e3),
            "bucket_ns": "bucket i holds handling times in [2^i, 2^(i+1)) ns",
            "vcpus": self.vcpus.iter().map(kinds).collect::<Vec<_>>(),
            "total": kinds(&self.total()),
        })
    }
}

/// A duration in ns, printed with a unit that keeps it short ("850ns", "12.3us", "4.1ms").
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::SystemEvent;

    #[test]
    fn buckets_are_floor_log2() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 1);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(1023), 9);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(Histogram::default().summary(), None);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn single_value_is_exact() {
        let mut h = Histogram::default();
        h.record(1500);
        let s = h.summary().unwrap();
        assert_eq!(
            (s.count, s.min_ns, s.median_ns, s.p99_ns, s.max_ns),
            (1, 1500, 1500, 1500, 1500)
        );
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let mut h = Histogram::default();
        // 98 samples of 100 ns (bucket 6: 64..128), one of 5000 ns and one of 1_000_000 ns.
        for _ in 0..98 {
            h.record(100);
        }
        h.record(5000);
        h.record(1_000_000);
        let s = h.summary().unwrap();
        assert_eq!(s.min_ns, 100);
        assert_eq!(s.max_ns, 1_000_000);
        assert_eq!(bucket_of(s.median_ns), bucket_of(100));
        // p99 = the 99th of 100 samples = 5000 ns, in bucket 12 (4096..8192).
        assert_eq!(bucket_of(s.p99_ns), bucket_of(5000));
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(100), "the smallest sample, clamped to min");
        assert_eq!(s.mean_ns, (98 * 100 + 5000 + 1_000_000) / 100);
    }

    #[test]
    fn quantiles_are_monotonic() {
        let mut h = Histogram::default();
        for ns in (0..10_000u64).map(|i| i * i % 77_777) {
            h.record(ns);
        }
        let mut last = 0;
        for q in (0..=100).map(|p| f64::from(p) / 100.0) {
            let v = h.quantile(q).unwrap();
            assert!(v >= last, "q={q}: {v} < {last}");
            last = v;
        }
    }

    #[test]
    fn merging_adds_counts_and_keeps_extremes() {
        let mut a = ExitStats::default();
        let mut b = ExitStats::default();
        a.record(ExitKind::MmioRead, Duration::from_nanos(10));
        b.record(ExitKind::MmioRead, Duration::from_nanos(1000));
        b.record(ExitKind::Handled(HandledExit::Hypercall), Duration::from_nanos(7));
        let mut run = RunStats::default();
        run.add_run(vec![a, b], Duration::from_secs(1));
        let total = run.total();
        assert_eq!(total.total(), 3);
        let reads = total.kind(ExitKind::MmioRead).summary().unwrap();
        assert_eq!((reads.count, reads.min_ns, reads.max_ns), (2, 10, 1000));
        assert_eq!(total.all().count(), 3);
        // A second run (after a reboot) merges per vCPU.
        let mut c = ExitStats::default();
        c.record(ExitKind::Handled(HandledExit::Wfi), Duration::from_micros(3));
        run.add_run(vec![c], Duration::from_secs(1));
        assert_eq!(run.vcpus[0].total(), 2);
        assert_eq!(run.run_time, Duration::from_secs(2));
    }

    #[test]
    fn every_exit_maps_to_its_kind() {
        let mmio = VmExit::Mmio { addr: 0, size: 4, write: None };
        assert_eq!(ExitKind::of(&mmio), ExitKind::MmioRead);
        let mmio = VmExit::Mmio { addr: 0, size: 4, write: Some(1) };
        assert_eq!(ExitKind::of(&mmio), ExitKind::MmioWrite);
        for handled in HandledExit::ALL {
            assert_eq!(ExitKind::of(&VmExit::Handled(handled)), ExitKind::Handled(handled));
            assert_eq!(ExitKind::Handled(handled).name(), handled.name());
        }
        for (i, handled) in HandledExit::ALL.iter().enumerate() {
            assert_eq!(*handled as usize, i, "HandledExit::ALL is in declaration order");
        }
        assert_eq!(ExitKind::of(&VmExit::Kicked), ExitKind::Kicked);
        assert_eq!(ExitKind::of(&VmExit::System(SystemEvent::Reset)), ExitKind::System);
        for (i, kind) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "ALL is in declaration order");
        }
    }

    #[test]
    fn table_and_json_show_the_numbers() {
        let mut a = ExitStats::default();
        a.record(ExitKind::MmioWrite, Duration::from_nanos(2500));
        let mut run = RunStats::default();
        run.add_run(vec![a.clone(), a], Duration::from_millis(5));
        let table = run.to_table();
        assert!(table.contains("mmio-write"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("total ") && l.contains("2500ns")), "{table}");
        assert!(table.lines().any(|l| l.starts_with("1 ")), "per-vCPU rows: {table}");
        let json = run.to_json();
        assert_eq!(json["total"]["mmio-write"]["count"], 2);
        assert_eq!(json["vcpus"][1]["mmio-write"]["max_ns"], 2500);
        assert!(json["boot_time_ms"].is_null());
        assert_eq!(json["total"]["mmio-write"]["log2_buckets"][11], 2);
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(12_345), "12.3us");
        assert_eq!(fmt_ns(41_000_000), "41.0ms");
    }
}
