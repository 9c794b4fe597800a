#!/bin/sh
# The 2-vCPU hang's reproducer (README, "The 2-vCPU hang"): ROUNDS rounds of K 2-vCPU boots of
# the test guest at once under VMM (hvrun or qemu), while HOG shell loops keep the machine busy.
# A boot that has not ended after 150 s is counted as hung; with TRACE=1 the first hung one's
# KVM statistics, vGIC state, threads and one second of kvm/sched trace events are written to
# target/hang/trace-VMM.txt. Runs inside the emulated machine, from the repository:
#
#   cargo build --target aarch64-unknown-linux-gnu    # (tests/cross-env.sh's cargo)
#   tests/harness/arm64-vm sh tests/tools/boot-pairs.sh hvrun 6 2 1
#   tests/harness/arm64-vm sh tests/tools/boot-pairs.sh qemu 6 2 1   # after benches/qemu-arm64.sh

vmm=$1; rounds=$2; k=$3; hogs=$4
repo=$(pwd)
art=$repo/target/guest-artifacts
work=/tmp/par; mkdir -p $work
cp $art/Image $art/guest-initrd.cpio.gz $work/
cp $repo/target/debian/aarch64-unknown-linux-gnu/debug/hvrun $work/hvrun
if [ "$vmm" = qemu ]; then
    root=$repo/target/qemu-arm64/root
    mkdir -p $work/qemu/usr/bin
    cp -a $root/lib $work/qemu/; cp -a $root/usr/lib $work/qemu/usr/; cp $root/usr/bin/qemu-system-aarch64 $work/qemu/usr/bin/
    q=$work/qemu
    qemu="$q/lib/ld-linux-aarch64.so.1 --library-path $q/lib/aarch64-linux-gnu:$q/usr/lib/aarch64-linux-gnu $q/usr/bin/qemu-system-aarch64"
fi
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
dmesg | grep -i "kvm\|hyp" | head -5

h=0; hogpids=""
while [ $h -lt $hogs ]; do (while :; do :; done) & hogpids="$hogpids $!"; h=$((h+1)); done
mkdir -p $repo/target/hang
guestcmd='echo online=$(cat /sys/devices/system/cpu/online)'
hangs=0; boots=0; r=0
while [ $r -lt $rounds ]; do
    r=$((r+1)); pids=""; j=0
    while [ $j -lt $k ]; do
        j=$((j+1)); log=$work/r$r-$j.log
        if [ "$vmm" = qemu ]; then
            $qemu -M virt,gic-version=3 -accel kvm -cpu host -smp 2 -m 512M -nodefaults -display none \
                -serial stdio -no-reboot -kernel $work/Image -initrd $work/guest-initrd.cpio.gz \
                -append "console=ttyAMA0 quiet -- $guestcmd" -device virtio-rng-device </dev/null >$log 2>&1 &
        else
            $work/hvrun --kernel $work/Image --initrd $work/guest-initrd.cpio.gz --cpus 2 \
                --cmdline "console=ttyS0 quiet -- $guestcmd" </dev/null >$log 2>&1 &
        fi
        pids="$pids $!"
    done
    sleep 8
    thp=""; for p in $pids; do thp="$thp $(awk '/AnonHugePages/ {print $2}' /proc/$p/smaps_rollup 2>/dev/null)"; done
    t=8
    while [ $t -lt 150 ]; do
        alive=0; for p in $pids; do kill -0 $p 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 1; t=$((t+1))
    done
    res=""
    for p in $pids; do
        boots=$((boots+1))
        if kill -0 $p 2>/dev/null; then hangs=$((hangs+1)); res="$res HANG"
            if [ -n "$TRACE" ] && [ ! -e $repo/target/hang/trace-$vmm.txt ]; then
                t=/sys/kernel/tracing; mount -t tracefs none $t 2>/dev/null; mount -t debugfs none /sys/kernel/debug 2>/dev/null
                { for d in /sys/kernel/debug/kvm/$p-*; do echo "== $d"; for s in exits wfi_exit_stat halt_wakeup halt_successful_poll halt_attempted_poll signal_exits; do echo "$s $(cat $d/$s)"; done; cat $d/vgic-state | grep -v "000[01]0[01]1 " ; done
                  for task in /proc/$p/task/*; do echo "== task $task $(cat $task/comm) wchan=$(cat $task/wchan) state=$(awk '{print $3}' $task/stat)"; cat $task/stack; done
                  echo > $t/trace; echo 1 > $t/events/kvm/enable; echo 1 > $t/events/sched/sched_wakeup/enable; echo 1 > $t/events/timer/hrtimer_expire_entry/enable; sleep 1; echo 0 > $t/events/enable
                  head -c 400000 $t/trace; } > $repo/target/hang/trace-$vmm.txt 2>&1
            fi
            kill -9 $p; else res="$res ok"; fi
    done
    wait $pids 2>/dev/null
    echo "round $r: t=${t}s thpKiB=[$thp ] $res"
done
kill $hogpids
echo "$vmm: $hangs hangs of $boots boots"
