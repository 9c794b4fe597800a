//! Stress: boots that must power off and let hvrun exit promptly while the machine is loaded,
//! and the three ways a run ends early — the quit key, SIGTERM, a guest reset — while the
//! guest keeps a disk busy. Every guest has a disk, the entropy device and a virtio console.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::session::{script_disk, CpuHog, Finished, Session};
use common::{guest_with_cmdline, Scratch, READY};

/// How long hvrun may take to exit after the guest's last line. Powering off is a handful of
/// exits and a teardown; anything near this bound is a hang, not slowness (the guest's own
/// shutdown is far quicker even on a loaded emulated machine).
const EXIT_BOUND: Duration = Duration::from_secs(60);

/// A blank 64 MiB disk image.
fn data_disk(scratch: &Scratch, name: &str) -> PathBuf {
    let path = scratch.path(name);
    std::fs::File::create(&path).and_then(|f| f.set_len(64 << 20)).expect("cannot create a disk");
    path
}

/// hvrun with `cpus` vCPUs, the data disk as vda, `script` on vdb (read-only) and the virtio
/// console as the guest's console; the guest runs the script, then powers off.
fn guest_running(cpus: u32, data: &Path, script: &Path, extra: &[&str]) -> std::process::Command {
    let (data, script) = (format!("{}", data.display()), format!("{},ro", script.display()));
    let cpus = cpus.to_string();
    let mut args = vec!["--cpus", &cpus, "--disk", &data, "--disk", &script, "--console", "virtio"];
    args.extend_from_slice(extra);
    // The kernel starts init before hvc0 exists (virtio_console is a module), so init's own
    // stdout goes nowhere: the script's output is sent to the console explicitly.
    guest_with_cmdline(&args, "console=hvc0 quiet -- sh /dev/vdb >/dev/console 2>&1")
}

/// Keeps vda busy: random data written with fsync, then read back, in a loop. Its first 64 KiB
/// are left alone (the reset test keeps a mark there).
const DISK_LOOP: &str = "while true; do
  dd if=/dev/urandom of=/dev/vda bs=64k seek=1 count=256 conv=fsync 2>/dev/null
  dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
done";

#[test]
fn boots_under_load_power_off_and_exit_promptly_with_2_and_4_vcpus() {
    let scratch = Scratch::new("boots_under_load");
    let data = data_disk(&scratch, "data.img");
    let script = script_disk(
        &scratch,
        "script.img",
        "dd if=/dev/urandom of=/dev/vda bs=64k count=64 conv=fsync 2>/dev/null
dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
head -c 64 /dev/hwrng >/dev/null
echo online=$(cat /sys/devices/system/cpu/online)
exit 0",
    );
    // One spinning thread per CPU of the machine but one: the vCPUs compete for what is left.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _hog = CpuHog::start(cpus.saturating_sub(1).max(1));
    for (round, vcpus) in [2, 2, 2, 4, 4].into_iter().enumerate() {
        let finished = Session::start(guest_running(vcpus, &data, &script, &[])).finish();
        let online = format!("online=0-{}", vcpus - 1);
        assert!(
            finished.code == Some(0) && finished.stdout.contains(&online),
            "round {round}, {vcpus} vCPUs: {}",
            finished.describe()
        );
        assert!(
            finished.stdout.lines().last().is_some_and(|l| l.contains("HVRUN-GUEST-EXIT=0")),
            "round {round}: the guest's last line is its exit status\n{}",
            finished.describe()
        );
        assert!(
            finished.exit_after_last_line < EXIT_BOUND,
            "round {round}, {vcpus} vCPUs: hvrun took {:?} to exit after the guest's last line\n{}",
            finished.exit_after_last_line,
            finished.describe()
        );
        eprintln!(
            "round {round}: {vcpus} vCPUs, exit {:?} after the last line",
            finished.exit_after_last_line
        );
    }
}

/// A pseudo-terminal: (controller, the terminal hvrun gets as stdin).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two descriptors into valid integers; the other pointers may be null.
    let ok = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ok, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned only here.
    unsafe { (OwnedFd::from_raw_fd(controller), OwnedFd::from_raw_fd(terminal)) }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it in.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid, writable termios.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn quit_key_ends_a_run_during_disk_io_and_restores_the_terminal() {
    let scratch = Scratch::new("quit_key");
    let data = data_disk(&scratch, "data.img");
    let script = script_disk(&scratch, "script.img", &format!("echo IO-STARTED\n{DISK_LOOP}"));
    let (controller, terminal) = pty();
    let before = termios(&terminal);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a fresh pty starts in canonical mode");
    let mut cmd = guest_running(2, &data, &script, &[]);
    cmd.stdin(Stdio::from(terminal.try_clone().unwrap()));
    let mut session = Session::start(cmd);
    session.wait_for("IO-STARTED");
    assert_eq!(termios(&terminal).c_lflag & libc::ICANON, 0, "hvrun puts its terminal in raw mode");
    std::thread::sleep(Duration::from_secs(2)); // let the disk loop get going
                                                // SAFETY: writes two bytes from a valid buffer to the pty's controller side.
    let n = unsafe { libc::write(controller.as_raw_fd(), b"\x01x".as_ptr().cast(), 2) };
    assert_eq!(n, 2);
    let finished: Finished = session.finish();
    assert_eq!(finished.code, Some(130), "{}", finished.describe());
    let after = termios(&terminal);
    assert_eq!(
        (after.c_lflag, after.c_iflag, after.c_oflag),
        (before.c_lflag, before.c_iflag, before.c_oflag),
        "the terminal's settings are restored"
    );
    assert!(finished.exit_after_last_line < EXIT_BOUND, "{}", finished.describe());
}

#[test]
fn sigterm_stops_a_run_during_disk_io_cleanly() {
    let scratch = Scratch::new("sigterm");
    let data = data_disk(&scratch, "data.img");
    let script = script_disk(&scratch, "script.img", &format!("echo IO-STARTED\n{DISK_LOOP}"));
    let mut session = Session::start(guest_running(2, &data, &script, &["--stats"]));
    session.wait_for("IO-STARTED");
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sends SIGTERM to the child we started.
    assert_eq!(unsafe { libc::kill(session.pid(), libc::SIGTERM) }, 0);
    let finished = session.finish();
    // 128 + 15, after a clean stop: the statistics of the stopped VM are printed.
    assert_eq!(finished.code, Some(143), "{}", finished.describe());
    assert!(finished.stderr.contains("stopped by signal 15"), "{}", finished.describe());
    assert!(finished.stderr.contains("exit statistics"), "{}", finished.describe());
    assert!(finished.exit_after_last_line < EXIT_BOUND, "{}", finished.describe());
}

#[test]
fn guest_reset_during_disk_io_reboots_cleanly() {
    let scratch = Scratch::new("reset");
    let data = data_disk(&scratch, "data.img");
    // First boot: mark the disk, start the disk loop, reset mid-write. Second boot: the mark is
    // there; say so and power off.
    let script = script_disk(
        &scratch,
        "script.img",
        &format!(
            "if [ \"$(dd if=/dev/vda bs=4 count=1 2>/dev/null)\" = BOOT ]; then echo SECOND-BOOT; exit 0; fi
printf BOOT | dd of=/dev/vda conv=fsync 2>/dev/null
( {DISK_LOOP} ) &
sleep 2
echo RESETTING
reboot -f
sleep 60"
        ),
    );
    let mut session = Session::start(guest_running(2, &data, &script, &[]));
    session.wait_for("RESETTING");
    session.wait_for(READY);
    session.wait_for("SECOND-BOOT");
    let finished = session.finish();
    assert_eq!(finished.code, Some(0), "{}", finished.describe());
    assert!(finished.exit_after_last_line < EXIT_BOUND, "{}", finished.describe());
}
