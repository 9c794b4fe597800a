// Guest side of benches/vs-qemu.sh: virtio-blk throughput from a Linux guest, with O_DIRECT
// (no guest page cache) and one request in flight (queue depth 1, like dd).
//
//   blk-bench DEVICE seq-write|seq-read MIB
//       MIB MiB in 1 MiB requests from offset 0; seq-write ends with fdatasync (timed).
//   blk-bench DEVICE rand-write|rand-read MIB SECONDS
//       4 KiB requests at random 4 KiB-aligned offsets below MIB MiB for SECONDS seconds;
//       rand-write ends with fdatasync (timed).
//
// Prints one line: BLK <mode> bytes=... secs=... MBps=... IOPS=...  (MB = 10^6 bytes).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// xorshift64: the offsets only need to be spread, not unpredictable.
static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: blk-bench DEVICE MODE MIB [SECONDS]\n");
        return 2;
    }
    const char *mode = argv[2];
    int write = strstr(mode, "write") != NULL, random = strncmp(mode, "rand", 4) == 0;
    long mib = atol(argv[3]);
    double seconds = argc > 4 ? atof(argv[4]) : 0;
    if (mib < 1 || (random && seconds <= 0) || (!random && strncmp(mode, "seq", 3))) {
        fprintf(stderr, "blk-bench: bad arguments\n");
        return 2;
    }
    int fd = open(argv[1], (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        perror("blk-bench: open");
        return 1;
    }
    size_t block = random ? 4096 : 1 << 20;
    void *buf;
    if (posix_memalign(&buf, 4096, block)) {
        perror("blk-bench: posix_memalign");
        return 1;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < block / 8; i++)
        ((uint64_t *)buf)[i] = next(&seed);

    long ops = 0;
    double start = now_s(), end;
    if (!random) {
        for (; ops < mib; ops++) {
            ssize_t n = write ? pwrite(fd, buf, block, (off_t)ops * block)
                              : pread(fd, buf, block, (off_t)ops * block);
            if (n != (ssize_t)block) {
                perror("blk-bench: transfer");
                return 1;
            }
        }
    } else {
        uint64_t blocks = (uint64_t)mib * (1 << 20) / block;
        do {
            // Check the clock every 16 requests only: reading it is cheap, but not free.
            for (int i = 0; i < 16; i++, ops++) {
                off_t at = (off_t)(next(&seed) % blocks) * block;
                ssize_t n = write ? pwrite(fd, buf, block, at) : pread(fd, buf, block, at);
                if (n != (ssize_t)block) {
                    perror("blk-bench: transfer");
                    return 1;
                }
            }
        } while (now_s() - start < seconds);
    }
    if (write && fdatasync(fd)) {
        perror("blk-bench: fdatasync");
        return 1;
    }
    end = now_s();
    double secs = end - start, bytes = (double)ops * block;
    printf("BLK %s block=%zu ops=%ld secs=%.3f MBps=%.1f IOPS=%.0f\n", mode, block, ops, secs,
           bytes / secs / 1e6, ops / secs);
    return 0;
}
