/* metrics: Prometheus counters and histograms of the gateway, updated from any
 * thread (atomics / a mutex), rendered as Prometheus text for GET /metrics.
 *
 * Names follow what vLLM users already chart, under our own prefix `gptoss:`
 * (vLLM's are `vllm:`): e.g. gptoss:time_to_first_token_seconds,
 * gptoss:time_per_output_token_seconds (inter-token latency),
 * gptoss:e2e_request_latency_seconds, gptoss:request_queue_time_seconds,
 * gptoss:prompt_tokens_total, gptoss:generation_tokens_total,
 * gptoss:num_requests_running, gptoss:num_requests_waiting, gptoss:kv_cache_usage_perc,
 * gptoss:request_success_total{finished_reason=...},
 * gptoss:http_requests_total{endpoint=...,status=...}, and per shard
 * gptoss:shard_up{shard=...}, gptoss:shard_heartbeat_age_seconds, gptoss:shard_restarts_total. */
#ifndef GPTOSS_METRICS_H
#define GPTOSS_METRICS_H

#include <stdint.h>

#include "sched.h"

typedef enum {
    METRICS_TTFT = 0, /* submit -> first token */
    METRICS_ITL,      /* between consecutive tokens of a choice */
    METRICS_E2E,      /* submit -> finished */
    METRICS_QUEUE,    /* submit -> first scheduled */
    METRICS_PREFILL,  /* first scheduled -> first token */
    METRICS_DECODE,   /* first token -> finished */
    METRICS_HIST_COUNT
} metrics_hist_t;

/* Resets every metric (call once at start; not thread-safe against updates). */
void metrics_init(void);
/* Counts one HTTP request answered on endpoint (e.g. "/v1/chat/completions") with status. */
void metrics_count_request(const char *endpoint, int status);
/* Counts one finished choice by finish reason ("stop", "length", "tool_calls", "abort", "error").
 */
void metrics_count_finish(const char *reason);
/* Adds one observation (seconds) to histogram h. */
void metrics_observe(metrics_hist_t h, double seconds);
/* Adds prompt and generated token counts. */
void metrics_add_tokens(uint64_t prompt, uint64_t generated);
/* Renders all metrics, with gauges taken from st, as Prometheus text (caller frees). */
char *metrics_render(const sched_stats_t *st);

#endif
