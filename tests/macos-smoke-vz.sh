#!/usr/bin/env bash
# Smoke test of hvrun's Virtualization.framework engine, for a person with an Apple Silicon Mac
# (nothing in hvrun's CI can run it). It builds hvrun, signs it with hvrun.entitlements, boots
# the test Linux guest on the vz engine and on hvrun's own engine (Hypervisor.framework) for
# comparison, checks a few refusals, and prints a short report to paste into an issue.
#
# Nothing heavy is installed by default. Opt-in extras:
#   --gui                 also boot the Linux guest with --gui (a window opens for a few seconds;
#                         needs a logged-in desktop session)
#   --macos IPSW|latest   also install macOS into a temporary bundle (a 64G sparse disk, ~15 GB
#                         written, 20-40 minutes; `latest` downloads ~13 GB into
#                         ~/Library/Caches/hvrun), then boot it headless and shut it down
#   --keep                keep the scratch directory (logs, disk images, the bundle)
#
# The guest: target/guest-artifacts/{Image,guest-initrd.cpio.gz} from
# tests/guest/build-artifacts.sh, which needs Debian's tools: build them on a Debian/Ubuntu
# machine (or VM) and copy the directory here, or point HVRUN_GUEST_ARTIFACTS at it.
#
# Usage: tests/macos-smoke-vz.sh [--gui] [--macos IPSW|latest] [--keep]
# Exit code: 0 when every step passed, 1 when one failed, 2 when this is not an Apple Silicon Mac
# or something it needs is missing.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
say() { echo "macos-smoke-vz: $*" >&2; }
die() { say "error: $*"; exit 2; }

gui=0 macos_ipsw='' keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --gui) gui=1 ;;
        --macos) [ $# -ge 2 ] || die "--macos needs IPSW|latest"; macos_ipsw=$2; shift ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

[ "$(uname -s)" = Darwin ] || die "this is not macOS: run it on an Apple Silicon Mac"
[ "$(uname -m)" = arm64 ] || die "this Mac is not Apple Silicon (uname -m: $(uname -m))"
for tool in cargo codesign perl; do
    command -v "$tool" >/dev/null || die "$tool is missing (Xcode command line tools and rustup)"
done
artifacts=${HVRUN_GUEST_ARTIFACTS:-$repo/target/guest-artifacts}
for file in Image guest-initrd.cpio.gz; do
    [ -f "$artifacts/$file" ] || die "$artifacts/$file is missing: build the guest with tests/guest/build-artifacts.sh on Debian/Ubuntu and copy target/guest-artifacts here (or set HVRUN_GUEST_ARTIFACTS)"
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/hvrun-smoke-vz.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then say "kept $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT

now() { perl -MTime::HiRes=time -e 'printf "%.2f\n", time'; }
results=()
failures=0
# record NAME PASS|FAIL|SKIP DETAIL: one row of the report.
record() {
    results+=("| $1 | $2 | $3 |")
    [ "$2" = FAIL ] && failures=$((failures + 1))
    say "$1: $2 ($3)"
}

# run_logged LOG SECONDS CMD...: runs CMD with stdin from /dev/null (no raw terminal), output
# to LOG, killed (SIGTERM, then SIGKILL) after SECONDS. Sets $rc and $took.
run_logged() {
    local log=$1 secs=$2 start end pid watchdog
    shift 2
    start=$(now)
    "$@" </dev/null >"$log" 2>&1 &
    pid=$!
    (sleep "$secs"; kill -TERM "$pid" 2>/dev/null; sleep 10; kill -KILL "$pid" 2>/dev/null) &
    watchdog=$!
    wait "$pid"
    rc=$?
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    end=$(now)
    took=$(perl -e "printf '%.2f', $end - $start")
}

# The guest prints these to its console (the init's stdout may have no console on the vz
# engine until the virtio console's driver is loaded, hence the redirection). The $(...) are
# the guest shell's, not this one's.
# shellcheck disable=SC2016
guest_cmd='exec >/dev/console 2>&1; echo SMOKE arch=$(uname -m) cpus=$(nproc); ls /sys/class/net; cat /sys/block/vda/size'
check_guest() { # NAME LOG: the guest's READY, its report and its clean exit
    local name=$1 log=$2 detail
    detail="exit $rc, ${took}s"
    if [ "$rc" = 0 ] && grep -q HVRUN-GUEST-READY "$log" && grep -q 'HVRUN-GUEST-EXIT=0' "$log" &&
        grep -q '^SMOKE arch=aarch64' "$log" && grep -qx 131072 "$log"; then
        record "$name" PASS "$detail; $(grep -m1 '^SMOKE' "$log" | tr -d '\r'), vda 64 MiB"
    else
        record "$name" FAIL "$detail; last lines: $(tail -n 5 "$log" | tr '\n\r' '  ')"
    fi
}

say "building hvrun (release)"
if cargo build --release >"$scratch/build.log" 2>&1; then
    record build PASS "cargo build --release"
else
    record build FAIL "see $scratch/build.log: $(tail -n 3 "$scratch/build.log" | tr '\n' ' ')"
    keep=1
fi
hvrun=$repo/target/release/hvrun
if codesign --sign - --entitlements hvrun.entitlements --force "$hvrun" 2>"$scratch/codesign.log" &&
    codesign -d --entitlements - "$hvrun" 2>/dev/null | grep -q com.apple.security.virtualization; then
    record sign PASS "ad-hoc, with com.apple.security.virtualization and .hypervisor"
else
    record sign FAIL "$(tr '\n' ' ' <"$scratch/codesign.log")"
fi

mkfile -n 64m "$scratch/disk.img" 2>/dev/null || dd if=/dev/zero of="$scratch/disk.img" bs=1m count=0 seek=64 2>/dev/null
guest=(--kernel "$artifacts/Image" --initrd "$artifacts/guest-initrd.cpio.gz" --mem 512M --cpus 1
    --disk "$scratch/disk.img")

run_logged "$scratch/vz.log" 120 "$hvrun" --engine vz "${guest[@]}" --net nat \
    --cmdline "console=hvc0 quiet -- $guest_cmd"
check_guest "Linux on vz (--net nat, --disk)" "$scratch/vz.log"

run_logged "$scratch/vmm.log" 120 "$hvrun" "${guest[@]}" --cmdline "console=ttyS0 quiet -- $guest_cmd"
check_guest "Linux on hvrun's engine (HVF)" "$scratch/vmm.log"

if [ "$gui" = 1 ]; then
    run_logged "$scratch/gui.log" 120 "$hvrun" --engine vz "${guest[@]}" --gui \
        --cmdline "console=hvc0 quiet -- sleep 5; $guest_cmd"
    check_guest "Linux on vz with --gui (a window for ~5 s)" "$scratch/gui.log"
else
    record "Linux on vz with --gui" SKIP "not asked (--gui)"
fi

# Flags the vz engine cannot honour: exit 2 with one line, before any VM exists.
run_logged "$scratch/refuse.log" 30 "$hvrun" --engine vz "${guest[@]}" --stats
if [ "$rc" = 2 ] && grep -q -- '--stats: the vz engine has no VM exits' "$scratch/refuse.log"; then
    record "vz refuses --stats" PASS "exit 2"
else
    record "vz refuses --stats" FAIL "exit $rc: $(tr '\n' ' ' <"$scratch/refuse.log")"
fi

if [ -n "$macos_ipsw" ]; then
    bundle=$scratch/macos.bundle
    say "installing macOS from $macos_ipsw into $bundle (20-40 minutes)"
    run_logged "$scratch/install.log" 5400 "$hvrun" macos install "$bundle" --ipsw "$macos_ipsw"
    if [ "$rc" = 0 ] && grep -q '"ready"' "$bundle/hvrun-macos.json" 2>/dev/null; then
        record "macos install" PASS "${took}s; $(grep -m1 'installing macOS' "$scratch/install.log")"
        # Boot headless, let it come up, then Ctrl-C: hvrun asks the guest to shut down.
        start=$(now)
        "$hvrun" macos run "$bundle" --headless </dev/null >"$scratch/run.log" 2>&1 &
        pid=$!
        sleep 120
        if kill -0 "$pid" 2>/dev/null; then
            kill -INT "$pid"
            (sleep 120; kill -KILL "$pid" 2>/dev/null) &
            watchdog=$!
            wait "$pid"
            rc=$?
            kill "$watchdog" 2>/dev/null
            took=$(perl -e "printf '%.2f', $(now) - $start")
            record "macos run --headless, then Ctrl-C" "$([ "$rc" = 0 ] || [ "$rc" = 130 ] && echo PASS || echo FAIL)" "exit $rc after ${took}s"
        else
            wait "$pid"
            rc=$?
            record "macos run --headless" FAIL "ended by itself with exit $rc: $(tail -n 3 "$scratch/run.log" | tr '\n' ' ')"
        fi
    else
        record "macos install" FAIL "exit $rc after ${took}s: $(tail -n 3 "$scratch/install.log" | tr '\n\r' '  ')"
    fi
else
    record "macos install + run" SKIP "not asked (--macos IPSW|latest)"
fi

[ "$failures" = 0 ] || keep=1
cat <<EOF

### hvrun vz engine smoke test
- hvrun: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown), $("$hvrun" --version 2>/dev/null)
- Mac: $(sysctl -n machdep.cpu.brand_string 2>/dev/null), macOS $(sw_vers -productVersion 2>/dev/null) ($(sw_vers -buildVersion 2>/dev/null)), kern.hv_support=$(sysctl -n kern.hv_support 2>/dev/null)
- guest: $(cat "$artifacts/kernel-version" 2>/dev/null || echo "kernel version unknown"), 1 vCPU, 512 MiB

| step | result | detail |
|---|---|---|
EOF
printf '%s\n' "${results[@]}"
echo
[ "$keep" = 1 ] && echo "Logs: $scratch"
[ "$failures" = 0 ]
