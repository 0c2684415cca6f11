/* gptoss-bench: benchmarks (not tests). Dispatches to the sub-benchmarks in tools/bench/.
 *
 *   gptoss-bench tokenizer [--tokenizer PATH] ...   tokenizer throughput
 *   gptoss-bench engine --model DIR ...             bandwidth, FMA peak, prefill and decode
 *
 * Results are printed as medians of repeated runs; see BENCHMARKS.md for the figures. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

static int s_usage(void) {
    fprintf(
        stderr,
        "usage: gptoss-bench tokenizer|engine [options]  (--help after the name for options)\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return s_usage();
    int (*fn)(int, char **) = NULL;
    if (strcmp(argv[1], "tokenizer") == 0)
        fn = bench_tokenizer_main;
    else if (strcmp(argv[1], "engine") == 0)
        fn = bench_engine_main;
    else
        return s_usage();
    if (!fn) {
        fprintf(stderr, "gptoss-bench: the '%s' benchmark is not built into this binary\n",
                argv[1]);
        return 2;
    }
    return fn(argc - 1, argv + 1);
}
