/* bench: sub-benchmarks of gptoss-bench. Each lives in its own file under tools/bench/ and is
 * declared weak here, so gptoss-bench builds whatever subset exists. */
#ifndef GPTOSS_BENCH_H
#define GPTOSS_BENCH_H

/* `gptoss-bench tokenizer ...`: tokenizer throughput (tools/bench/bench_tokenizer.c). */
int bench_tokenizer_main(int argc, char **argv) __attribute__((weak));
/* `gptoss-bench engine ...`: memory bandwidth, FMA peak, prefill/decode
 * (tools/bench/bench_engine.c). */
int bench_engine_main(int argc, char **argv) __attribute__((weak));

#endif
