// Host side of benches/vs-qemu.sh (runs in the emulated arm64 machine): starts a VMM and
// stamps every line it prints, so that hvrun and QEMU are timed by the same clock and method.
//
//   launch-time COMMAND [ARGS...]
//
// The command's stdout and stderr go into one pipe (stdin is /dev/null). Each line is printed
// as "<ms> <line>", where <ms> is CLOCK_MONOTONIC time from just before fork() to the arrival of
// the line's first byte; when the command has exited: "<ms> EXIT <status>".
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static struct timespec t0;

static double ms_since_start(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ts.tv_sec - t0.tv_sec) * 1e3 + (ts.tv_nsec - t0.tv_nsec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: launch-time COMMAND [ARGS...]\n");
        return 2;
    }
    int out[2];
    if (pipe(out)) {
        perror("launch-time: pipe");
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t child = fork();
    if (child < 0) {
        perror("launch-time: fork");
        return 1;
    }
    if (child == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[0]);
        close(out[1]);
        execvp(argv[1], argv + 1);
        perror("launch-time: exec");
        _exit(127);
    }
    close(out[1]);
    char buf[4096];
    int at_line_start = 1;
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) > 0) {
        double ms = ms_since_start();
        for (ssize_t i = 0; i < n; i++) {
            if (at_line_start) {
                printf("%.1f ", ms);
                at_line_start = 0;
            }
            if (buf[i] == '\r')
                continue;
            putchar(buf[i]);
            if (buf[i] == '\n')
                at_line_start = 1;
        }
        fflush(stdout);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!at_line_start)
        putchar('\n');
    printf("%.1f EXIT %d\n", ms_since_start(),
           WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}
