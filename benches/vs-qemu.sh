#!/usr/bin/env bash
# hvrun vs QEMU+KVM on the same guest, in one boot of the arm64 machine (natively on arm64
# Linux with /dev/kvm; in the emulated machine of tests/harness/arm64-vm elsewhere).
#
# Both VMMs boot the same Debian kernel (target/guest-artifacts/Image) with the same initramfs
# (guest-initrd.cpio.gz plus a small cpio with the programs in benches/vs-qemu/), 1 vCPU,
# 512 MiB, a virtio-blk disk on the same raw image in the machine's /tmp, and a virtio-rng.
# QEMU is Debian's qemu-system-arm:arm64 (benches/qemu-arm64.sh unpacks it with its
# libraries): `-M virt,gic-version=3 -accel kvm`, once with `-cpu host` (QEMU's default vCPU:
# SVE and pointer auth when KVM has them) and once "lean", `-cpu host,sve=off,pmu=off,pauth=off`
# (no optional features, like hvrun's vCPU). The three alternate, in a rotating order; each run
# measures everything once:
#
#   boot     launch of the VMM process → the guest's first HVRUN-GUEST-READY line (printed by
#            /init after loading the virtio modules), timed for both by launch-time.c (same
#            clock, same pipe); for hvrun also its own boot-time probe figure (RUST_LOG=info).
#            To split that time: the guest's /proc/uptime when the bench starts (kernel start →
#            bench), and the launch → exit time of `VMM --version` (process start: QEMU loads
#            49 shared libraries, hvrun is static)
#   mmio     a guest program reads the virtio-rng transport's MagicValue through /dev/mem
#            (mmio-read.c): ns per read, median of the batches; under QEMU also an empty
#            transport's (QEMU answers MagicValue there too: still an exit to QEMU)
#   blk      sequential 1 MiB write/read (MB/s) and 4 KiB random write/read (IOPS), O_DIRECT,
#            queue depth 1 (blk-bench.c). The image file is in the page cache (tmpfs) on the
#            host side for both: hvrun does pread/pwrite and fdatasync on flush; QEMU gets
#            cache=writeback, which does the same (cache=none needs O_DIRECT, which tmpfs lacks).
#   thp      the machine's thp_fault_alloc/_fallback counters around each run (2 MiB pages)
#
# Results: target/bench-results/vs-qemu.txt (medians, ranges, ratios hvrun/QEMU) and the raw,
# time-stamped output of every run in target/bench-results/vs-qemu/.
#
# Usage: benches/vs-qemu.sh [RUNS]      (RUNS per VMM, default 9; after tests/setup-host.sh
#        and tests/guest/build-artifacts.sh)
#        benches/vs-qemu.sh --report     (only rebuild vs-qemu.txt from the last run's logs)
# Environment: VSQ_READS, VSQ_BATCHES (MMIO reads per batch, batches: 1000, 9), VSQ_MIB
# (sequential size and random-I/O span, 128), VSQ_SECONDS (each random-I/O phase, 2).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
report_only=false
if [ "${1:-}" = --report ]; then
    report_only=true
    shift
fi
runs=${1:-9}
reads=${VSQ_READS:-1000} batches=${VSQ_BATCHES:-9} mib=${VSQ_MIB:-128} seconds=${VSQ_SECONDS:-2}
out=$repo/target/bench-results
raw=$out/vs-qemu
build=$repo/target/vs-qemu
artifacts=$repo/target/guest-artifacts
say() { echo "vs-qemu: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Measure (unless --report: only summarize the logs of the last run again).
if [ "$report_only" = false ]; then
    rm -rf "$raw"
    mkdir -p "$raw" "$build"

    [ -e "$artifacts/Image" ] && [ -e "$artifacts/guest-initrd.cpio.gz" ] ||
        die "no guest kernel and initramfs: run tests/guest/build-artifacts.sh"

    # shellcheck source=tests/cross-env.sh
    source tests/cross-env.sh
    "$HVRUN_CARGO" build --release --target "$HVRUN_TARGET"
    hvrun=${CARGO_TARGET_DIR:-$repo/target}/$HVRUN_TARGET/release/hvrun

    qemu=$(benches/qemu-arm64.sh) || die "no arm64 QEMU"

    # The guest programs and launch-time: static, so neither machine needs a C library for them.
    cc=aarch64-linux-gnu-gcc
    [ "$(uname -m)" != aarch64 ] || command -v "$cc" >/dev/null || cc=gcc
    mkdir -p "$build/cpio/bench"
    for program in mmio-read blk-bench launch-time; do
        "$cc" -static -O2 -Wall -Wextra -o "$build/$program" "benches/vs-qemu/$program.c"
    done
    cp "$build/mmio-read" "$build/blk-bench" "$build/cpio/bench/"
    cp benches/vs-qemu/guest-bench.sh "$build/cpio/bench/"
    # The kernel unpacks concatenated cpio.gz archives in turn, so the guest gets /bench on top
    # of the usual initramfs.
    (cd "$build/cpio" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$build/bench.cpio.gz"
    cat "$artifacts/guest-initrd.cpio.gz" "$build/bench.cpio.gz" >"$build/initrd.cpio.gz"

    # What runs in the machine. Everything the runs read is first copied into its /tmp (a tmpfs in
    # the emulated machine), so the 9p share is not part of either VMM's start.
    guest_cmd="sh /bench/guest-bench.sh $reads $batches $mib $seconds"
    script=$build/run.sh
    cat >"$script" <<SCRIPT
set -eu
uname -a >$raw/uname.txt
work=\$(mktemp -d /tmp/vs-qemu.XXXXXX)
cp $hvrun $build/launch-time $artifacts/Image $build/initrd.cpio.gz "\$work/"
qemu="$qemu"
case \$qemu in
    $repo/target/qemu-arm64/root/*)
        root=$repo/target/qemu-arm64/root
        mkdir -p "\$work/qemu/usr/bin"
        cp -a "\$root/lib" "\$work/qemu/"
        cp -a "\$root/usr/lib" "\$work/qemu/usr/"
        cp "\$root/usr/bin/qemu-system-aarch64" "\$work/qemu/usr/bin/"
        qemu=\$(echo "\$qemu" | sed "s|\$root|\$work/qemu|g") ;;
esac
\$qemu --version >$raw/qemu-version.txt
dd if=/dev/zero of="\$work/disk.img" bs=1M count=$((mib * 2)) 2>/dev/null
cd "\$work"

# thp FILE: the machine's transparent-huge-page fault counters, appended to FILE (before and
# after each run: how much of the guest RAM the host could back with 2 MiB pages).
thp() { grep -E '^thp_fault_(alloc|fallback) ' /proc/vmstat | tr '\n' ' ' >>"\$1"; echo >>"\$1"; }
run_hvrun() {
    ./launch-time ./hvrun --version >$raw/hvrun-\$1.start
    thp $raw/hvrun-\$1.thp
    RUST_LOG=info timeout -s KILL 300 ./launch-time ./hvrun --kernel Image --initrd initrd.cpio.gz \\
        --mem 512M --cpus 1 --disk disk.img --cmdline "console=ttyS0 quiet -- $guest_cmd" \\
        >$raw/hvrun-\$1.log
    thp $raw/hvrun-\$1.thp
}
# QEMU plugs -device virtio-*-device into its highest free transport (0x0a003e00, then
# 0x0a003c00: one guest page); the rng goes to the lowest, virtio-mmio-bus.0 at 0x0a000000, so
# that no driver holds its page once it is unbound (hvrun's slots are a page each already).
run_qemu() { # NAME CPU RUN
    ./launch-time \$qemu --version >$raw/\$1-\$3.start
    thp $raw/\$1-\$3.thp
    timeout -s KILL 300 ./launch-time \$qemu -M virt,gic-version=3 -accel kvm -cpu \$2 -smp 1 -m 512M \\
        -nodefaults -display none -serial stdio -no-reboot \\
        -kernel Image -initrd initrd.cpio.gz -append "console=ttyAMA0 quiet -- $guest_cmd 0x0a000200" \\
        -drive file=disk.img,if=none,format=raw,id=d0,cache=writeback -device virtio-blk-device,drive=d0 \\
        -device virtio-rng-device,bus=virtio-mmio-bus.0 >$raw/\$1-\$3.log
    thp $raw/\$1-\$3.thp
}
run() { # VMM RUN
    case \$1 in
        hvrun) run_hvrun \$2 ;;
        qemu) run_qemu qemu host \$2 ;;
        qemu-lean) run_qemu qemu-lean host,sve=off,pmu=off,pauth=off \$2 ;;
    esac
}
# Each round in another order: hvrun qemu qemu-lean, qemu qemu-lean hvrun, qemu-lean hvrun qemu.
for round in \$(seq 1 $runs); do
    case \$((round % 3)) in
        1) run hvrun \$round; run qemu \$round; run qemu-lean \$round ;;
        2) run qemu \$round; run qemu-lean \$round; run hvrun \$round ;;
        0) run qemu-lean \$round; run hvrun \$round; run qemu \$round ;;
    esac
done
cd /
rm -rf "\$work"
SCRIPT
    say "running $runs rounds in the arm64 machine"
    HVRUN_VM_TIMEOUT=${HVRUN_VM_TIMEOUT:-1500} tests/harness/arm64-vm sh "$script" >"$raw/machine.log" 2>&1 ||
        die "the machine run failed: see $raw/machine.log"
    echo "$runs $reads $batches $mib $seconds" >"$raw/params.txt"
fi
read -r runs reads batches mib seconds <"$raw/params.txt" || die "no runs to report in $raw"

# One line of numbers per run (log, --version log, THP counters): boot_ms probe_ms mmio_ns seqw
# seqr randw randr uptime_s start_ms empty_mmio_ns thp_alloc thp_fallback ok.
summarize() {
    awk '
        FILENAME ~ /[.]start$/ { if ($2 == "EXIT") start = $1; next }
        FILENAME ~ /[.]thp$/ { thp[FNR] = $2; fallback[FNR] = $4; next }
        / HVRUN-GUEST-READY/ && !ready { ready = $1 }
        /guest booted in/ { for (i = 1; i < NF; i++) if ($i == "in") probe = $(i + 1) }
        /GUEST-UPTIME/ { uptime = $3 }
        /MMIO-READ/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^median_ns=/) { sub(/.*=/, "", $i); ns = $i }
            if (mmio == "") mmio = ns; else empty = ns
        }
        /BLK / {
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^MBps=/) { sub(/.*=/, "", $i); mbps = $i }
                if ($i ~ /^IOPS=/) { sub(/.*=/, "", $i); iops = $i }
            }
            v[$3] = ($3 ~ /^seq/) ? mbps : iops
        }
        /HVRUN-GUEST-EXIT=0/ { guest_ok = 1 }
        / EXIT 0$/ { vmm_ok = 1 }
        END {
            ok = guest_ok && vmm_ok && ready != "" && mmio != "" && uptime != "" && start != "" && length(v) == 4
            printf "%s %s %s %s %s %s %s %s %s %s %s %s %s\n", ready, (probe == "" ? "-" : probe), mmio,
                v["seq-write"], v["seq-read"], v["rand-write"], v["rand-read"], uptime, start,
                (empty == "" ? "-" : empty), thp[2] - thp[1], fallback[2] - fallback[1], (ok ? "ok" : "FAILED")
        }' "$@"
}
for vmm in hvrun qemu qemu-lean; do
    : >"$raw/$vmm.txt"
    for run in $(seq 1 "$runs"); do
        [ -e "$raw/$vmm-$run.log" ] || die "no log of $vmm run $run: see $raw/machine.log"
        summarize "$raw/$vmm-$run.log" "$raw/$vmm-$run.start" "$raw/$vmm-$run.thp" >>"$raw/$vmm.txt"
    done
    if grep -q FAILED "$raw/$vmm.txt"; then
        die "a $vmm run failed (no guest exit 0 or missing numbers): see $raw/$vmm-*.log"
    fi
done

# median COLUMN FILE, range COLUMN FILE
median() {
    awk -v c="$1" '{ print $c }' "$2" | sort -g |
        awk '$1 == "-" { print "-"; exit } { a[NR] = $1 } END { if (NR in a) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
range() { awk -v c="$1" '{ print $c }' "$2" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
{
    echo "hvrun vs QEMU+KVM, same guest, $runs runs of each (order rotating), median [min-max]"
    echo "machine: $(cat "$raw/uname.txt")"
    echo "QEMU:    $(head -n1 "$raw/qemu-version.txt"), -M virt,gic-version=3 -accel kvm"
    echo "         'QEMU': -cpu host (QEMU's default: SVE, PMU and pointer auth on if KVM has them)"
    echo "         'lean': -cpu host,sve=off,pmu=off,pauth=off (the vCPU features hvrun gives: none)"
    for vmm in hvrun qemu qemu-lean; do
        printf '%-9s guest vCPU has:%s\n' "$vmm" "$(grep -h -m1 GUEST-CPU "$raw/$vmm-1.log" | sed 's/.*GUEST-CPU//')"
    done
    echo "guest:   Debian $(cat "$artifacts/kernel-version"), busybox initramfs, 1 vCPU, 512 MiB, virtio-blk + virtio-rng, 'quiet'"
    echo
    line() { printf '%-42s %22s %22s %22s %9s %9s\n' "$@"; }
    cell() { # COLUMN VMM
        if [ "$(median "$1" "$raw/$2.txt")" = - ]; then echo -; return; fi
        echo "$(median "$1" "$raw/$2.txt") [$(range "$1" "$raw/$2.txt")]"
    }
    ratio() { # COLUMN VMM
        awk -v h="$(median "$1" "$raw/hvrun.txt")" -v q="$(median "$1" "$raw/$2.txt")" \
            'BEGIN { if (h == "-" || q == "-" || q == 0) print "-"; else printf "%.2f\n", h / q }'
    }
    row() { # LABEL COLUMN
        line "$1" "$(cell "$2" hvrun)" "$(cell "$2" qemu)" "$(cell "$2" qemu-lean)" \
            "$(ratio "$2" qemu)" "$(ratio "$2" qemu-lean)"
    }
    line measurement hvrun QEMU "QEMU lean" hvrun/QEMU hvrun/lean
    row "boot: launch -> HVRUN-GUEST-READY (ms)" 1
    row "  hvrun's probe: VM build -> /init (ms)" 2
    row "  guest uptime when the bench starts (s)" 8
    row "  VMM --version: launch -> exit (ms)" 9
    row "MMIO read, virtio-mmio MagicValue (ns)" 3
    row "  the same, QEMU's empty transport (ns)" 10
    row "virtio-blk seq write, 1 MiB (MB/s)" 4
    row "virtio-blk seq read, 1 MiB (MB/s)" 5
    row "virtio-blk rand write, 4 KiB (IOPS)" 6
    row "virtio-blk rand read, 4 KiB (IOPS)" 7
    row "host THP faults in the run: 2 MiB pages" 11
    row "  and fallbacks to 4 KiB" 12
    echo
    echo "Times (ms, s, ns): lower is better, a ratio < 1 favours hvrun. Throughput (MB/s, IOPS):"
    echo "higher is better, a ratio > 1 favours hvrun. MMIO: $batches batches of $reads reads;"
    echo "virtio-blk: O_DIRECT in the guest, queue depth 1; sequential: $mib MiB; random: ${seconds} s"
    echo "per phase over $mib MiB; writes end with fdatasync (timed)."
} >"$out/vs-qemu.txt"
cat "$out/vs-qemu.txt"
