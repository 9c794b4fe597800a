#!/usr/bin/env bash
# Prepares a Debian (or Ubuntu) Linux host to cross-build hvrun for arm64 Linux and to run its
# KVM tests inside an emulated arm64 machine (see tests/harness/arm64-vm).
#
# What it does, each step skipped when already done (a second run takes well under a second):
#   1. On x86_64: enables the arm64 package architecture, so that `apt-get download PKG:arm64`
#      can fetch arm64 packages (the arm64 kernel, busybox, Rust's arm64 standard library).
#   2. Installs QEMU, the aarch64 cross C toolchain, Debian's Rust 1.96 (`rustc-web`, with its
#      standard-library sources for the macOS gate, tests/darwin-check.sh) and the small tools
#      that tests/guest/build-artifacts.sh needs.
#   3. On x86_64: builds a private Rust sysroot in target/rust-sysroot holding both the host
#      (x86_64) and the aarch64 standard library, because Debian's rustc has only the host one
#      and `rustup target add` may not be possible. Then it checks that a small crate cross-builds
#      into a static aarch64 binary and that clippy runs on it, through tests/cross-env.sh.
#
# Usage: tests/setup-host.sh        (as root, or as a user who can sudo)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sysroot=$repo/target/rust-sysroot

say() { echo "setup-host: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(uname -s)" = Linux ] || die "only Linux hosts are handled here; on macOS, build with cargo directly"
command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu); install by hand what this script lists"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

host_arch=$(dpkg --print-architecture)
# Debian's Rust 1.96 with its std sources: every host uses it for the macOS gate
# (tests/darwin-check.sh builds std for aarch64-apple-darwin from rust-web-src).
packages=(qemu-system-arm cpio kmod device-tree-compiler e2fsprogs xz-utils zstd file shellcheck
          rustc-web cargo-web rust-web-src rust-web-clippy)
if [ "$host_arch" != arm64 ]; then
    packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstd-rust-web-dev)
fi

# --- 1 and 2: packages ---------------------------------------------------------------------
need_update=false
if [ "$host_arch" != arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 package architecture"
    $sudo dpkg --add-architecture arm64
    need_update=true
fi
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] || need_update=true
compgen -G "/var/lib/apt/lists/*_binary-arm64_Packages*" >/dev/null || need_update=true

if $need_update; then
    say "apt-get update"
    $sudo apt-get update -q >/dev/null || die "apt-get update failed"
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

[ "$host_arch" != arm64 ] || { say "ok (arm64 host: cargo builds natively, no sysroot needed)"; exit 0; }

# --- 3: a Rust sysroot with the x86_64 and the aarch64 standard libraries ---------------------
# The aarch64 std must be the very same build as the installed rustc, so its exact version is
# pinned. The Debian package libstd-rust-web-1.96:arm64 holds only librustc_driver (the
# compiler itself, for arm64 hosts) and is not needed to cross-compile.
std_version=$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$host_arch")
if [ "$(cat "$sysroot/stamp" 2>/dev/null)" != "$std_version" ]; then
    say "building $sysroot for $(/usr/bin/rustc --version)"
    rm -rf "$sysroot"
    mkdir -p "$sysroot/debs" "$sysroot/lib/rustlib"
    (cd "$sysroot/debs" &&
        apt-get -q -o APT::Sandbox::User=root download "libstd-rust-web-dev:arm64=$std_version" >/dev/null) ||
        die "cannot download libstd-rust-web-dev:arm64=$std_version; run 'apt-get update && apt-get install --only-upgrade rustc-web cargo-web rust-web-clippy' so rustc and the arm64 std match"
    dpkg -x "$sysroot"/debs/libstd-rust-web-dev_*_arm64.deb "$sysroot/arm64"
    host_rustlib=$(/usr/bin/rustc --print sysroot)/lib/rustlib
    for entry in "$host_rustlib"/*; do
        ln -s "$entry" "$sysroot/lib/rustlib/"
    done
    ln -s ../../arm64/usr/lib/rustlib/aarch64-unknown-linux-gnu "$sysroot/lib/rustlib/"
    echo "$std_version" >"$sysroot/stamp"
fi

if [ "$(cat "$sysroot/checked" 2>/dev/null)" != "$std_version" ]; then
    say "checking a cross build and clippy with tests/cross-env.sh"
    check=$sysroot/check
    mkdir -p "$check/src"
    printf '[package]\nname = "check"\nversion = "0.1.0"\nedition = "2021"\n[workspace]\n' >"$check/Cargo.toml"
    echo 'fn main() { println!("cargo:rerun-if-changed=build.rs"); }' >"$check/build.rs"
    echo 'fn main() { println!("hello from aarch64"); }' >"$check/src/main.rs"
    (
        # shellcheck source=tests/cross-env.sh
        source "$repo/tests/cross-env.sh" || exit 1
        cd "$check"
        export CARGO_TARGET_DIR=$check/target
        "$HVRUN_CARGO" build -q --target "$HVRUN_TARGET" ||
            die "a hello-world crate does not cross-build with the $HVRUN_TOOLCHAIN toolchain"
        binary=$CARGO_TARGET_DIR/$HVRUN_TARGET/debug/check
        file "$binary" | grep -q 'ARM aarch64.*statically linked' ||
            die "not a static aarch64 binary: $(file "$binary")"
        "$HVRUN_CARGO_CLIPPY" clippy -q --target "$HVRUN_TARGET" -- -D warnings ||
            die "clippy ($HVRUN_CARGO_CLIPPY) fails on a hello-world crate"
    )
    echo "$std_version" >"$sysroot/checked"
fi
say "ok"
