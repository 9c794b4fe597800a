//! End-to-end: every user mistake on the command line ends hvrun with exit code 2 and one line
//! that says what to do — never a panic.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use common::{artifacts, hvrun, run};

fn expect_usage_error(args: &[&str], message: &str) {
    let dir = artifacts();
    let mut cmd = hvrun();
    cmd.current_dir(&dir).args(args);
    let r = run(cmd);
    assert_eq!(r.code, Some(2), "hvrun {args:?}: {}", r.describe());
    assert!(r.stderr.contains(message), "hvrun {args:?}: expected `{message}`\n{}", r.describe());
    assert!(!r.stderr.contains("panicked"), "hvrun {args:?} panicked\n{}", r.describe());
}

#[test]
fn missing_kernel_file() {
    expect_usage_error(
        &["--kernel", "no-such-Image"],
        "--kernel no-such-Image: No such file or directory",
    );
}

#[test]
fn kernel_that_is_not_an_arm64_image() {
    expect_usage_error(
        &["--kernel", "guest-initrd.cpio.gz"],
        "guest-initrd.cpio.gz is not an arm64 Linux kernel",
    );
    expect_usage_error(
        &["--kernel", "kernel-version"],
        "kernel-version is not an arm64 Linux kernel",
    );
}

#[test]
fn memory_too_small_malformed_or_beyond_the_host() {
    expect_usage_error(
        &["--kernel", "Image", "--mem", "16M"],
        "guest memory must be at least 64 MiB",
    );
    expect_usage_error(&["--kernel", "Image", "--mem", "lots"], "`lots` is not a size");
    expect_usage_error(&["--kernel", "Image", "--mem", "100T"], "of RAM; ask for less");
}

#[test]
fn cpus_zero_or_beyond_the_host() {
    expect_usage_error(&["--kernel", "Image", "--cpus", "0"], "at least one vCPU");
    // The GIC redistributor window holds 123 vCPUs; KVM hosts usually allow more.
    expect_usage_error(&["--kernel", "Image", "--cpus", "124"], "vCPUs per VM");
}

#[test]
fn missing_disk_and_initrd() {
    expect_usage_error(&["--kernel", "Image", "--disk", "nope.img"], "disk nope.img: No such file");
    expect_usage_error(
        &["--kernel", "Image", "--disk", "Image,fast"],
        "--disk Image,fast: unknown option",
    );
    expect_usage_error(&["--kernel", "Image", "--initrd", "nope.cpio"], "--initrd nope.cpio");
}

#[test]
fn unknown_flags_and_missing_values() {
    expect_usage_error(&["--kernel"], "a value is required");
    expect_usage_error(&["--kernal", "Image"], "unexpected argument '--kernal'");
    expect_usage_error(&[], "--kernel <PATH>");
}
