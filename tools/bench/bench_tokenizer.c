/* bench_tokenizer: `gptoss-bench tokenizer --tokenizer PATH [--runs N] [--mb N] [--cpu-time]`.
 *
 * Measures encode throughput on English prose (a paragraph embedded here, repeated to a
 * few MB; one tok_encode call per paragraph, as a server encodes messages), decode
 * throughput, and the time to encode strings without spaces of 64 KiB, 256 KiB and
 * 1 MiB (random lowercase letters, and one repeated character) to show the scaling of
 * the long-piece merge. Prints medians of N runs. Single-threaded; not a test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "tokenizer.h"

static const char s_prose[] =
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps "
    "as his father had taught him. There were one hundred and twelve of them, worn smooth in "
    "the middle by decades of boots. At the top he wound the clockwork, trimmed the wick, and "
    "watched the beam sweep across the water. Ships rarely passed this way anymore; the new "
    "channel to the south was deeper and better marked. Still, he kept the light burning, "
    "because a promise made to the sea, he said, was not the kind you could quietly forget. "
    "In the mornings he wrote short notes in a ledger: the wind's direction, the color of the "
    "sky, whether the gulls had come back early. Nobody asked to read it. He didn't mind. "
    "\"Someone,\" he told the grocer in town, \"will want to know what the weather was like on "
    "a Tuesday in 1987, and I'll have it written down.\" The grocer laughed, but he also saved "
    "the old newspapers, so perhaps they understood each other better than either admitted.\n";

/* Wall time by default; thread CPU time with --cpu-time (steadier on a shared machine). */
static clockid_t s_clock = CLOCK_MONOTONIC;

static double s_now(void) {
    struct timespec ts;
    clock_gettime(s_clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Median seconds to encode s[0..n) in one call; *ntok gets the token count. */
static double s_time_encode(const tokenizer_t *t, const char *s, size_t n, int runs, size_t *ntok) {
    double *ts = calloc((size_t)runs, sizeof *ts);
    tok_ids_t v = {0};
    for (int r = 0; r < runs; r++) {
        v.len = 0;
        double t0 = s_now();
        if (tok_encode(t, s, n, &v) < 0) fprintf(stderr, "bench: encode failed\n");
        ts[r] = s_now() - t0;
    }
    *ntok = v.len;
    tok_ids_free(&v);
    double m = s_median(ts, runs);
    free(ts);
    return m;
}

int bench_tokenizer_main(int argc, char **argv) {
    const char *path = getenv("GPTOSS_TOKENIZER");
    int runs = 5;
    double mb = 4.0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atof(argv[++i]);
        else if (strcmp(argv[i], "--cpu-time") == 0)
            s_clock = CLOCK_THREAD_CPUTIME_ID;
        else {
            fprintf(stderr, "usage: gptoss-bench tokenizer --tokenizer PATH [--runs N] [--mb N] "
                            "[--cpu-time]\n");
            return 2;
        }
    }
    if (!path || runs < 1 || mb <= 0) {
        fprintf(
            stderr,
            "usage: gptoss-bench tokenizer --tokenizer PATH [--runs N] [--mb N] [--cpu-time]\n");
        return 2;
    }
    gerr_t err = {{0}};
    tokenizer_t *t = NULL;
    double t0 = s_now();
    if (tok_load(path, &t, &err) < 0) {
        fprintf(stderr, "gptoss-bench: %s\n", err.msg);
        return 1;
    }
    printf("tokenizer: load %.0f ms (%s time)\n", (s_now() - t0) * 1e3,
           s_clock == CLOCK_MONOTONIC ? "wall" : "thread CPU");

    /* Prose: one call per paragraph. */
    size_t plen = sizeof s_prose - 1;
    size_t reps = (size_t)(mb * 1e6 / (double)plen) + 1;
    double *ts = calloc((size_t)runs, sizeof *ts);
    tok_ids_t v = {0};
    for (int r = 0; r < runs; r++) {
        v.len = 0;
        double a = s_now();
        for (size_t k = 0; k < reps; k++)
            tok_encode(t, s_prose, plen, &v);
        ts[r] = s_now() - a;
    }
    double sec = s_median(ts, runs);
    double bytes = (double)plen * (double)reps;
    printf(
        "prose encode: %.2f MB in paragraphs of %zu B: %.1f MB/s, %.2f M tokens/s (%.2f B/token), "
        "median of %d\n",
        bytes / 1e6, plen, bytes / 1e6 / sec, (double)v.len / 1e6 / sec, bytes / (double)v.len,
        runs);

    /* Prose as one big string. */
    char *big = malloc(plen * reps + 1);
    for (size_t k = 0; k < reps; k++)
        memcpy(big + k * plen, s_prose, plen);
    size_t ntok = 0;
    sec = s_time_encode(t, big, plen * reps, runs, &ntok);
    printf("prose encode, one %.2f MB call: %.1f MB/s\n", bytes / 1e6, bytes / 1e6 / sec);

    /* Decode. */
    for (int r = 0; r < runs; r++) {
        double a = s_now();
        size_t dl = 0;
        char *d = tok_decode(t, v.ids, v.len, &dl);
        ts[r] = s_now() - a;
        free(d);
    }
    sec = s_median(ts, runs);
    printf("decode: %.2f M tokens/s (%.0f MB/s)\n", (double)v.len / 1e6 / sec, bytes / 1e6 / sec);
    free(big);
    tok_ids_free(&v);

    /* Long strings without spaces. */
    static const size_t sizes[] = {64 << 10, 256 << 10, 1 << 20};
    char *s = malloc(1 << 20);
    uint32_t x = 12345;
    for (size_t i = 0; i < (1u << 20); i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (char)('a' + (x >> 16) % 26);
    }
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 1) memset(s, 'a', 1 << 20);
        double per0 = 0;
        for (size_t k = 0; k < 3; k++) {
            sec = s_time_encode(t, s, sizes[k], runs, &ntok);
            double per = sec / (double)sizes[k] * 1e9;
            if (k == 0) per0 = per;
            printf("%s %4zu KiB: %8.2f ms, %6.1f ns/byte (x%.2f of 64 KiB), %zu tokens\n",
                   kind ? "one repeated char" : "random letters   ", sizes[k] >> 10, sec * 1e3, per,
                   per / per0, ntok);
        }
    }
    free(s);
    free(ts);
    tok_free(&t);
    return 0;
}
