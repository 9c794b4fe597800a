#!/usr/bin/env bash
# Unpacks Debian's arm64 QEMU (qemu-system-arm:arm64) with every shared library it needs into
# target/qemu-arm64/root, so that a KVM peer for hvrun can run inside the emulated arm64 machine
# (whose initramfs has no C library), and prints the command that runs it:
#
#   ROOT/lib/ld-linux-aarch64.so.1 --library-path LIBDIRS ROOT/usr/bin/qemu-system-aarch64
#
# The libraries are found the way the dynamic linker would: starting from qemu-system-arm's
# Debian Depends, each round unpacks a set of packages and lists the sonames that the unpacked
# ELF files (readelf NEEDED) still miss; while some are missing, the next round adds the Depends
# of the packages unpacked so far (only library packages: lib*, zlib1g). The .debs stay in
# target/qemu-arm64/cache; a second run only checks the stamp.
#
# On an arm64 host with qemu-system-aarch64 installed, it prints that instead.
#
# Usage: benches/qemu-arm64.sh      (prints one line: the command; messages go to stderr)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$repo/target/qemu-arm64
root=$dir/root
cache=$dir/cache

say() { echo "qemu-arm64: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "$(uname -m)" = aarch64 ] && command -v qemu-system-aarch64 >/dev/null; then
    command -v qemu-system-aarch64
    exit 0
fi
for tool in apt-get apt-cache dpkg aarch64-linux-gnu-readelf; do
    command -v "$tool" >/dev/null || die "$tool is missing: run tests/setup-host.sh"
done

libdirs=$root/lib/aarch64-linux-gnu:$root/usr/lib/aarch64-linux-gnu
command_line="$root/lib/ld-linux-aarch64.so.1 --library-path $libdirs $root/usr/bin/qemu-system-aarch64"

version=$(apt-cache show --no-all-versions qemu-system-arm:arm64 2>/dev/null | awk '/^Version:/ { print $2; exit }')
[ -n "$version" ] || die "no qemu-system-arm:arm64 in apt's lists: run tests/setup-host.sh (it adds arm64)"
stamp="qemu-system-arm=$version $(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)"
if [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$root/usr/bin/qemu-system-aarch64" ]; then
    echo "$command_line"
    exit 0
fi

# depends PKG...: the arm64 library packages PKG... depend on (one level).
depends() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
        --no-enhances "${@/%/:arm64}" 2>/dev/null |
        sed -n 's/^ *\(Pre\)\{0,1\}Depends: \(lib[^:<> ]*\|zlib1g\):arm64$/\2/p' | sort -u
}

# missing: the sonames that some unpacked ELF file needs and no unpacked file provides.
missing() {
    local needed have
    needed=$(find "$root" -type f \( -name '*.so*' -o -path '*/bin/qemu-system-aarch64' \) -print0 |
        xargs -0 aarch64-linux-gnu-readelf -d 2>/dev/null |
        sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)
    have=$(find "$root" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u)
    comm -23 <(echo "$needed") <(echo "$have")
}

rm -rf "$root"
mkdir -p "$root" "$cache"
# qemu-system-aarch64 itself; it runs -kernel boots without any firmware or ROM from
# qemu-system-data (with -nodefaults there is no NIC that would want an option ROM).
mapfile -t packages < <(echo qemu-system-arm; depends qemu-system-arm)
unpacked=()
for round in 1 2 3 4 5 6; do
    todo=()
    for pkg in "${packages[@]}"; do
        [[ " ${unpacked[*]} " == *" $pkg "* ]] || todo+=("$pkg")
    done
    if [ ${#todo[@]} -gt 0 ]; then
        say "round $round: ${todo[*]}"
        (cd "$cache" && for pkg in "${todo[@]}"; do
            compgen -G "${pkg}_*_arm64.deb" >/dev/null || compgen -G "${pkg}_*_all.deb" >/dev/null ||
                apt-get -q -o APT::Sandbox::User=root download "$pkg:arm64" >/dev/null ||
                die "apt-get download $pkg:arm64 failed"
        done)
        for pkg in "${todo[@]}"; do
            for deb in "$cache/${pkg}"_*_arm64.deb; do dpkg -x "$deb" "$root"; done
        done
        unpacked+=("${todo[@]}")
    fi
    lost=$(missing)
    if [ -z "$lost" ]; then
        echo "$stamp" >"$dir/stamp"
        say "unpacked ${#unpacked[@]} packages into $root"
        echo "$command_line"
        exit 0
    fi
    say "still missing: ${lost//$'\n'/ }"
    mapfile -t packages < <({ printf '%s\n' "${unpacked[@]}"; depends "${unpacked[@]}"; } | sort -u)
done
die "cannot find packages for: ${lost//$'\n'/ }"
