#!/usr/bin/env bash
# Boots a Debian arm64 guest with hvrun and gives you its shell on this terminal.
#
#   tests/boot-guest.sh [HVRUN ARGS...]        e.g. tests/boot-guest.sh --cpus 2 --mem 1G
#
# Sets up what is missing (tests/setup-host.sh), builds the guest kernel and initramfs from
# Debian packages (tests/guest/build-artifacts.sh) and hvrun for arm64 Linux, then runs hvrun —
# natively on arm64 Linux with /dev/kvm, else inside an emulated arm64 machine with KVM
# (tests/harness/arm64-vm). `exit` in the guest shell powers it off.
# Keys: Ctrl-A x quits hvrun (inside the emulated machine, it quits QEMU, which ends everything).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tests/setup-host.sh
tests/guest/build-artifacts.sh
# shellcheck source=tests/cross-env.sh
source tests/cross-env.sh
"$HVRUN_CARGO" build --target "$HVRUN_TARGET"

artifacts=$repo/target/guest-artifacts
args=(--kernel "$artifacts/Image" --initrd "$artifacts/guest-initrd.cpio.gz")
case " $* " in *" --cmdline "*) ;; *) args+=(--cmdline "console=ttyS0 quiet") ;; esac
exec tests/harness/arm64-vm --interactive -- \
    "${CARGO_TARGET_DIR:-$repo/target}/$HVRUN_TARGET/debug/hvrun" "${args[@]}" "$@"
