//! End-to-end: hvrun's virtio devices driven by the real Linux drivers of a Debian guest
//! (virtio_mmio, virtio_blk, virtio_console, virtio-rng), checked from both sides.

#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{
    artifacts, guest, guest_with_cmdline, guest_with_initrd, run, run_answering, run_until,
    run_with_input, Scratch, READY,
};

/// A fresh image of `size` bytes in `scratch`, filled by `fill(offset)`.
fn image(scratch: &Scratch, name: &str, size: usize, fill: impl Fn(usize) -> u8) -> PathBuf {
    let path = scratch.path(name);
    std::fs::write(&path, (0..size).map(fill).collect::<Vec<u8>>()).unwrap();
    path
}

fn disk_arg(path: &Path, options: &str) -> String {
    format!("{}{options}", path.display())
}

/// The byte pattern of the source disk: position-dependent so misplaced data shows.
fn pattern(offset: usize) -> u8 {
    (offset % 253) as u8 ^ (offset >> 16) as u8
}

#[test]
fn virtio_rng_is_the_guests_hardware_rng() {
    // No double quotes: the kernel's command-line parser would eat them.
    let cmd = "cat /sys/class/misc/hw_random/rng_current; \
               for i in 1 2; do dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'; echo; done";
    let r = run(guest(&[], cmd));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("virtio_rng.0"), "{}", r.describe());
    let samples: Vec<&str> = r.stdout.lines().map(str::trim).filter(|l| l.len() == 64).collect();
    assert_eq!(samples.len(), 2, "{}", r.describe());
    assert_ne!(samples[0], samples[1], "two reads of /dev/hwrng were equal");
    assert!(
        samples.iter().all(|s| s.chars().any(|c| c != s.chars().next().unwrap())),
        "constant bytes"
    );
}

#[test]
fn two_disks_appear_in_order_with_size_and_serial() {
    let scratch = Scratch::new("two_disks_appear_in_order_with_size_and_serial");
    let a = image(&scratch, "two-a.img", 8 << 20, |_| 0);
    let b = image(&scratch, "two-b.img", 16 << 20, |_| 0);
    let cmd = "echo vda=$(cat /sys/block/vda/size)/$(cat /sys/block/vda/serial) \
               vdb=$(cat /sys/block/vdb/size)/$(cat /sys/block/vdb/serial)/ro=$(cat /sys/block/vdb/ro)";
    let r = run(guest(
        &["--disk", &disk_arg(&a, ",serial=FIRST"), "--disk", &disk_arg(&b, ",ro")],
        cmd,
    ));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("vda=16384/FIRST vdb=32768/two-b.img/ro=1"), "{}", r.describe());
}

/// O_DIRECT copies of many sizes to many offsets, from a read-only pattern disk (vdb) to a
/// blank disk (vda); then the host compares every byte, and a second boot reads them back.
#[test]
fn direct_io_lands_exactly_and_survives_a_reboot() {
    let scratch = Scratch::new("direct_io_lands_exactly_and_survives_a_reboot");
    let size = 16 << 20;
    let dst = image(&scratch, "integrity-dst.img", size, |_| 0);
    let src = image(&scratch, "integrity-src.img", size, pattern);
    // (block size, count, offset in blocks): sizes and offsets that do not line up.
    let copies = [(512, 1, 7), (4096, 3, 5), (65536, 2, 9), (1 << 20, 3, 11), (512, 37, 20001)];
    let specs: Vec<String> = copies.iter().map(|(bs, n, at)| format!("{bs},{n},{at}")).collect();
    let each = format!("for c in {}; do IFS=,; set $c;", specs.join(" "));
    let copy = format!(
        "{each} dd if=/dev/vdb of=/dev/vda bs=$1 count=$2 skip=$3 seek=$3 iflag=direct oflag=direct \
         || echo DD-FAILED; done; sync; echo copied"
    );
    let disks = ["--disk", &disk_arg(&dst, ""), "--disk", &disk_arg(&src, ",ro")];
    let r = run(guest(&disks, &copy));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("copied") && !r.stdout.contains("DD-FAILED"), "{}", r.describe());

    let written = std::fs::read(&dst).unwrap();
    let mut expected = vec![0u8; size];
    for (bs, count, at) in copies {
        for (i, byte) in expected.iter_mut().enumerate().take((at + count) * bs).skip(at * bs) {
            *byte = pattern(i);
        }
    }
    let first_diff = written.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the image differs from what the guest wrote");

    // Second boot: the guest compares the regions itself (busybox cmp FILE1 FILE2 SKIP1 SKIP2).
    let check = format!(
        "{each} cmp -s -n $(($1*$2)) /dev/vda /dev/vdb $(($1*$3)) $(($1*$3)) && echo same || echo DIFFERENT; done"
    );
    let r = run(guest(&disks, &check));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.stdout.matches("same").count(), copies.len(), "{}", r.describe());
    assert!(!r.stdout.contains("DIFFERENT"), "{}", r.describe());
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let scratch = Scratch::new("read_only_disk_refuses_writes_and_stays_unchanged");
    let img = image(&scratch, "ro.img", 4 << 20, pattern);
    let before = std::fs::read(&img).unwrap();
    let cmd = "echo x | dd of=/dev/vda bs=512 conv=sync oflag=direct 2>/dev/null && echo WRITE-OK || echo write-refused";
    let r = run(guest(&["--disk", &disk_arg(&img, ",ro")], cmd));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("write-refused"), "{}", r.describe());
    assert_eq!(std::fs::read(&img).unwrap(), before, "a read-only image changed");
}

#[test]
fn filesystem_roundtrip_and_fstrim_frees_host_blocks() {
    let scratch = Scratch::new("filesystem_roundtrip_and_fstrim_frees_host_blocks");
    // A fully allocated image: every block holds data until the guest discards it.
    let img = image(&scratch, "fs.img", 64 << 20, |i| (i % 7) as u8 + 1);
    let before = std::fs::metadata(&img).unwrap().blocks();
    let cmd = "mke2fs -q /dev/vda && mount /dev/vda /mnt && echo hello-fs > /mnt/hello && \
               sync && fstrim /mnt && echo trimmed && cat /mnt/hello && umount /mnt";
    let r = run(guest(&["--disk", &disk_arg(&img, "")], cmd));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("trimmed") && r.stdout.contains("hello-fs"), "{}", r.describe());
    let after = std::fs::metadata(&img).unwrap().blocks();
    assert!(after < before / 2, "fstrim freed too little: {before} -> {after} blocks");
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes.windows(8).any(|w| w == b"hello-fs"), "the file's data is not in the image");
}

#[test]
fn an_image_in_use_by_another_vm_is_refused() {
    let scratch = Scratch::new("an_image_in_use_by_another_vm_is_refused");
    let img = image(&scratch, "locked.img", 4 << 20, |_| 0);
    let disk = disk_arg(&img, "");
    let mut second = None;
    run_until(guest(&["--disk", &disk], "sleep 30"), |line| {
        if line.contains(READY) {
            second = Some(run(guest(&["--disk", &disk], "true")));
            return true;
        }
        false
    });
    let r = second.expect("the first VM never got ready");
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("in use by another process"), "{}", r.describe());
}

#[test]
fn text_written_to_hvc0_appears_on_stdout_and_stdin_reaches_hvc0() {
    // The serial console stays the kernel's console (the harness reads its markers there);
    // hvc0 is used explicitly, both ways. The tty echoes what it reads, so the reply is marked.
    let cmd =
        "read line </dev/hvc0 && echo reply:$line >/dev/hvc0 && echo via-hvc0-only >/dev/hvc0";
    let r = run_with_input(guest(&["--console", "virtio"], cmd), b"ping-from-host\n");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("reply:ping-from-host"), "{}", r.describe());
    assert!(r.stdout.contains("via-hvc0-only"), "{}", r.describe());

    // Without --console virtio there is no hvc0: the text above cannot have come another way.
    let r = run(guest(&[], "[ -e /dev/hvc0 ] && echo HVC0-EXISTS || echo no-hvc0"));
    assert!(r.stdout.contains("no-hvc0"), "{}", r.describe());
}

#[test]
fn hvc0_as_the_kernel_console_carries_init_and_a_shell() {
    // console=hvc0: once virtio_console is loaded, /dev/console is hvc0. The shell holds it open
    // from its prompt to its read, as an interactive shell does: a tty drops what arrived
    // while it was open once it is closed, so the answer is typed after the prompt.
    let cmd = "console=hvc0 quiet -- exec </dev/console >/dev/console; echo prompt-on-hvc0; \
               read line; echo shell-saw:$line";
    let r = run_answering(
        guest_with_cmdline(&["--console", "virtio"], cmd),
        "prompt-on-hvc0",
        b"typed-into-hvc0\n",
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains(READY), "init's marker goes through hvc0: {}", r.describe());
    assert!(r.stdout.contains("shell-saw:typed-into-hvc0"), "{}", r.describe());
    assert!(r.stdout.contains("HVRUN-GUEST-EXIT=0"), "{}", r.describe());
}

#[test]
fn disk_console_and_rng_work_in_one_vm() {
    let scratch = Scratch::new("disk_console_and_rng_work_in_one_vm");
    let img = image(&scratch, "all.img", 4 << 20, |_| 0);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1 << 20..(1 << 20) + 16].copy_from_slice(b"DISK-MARKER-4711");
    std::fs::write(&img, bytes).unwrap();
    // Every answer goes out through hvc0.
    let cmd = "dd if=/dev/vda bs=1M skip=1 count=1 2>/dev/null | head -c 16 >/dev/hvc0; \
               echo >/dev/hvc0; echo rng=$(cat /sys/class/misc/hw_random/rng_current) >/dev/hvc0; \
               dd if=/dev/hwrng bs=8 count=1 2>/dev/null | od -An -tx1 >/dev/hvc0";
    let r = run(guest(&["--disk", &disk_arg(&img, ",ro"), "--console", "virtio"], cmd));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("DISK-MARKER-4711"), "{}", r.describe());
    assert!(r.stdout.contains("rng=virtio_rng.0"), "{}", r.describe());
    let random = r.stdout.lines().find(|l| l.split_whitespace().count() == 8 && l.len() == 24);
    assert!(random.is_some(), "no 8 random bytes: {}", r.describe());
}

/// With KVM's ioeventfd, a driver's QueueNotify writes never reach hvrun as exits (the trace
/// shows none at the disk's QueueNotify register), yet the disk works; with
/// `HVRUN_IOEVENTFD=off` every notify is an MMIO exit.
#[test]
fn queue_notifications_bypass_hvrun_with_ioeventfd() {
    let scratch = Scratch::new("queue_notifications_bypass_hvrun_with_ioeventfd");
    let img = image(&scratch, "notify.img", 1 << 20, |_| 0);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[0x8000..0x8010].copy_from_slice(b"NOTIFY-MARKER-42");
    std::fs::write(&img, bytes).unwrap();
    // Slot 0 is the disk: QueueNotify is at 0x0a00_0000 + 0x50.
    let notify = "addr 0x0a000050 ";
    let cmd =
        "dd if=/dev/vda bs=4k count=64 iflag=direct 2>/dev/null | tail -c +32769 | head -c 16";
    for (setting, expect_exits) in [("on", false), ("off", true)] {
        let mut hvrun = guest(&["--disk", &disk_arg(&img, ",ro"), "--trace-exits"], cmd);
        hvrun.env("HVRUN_IOEVENTFD", setting);
        let r = run(hvrun);
        assert_eq!(r.code, Some(0), "{}", r.describe());
        assert!(
            r.stdout.contains("NOTIFY-MARKER-42"),
            "HVRUN_IOEVENTFD={setting}: {}",
            r.describe()
        );
        let notify_exits = r.stderr.lines().filter(|l| l.contains(notify)).count();
        assert_eq!(
            notify_exits > 0,
            expect_exits,
            "HVRUN_IOEVENTFD={setting}: {notify_exits} QueueNotify exits\n{}",
            r.stderr
                .lines()
                .filter(|l| l.contains("virtio-blk0"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Runs one of the e2fsprogs tools built by build-artifacts.sh on this (arm64) machine, through
/// the dynamic loader that came with them.
fn e2fs_tool(tool: &str, args: &[&str]) -> std::process::Output {
    let root = artifacts().join("e2fsprogs");
    std::process::Command::new(root.join("lib/ld-linux-aarch64.so.1"))
        .arg("--library-path")
        .arg(root.join("lib/aarch64-linux-gnu"))
        .arg(root.join("usr/local/sbin").join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} from {}: {e}", root.display()))
}

/// mkfs.ext4 in the guest, files written, unmounted, powered off; then the host's
/// e2fsck finds the filesystem clean and debugfs reads the files back, byte-exact.
#[test]
fn ext4_made_in_the_guest_is_clean_for_the_hosts_e2fsck() {
    let scratch = Scratch::new("ext4_made_in_the_guest_is_clean_for_the_hosts_e2fsck");
    let img = image(&scratch, "ext4.img", 64 << 20, |_| 0);
    // The test initramfs with e2fsprogs appended: the kernel unpacks both archives.
    let initrd = scratch.path("initrd-with-e2fsprogs.cpio.gz");
    let mut both = std::fs::read(artifacts().join("guest-initrd.cpio.gz")).unwrap();
    both.extend(std::fs::read(artifacts().join("e2fsprogs.cpio.gz")).unwrap());
    std::fs::write(&initrd, both).unwrap();

    let cmd = "console=ttyS0 quiet -- /usr/local/sbin/mkfs.ext4 -qF /dev/vda && \
               mount /dev/vda /mnt && echo hello-ext4 >/mnt/hello && \
               dd if=/dev/urandom of=/mnt/blob bs=64k count=32 && sha256sum /mnt/blob && \
               umount /mnt && echo unmounted";
    let r = run(guest_with_initrd(&initrd, &["--disk", &disk_arg(&img, "")], cmd));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("unmounted"), "{}", r.describe());
    let guest_sum = r
        .stdout
        .lines()
        .find(|l| l.ends_with("/mnt/blob"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no checksum: {}", r.describe()))
        .to_string();

    let img_arg = img.to_str().unwrap();
    let fsck = e2fs_tool("e2fsck", &["-f", "-n", img_arg]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {:?}\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = e2fs_tool("debugfs", &["-R", "cat /hello", img_arg]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello-ext4\n");
    let blob = scratch.path("blob");
    let dump = format!("dump /blob {}", blob.display());
    assert!(e2fs_tool("debugfs", &["-R", &dump, img_arg]).status.success());
    let host_sum = std::process::Command::new("sha256sum").arg(&blob).output().unwrap();
    let host_sum = String::from_utf8_lossy(&host_sum.stdout);
    assert_eq!(host_sum.split_whitespace().next(), Some(guest_sum.as_str()), "the file differs");
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), 32 * 65536);
}
