#!/usr/bin/env bash
# Measures what a VM exit costs with `hvrun bench`, in one boot of the arm64 machine
# (natively on arm64 Linux with /dev/kvm; in the emulated machine of tests/harness/arm64-vm
# elsewhere), and writes everything to target/bench-results/:
#
#   table.txt      `hvrun bench` (all cases, default 65536 iterations in batches of 64)
#   bench.json     the same run's JSON;  bench.svg  its latency distributions
#   overhead.txt   mmio-read/mmio-write with and without VMM-side exit timing, twice each
#                  (what --stats costs per exit)
#   strace-*.txt   `strace -c -f` of a bench run (syscalls per exit), when strace runs here
#                  (on x86_64 hosts, strace:arm64 and libc6:arm64 are unpacked from Debian)
#
# Usage: benches/exit-latency.sh        (after tests/setup-host.sh and build-artifacts.sh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=$repo/target/bench-results
mkdir -p "$out"
# shellcheck source=tests/cross-env.sh
source tests/cross-env.sh
"$HVRUN_CARGO" build --release --target "$HVRUN_TARGET"
hvrun=${CARGO_TARGET_DIR:-$repo/target}/$HVRUN_TARGET/release/hvrun

# strace for the machine: the host's on arm64, else Debian's arm64 package with its libc.
strace_cmd=""
if [ "$(uname -m)" = aarch64 ] && command -v strace >/dev/null; then
    strace_cmd=strace
elif command -v apt-get >/dev/null; then
    root=$repo/target/strace/root
    if [ ! -x "$root/usr/bin/strace" ]; then
        mkdir -p "$repo/target/strace"
        (cd "$repo/target/strace" && apt-get -q -o APT::Sandbox::User=root download strace:arm64 libc6:arm64 >/dev/null &&
            for deb in strace_*.deb libc6_*.deb; do dpkg -x "$deb" root; done) ||
            echo "exit-latency: cannot unpack strace:arm64; skipping the syscall count" >&2
    fi
    [ -x "$root/usr/bin/strace" ] &&
        strace_cmd="$root/lib/ld-linux-aarch64.so.1 --library-path $root/lib/aarch64-linux-gnu $root/usr/bin/strace"
fi

script=$out/run.sh
cat >"$script" <<SCRIPT
set -x
uname -a
$hvrun bench --json --plot $out/bench.svg >$out/bench.json
$hvrun bench >$out/table.txt
: >$out/overhead.txt
for round in 1 2; do
    $hvrun bench --no-vmm-time mmio-read mmio-write | sed "s/^/timing off: /" >>$out/overhead.txt
    $hvrun bench mmio-read mmio-write | sed "s/^/timing on:  /" >>$out/overhead.txt
done
if [ -n "$strace_cmd" ]; then
    $strace_cmd -c -f -o $out/strace-mmio-read.txt $hvrun bench --iterations 16384 mmio-read >/dev/null
    $strace_cmd -c -f -o $out/strace-nop.txt $hvrun bench --iterations 16384 nop >/dev/null
fi
SCRIPT
tests/harness/arm64-vm sh "$script" 2>"$out/run.log"
cat "$out/table.txt"
grep -E "^timing (on|off): +mmio" "$out/overhead.txt" || true
if [ -s "$out/strace-mmio-read.txt" ]; then
    # 16384 iterations in batches of 64 = 256 + 25 warm-up batches = 17984 exits; the nop run
    # makes no exits, so its ioctls are the setup's.
    # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall.
    ioctls() { awk '$NF == "ioctl" { print $4 }' "$1"; }
    calls() { awk '$NF == "total" { print $4 }' "$1"; }
    echo "syscalls: mmio-read run $(calls "$out/strace-mmio-read.txt") ($(ioctls "$out/strace-mmio-read.txt") ioctl)," \
         "exit-free nop run $(calls "$out/strace-nop.txt") ($(ioctls "$out/strace-nop.txt") ioctl), for 17984 exits"
fi
