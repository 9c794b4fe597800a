# Environment for building hvrun for arm64 Linux (aarch64-unknown-linux-gnu) and running its
# tests there. Source it, do not run it:
#
#     source tests/cross-env.sh
#     "$HVRUN_CARGO" test --target "$HVRUN_TARGET"
#     "$HVRUN_CARGO_CLIPPY" clippy --target "$HVRUN_TARGET" -- -D warnings
#
# Always pass --target, even on an arm64 host: only then do the target flags below (a static
# C runtime) stay off build scripts and proc macros. Test binaries are run through
# tests/harness/arm64-vm, which runs them natively on arm64 Linux with KVM and inside an
# emulated arm64 machine elsewhere; static binaries need no C library inside that machine.
#
# Three toolchains, chosen in this order:
#   native  arm64 Linux host: the usual cargo.
#   rustup  rustup's cargo, when `rustup target add aarch64-unknown-linux-gnu` was done.
#   debian  Debian's Rust (rustc-web) with the private sysroot made by tests/setup-host.sh. It
#           gets its own target dir (target/debian), so it never rebuilds rustup's artifacts.
#
# This file is sourced into interactive shells, so it does not `set -e` and never exits: on a
# problem it prints one line and returns 1.

hvrun_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HVRUN_TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=$hvrun_repo/tests/harness/arm64-vm
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"

if [ "$(uname -m)" = aarch64 ]; then
    export HVRUN_TOOLCHAIN=native HVRUN_CARGO=cargo HVRUN_CARGO_CLIPPY=cargo-clippy
elif command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$HVRUN_TARGET"; then
    export HVRUN_TOOLCHAIN=rustup HVRUN_CARGO=cargo HVRUN_CARGO_CLIPPY=cargo-clippy
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
else
    # The sysroot's stamp is the version of the Debian std it was made for.
    hvrun_sysroot=$(cat "$hvrun_repo/target/rust-sysroot/stamp" 2>/dev/null)
    if [ -z "$hvrun_sysroot" ] || [ "$hvrun_sysroot" != \
         "$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$(dpkg --print-architecture)" 2>/dev/null)" ]; then
        echo "cross-env.sh: no aarch64 Rust sysroot for /usr/bin/rustc: run tests/setup-host.sh" >&2
        unset hvrun_repo hvrun_sysroot
        return 1
    fi
    unset hvrun_sysroot
    export HVRUN_TOOLCHAIN=debian HVRUN_CARGO=/usr/bin/cargo HVRUN_CARGO_CLIPPY=/usr/bin/cargo-clippy
    # Without these, /usr/bin/cargo would run rustup's rustc from PATH, and cargo-clippy, when
    # called directly, rustup's cargo.
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
    export CARGO_TARGET_DIR=$hvrun_repo/target/debian
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS+=" --sysroot=$hvrun_repo/target/rust-sysroot"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTDOCFLAGS=$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS
unset hvrun_repo
