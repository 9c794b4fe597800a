//! End-to-end: `hvrun host` on the KVM of the machine the tests run in. Every fact is checked
//! against the kernel by the test itself — its own KVM_CHECK_EXTENSION ioctls, its own read of
//! CNTFRQ_EL0, and the kernel version for what a release has or lacks — and the JSON must say
//! what the table says.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use std::os::fd::AsRawFd;

use common::{hvrun, require_kvm, run};
use serde_json::Value;

/// KVM_CHECK_EXTENSION on /dev/kvm (`_IO(KVMIO, 0x03)`), done here rather than through hvrun.
fn check_extension(cap: u64) -> i32 {
    const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap();
    // SAFETY: KVM_CHECK_EXTENSION takes an integer and returns one.
    unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION as _, cap) }
}

/// The running kernel's major and minor version.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap();
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap();
    (major, minor)
}

fn cntfrq_el0() -> u64 {
    let hz: u64;
    // SAFETY: reads a register EL0 may read; touches no memory.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    hz
}

fn host(args: &[&str]) -> common::Run {
    require_kvm();
    let mut cmd = hvrun();
    cmd.arg("host").args(args);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "hvrun host {args:?}: {}", r.describe());
    r
}

#[test]
fn hvrun_host_reports_this_kvm() {
    let r = host(&["--json"]);
    let json: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", r.describe()));
    let flag = |key: &str| json[key].as_bool().unwrap_or_else(|| panic!("{key}: {json:#}"));
    let number = |key: &str| json[key].as_u64().unwrap_or_else(|| panic!("{key}: {json:#}"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();

    assert_eq!(json["backend"], "KVM", "{json:#}");
    assert!(flag("usable"));
    let backend_note = json["notes"]["backend"].as_str().unwrap();
    assert_eq!(backend_note, format!("API 12, Linux {}", release.trim()));

    // Limits: what the kernel answers this test directly.
    let max_vcpus = number("max_vcpus");
    assert!(max_vcpus > 0);
    assert_eq!(max_vcpus, check_extension(66) as u64, "KVM_CAP_MAX_VCPUS");
    let ipa = check_extension(165); // KVM_CAP_ARM_VM_IPA_SIZE
    assert_eq!(number("ipa_bits"), if ipa > 0 { ipa as u64 } else { 40 });
    assert!((32..=52).contains(&number("ipa_bits")));
    assert_eq!(json["gic"], "in-kernel GICv3", "every KVM hvrun runs on has a vGICv3");
    assert_eq!(number("counter_hz"), cntfrq_el0());
    assert!(number("counter_hz") > 0);

    // What every kernel hvrun supports has (ioeventfd since 2.6.32, irqfd since 2.6.32,
    // NISV-to-user since 5.5) ...
    for (key, cap) in [("ioeventfd", 36), ("irqfd", 32), ("nisv_to_user", 177)] {
        assert!(flag(key), "{key}");
        assert!(check_extension(cap) > 0, "{key}: the kernel disagrees");
    }
    // ... and what arrived later: the SMCCC filter and the VM counter offset in 6.4,
    // KVM_CAP_ARM_EL2 in 6.16 (and only with a CPU that has FEAT_NV2).
    let version = kernel_version();
    let since_6_4 = version >= (6, 4);
    assert_eq!(flag("smccc_filter"), since_6_4, "Linux {version:?}");
    assert_eq!(flag("counter_offset"), since_6_4, "Linux {version:?}");
    assert_eq!(flag("counter_offset"), check_extension(227) > 0);
    assert_eq!(flag("nested"), check_extension(240) > 0, "KVM_CAP_ARM_EL2");
    if version < (6, 16) {
        assert!(!flag("nested"), "Linux {version:?} has no nested virtualisation for arm64");
    }
    for (key, caps) in [("pmu_v3", &[126][..]), ("sve", &[170]), ("pointer_auth", &[171, 172])] {
        assert_eq!(flag(key), caps.iter().all(|&c| check_extension(c) > 0), "{key}");
    }
}

#[test]
fn the_table_says_what_the_json_says() {
    let json: Value = serde_json::from_str(&host(&["--json"]).stdout).unwrap();
    let table = host(&[]).stdout;
    let facts = json.as_object().unwrap().iter().filter(|(k, _)| *k != "notes");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), facts.clone().count(), "one line per fact:\n{table}");
    assert!(lines[0].starts_with("backend         KVM "), "{table}");
    for (key, value) in facts {
        let line = lines.iter().find(|l| l.split_whitespace().next() == Some(key.as_str()));
        let line = line.unwrap_or_else(|| panic!("no line for {key}:\n{table}"));
        let shown = match value {
            Value::Bool(true) => "yes".to_string(),
            Value::Bool(false) => "no".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert!(line[16..].starts_with(&shown), "{key} = {value}, but: {line}");
    }
}
