#!/usr/bin/env bash
# The smoke test for hvrun on an Apple Silicon Mac, for a person who has one. NOTHING in this
# script has been run on a Mac yet: hvrun's Hypervisor.framework backend is type-checked and
# unit-tested in CI on Linux only. What this script finds out is exactly what is unknown.
#
# It builds hvrun (release), signs it with the hypervisor entitlement, runs `hvrun host`,
# boots the test guest (1 vCPU on the serial console; 2 vCPUs on virtio-console; a virtio-blk
# disk written by both sides), runs `hvrun bench`, and — if `hvrun host` says this Mac can —
# boots with --nested and looks for KVM inside the guest. Then it prints a short report to
# paste into an issue (also saved as target/macos-smoke/report.md), with the four questions
# reviews/hvf-review.md leaves open: does --nested boot (and run KVM), CNTFRQ vs the Mach
# timebase on this chip, the in-kernel GIC's geometry, and exit counts by reason.
#
# Usage: tests/macos-smoke.sh [--artifacts DIR] [--no-build]
#   --artifacts DIR   where Image and guest-initrd.cpio.gz are (default: target/guest-artifacts,
#                     or $HVRUN_GUEST_ARTIFACTS)
#   --no-build        use target/release/hvrun as it is (it is signed again either way)
#
# Needs: macOS 13 or later on Apple Silicon, directly on the hardware (not in a macOS VM), the
# Xcode command line tools (codesign) and rustup's cargo. Works with macOS's bash 3.2.
#
# Guest artifacts. tests/guest/build-artifacts.sh builds them from Debian packages and needs
# Linux (apt-get, dpkg, depmod, modprobe, and root for mknod); it does not run on macOS. On a
# Debian or Ubuntu machine (x86_64 or arm64), in a clone of this repository, run
#     sudo tests/setup-host.sh && sudo tests/guest/build-artifacts.sh
# and copy these two files from its target/guest-artifacts/ to this Mac's
# target/guest-artifacts/ (or point --artifacts at them):
#     Image                 the Debian arm64 kernel (uncompressed)
#     guest-initrd.cpio.gz  the busybox initramfs with the virtio modules and the test /init
# (kernel-version is nice to have: the report quotes it.) Without them the guest steps are
# reported as NOT RUN — never as passed — and `hvrun host` and `hvrun bench` still run.
#
# The VZ engine (Virtualization.framework) has its own smoke script: when
# tests/macos-smoke-vz.sh exists and is executable, this script runs it last with HVRUN (the
# signed binary), ARTIFACTS and SMOKE_OUT (a directory for its files) in the environment, and
# puts what it prints on stdout under "VZ engine" in the report; its exit code is its result.
#
# Exit code: 0 when every step passed (or was N/A: a feature this Mac lacks), 1 when one
# failed, 3 when none failed but some did NOT RUN (no guest artifacts), 2 for a bad setup.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$repo/target/macos-smoke
artifacts=${HVRUN_GUEST_ARTIFACTS:-$repo/target/guest-artifacts}
build=true
while [ $# -gt 0 ]; do
    case $1 in
        --artifacts) artifacts=${2:?--artifacts needs a directory}; shift 2 ;;
        --no-build) build=false; shift ;;
        -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "macos-smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "macos-smoke: $*" >&2; }
die() { say "error: $*"; exit 2; }

[ "$(uname -s)" = Darwin ] || die "this script is for macOS; on Linux run tests/run-all.sh"
[ "$(uname -m)" = arm64 ] || die "hvrun needs Apple Silicon; uname -m says $(uname -m)"
command -v codesign >/dev/null || die "codesign is missing: xcode-select --install"
if $build; then
    command -v cargo >/dev/null || die "cargo is missing: install rustup (https://rustup.rs)"
fi
rm -rf "$out"
mkdir -p "$out"

# Results, one "step|result|detail" line each (bash 3.2 has no associative arrays). A result is
# PASS, FAIL, NOT RUN (something this script needs is missing) or N/A (this Mac lacks the
# feature, e.g. EL2 before M3).
results=$out/results
: >"$results"
failed=false
not_run=false
record() {
    printf '%s|%s|%s\n' "$1" "$2" "$3" >>"$results"
    case $2 in
        FAIL) failed=true ;;
        "NOT RUN") not_run=true ;;
    esac
    say "$1: $2${3:+ ($3)}"
}

# run_timed NAME SECONDS CMD...: runs CMD with stdin from /dev/null, stdout to NAME.out and
# stderr to NAME.err, and stops it after SECONDS (macOS has no timeout(1)). Sets `rc` (124 for
# a timeout, as timeout(1) does) and `took` (wall seconds).
run_timed() {
    local name=$1 limit=$2 pid started timed_out=false
    shift 2
    started=$(date +%s)
    "$@" </dev/null >"$out/$name.out" 2>"$out/$name.err" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if [ $(($(date +%s) - started)) -ge "$limit" ]; then
            timed_out=true
            kill -TERM "$pid" 2>/dev/null
            sleep 5
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 1
    done
    wait "$pid"
    rc=$?
    took=$(($(date +%s) - started))
    if $timed_out; then
        rc=124
    fi
}

# --- 1. build and sign ---------------------------------------------------------------------
hvrun=$repo/target/release/hvrun
if $build; then
    say "cargo build --release (log: $out/build.log)"
    if ! (cd "$repo" && cargo build --release) >"$out/build.log" 2>&1; then
        record build FAIL "cargo build --release failed; see target/macos-smoke/build.log"
        tail -n 30 "$out/build.log" >&2
        exit 1
    fi
fi
[ -x "$hvrun" ] || die "$hvrun does not exist: run without --no-build"
if codesign --sign - --entitlements "$repo/hvrun.entitlements" --force "$hvrun" 2>"$out/codesign.err" &&
    codesign -d --entitlements - "$hvrun" 2>&1 | grep -q com.apple.security.hypervisor; then
    record build PASS "release build, ad-hoc signed with com.apple.security.hypervisor"
else
    record build FAIL "codesign: $(head -n 1 "$out/codesign.err")"
    exit 1
fi

# --- 2. hvrun host -------------------------------------------------------------------------
run_timed host 60 "$hvrun" host
host_rc=$rc
"$hvrun" host --json >"$out/host.json" 2>/dev/null
# `hvrun host --json` as "KEY<tab>VALUE" lines ("notes.KEY" for the notes; null as "-"), read
# with JavaScript for Automation, which every macOS has (jq is not there before macOS 15, and
# plutil refuses JSON with nulls).
osascript -l JavaScript - "$out/host.json" >"$out/host.facts" 2>"$out/host.facts.err" <<'JS'
ObjC.import('Foundation');
function run(argv) {
    const text = $.NSString.stringWithContentsOfFileEncodingError(argv[0], $.NSUTF8StringEncoding, null).js;
    const lines = [];
    for (const [key, value] of Object.entries(JSON.parse(text))) {
        if (key === 'notes') {
            for (const [k, note] of Object.entries(value)) lines.push('notes.' + k + '\t' + note);
        } else {
            lines.push(key + '\t' + (value === null ? '-' : String(value)));
        }
    }
    return lines.join('\n');
}
JS
# fact KEY: one value of `hvrun host --json` ("notes.KEY" for its note), "-" if absent.
fact() {
    awk -F'\t' -v k="$1" '$1 == k { print $2; found = 1; exit } END { if (!found) print "-" }' \
        "$out/host.facts"
}
if [ "$host_rc" -eq 0 ]; then
    record "hvrun host" PASS "$(fact backend); $(fact gic); nested: $(fact nested)"
else
    record "hvrun host" FAIL "exit $host_rc: $(fact notes.usable)"
fi

# --- 3. the test guest ---------------------------------------------------------------------
# boot NAME SECONDS CMDLINE [HVRUN ARGS...]: boots Image + guest-initrd with CMDLINE. The test
# /init runs the words after " -- " (at most 30; no second "--") and prints
# HVRUN-GUEST-EXIT=<status>, then powers off: hvrun must exit 0.
have_artifacts=false
if [ -f "$artifacts/Image" ] && [ -f "$artifacts/guest-initrd.cpio.gz" ]; then
    have_artifacts=true
fi
guest_kernel=$(cat "$artifacts/kernel-version" 2>/dev/null || echo unknown)
log_level=warn
boot() {
    local name=$1 limit=$2 cmdline=$3
    shift 3
    run_timed "$name" "$limit" env "RUST_LOG=$log_level" "$hvrun" --kernel "$artifacts/Image" \
        --initrd "$artifacts/guest-initrd.cpio.gz" --no-reboot --cmdline "$cmdline" "$@"
}
# boot_result NAME DETAIL PROBLEM PATTERN...: PASS when hvrun exited 0, the guest's command
# exited 0, its output matches every PATTERN and the caller found no PROBLEM ("" for none).
boot_result() {
    local name=$1 detail=$2 problem=$3 pattern
    shift 3
    if [ "$rc" -eq 124 ]; then
        record "$name" FAIL "no power-off within the time limit; last line: $(tail -n 1 "$out/$name.out")"
        return
    elif [ "$rc" -ne 0 ]; then
        record "$name" FAIL "hvrun exit $rc: $(grep -m1 '^hvrun:' "$out/$name.err")"
        return
    elif ! grep -q 'HVRUN-GUEST-EXIT=0' "$out/$name.out"; then
        record "$name" FAIL "the guest's command failed: $(grep -m1 HVRUN-GUEST-EXIT "$out/$name.out")"
        return
    fi
    for pattern in "$@"; do
        if ! grep -Eq "$pattern" "$out/$name.out"; then
            record "$name" FAIL "output lacks /$pattern/ (see target/macos-smoke/$name.out)"
            return
        fi
    done
    if [ -n "$problem" ]; then
        record "$name" FAIL "$problem"
    else
        record "$name" PASS "$detail; ${took} s"
    fi
}

slept="?"
if $have_artifacts; then
    # 1 vCPU, serial console: the timer (sleep 3 measured by the guest's own clock) and the
    # exit counts of a mostly idle guest.
    boot boot-1cpu 120 "console=ttyS0 quiet -- echo CPUS=\$(nproc); dmesg | grep -i -e arch_timer -e gic; s=\$(cut -d. -f1 /proc/uptime); sleep 3; e=\$(cut -d. -f1 /proc/uptime); echo SLEPT=\$((e-s))" \
        --stats
    slept=$(sed -n 's/.*SLEPT=\([0-9]*\).*/\1/p' "$out/boot-1cpu.out" | head -n 1)
    boot_result boot-1cpu "1 vCPU, ttyS0; the guest timed sleep 3 as ${slept:-?} s" "" 'CPUS=1' 'SLEPT='

    # 2 vCPUs, virtio console, both CPUs busy: the exit counts of a busy guest, and the GIC
    # facts at RUST_LOG=info (redistributor bases, counter rates).
    log_level=info
    boot boot-2cpu 180 "console=hvc0 quiet -- echo CPUS=\$(nproc); for c in 1 2; do (i=0; while [ \$i -lt 300000 ]; do i=\$((i+1)); done) & done; wait; echo BUSY-DONE" \
        --cpus 2 --console virtio --stats
    log_level=warn
    boot_result boot-2cpu "2 vCPUs, hvc0, both busy" "" 'CPUS=2' 'BUSY-DONE'

    # A virtio-blk disk: the guest reads what the host wrote and writes where the host reads.
    disk=$out/disk.img
    dd if=/dev/zero of="$disk" bs=1048576 count=64 2>/dev/null
    printf 'hvrun-host-to-guest' | dd of="$disk" conv=notrunc 2>/dev/null
    boot boot-disk 120 "console=ttyS0 quiet -- head -c 19 /dev/vda; echo; printf hvrun-guest-to-host | dd of=/dev/vda bs=1 seek=4096 conv=fsync" \
        --disk "$disk"
    written=$(dd if="$disk" bs=1 skip=4096 count=19 2>/dev/null)
    problem=""
    [ "$written" = hvrun-guest-to-host ] || problem="the guest's write is not in the image (found '$written')"
    boot_result boot-disk "virtio-blk: read the host's bytes, wrote its own" "$problem" 'hvrun-host-to-guest'
else
    for step in boot-1cpu boot-2cpu boot-disk; do
        record "$step" "NOT RUN" "no Image/guest-initrd.cpio.gz in $artifacts (see this script's header)"
    done
fi

# --- 4. hvrun bench ------------------------------------------------------------------------
run_timed bench 600 "$hvrun" bench
if [ "$rc" -eq 0 ]; then
    record "hvrun bench" PASS "every case ran; table below"
else
    record "hvrun bench" FAIL "exit $rc: $(grep -m1 'bench' "$out/bench.err")"
fi

# --- 5. --nested ---------------------------------------------------------------------------
if [ "$(fact nested)" != true ]; then
    record nested "N/A" "hvrun host says this Mac offers no EL2: $(fact notes.nested)"
elif ! $have_artifacts; then
    record nested "NOT RUN" "no guest artifacts"
else
    # The guest kernel starts at EL2; KVM in it must find the vGIC (maintenance interrupt,
    # ID_AA64PFR0_EL1.GIC) and create /dev/kvm, whose listing is the command's exit status.
    boot nested 300 "console=ttyS0 quiet -- dmesg | grep -i -e kvm -e vgic -e hyp -e el2; ls /dev/kvm" --nested
    boot_result nested "--nested: /dev/kvm exists in the guest" "" '^/dev/kvm'
fi

# --- 6. the VZ engine's own smoke test (added separately) ----------------------------------
vz_script=$repo/tests/macos-smoke-vz.sh
if [ -x "$vz_script" ]; then
    mkdir -p "$out/vz"
    run_timed vz 900 env HVRUN="$hvrun" ARTIFACTS="$artifacts" SMOKE_OUT="$out/vz" "$vz_script"
    if [ "$rc" -eq 0 ]; then
        record "VZ engine" PASS "tests/macos-smoke-vz.sh"
    else
        record "VZ engine" FAIL "tests/macos-smoke-vz.sh exit $rc"
    fi
fi

# --- 7. the report ---------------------------------------------------------------------------
# stats_total NAME: the --stats table's totals of a boot (header and "total" lines).
stats_total() {
    awk '/^exit statistics:/ { on = 1 } on && ($1 == "exit" || $1 == "vcpu" || $1 == "total") { print }' \
        "$out/$1.err" 2>/dev/null
}
# quote: stdin as a code block ("(nothing)" when empty).
quote() {
    local text
    text=$(cat)
    local fence='```'
    if [ -n "$text" ]; then printf '%s\n%s\n%s\n' "$fence" "$text" "$fence"; else echo "(nothing)"; fi
}
{
    echo "## hvrun macOS smoke report"
    echo
    echo "- hvrun $(cd "$repo" && git describe --always --dirty 2>/dev/null || echo '(no git)'), $("$hvrun" --version 2>/dev/null)"
    echo "- macOS $(sw_vers -productVersion) ($(sw_vers -buildVersion)) on $(sysctl -n machdep.cpu.brand_string), $(sysctl -n hw.ncpu) CPUs, $(($(sysctl -n hw.memsize) / 1073741824)) GiB"
    echo "- guest kernel: $guest_kernel"
    echo
    echo "### Results"
    echo
    echo "| step | result | detail |"
    echo "|---|---|---|"
    awk -F'|' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$results"
    echo
    echo "### hvrun host"
    quote <"$out/host.out"
    echo
    echo "### Open questions (reviews/hvf-review.md)"
    echo
    echo "**1. --nested** (does KVM start in the guest?):"
    if [ -s "$out/nested.out" ]; then
        grep -v -e HVRUN-GUEST -e '^$' "$out/nested.out" | tail -n 20 | quote
        grep -m5 -i -e warn -e error -e '^hvrun:' "$out/nested.err" | quote
    else
        echo "not run: $(awk -F'|' '$1 == "nested" { print $3 }' "$results")"
    fi
    echo
    echo "**2. Counter**: CNTFRQ_EL0 = $(fact counter_hz) Hz, mach_timebase_info = $(fact host_clock_hz) Hz."
    if $have_artifacts; then
        echo "Guest: $(grep -m1 -i arch_timer "$out/boot-1cpu.out" || echo 'no arch_timer line')"
        echo "The guest timed \`sleep 3\` as $slept s by its own clock; the whole boot took $(awk -F'|' '$1 == "boot-1cpu" { print $3 }' "$results" | sed 's/.*; //') of wall time."
        cat "$out/boot-2cpu.err" "$out/boot-1cpu.err" | grep -m3 -e 'guest counter' -e 'timer is due' | quote
    fi
    echo
    echo "**3. GIC**: $(fact gic): $(fact notes.gic). Geometry: $(fact gic_geometry)"
    if $have_artifacts; then
        grep -e "framework's GIC" -e 'redistributor' -e 'userspace GICv3' "$out/boot-2cpu.err" | quote
    fi
    echo
    echo "**4. Exit counts by reason** (with the in-kernel GIC, vtimer and wfi should be 0):"
    if $have_artifacts; then
        echo "1 vCPU, mostly idle (sleep 3):"
        stats_total boot-1cpu | quote
        echo "2 vCPUs, both busy:"
        stats_total boot-2cpu | quote
    else
        echo "not run: no guest artifacts"
    fi
    echo
    echo "### hvrun bench"
    quote <"$out/bench.out"
    if [ -x "$vz_script" ]; then
        echo
        echo "### VZ engine"
        quote <"$out/vz.out"
    fi
    echo
    echo "Every file behind this report is in target/macos-smoke/."
} >"$out/report.md"
cat "$out/report.md"
if $failed; then
    exit 1
elif $not_run; then
    say "some steps did NOT RUN (see the report): this is not a full pass"
    exit 3
fi
exit 0
