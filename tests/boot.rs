//! End-to-end: hvrun boots a real Debian arm64 kernel with a busybox initramfs on KVM, and the
//! guest reports what it sees. On x86_64 hosts these run inside the emulated arm64 machine
//! (tests/harness/arm64-vm); on arm64 Linux with /dev/kvm, natively.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use common::{guest, run, run_until, READY};

#[test]
fn boots_to_the_ready_marker_and_exits_0_on_poweroff() {
    let r = run(guest(&[], "echo guest-says-hello"));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains(READY), "{}", r.describe());
    assert!(r.stdout.contains("guest-says-hello"), "{}", r.describe());
    assert!(r.stdout.contains("HVRUN-GUEST-EXIT=0"), "{}", r.describe());
}

#[test]
fn gzip_compressed_kernel_boots() {
    let mut cmd = common::hvrun();
    let dir = common::artifacts();
    common::require_kvm();
    cmd.arg("--kernel").arg(dir.join("Image.gz"));
    cmd.arg("--initrd").arg(dir.join("guest-initrd.cpio.gz"));
    cmd.args(["--cmdline", "console=ttyS0 quiet -- echo gz-ok"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("gz-ok"), "{}", r.describe());
}

#[test]
fn two_vcpus_are_online() {
    let r = run(guest(
        &["--cpus", "2"],
        "echo online=$(cat /sys/devices/system/cpu/online) nproc=$(nproc)",
    ));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("online=0-1 nproc=2"), "{}", r.describe());
}

#[test]
fn memtotal_matches_mem() {
    let r = run(guest(&["--mem", "512M"], "grep MemTotal /proc/meminfo"));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let kib: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal line\n{}", r.describe()));
    // MemTotal is RAM minus what the kernel reserves for its image and early allocations.
    let mib = kib / 1024;
    assert!((400..=512).contains(&mib), "MemTotal {mib} MiB for --mem 512M\n{}", r.describe());

    let r = run(guest(&["--mem", "1G"], "grep MemTotal /proc/meminfo"));
    assert!(r.stdout.contains("MemTotal:"), "{}", r.describe());
    let bigger: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        bigger / 1024 > 900 && bigger / 1024 <= 1024,
        "MemTotal {} MiB for --mem 1G",
        bigger / 1024
    );
}

#[test]
fn command_line_reaches_the_guest() {
    let cmdline = "console=ttyS0 quiet hvrun.marker=c0ffee -- cat /proc/cmdline";
    let r = run(common::guest_with_cmdline(&[], cmdline));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("hvrun.marker=c0ffee"), "{}", r.describe());
}

#[test]
fn guest_reset_with_no_reboot_exits_3() {
    let r = run(guest(&["--no-reboot"], "reboot -f"));
    assert_eq!(r.code, Some(3), "{}", r.describe());
    assert!(r.stdout.contains(READY), "{}", r.describe());
}

#[test]
fn guest_reset_reboots_by_default() {
    let mut boots = 0;
    let lines = run_until(guest(&[], "reboot -f"), |line| {
        if line.contains(READY) {
            boots += 1;
        }
        boots == 2
    });
    assert_eq!(lines.iter().filter(|l| l.contains(READY)).count(), 2);
}

/// Debian's 6.1 arm64 kernel has no pvpanic driver (CONFIG_PVPANIC is not set), so its panics
/// reach hvrun the way the kernel documents: `panic=-1` resets at once, and `--no-reboot` turns
/// the reset into exit code 3. (Kernels with pvpanic-mmio exit 4: see tests/conformance.rs.)
#[test]
fn guest_kernel_panic_ends_hvrun_with_the_panic_visible() {
    let cmdline = "console=ttyS0 quiet panic=-1 -- echo c > /proc/sysrq-trigger";
    let r = run(common::guest_with_cmdline(&["--no-reboot"], cmdline));
    assert_eq!(r.code, Some(3), "{}", r.describe());
    assert!(
        r.stdout.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{}",
        r.describe()
    );
}

/// The guest's init writes the boot-time probe; with info logging hvrun says how long it took.
#[test]
fn boot_time_is_reported_with_a_plausible_number() {
    let started = std::time::Instant::now();
    let mut cmd = guest(&[], "true");
    cmd.env("RUST_LOG", "info");
    let r = run(cmd);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let line = r
        .stderr
        .lines()
        .find_map(|l| l.split_once("guest booted in ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no boot-time line: {}", r.describe()));
    // "N ms (VMM CPU M ms)"
    let numbers: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    let [wall, cpu] = numbers[..] else { panic!("malformed boot-time line: {line}") };
    assert!(wall > 0 && wall < elapsed_ms, "boot took {wall} ms of a {elapsed_ms} ms run");
    assert!(cpu > 0, "no CPU time measured: {line}");
    assert_eq!(r.stderr.matches("guest booted in").count(), 1, "{}", r.describe());
}
