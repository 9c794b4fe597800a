//! End-to-end: `hvrun bench` on KVM (a short smoke run: every case gives a positive number and
//! valid JSON; nothing is asserted about how fast anything is), and `--stats` / `--trace-exits`
//! on a real Linux guest.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use common::{guest, hvrun, require_kvm, run, Scratch};

fn bench(args: &[&str]) -> serde_json::Value {
    require_kvm();
    let mut cmd = hvrun();
    cmd.arg("bench").args(args).arg("--json");
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", r.describe()))
}

fn case<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["cases"].as_array().unwrap().iter().find(|c| c["case"] == name).unwrap()
}

#[test]
fn every_case_reports_a_positive_number_and_valid_json() {
    let scratch = Scratch::new("bench-smoke");
    let svg = scratch.path("bench.svg");
    let report = bench(&["--iterations", "256", "--batch", "16", "--plot", svg.to_str().unwrap()]);
    assert_eq!(report["backend"], "KVM");
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6, "{report:#}");
    for c in cases {
        if c["available"] == false {
            continue;
        }
        for stat in ["median_ns", "p99_ns", "min_ns"] {
            let v = c["per_iteration"][stat].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{} {stat} = {v}: {c:#}", c["case"]);
        }
        assert_eq!(c["batch_ns"].as_array().unwrap().len(), 16, "{c:#}");
    }
    // Where each operation is served is a fact, not a timing: count the exits that reach hvrun.
    let exits = |name| case(&report, name)["exits_to_hvrun_per_iteration"].as_f64().unwrap();
    assert!((exits("mmio-read") - 1.0).abs() < 0.01, "{report:#}");
    assert!((exits("mmio-write") - 1.0).abs() < 0.01, "{report:#}");
    assert_eq!(exits("hvc"), 0.0, "KVM serves HVCs in the kernel");
    assert_eq!(exits("mmio-read-kernel"), 0.0, "the vGIC serves GICD_IIDR in the kernel");
    assert_eq!(exits("nop"), 0.0);
    assert!(case(&report, "mmio-read")["vmm_handling"]["median_ns"].as_u64().unwrap() > 0);
    let sysreg = case(&report, "sysreg");
    assert_eq!(sysreg["available"], false);
    assert!(sysreg["what"].as_str().unwrap().contains("not available on KVM"));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("mmio-read"));
}

#[test]
fn two_vcpus_run_the_micro_guest_in_parallel_and_the_table_lines_up() {
    require_kvm();
    let report =
        bench(&["--cpus", "2", "--iterations", "64", "--batch", "16", "mmio-read", "sysreg"]);
    let read = case(&report, "mmio-read");
    let medians = read["per_vcpu_median_ns"].as_array().unwrap();
    assert_eq!(medians.len(), 2, "{read:#}");
    assert!(medians.iter().all(|m| m.as_f64().unwrap() > 0.0), "{read:#}");
    let mut cmd = hvrun();
    cmd.args(["bench", "--iterations", "64", "--batch", "16", "mmio-write", "sysreg"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let row = r.stdout.lines().find(|l| l.starts_with("mmio-write ")).expect("a mmio-write row");
    assert_eq!(row.split_whitespace().count(), 7, "{}", r.stdout);
    assert!(r.stdout.contains("sysreg            not available on KVM"), "{}", r.stdout);
}

#[test]
fn bad_bench_options_are_usage_errors() {
    let mut cmd = hvrun();
    cmd.args(["bench", "--iterations", "0"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let mut cmd = hvrun();
    cmd.args(["bench", "ipi"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("unknown case `ipi`"), "{}", r.describe());
}

#[test]
fn stats_json_and_trace_exits_on_a_linux_guest() {
    let r = run(guest(&["--stats", "json", "--trace-exits"], "true"));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    // The trace: UART stores decoded with the device name, then the closing count.
    assert!(
        r.stderr.lines().any(|l| l.starts_with("vcpu0 mmio-write addr 0x09000000 size 1 value ")
            && l.ends_with("(uart)")),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("exits shown,"), "{}", r.describe());
    let json = r.stderr.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    let stats: serde_json::Value = serde_json::from_str(json).unwrap();
    let writes = stats["total"]["mmio-write"]["count"].as_u64().unwrap();
    assert!(writes > 10, "{stats:#}");
    assert_eq!(stats["vcpus"].as_array().unwrap().len(), 1);
    assert_eq!(stats["total"]["system"]["count"], 1, "one PSCI SYSTEM_OFF");
    // The test initramfs writes the boot-time probe, so the figure is there too.
    assert!(stats["boot_time_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{stats:#}");
}

#[test]
fn stats_table_is_printed_at_exit() {
    let r = run(guest(&["--stats"], "true"));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stderr.contains("exit statistics:"), "{}", r.describe());
    assert!(
        r.stderr.lines().any(|l| l.starts_with("total ") && l.contains("mmio-read")),
        "{}",
        r.describe()
    );
}
