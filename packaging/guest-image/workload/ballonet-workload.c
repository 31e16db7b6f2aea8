/*
 * ballonet-workload: memory workloads that the guest test image runs inside TCG guests.
 *
 *   ballonet-workload hold MIB [MIB_PER_S]         allocate and touch MIB MiB (at most MIB_PER_S a second, as an
 *                                                  application ramping up), print "held MIB MiB", keep it until killed
 *   ballonet-workload zero-fill MIB DIRECTORY      mlock MIB MiB of a file on the tmpfs DIRECTORY in 2 MiB pages, as a
 *                                                  balloon does, print "zero-fill MIB MiB seconds=S huge_mib=H" (H of it
 *                                                  in 2 MiB pages) and exit
 *   ballonet-workload churn MIB SECONDS            re-touch MIB MiB for SECONDS, print the touch rate every second
 *   ballonet-workload pattern MIB SECONDS [SEED]   fill MIB MiB with a seeded pattern, re-verify it every second
 *   ballonet-workload keep MIB [SEED]              fill MIB MiB with the pattern, leave it untouched until SIGUSR1,
 *                                                  then verify it once and exit (data the host swapped out while
 *                                                  it sat idle must come back intact). SIGUSR2 first rewrites
 *                                                  the first quarter with another seed's pattern (a guest
 *                                                  writing to pages the host merged with another guest's:
 *                                                  the other guest's copy must not change)
 *   ballonet-workload alloc-until-fail STEP_MIB [MAX_MIB]
 *                                                  allocate and touch STEP_MIB at a time, print the running total
 *
 * `pattern` is the data-loss check behind the safety invariants: a page the host discarded while the
 * guest still used it reads back as zeroes (memfd hole punched) and shows up as a MISMATCH with its
 * offset. Each 8-byte word is a function of (seed, word index) only, so verification needs no copy.
 *
 * Exit codes: 0 done, 1 pattern mismatch, 2 usage, 3 an allocation failed (alloc-until-fail prints the
 * total reached first; the OOM killer's SIGKILL shows as 137 in the shell instead).
 * Every line is flushed as it is printed: tests read the output from a serial console while the
 * workload still runs.
 *
 * Built static (gcc -O2 -static) so that it runs in the initramfs with nothing else.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_MISMATCH = 1, EXIT_USAGE = 2, EXIT_ALLOCATION = 3 };

static const size_t mebibyte = 1024 * 1024;
static size_t page_size = 4096;

static void say(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vprintf(format, arguments);
    va_end(arguments);
    putchar('\n');
    fflush(stdout);
}

static int usage(void) {
    fprintf(stderr,
            "usage: ballonet-workload hold MIB [MIB_PER_S]\n"
            "       ballonet-workload zero-fill MIB DIRECTORY\n"
            "       ballonet-workload churn MIB SECONDS\n"
            "       ballonet-workload pattern MIB SECONDS [SEED]\n"
            "       ballonet-workload keep MIB [SEED]\n"
            "       ballonet-workload alloc-until-fail STEP_MIB [MAX_MIB]\n");
    return EXIT_USAGE;
}

/* A positive decimal number no larger than `limit`, or 0 if the text is not one. */
static uint64_t parse_count(const char *text, uint64_t limit) {
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value == 0 || value > limit) return 0;
    return value;
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Anonymous private memory, so the guest kernel backs it page by page as it is touched. */
static unsigned char *map_mib(uint64_t mib) {
    void *memory = mmap(NULL, mib * mebibyte, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return memory == MAP_FAILED ? NULL : memory;
}

/* Writes one byte in every page: enough to make the kernel back it with its own (non-zero-page) frame. */
static void touch_pages(unsigned char *memory, size_t bytes, unsigned char value) {
    for (size_t offset = 0; offset < bytes; offset += page_size) memory[offset] = value;
}

static int hold(uint64_t mib, uint64_t mib_per_second) {
    unsigned char *memory = map_mib(mib);
    if (memory == NULL) {
        say("hold: cannot map %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    if (mib_per_second == 0) {
        touch_pages(memory, mib * mebibyte, 1);
    } else {
        /* One MiB at a time, with a pause of 1/MIB_PER_S after each. Never a catch-up burst: a guest
         * whose vCPU was descheduled on the host must not then allocate faster than the rate. */
        double interval = 1.0 / (double)mib_per_second;
        struct timespec pause_for = { (time_t)interval, (long)((interval - (double)(time_t)interval) * 1e9) };
        for (uint64_t done = 0; done < mib; done++) {
            touch_pages(memory + done * mebibyte, mebibyte, 1);
            nanosleep(&pause_for, NULL);
        }
    }
    say("held %" PRIu64 " MiB pid=%ld", mib, (long)getpid());
    for (;;) pause(); /* until a signal ends the process */
}

/* ShmemPmdMapped of this process from /proc/self/smaps_rollup (tmpfs memory mapped as 2 MiB pages), in KiB;
 * 0 if it cannot be read. */
static uint64_t shmem_huge_kib(void) {
    FILE *rollup = fopen("/proc/self/smaps_rollup", "r");
    if (rollup == NULL) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, rollup) != NULL) {
        if (sscanf(line, "ShmemPmdMapped: %llu kB", &kib) == 1) break;
    }
    fclose(rollup);
    return kib;
}

/* What a balloon pinning 2 MiB pages asks of the guest kernel, without the balloon: a file on a tmpfs in
 * DIRECTORY (mounted huge=advise or huge=always), mapped shared, advised MADV_HUGEPAGE and mlocked, which
 * faults in and zeroes every page; timed, then unmapped and removed, which frees the pages again. */
static int zero_fill(uint64_t mib, const char *directory) {
    const size_t bytes = mib * mebibyte;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/zero-fill-%ld", directory, (long)getpid()) >= (int)sizeof path) return usage();
    int file = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (file >= 0) unlink(path); /* freed with the last reference, whatever happens below */
    if (file < 0 || ftruncate(file, (off_t)bytes) != 0) {
        say("zero-fill: cannot make %s of %" PRIu64 " MiB: %s", path, mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    unsigned char *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0);
    if (memory == MAP_FAILED) {
        say("zero-fill: cannot map %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    if (madvise(memory, bytes, MADV_HUGEPAGE) != 0) say("zero-fill: MADV_HUGEPAGE: %s (4 KiB pages then)", strerror(errno));
    const double start = now_seconds();
    if (mlock(memory, bytes) != 0) {
        say("zero-fill: cannot lock %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    const double seconds = now_seconds() - start;
    say("zero-fill %" PRIu64 " MiB seconds=%.3f huge_mib=%" PRIu64, mib, seconds, shmem_huge_kib() / 1024);
    return EXIT_SUCCESS;
}

static int churn(uint64_t mib, uint64_t seconds) {
    size_t bytes = mib * mebibyte;
    unsigned char *memory = map_mib(mib);
    if (memory == NULL) {
        say("churn: cannot map %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    touch_pages(memory, bytes, 1);
    say("churn %" PRIu64 " MiB for %" PRIu64 " s", mib, seconds);
    const size_t pages = bytes / page_size;
    const double start = now_seconds();
    double second_start = start;
    uint64_t touches_this_second = 0, touches_total = 0, second = 0;
    size_t page = 0;
    unsigned char value = 2;
    while (second < seconds) {
        /* Check the clock every 256 pages: often enough for a steady per-second report. */
        for (int i = 0; i < 256; i++) {
            memory[page * page_size] = value;
            if (++page == pages) {
                page = 0;
                value++;
            }
        }
        touches_this_second += 256;
        double now = now_seconds();
        if (now - second_start >= 1.0) {
            second++;
            double rate = (double)touches_this_second / (now - second_start);
            say("churn second=%" PRIu64 " pages_per_s=%.0f mib_of_pages_per_s=%.1f", second, rate,
                rate * (double)page_size / (double)mebibyte);
            touches_total += touches_this_second;
            touches_this_second = 0;
            second_start = now;
        }
    }
    say("churn done pages_touched=%" PRIu64 " seconds=%.1f", touches_total, now_seconds() - start);
    return 0;
}

/* splitmix64: every word of the pattern from (seed, index) alone. */
static uint64_t pattern_word(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* FNV-1a over the words: a short fingerprint of the whole buffer to print and compare. */
static uint64_t checksum_words(const uint64_t *words, size_t count) {
    uint64_t hash = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < count; i++) hash = (hash ^ words[i]) * 0x100000001B3ull;
    return hash;
}

static int pattern(uint64_t mib, uint64_t seconds, uint64_t seed) {
    size_t bytes = mib * mebibyte;
    uint64_t *words = (uint64_t *)map_mib(mib);
    if (words == NULL) {
        say("pattern: cannot map %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    const size_t count = bytes / sizeof(uint64_t);
    for (size_t i = 0; i < count; i++) words[i] = pattern_word(seed, i);
    const uint64_t recorded = checksum_words(words, count);
    say("pattern filled %" PRIu64 " MiB seed=%" PRIu64 " checksum=%016" PRIx64, mib, seed, recorded);
    for (uint64_t check = 1; check <= seconds; check++) {
        sleep(1);
        for (size_t i = 0; i < count; i++) {
            if (words[i] != pattern_word(seed, i)) {
                say("pattern MISMATCH at offset 0x%zx (page %zu): expected %016" PRIx64 " found %016" PRIx64
                    " (check %" PRIu64 ")",
                    i * sizeof(uint64_t), i * sizeof(uint64_t) / page_size, pattern_word(seed, i), words[i], check);
                return EXIT_MISMATCH;
            }
        }
        /* The word-by-word comparison found nothing; the checksum agreeing too rules out a bug in either. */
        uint64_t now = checksum_words(words, count);
        if (now != recorded) {
            say("pattern MISMATCH at offset unknown: checksum %016" PRIx64 " != %016" PRIx64, now, recorded);
            return EXIT_MISMATCH;
        }
        say("pattern check %" PRIu64 "/%" PRIu64 " intact", check, seconds);
    }
    say("pattern ok");
    return 0;
}

static volatile sig_atomic_t verify_requested = 0;
static volatile sig_atomic_t rewrite_requested = 0;
static void request_verify(int signal_number) {
    (void)signal_number;
    verify_requested = 1;
}
static void request_rewrite(int signal_number) {
    (void)signal_number;
    rewrite_requested = 1;
}

/* The seed of the rewritten quarter: any other seed works; this one is the pattern's own constant. */
static uint64_t rewrite_seed(uint64_t seed) { return seed ^ 0x9E3779B97F4A7C15ull; }

static int keep(uint64_t mib, uint64_t seed) {
    size_t bytes = mib * mebibyte;
    uint64_t *words = (uint64_t *)map_mib(mib);
    if (words == NULL) {
        say("keep: cannot map %" PRIu64 " MiB: %s", mib, strerror(errno));
        return EXIT_ALLOCATION;
    }
    signal(SIGUSR1, request_verify);
    signal(SIGUSR2, request_rewrite);
    const size_t count = bytes / sizeof(uint64_t);
    for (size_t i = 0; i < count; i++) words[i] = pattern_word(seed, i);
    say("keep filled %" PRIu64 " MiB seed=%" PRIu64 " checksum=%016" PRIx64 " pid=%ld", mib, seed, checksum_words(words, count),
        (long)getpid());
    size_t rewritten = 0; /* words at the start that hold rewrite_seed's pattern */
    while (!verify_requested) {
        pause();
        if (rewrite_requested && rewritten == 0) {
            rewritten = count / 4;
            for (size_t i = 0; i < rewritten; i++) words[i] = pattern_word(rewrite_seed(seed), i);
            say("keep rewrote %zu KiB", rewritten * sizeof(uint64_t) / 1024);
        }
    }
    for (size_t i = 0; i < count; i++) {
        const uint64_t expected = i < rewritten ? pattern_word(rewrite_seed(seed), i) : pattern_word(seed, i);
        if (words[i] != expected) {
            say("keep MISMATCH at offset 0x%zx (page %zu): expected %016" PRIx64 " found %016" PRIx64,
                i * sizeof(uint64_t), i * sizeof(uint64_t) / page_size, expected, words[i]);
            return EXIT_MISMATCH;
        }
    }
    say("keep ok %" PRIu64 " MiB checksum=%016" PRIx64 "%s", mib, checksum_words(words, count), rewritten ? " (first quarter rewritten)" : "");
    return 0;
}

static int alloc_until_fail(uint64_t step_mib, uint64_t max_mib) {
    uint64_t total = 0;
    while (max_mib == 0 || total + step_mib <= max_mib) {
        unsigned char *memory = map_mib(step_mib);
        if (memory == NULL) {
            say("alloc-until-fail: allocation failed at %" PRIu64 " MiB: %s", total, strerror(errno));
            return EXIT_ALLOCATION;
        }
        touch_pages(memory, step_mib * mebibyte, 1);
        total += step_mib;
        say("allocated %" PRIu64 " MiB", total);
    }
    say("alloc-until-fail: reached the maximum of %" PRIu64 " MiB", max_mib);
    return 0;
}

int main(int argc, char **argv) {
    long configured = sysconf(_SC_PAGESIZE);
    if (configured > 0) page_size = (size_t)configured;
    /* 1 TiB: far beyond any test guest, small enough that MIB * 2^20 cannot overflow. */
    const uint64_t max_mib = 1024 * 1024;
    const uint64_t max_seconds = 7 * 24 * 3600;
    if (argc < 2) return usage();
    const char *command = argv[1];
    if (strcmp(command, "hold") == 0 && (argc == 3 || argc == 4)) {
        uint64_t mib = parse_count(argv[2], max_mib);
        uint64_t rate = argc == 4 ? parse_count(argv[3], max_mib) : 0;
        return mib && (argc == 3 || rate) ? hold(mib, rate) : usage();
    }
    if (strcmp(command, "zero-fill") == 0 && argc == 4) {
        uint64_t mib = parse_count(argv[2], max_mib);
        return mib ? zero_fill(mib, argv[3]) : usage();
    }
    if (strcmp(command, "churn") == 0 && argc == 4) {
        uint64_t mib = parse_count(argv[2], max_mib), seconds = parse_count(argv[3], max_seconds);
        return mib && seconds ? churn(mib, seconds) : usage();
    }
    if (strcmp(command, "pattern") == 0 && (argc == 4 || argc == 5)) {
        uint64_t mib = parse_count(argv[2], max_mib), seconds = parse_count(argv[3], max_seconds);
        uint64_t seed = argc == 5 ? parse_count(argv[4], UINT64_MAX) : 0x42A11011ull;
        return mib && seconds && seed ? pattern(mib, seconds, seed) : usage();
    }
    if (strcmp(command, "keep") == 0 && (argc == 3 || argc == 4)) {
        uint64_t mib = parse_count(argv[2], max_mib);
        uint64_t seed = argc == 4 ? parse_count(argv[3], UINT64_MAX) : 0x42A11011ull;
        return mib && seed ? keep(mib, seed) : usage();
    }
    if (strcmp(command, "alloc-until-fail") == 0 && (argc == 3 || argc == 4)) {
        uint64_t step = parse_count(argv[2], max_mib);
        uint64_t limit = argc == 4 ? parse_count(argv[3], max_mib) : 0;
        if (!step || (argc == 4 && !limit)) return usage();
        return alloc_until_fail(step, limit);
    }
    return usage();
}
