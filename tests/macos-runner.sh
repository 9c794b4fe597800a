#!/bin/sh
# Cargo runner for aarch64-apple-darwin (see .cargo/config.toml): gives the binary cargo built
# the entitlements of hvrun.entitlements (com.apple.security.hypervisor and
# com.apple.security.virtualization) with an ad-hoc signature (no Apple developer account
# needed), then runs it with the remaining arguments.
#
#   tests/macos-runner.sh BINARY [ARGS...]
set -eu
binary=$1
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
codesign --sign - --entitlements "$repo/hvrun.entitlements" --force "$binary" 2>/dev/null ||
    { echo "macos-runner: codesign failed for $binary" >&2; exit 1; }
exec "$binary" "$@"
