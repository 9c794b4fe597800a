#!/usr/bin/env bash
# Runs every check and test hvrun has, on a fresh Debian/Ubuntu machine or a developer's one:
#
#   1. host setup (packages, the arm64 Rust sysroot) and the guest artifacts — each skipped
#      when already done;
#   2. formatting and clippy, for the host and for aarch64-unknown-linux-gnu, and the macOS
#      gate: cargo check + clippy for aarch64-apple-darwin (tests/darwin-check.sh), which is
#      how the Hypervisor.framework backend is verified without a Mac;
#   3. unit tests of the portable code, natively on the host;
#   4. every test built for arm64 Linux — the unit tests again, plus the end-to-end tests that
#      boot real Linux guests with hvrun on KVM — run natively on an arm64 Linux host with
#      /dev/kvm, and inside an emulated arm64 machine (tests/harness/arm64-vm) everywhere else.
#
# The last line counts every test that ran: `total: N passed, M failed`.
# Usage: tests/run-all.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log=$repo/target/run-all.log
mkdir -p target
: >"$log"

step() { printf '\n=== %s\n' "$*"; }

step "host setup"
tests/setup-host.sh
step "guest artifacts"
tests/guest/build-artifacts.sh

step "formatting"
cargo fmt --all -- --check
step "shellcheck (tests/macos-smoke.sh)"
shellcheck tests/macos-smoke.sh

if [ "$(uname -m)" != aarch64 ]; then
    step "clippy (host)"
    cargo clippy --workspace --all-targets -- -D warnings
    step "unit tests (host)"
    cargo test --workspace 2>&1 | tee -a "$log"
fi

step "macOS gate: check and clippy for aarch64-apple-darwin"
tests/darwin-check.sh

# shellcheck source=tests/cross-env.sh
source tests/cross-env.sh
step "clippy ($HVRUN_TARGET, $HVRUN_TOOLCHAIN toolchain)"
"$HVRUN_CARGO_CLIPPY" clippy --workspace --all-targets --target "$HVRUN_TARGET" -- -D warnings

step "arm64 tests: unit and end-to-end on KVM ($HVRUN_TARGET via tests/harness/arm64-vm)"
started=$SECONDS
# The device-tree tests decompile with dtc, which the emulated machine does not have; they ran
# on the host above (and show as "filtered out" here).
"$HVRUN_CARGO" test --workspace --target "$HVRUN_TARGET" -- --skip dtc_ 2>&1 | tee "$log.arm64"
cat "$log.arm64" >>"$log"
echo "arm64 tests took $((SECONDS - started)) s"

# Per-binary counts of the arm64 run, so the log shows how many e2e tests really ran.
step "summary"
awk '/^ *Doc-tests / { name = "doc-tests " $2 }
     /^ *Running / { name = $NF; gsub(/[()]/, "", name); sub(/.*\//, "", name); sub(/-[0-9a-f]+$/, "", name)
                    name = name " (" ($2 == "unittests" ? $3 : $2) ")" }
     /^test result:/ { sub(/;$/, "", $4); sub(/;$/, "", $6)
                       printf "  %-40s %4d passed, %d failed\n", name, $4, $6 }' "$log.arm64"
awk '/^test result:/ { sub(/;$/, "", $4); sub(/;$/, "", $6); p += $4; f += $6 }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
echo "run-all took $SECONDS s" >&2
