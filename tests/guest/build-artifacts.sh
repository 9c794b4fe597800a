#!/usr/bin/env bash
# Builds the arm64 Linux kernel and the two initramfs images that hvrun's tests boot, from
# Debian packages only, into target/guest-artifacts/:
#
#   Image                 the arm64 kernel, uncompressed (the raw "ARM\x64" Image format)
#   Image.gz              the same, gzip'ed (hvrun's loader accepts both)
#   guest-initrd.cpio.gz  initramfs of the NESTED guest that hvrun boots: busybox and the virtio
#                         modules; /init writes hvrun's boot-time probe, loads the modules,
#                         prints HVRUN-GUEST-READY, then runs the command line
#                         given after ` -- ` on the kernel command line, prints
#                         HVRUN-GUEST-EXIT=<status> and powers off (no command: a shell)
#   host-initrd.cpio.gz   initramfs of the OUTER emulated machine (tests/harness/arm64-vm):
#                         mounts the 9p share at hvrun.share=PATH, runs `sh hvrun.script=PATH`
#   e2fsprogs.cpio.gz     mkfs.ext4/e2fsck/debugfs with their libraries, to append to the guest
#                         initramfs; e2fsprogs/: the same files, for the emulated machine
#   kernel-version        e.g. 6.1.0-56-arm64;  config: that kernel's build configuration
#
# The kernel is whatever Debian's linux-image-arm64 depends on today (mirrors drop old builds);
# HVRUN_GUEST_KERNEL names another such meta-package, and HVRUN_ARTIFACTS_DIR another output
# directory. Downloads are kept in the output directory's cache/; nothing is rebuilt while the
# package versions and this script stay the same.
#
# The same files are also built, first, for the OUTER emulated machine into
# target/machine-artifacts/, from HVRUN_MACHINE_KERNEL (default linux-image-6.12-arm64): that
# machine's KVM runs hvrun, and bookworm's 6.1 KVM, emulated by QEMU 7.2, sometimes lets a
# multi-vCPU nested guest's clock run backwards — the guest then spins in timekeeping with
# interrupts off, whatever VMM runs it (README, "The 2-vCPU hang"). On 6.12, 0 of 14 such boots hung.
#
# Usage: tests/guest/build-artifacts.sh     (needs root, for the /dev/console node; run
#        tests/setup-host.sh first)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${HVRUN_ARTIFACTS_DIR:-$repo/target/guest-artifacts}
cache=$out/cache

if [ -z "${HVRUN_ARTIFACTS_DIR:-}" ]; then
    echo "build-artifacts: the emulated machine's own kernel and initramfs (target/machine-artifacts)" >&2
    HVRUN_GUEST_KERNEL=${HVRUN_MACHINE_KERNEL:-linux-image-6.12-arm64} \
        HVRUN_ARTIFACTS_DIR=$repo/target/machine-artifacts "${BASH_SOURCE[0]}"
    echo "build-artifacts: the nested guest's kernel and initramfs (target/guest-artifacts)" >&2
fi

# Modules each initramfs loads at boot, with their dependencies. A name the kernel does not
# have (as a module) is left out at build time.
# virtio_pci: Virtualization.framework's devices are virtio-PCI (hvrun's are virtio-mmio), so
# the same guest boots on `--engine vz` too (tests/macos-smoke-vz.sh).
guest_modules=(virtio_mmio virtio_pci virtio_blk virtio_net virtio_console virtio-rng
               virtio_balloon pvpanic pvpanic-mmio ext4)
host_modules=(virtio_mmio 9pnet_virtio 9p)
kernel_meta=${HVRUN_GUEST_KERNEL:-linux-image-arm64}

say() { echo "build-artifacts: $*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg depmod modprobe cpio gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing: run tests/setup-host.sh"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (to create /dev/console in the initramfs)"

# The kernel package that linux-image-arm64 depends on today, e.g. linux-image-6.1.0-56-arm64
# (or an -unsigned variant), and the candidate versions of it and of busybox-static. (apt-cache
# is slow on hosts that keep no package cache, so it is asked only twice.)
kernel_pkg=$(apt-cache depends "$kernel_meta:arm64" 2>/dev/null |
    sed -n 's/^ *Depends: <\{0,1\}\(linux-image-[^:>]*\).*/\1/p' | head -n1)
[ -n "$kernel_pkg" ] || die "cannot resolve $kernel_meta:arm64: run tests/setup-host.sh"
kernel_version=${kernel_pkg#linux-image-}
kernel_version=${kernel_version%-unsigned}
# e2fsprogs and the libraries its tools load, for the ext4 test: mkfs in the guest, fsck on the
# host side.
e2fs_pkgs=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libss2 libc6)
versions=$(apt-cache show --no-all-versions "$kernel_pkg:arm64" busybox-static:arm64 \
        "${e2fs_pkgs[@]/%/:arm64}" 2>/dev/null |
    awk '/^Package:/ { name = $2 } /^Version:/ { print name, $2 }')
kernel_deb_version=$(awk -v p="$kernel_pkg" '$1 == p { print $2 }' <<<"$versions")
busybox_deb_version=$(awk '$1 == "busybox-static" { print $2 }' <<<"$versions")
[ -n "$kernel_deb_version" ] && [ -n "$busybox_deb_version" ] ||
    die "no arm64 $kernel_pkg or busybox-static in apt's lists: run tests/setup-host.sh"

for pkg in "${e2fs_pkgs[@]}"; do
    awk -v p="$pkg" '$1 == p { found = 1 } END { exit !found }' <<<"$versions" ||
        die "no arm64 $pkg in apt's lists: run tests/setup-host.sh"
done
stamp="$kernel_pkg=$kernel_deb_version busybox-static=$busybox_deb_version $(tr '\n' ' ' <<<"$versions" | sha256sum | cut -c1-8) $(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)"
if [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    say "up to date ($kernel_version)"
    exit 0
fi
say "building for $kernel_pkg $kernel_deb_version"

# download PKG VERSION: fetch PKG:arm64 into the cache (once) and print the .deb's path.
download() {
    local deb="$cache/${1}_${2//:/%3a}_arm64.deb"
    if [ ! -e "$deb" ]; then
        rm -f "$cache/${1}"_*_arm64.deb
        (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$1:arm64=$2" >/dev/null) ||
            die "apt-get download $1:arm64=$2 failed"
    fi
    echo "$deb"
}

mkdir -p "$cache"
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
kernel=$work/kernel
dpkg -x "$(download "$kernel_pkg" "$kernel_deb_version")" "$kernel"
dpkg -x "$(download busybox-static "$busybox_deb_version")" "$work/busybox"
[ -d "$kernel/lib/modules/$kernel_version" ] || die "$kernel_pkg has no lib/modules/$kernel_version"
depmod -b "$kernel" "$kernel_version"

# Debian's arm64 vmlinuz is normally already a raw Image; some kernels ship it gzip'ed.
vmlinuz=$kernel/boot/vmlinuz-$kernel_version
case $(od -An -tx1 -N2 "$vmlinuz" | tr -d ' ') in
    1f8b) gzip -dc "$vmlinuz" >"$work/Image" ;;
    *) cp "$vmlinuz" "$work/Image" ;;
esac
[ "$(dd if="$work/Image" bs=1 skip=56 count=4 status=none)" = $'ARM\x64' ] ||
    die "$vmlinuz is not an arm64 Image (no ARM\\x64 magic at 0x38)"
gzip -9 -n -c "$work/Image" >"$work/Image.gz"
cp "$kernel/boot/config-$kernel_version" "$work/config"

# Both /init scripts start alike: busybox's applets as symlinks, the usual mounts, and a
# function that loads the modules.
init_common=$(cat <<'EOF'
#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
load_modules() {
    for module in $(cat /etc/modules); do
        if ! error=$(modprobe "$module" 2>&1); then
            case $error in *"not found"*) ;; *) echo "init: modprobe $module: $error" ;; esac
        fi
    done
}
EOF
)

# make_initrd NAME MODULE... <REST-OF-INIT: an initramfs with busybox, the modules and their
# dependencies (with a fresh modules.dep, for busybox's modprobe), and as /init the common
# start above followed by the script read from stdin.
make_initrd() {
    local name=$1 tree=$work/$1 module ko loaded=()
    shift
    mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,dev,mnt,proc,sys,tmp,root,lib/modules/"$kernel_version"}
    cp "$work/busybox/bin/busybox" "$tree/bin/busybox"
    ln -s busybox "$tree/bin/sh"
    mknod -m 600 "$tree/dev/console" c 5 1
    for module in "$@"; do
        if ! modprobe -d "$kernel" -S "$kernel_version" --show-depends "$module" >"$work/deps" 2>/dev/null; then
            say "$name: the kernel has no module $module, left out"
            continue
        fi
        loaded+=("$module")
        for ko in $(awk '$1 == "insmod" { print $2 }' "$work/deps"); do
            mkdir -p "$tree/$(dirname "${ko#"$kernel"}")"
            cp "$ko" "$tree/${ko#"$kernel"}"
        done
    done
    # Busybox's modprobe wants plain .ko files (newer Debian kernels ship .ko.xz).
    find "$tree/lib/modules" -name '*.ko.xz' -exec xz -d {} +
    find "$tree/lib/modules" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    cp "$kernel/lib/modules/$kernel_version"/modules.{builtin,builtin.modinfo,order} "$tree/lib/modules/$kernel_version/"
    depmod -b "$tree" "$kernel_version"
    printf '%s\n' "${loaded[@]}" >"$tree/etc/modules"
    { printf '%s\n' "$init_common"; cat; } >"$tree/init"
    chmod 755 "$tree/init"
    (cd "$tree" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$work/$name.cpio.gz"
    say "$name.cpio.gz: $(du -h "$work/$name.cpio.gz" | cut -f1), modules: $(cd "$tree" && find lib -name '*.ko' -printf '%f ' | sed 's/\.ko / /g')"
}

make_initrd guest-initrd "${guest_modules[@]}" <<'EOF'
# Userspace is up: tell hvrun's boot-time probe (boot::layout::BOOT_PROBE_BASE), the way
# Firecracker's test init does, before anything else takes time — only on hvrun's machine
# (its pvpanic node tells it apart): elsewhere, e.g. on Virtualization.framework, nothing
# known sits at that address.
[ -e /proc/device-tree/pvpanic@9010000 ] && devmem 0x09020000 8 123
load_modules
# The kernel gives init, as arguments, the words after " -- " on its command line.
echo HVRUN-GUEST-READY >/dev/console
if [ $# -gt 0 ]; then
    sh -c "$*"
    echo "HVRUN-GUEST-EXIT=$?" >/dev/console
else
    setsid cttyhack sh
fi
poweroff -f
EOF

make_initrd host-initrd "${host_modules[@]}" <<'EOF'
load_modules
# Pseudo-terminals, for tests that give hvrun a real terminal (raw mode, the quit key).
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
for word in $(cat /proc/cmdline); do
    case $word in
        hvrun.share=*) share=${word#*=} ;;
        hvrun.script=*) script=${word#*=} ;;
    esac
done
[ -e /dev/kvm ] || echo "init: no /dev/kvm in the emulated machine"
if [ -n "${share:-}" ]; then
    mkdir -p "$share"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose host0 "$share" ||
        echo "init: cannot mount the 9p share at $share"
fi
[ -z "${script:-}" ] || sh "$script"
sync
poweroff -f
EOF

# e2fsprogs: mkfs.ext4, e2fsck and debugfs with their shared libraries and the dynamic loader at
# the paths the binaries expect. As e2fsprogs.cpio.gz it is appended to the guest initramfs by the
# tests that need it (the kernel unpacks concatenated archives in order); as the directory
# e2fsprogs/ the emulated machine runs the same binaries through the loader:
#   e2fsprogs/lib/ld-linux-aarch64.so.1 --library-path e2fsprogs/lib/aarch64-linux-gnu e2fsprogs/usr/local/sbin/e2fsck
e2fs=$work/e2fsprogs
for pkg in "${e2fs_pkgs[@]}"; do
    dpkg -x "$(download "$pkg" "$(awk -v p="$pkg" '$1 == p { print $2 }' <<<"$versions")")" "$work/e2fs-debs"
done
mkdir -p "$e2fs"/{lib/aarch64-linux-gnu,usr/local/sbin,etc}
for tool in mke2fs e2fsck debugfs; do
    cp "$(find "$work/e2fs-debs" -path "*sbin/$tool" | head -n1)" "$e2fs/usr/local/sbin/$tool"
done
ln -s mke2fs "$e2fs/usr/local/sbin/mkfs.ext4"
cp "$work/e2fs-debs/etc/mke2fs.conf" "$e2fs/etc/"
for lib in ld-linux-aarch64.so.1 libc.so.6 libext2fs.so.2 libe2p.so.2 libcom_err.so.2 libblkid.so.1 \
           libuuid.so.1 libss.so.2; do
    found=$(find -L "$work/e2fs-debs" -name "$lib" | head -n1)
    [ -n "$found" ] || die "e2fsprogs: no $lib in ${e2fs_pkgs[*]}"
    cp -L "$found" "$e2fs/lib/aarch64-linux-gnu/$lib"
done
ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$e2fs/lib/ld-linux-aarch64.so.1"
(cd "$e2fs" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$work/e2fsprogs.cpio.gz"
say "e2fsprogs.cpio.gz: $(du -h "$work/e2fsprogs.cpio.gz" | cut -f1)"

echo "$kernel_version" >"$work/kernel-version"
for file in Image Image.gz guest-initrd.cpio.gz host-initrd.cpio.gz e2fsprogs.cpio.gz config kernel-version; do
    mv "$work/$file" "$out/$file"
done
rm -rf "$out/e2fsprogs"
mv "$e2fs" "$out/e2fsprogs"
echo "$stamp" >"$out/stamp"
say "done: $out ($kernel_version)"
