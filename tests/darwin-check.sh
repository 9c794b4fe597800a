#!/usr/bin/env bash
# The macOS gate: type-checks the whole workspace (all targets: lib, bin, tests) for
# aarch64-apple-darwin and runs clippy -D warnings on it, so the Hypervisor.framework backend
# (src/hv/hvf, hv-sys) cannot rot on a Linux CI machine. Nothing is linked or run: there is no
# macOS SDK or Mac here. See README "macOS".
#
# How, without rustup targets: Debian's Rust (rustc-web) plus its standard-library sources
# (rust-web-src) build std for the target on the fly (`-Zbuild-std`, allowed on a stable
# compiler by RUSTC_BOOTSTRAP=1). std is built once into target/darwin and reused.
# On a Mac, it runs cargo check/clippy natively instead.
#
# Usage: tests/darwin-check.sh        (tests/setup-host.sh installs the packages it needs)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target=aarch64-apple-darwin
say() { echo "darwin-check: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "$(uname -s)" = Darwin ]; then
    cargo check --workspace --all-targets
    cargo clippy --workspace --all-targets -- -D warnings
    exit 0
fi

for f in /usr/bin/rustc /usr/bin/cargo /usr/bin/cargo-clippy; do
    [ -x "$f" ] || die "$f is missing: run tests/setup-host.sh (Debian's rustc-web, cargo-web, rust-web-clippy)"
done
src=$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library
[ -d "$src/std" ] || die "no standard library sources in $src: run tests/setup-host.sh (rust-web-src)"

# Debian's tools explicitly: /usr/bin/cargo would otherwise run rustup's rustc from PATH, and
# cargo-clippy rustup's cargo. A target dir of its own, so the host builds are never invalidated.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=$repo/target/darwin
args=(--workspace --all-targets --target "$target" -Zbuild-std=std,panic_abort)

started=$SECONDS
say "cargo check ($target)"
/usr/bin/cargo check "${args[@]}"
say "cargo clippy ($target)"
/usr/bin/cargo-clippy clippy "${args[@]}" -- -D warnings
say "ok in $((SECONDS - started)) s"
