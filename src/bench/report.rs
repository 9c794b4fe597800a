//! What `hvrun bench` prints: an aligned table, JSON (`--json`), and an SVG plot of the latency
//! distributions (`--plot`, drawn with plotters' SVG backend).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{BenchConfig, Case};
use crate::stats::Summary;

/// Guest-visible cost per iteration over the measured batches (exact order statistics of the
/// per-batch means, nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PerIteration {
    pub median_ns: f64,
    pub p99_ns: f64,
    pub min_ns: f64,
    pub mean_ns: f64,
}

impl PerIteration {
    /// Summarises samples (ns per iteration, one per batch); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let r = (q * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        Some(PerIteration {
            median_ns: rank(0.5),
            p99_ns: rank(0.99),
            min_ns: sorted[0],
            mean_ns: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// One case's results.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub case: &'static str,
    /// False when the backend cannot run the case; `what` then says why.
    pub available: bool,
    /// What the number means on this backend.
    pub what: String,
    /// Guest-visible cost per iteration, all vCPUs' batches together.
    pub per_iteration: Option<PerIteration>,
    /// Median per vCPU (with `--cpus` > 1, to see whether they disturb each other).
    pub per_vcpu_median_ns: Vec<f64>,
    /// Exits that reached hvrun per iteration: ~1 when hvrun serves the operation, ~0 when the
    /// kernel does. `None` without VMM-side timing.
    pub exits_to_hvrun_per_iteration: Option<f64>,
    /// hvrun's handling time per exit of the case's kind (log2-bucket estimates for the
    /// median and p99; exact min and max).
    pub vmm_handling: Option<Summary>,
    /// The guest counter's frequency.
    pub cntfrq_hz: u64,
    /// Wall-clock time of the case's VM, start to stop.
    pub wall_s: f64,
    /// ns per iteration of every measured batch (all vCPUs), for plots.
    pub batch_ns: Vec<f64>,
}

impl CaseReport {
    /// A case the backend cannot run.
    pub fn unavailable(case: Case, why: &str) -> Self {
        CaseReport {
            case: case.name(),
            available: false,
            what: why.to_string(),
            per_iteration: None,
            per_vcpu_median_ns: Vec::new(),
            exits_to_hvrun_per_iteration: None,
            vmm_handling: None,
            cntfrq_hz: 0,
            wall_s: 0.0,
            batch_ns: Vec::new(),
        }
    }

    /// A measured case: `per_vcpu` holds each vCPU's counter frequency and batch tick deltas.
    pub fn measured(
        case: Case,
        what: &str,
        config: &BenchConfig,
        per_vcpu: &[(u64, Vec<u64>)],
        exits_per_iteration: Option<f64>,
        vmm_handling: Option<Summary>,
        wall: Duration,
    ) -> Self {
        let mut batch_ns = Vec::new();
        let mut per_vcpu_median_ns = Vec::new();
        for (cntfrq, ticks) in per_vcpu {
            let ns: Vec<f64> = ticks
                .iter()
                .map(|&t| t as f64 * 1e9 / *cntfrq as f64 / config.batch as f64)
                .collect();
            per_vcpu_median_ns.push(PerIteration::of(&ns).map_or(0.0, |p| p.median_ns));
            batch_ns.extend(ns);
        }
        CaseReport {
            case: case.name(),
            available: true,
            what: what.to_string(),
            per_iteration: PerIteration::of(&batch_ns),
            per_vcpu_median_ns,
            exits_to_hvrun_per_iteration: exits_per_iteration,
            vmm_handling,
            cntfrq_hz: per_vcpu.first().map_or(0, |(f, _)| *f),
            wall_s: wall.as_secs_f64(),
            batch_ns,
        }
    }
}

/// A whole `hvrun bench` run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: &'static str,
    /// `uname -sr` of the host, e.g. "Linux 6.1.0-56-arm64".
    pub host: String,
    pub cpus: u32,
    pub iterations_per_batch: u64,
    pub measured_batches: u64,
    pub warmup_batches: u64,
    pub method: &'static str,
    pub cases: Vec<CaseReport>,
}

impl BenchReport {
    pub fn new(backend: &'static str, config: &BenchConfig, cases: Vec<CaseReport>) -> Self {
        BenchReport {
            backend,
            host: host_description(),
            cpus: config.cpus,
            iterations_per_batch: config.batch,
            measured_batches: config.batches(),
            warmup_batches: config.warmup_batches(),
            method: "kvm-unit-tests arm/micro-bench: ISB; CNTVCT_EL0; a batch of iterations; ISB; \
                     CNTVCT_EL0; ns from CNTFRQ_EL0; warm-up batches dropped",
            cases,
        }
    }

    /// The aligned table, with a line per case saying what it measures.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hvrun bench: {} on {}, {} vCPU{}, {} batches of {} iterations per vCPU (+{} warm-up)",
            self.backend,
            self.host,
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            self.measured_batches,
            self.iterations_per_batch,
            self.warmup_batches
        );
        let _ = writeln!(
            out,
            "{:<17} {:>27}   {:>10}   {:>21}",
            "", "guest ns per iteration", "exits to", "hvrun handling/exit"
        );
        let _ = writeln!(
            out,
            "{:<17} {:>9} {:>9} {:>9}   {:>10}   {:>10} {:>10}",
            "case", "median", "p99", "min", "hvrun/iter", "median", "p99"
        );
        for c in &self.cases {
            let Some(p) = c.per_iteration else {
                let _ = writeln!(out, "{:<17} {}", c.case, c.what);
                continue;
            };
            let exits = c.exits_to_hvrun_per_iteration.map_or("-".into(), |e| format!("{e:.2}"));
            let (vmed, vp99) = c.vmm_handling.map_or(("-".into(), "-".into()), |s| {
                (crate::stats::fmt_ns(s.median_ns), crate::stats::fmt_ns(s.p99_ns))
            });
            let _ = writeln!(
                out,
                "{:<17} {:>9.0} {:>9.0} {:>9.0}   {:>10}   {:>10} {:>10}",
                c.case, p.median_ns, p.p99_ns, p.min_ns, exits, vmed, vp99
            );
        }
        for c in self.cases.iter().filter(|c| c.available) {
            let _ = writeln!(out, "  {}: {}", c.case, c.what);
        }
        out
    }

    /// The report as JSON (`--json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Draws the distribution of per-batch ns per iteration of every measured case, as
    /// cumulative curves on a log axis, into an SVG file.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;

        let cases: Vec<&CaseReport> =
            self.cases.iter().filter(|c| !c.batch_ns.is_empty()).collect();
        let all = cases.iter().flat_map(|c| c.batch_ns.iter().copied());
        let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if cases.is_empty() || hi <= 0.0 {
            return Err("no measured case to plot".into());
        }
        let lo = (lo * 0.8).max(0.1);
        let hi = hi * 1.25;
        let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("{}: {e}", path.display());
        let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let caption = format!(
            "hvrun bench: {} on {}, {} vCPU(s), batches of {}",
            self.backend, self.host, self.cpus, self.iterations_per_batch
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("guest-visible ns per iteration (per batch, log scale)")
            .y_desc("fraction of batches")
            .draw()
            .map_err(err)?;
        for (i, c) in cases.iter().enumerate() {
            let mut sorted = c.batch_ns.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len() as f64;
            let points = sorted.iter().enumerate().map(|(k, &v)| (v, (k + 1) as f64 / n));
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(c.case)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)
    }
}

/// `uname -sr`, e.g. "Linux 6.1.0-56-arm64".
fn host_description() -> String {
    // SAFETY: utsname is plain data; uname fills it and NUL-terminates every field.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown host".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> =
            f.iter().take_while(|&&c| c != 0).map(|&c| c.to_ne_bytes()[0]).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {} {}", field(&u.sysname), field(&u.release), field(&u.machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            cases: vec![Case::MmioRead, Case::SysReg],
            iterations: 4,
            batch: 2,
            cpus: 2,
            vmm_time: true,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn per_iteration_order_statistics() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = PerIteration::of(&samples).unwrap();
        assert_eq!((p.median_ns, p.p99_ns, p.min_ns, p.mean_ns), (50.0, 99.0, 1.0, 50.5));
        assert_eq!(PerIteration::of(&[]), None);
    }

    #[test]
    fn ticks_become_ns_per_iteration() {
        // 1 GHz counter: 2000 ticks per batch of 2 = 1000 ns; 62.5 MHz: 125 ticks / 2 = 1000 ns.
        let per_vcpu = vec![(1_000_000_000, vec![2000, 2000]), (62_500_000, vec![125, 125])];
        let r = CaseReport::measured(
            Case::MmioRead,
            "a load",
            &config(),
            &per_vcpu,
            Some(1.0),
            None,
            Duration::ZERO,
        );
        assert_eq!(r.per_iteration.unwrap().median_ns, 1000.0);
        assert_eq!(r.per_vcpu_median_ns, vec![1000.0, 1000.0]);
        assert_eq!(r.batch_ns.len(), 4);
    }

    #[test]
    fn table_json_and_plot() {
        let per_vcpu = vec![(1_000_000_000, vec![3000, 2000])];
        let measured = CaseReport::measured(
            Case::MmioRead,
            "a load",
            &config(),
            &per_vcpu,
            Some(1.0),
            None,
            Duration::ZERO,
        );
        let missing = CaseReport::unavailable(Case::SysReg, "not available on KVM: because");
        let report = BenchReport::new("KVM", &config(), vec![measured, missing]);
        let table = report.to_table();
        assert!(
            table.lines().any(|l| l.starts_with("mmio-read ") && l.contains("1.00")),
            "{table}"
        );
        assert!(table.contains("sysreg            not available on KVM"), "{table}");
        assert!(table.contains("  mmio-read: a load"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["cases"][0]["per_iteration"]["median_ns"], 1000.0);
        assert_eq!(json["cases"][1]["available"], false);
        let svg = std::env::temp_dir().join(format!("hvrun-bench-plot-{}.svg", std::process::id()));
        report.plot(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        let _ = std::fs::remove_file(&svg);
        assert!(
            text.starts_with("<svg") && text.contains("mmio-read"),
            "{}",
            &text[..200.min(text.len())]
        );
    }
}
