#!/bin/sh
# Guest side of benches/vs-qemu.sh: runs in the nested guest (hvrun's or QEMU's) after its
# /init has loaded the virtio modules, from the small cpio appended to the guest initramfs.
#
#   sh /bench/guest-bench.sh READS BATCHES MIB SECONDS [EMPTY]
#
# 0. GUEST-UPTIME: the guest's /proc/uptime when this script starts (kernel start → here);
#    GUEST-CPU: which of SVE, pointer auth and a PMU the guest's vCPU has.
# 1. MMIO round trip: the virtio-rng transport (the one device both VMMs get besides the disk)
#    is unbound from its driver (a region a driver has claimed cannot be mapped through
#    /dev/mem), then mmio-read reads its MagicValue register READS times in each of BATCHES
#    batches. With EMPTY (an address of a QEMU transport with no device), that one too.
# 2. virtio-blk on /dev/vda: sequential write and read of MIB MiB in 1 MiB requests, then 4 KiB
#    random writes and reads for SECONDS seconds each, all with O_DIRECT at queue depth 1.
reads=$1 batches=$2 mib=$3 seconds=$4 empty=${5:-}
echo "GUEST-UPTIME $(cut -d' ' -f1 /proc/uptime)"
features=" $(grep -m1 '^Features' /proc/cpuinfo | cut -d: -f2) "
cpu=""
case $features in *" sve "*) cpu="$cpu sve" ;; esac
case $features in *" paca "*) cpu="$cpu pauth" ;; esac
[ ! -e /sys/bus/event_source/devices/armv8_pmuv3_0 ] || cpu="$cpu pmu"
echo "GUEST-CPU${cpu:- none}"

rng=""
for dev in /sys/bus/virtio/devices/virtio*; do
    # VIRTIO 1.2 §5: device ID 4 is the entropy device.
    [ "$(cat "$dev/device")" = 0x0004 ] && rng=$(basename "$(readlink -f "$dev/..")")
done
[ -n "$rng" ] || { echo "guest-bench: no virtio-rng device"; exit 1; }
# The platform device is named after its device-tree node: a000000.virtio_mmio.
echo "$rng" >/sys/bus/platform/drivers/virtio-mmio/unbind || exit 1
/bench/mmio-read "0x${rng%%.*}" "$reads" "$batches" || exit 1
[ -z "$empty" ] || /bench/mmio-read "$empty" "$reads" "$batches" || exit 1

for mode in seq-write seq-read; do
    /bench/blk-bench /dev/vda "$mode" "$mib" || exit 1
done
for mode in rand-write rand-read; do
    /bench/blk-bench /dev/vda "$mode" "$mib" "$seconds" || exit 1
done
