//! The vz engine's command line, through the real binary on any host: flags Virtualization.framework
//! cannot honour, vz-only flags on hvrun's own engine, `hvrun macos` mistakes and damaged bundles
//! each end hvrun with exit code 2 and one line that says what to do — before any VM exists.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A scratch directory with a minimal arm64 Image (header only) for `--kernel`.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hvrun-vzcli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0u8; 4096];
        image[0x10..0x18].copy_from_slice(&(1u64 << 20).to_le_bytes());
        image[0x38..0x3c].copy_from_slice(b"ARMd");
        std::fs::File::create(dir.join("Image")).unwrap().write_all(&image).unwrap();
        Scratch(dir)
    }

    fn kernel(&self) -> String {
        self.0.join("Image").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs hvrun with `args`; asserts exit code 2, `message` on stderr, one line, no panic.
fn expect_usage_error(args: &[&str], message: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_hvrun"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run hvrun");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let described = format!("hvrun {args:?}: exit {:?}, stderr:\n{stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(2), "{described}");
    assert!(stderr.contains(message), "expected `{message}`\n{described}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line\n{described}");
    assert!(!stderr.contains("panicked"), "{described}");
}

#[test]
fn flags_vz_cannot_honour_are_refused() {
    let s = Scratch::new("refused");
    let k = s.kernel();
    expect_usage_error(
        &["--engine", "vz", "--kernel", &k, "--stats"],
        "--stats: the vz engine has no VM exits",
    );
    expect_usage_error(&["--engine", "vz", "--kernel", &k, "--trace-exits"], "--trace-exits: ");
    expect_usage_error(&["--engine", "vz", "--kernel", &k, "--no-reboot"], "--no-reboot: ");
    expect_usage_error(
        &["--engine", "vz", "--kernel", &k, "--net", "tap=tap0"],
        "--net tap=tap0: tap devices are a Linux feature",
    );
    expect_usage_error(
        &["--engine", "vz", "--kernel", &k, "--share", "/no/such:x"],
        "--share /no/such:x: ",
    );
}

#[test]
fn vz_only_flags_are_refused_on_hvruns_engine() {
    let s = Scratch::new("vzonly");
    let k = s.kernel();
    expect_usage_error(&["--kernel", &k, "--gui"], "--gui: only the vz engine has this");
    expect_usage_error(
        &["--kernel", &k, "--share", "/tmp:t"],
        "--share: only the vz engine has this",
    );
}

#[test]
fn macos_mistakes_are_named() {
    let s = Scratch::new("macos");
    let bundle = s.0.join("vm.bundle").display().to_string();
    expect_usage_error(
        &["macos", "install", &bundle, "--ipsw", "latest", "--disk-size", "64"],
        "--disk-size 64: a macOS install needs at least 32G",
    );
    expect_usage_error(
        &["macos", "install", &bundle, "--ipsw", "/no/such.ipsw"],
        "--ipsw /no/such.ipsw: ",
    );
    expect_usage_error(
        &["macos", "run", &s.0.display().to_string()],
        "is not a bundle made by `hvrun macos install`",
    );
}

#[test]
fn an_unfinished_install_is_not_booted() {
    let s = Scratch::new("incomplete");
    let bundle = s.0.join("vm.bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let manifest = r#"{"format": 1, "state": {"incomplete": {"reason": "cancelled with Ctrl-C at 42%"}},
        "created_by": "hvrun 0.1.0", "created_at": 0, "host_macos": "14.4",
        "restore_image": {"source": "x.ipsw", "macos": "14.4", "build": "23E214"},
        "disk_bytes": 68719476736, "cpus": 4, "mem_bytes": 8589934592, "min_cpus": 2,
        "min_mem_bytes": 4294967296}"#;
    std::fs::write(bundle.join("hvrun-macos.json"), manifest).unwrap();
    let b = bundle.display().to_string();
    expect_usage_error(
        &["macos", "run", &b],
        "the macOS install in it did not finish (cancelled with Ctrl-C at 42%)",
    );
    std::fs::write(bundle.join("hvrun-macos.json"), "{\"format\": 2}").unwrap();
    expect_usage_error(&["macos", "run", &b], "written by a newer hvrun");
}

#[cfg(not(target_os = "macos"))]
#[test]
fn elsewhere_the_vz_engine_says_it_needs_a_mac() {
    let s = Scratch::new("notmac");
    let k = s.kernel();
    expect_usage_error(
        &["--engine", "vz", "--kernel", &k],
        "--engine vz: Virtualization.framework is part of macOS",
    );
    let bundle = s.0.join("vm.bundle").display().to_string();
    expect_usage_error(
        &["macos", "install", &bundle, "--ipsw", "latest"],
        "hvrun macos install: macOS guests run on",
    );
}
