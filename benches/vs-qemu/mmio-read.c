// Guest side of benches/vs-qemu.sh: the cost of one MMIO read that the VMM serves, as a Linux
// guest program sees it. Maps a virtio-mmio transport through /dev/mem and reads its
// MagicValue register (VIRTIO 1.2 §4.2.2, offset 0) in batches, timing each batch with
// CLOCK_MONOTONIC; prints the median and minimum ns per read over the batches.
//
//   mmio-read ADDRESS READS_PER_BATCH BATCHES
//
// No driver may hold any region in the register's page: the kernel (CONFIG_IO_STRICT_DEVMEM)
// refuses /dev/mem mappings of pages that a driver has claimed.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: mmio-read ADDRESS READS_PER_BATCH BATCHES\n");
        return 2;
    }
    unsigned long addr = strtoul(argv[1], NULL, 0);
    long reads = atol(argv[2]), batches = atol(argv[3]);
    if (reads < 1 || batches < 1 || batches > 1000 || addr % 4) {
        fprintf(stderr, "mmio-read: bad arguments\n");
        return 2;
    }
    int fd = open("/dev/mem", O_RDONLY | O_SYNC);
    if (fd < 0) {
        perror("mmio-read: /dev/mem");
        return 1;
    }
    // QEMU's transports are 0x200 apart: map the page that holds the register.
    unsigned long base = addr & ~4095ul;
    char *page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, (off_t)base);
    if (page == MAP_FAILED) {
        perror("mmio-read: mmap");
        return 1;
    }
    volatile uint32_t *magic = (volatile uint32_t *)(page + (addr - base));
    uint32_t value = *magic; // also the warm-up: the first access faults the mapping in
    if (value != 0x74726976) { // "virt"
        fprintf(stderr, "mmio-read: %#lx reads %#x, not virtio-mmio's MagicValue\n", addr, value);
        return 1;
    }
    double ns[1000];
    for (long b = 0; b < batches; b++) {
        double start = now_ns();
        for (long i = 0; i < reads; i++)
            (void)*magic; // volatile: every read reaches the device
        ns[b] = (now_ns() - start) / reads;
    }
    qsort(ns, batches, sizeof ns[0], by_value);
    printf("MMIO-READ addr=%#lx reads=%ld batches=%ld median_ns=%.0f min_ns=%.0f\n", addr, reads,
           batches, ns[batches / 2], ns[0]);
    return 0;
}
