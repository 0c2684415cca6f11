/* metrics: the gateway's Prometheus counters and histograms (see metrics.h for the names).
 *
 * One mutex guards everything: updates are a few per request or per finished choice, far
 * from contended, and a render sees one consistent state. Labels are bounded: endpoints are
 * the fixed route names http.c passes (unknown paths arrive as "other"), finish reasons a
 * fixed list, so a hostile client cannot grow the label sets. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "metrics.h"

#define METRICS_MAX_ENDPOINTS 64

/* Latency buckets in seconds, from sub-millisecond inter-token gaps to long generations. */
static const double s_buckets[] = {0.001, 0.0025, 0.005, 0.01,  0.025, 0.05, 0.075, 0.1,
                                   0.25,  0.5,    0.75,  1.0,   2.5,   5.0,  7.5,   10.0,
                                   20.0,  40.0,   80.0,  160.0, 320.0, 640.0};
#define METRICS_NBUCKETS (sizeof s_buckets / sizeof s_buckets[0])

static const struct {
    const char *name, *help;
} s_hist_info[METRICS_HIST_COUNT] = {
    {"gptoss:time_to_first_token_seconds", "Time from submission to the first token."},
    {"gptoss:time_per_output_token_seconds", "Time between consecutive tokens of a choice."},
    {"gptoss:e2e_request_latency_seconds", "Time from submission to the last token."},
    {"gptoss:request_queue_time_seconds", "Time from submission to the first scheduled step."},
    {"gptoss:request_prefill_time_seconds", "Time from the first step to the first token."},
    {"gptoss:request_decode_time_seconds", "Time from the first token to the last."},
};

static const char *s_reasons[] = {"stop", "length", "tool_calls", "abort", "error"};
#define METRICS_NREASONS (sizeof s_reasons / sizeof s_reasons[0])

typedef struct {
    uint64_t counts[METRICS_NBUCKETS + 1]; /* last: +Inf */
    uint64_t n;
    double sum;
} s_hist_t;

static struct {
    pthread_mutex_t mu;
    struct {
        char endpoint[48];
        int status;
        uint64_t n;
    } req[METRICS_MAX_ENDPOINTS];
    int n_req;
    uint64_t finish[METRICS_NREASONS];
    s_hist_t hist[METRICS_HIST_COUNT];
    uint64_t prompt_tokens, generated_tokens;
} s_m = {.mu = PTHREAD_MUTEX_INITIALIZER};

void metrics_init(void) {
    pthread_mutex_lock(&s_m.mu);
    memset(s_m.req, 0, sizeof s_m.req);
    s_m.n_req = 0;
    memset(s_m.finish, 0, sizeof s_m.finish);
    memset(s_m.hist, 0, sizeof s_m.hist);
    s_m.prompt_tokens = s_m.generated_tokens = 0;
    pthread_mutex_unlock(&s_m.mu);
}

void metrics_count_request(const char *endpoint, int status) {
    char ep[48];
    snprintf(ep, sizeof ep, "%s", endpoint ? endpoint : "other");
    for (char *p = ep; *p; p++) /* label values stay printable and unquoted-safe */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '_';
    pthread_mutex_lock(&s_m.mu);
    int i = 0;
    while (i < s_m.n_req && !(s_m.req[i].status == status && strcmp(s_m.req[i].endpoint, ep) == 0))
        i++;
    if (i == s_m.n_req && s_m.n_req < METRICS_MAX_ENDPOINTS) {
        snprintf(s_m.req[i].endpoint, sizeof s_m.req[i].endpoint, "%s", ep);
        s_m.req[i].status = status;
        s_m.n_req++;
    }
    if (i < s_m.n_req) s_m.req[i].n++;
    pthread_mutex_unlock(&s_m.mu);
}

void metrics_count_finish(const char *reason) {
    size_t i = 0;
    while (i < METRICS_NREASONS && (!reason || strcmp(reason, s_reasons[i]) != 0))
        i++;
    if (i == METRICS_NREASONS) i = METRICS_NREASONS - 1; /* unknown counts as error */
    pthread_mutex_lock(&s_m.mu);
    s_m.finish[i]++;
    pthread_mutex_unlock(&s_m.mu);
}

void metrics_observe(metrics_hist_t h, double seconds) {
    if ((int)h < 0 || h >= METRICS_HIST_COUNT || !(seconds >= 0)) return;
    size_t b = 0;
    while (b < METRICS_NBUCKETS && seconds > s_buckets[b])
        b++;
    pthread_mutex_lock(&s_m.mu);
    s_m.hist[h].counts[b]++;
    s_m.hist[h].n++;
    s_m.hist[h].sum += seconds;
    pthread_mutex_unlock(&s_m.mu);
}

void metrics_add_tokens(uint64_t prompt, uint64_t generated) {
    pthread_mutex_lock(&s_m.mu);
    s_m.prompt_tokens += prompt;
    s_m.generated_tokens += generated;
    pthread_mutex_unlock(&s_m.mu);
}

static void s_pf(api_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_pf(api_buf_t *b, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) api_buf_put(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void s_head(api_buf_t *b, const char *name, const char *type, const char *help) {
    s_pf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *metrics_render(const sched_stats_t *st) {
    api_buf_t b = {0};
    pthread_mutex_lock(&s_m.mu);
    s_head(&b, "gptoss:http_requests_total", "counter", "HTTP requests answered.");
    for (int i = 0; i < s_m.n_req; i++)
        s_pf(&b, "gptoss:http_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
             s_m.req[i].endpoint, s_m.req[i].status, (unsigned long long)s_m.req[i].n);
    s_head(&b, "gptoss:request_success_total", "counter", "Finished choices by finish reason.");
    for (size_t i = 0; i < METRICS_NREASONS; i++)
        s_pf(&b, "gptoss:request_success_total{finished_reason=\"%s\"} %llu\n", s_reasons[i],
             (unsigned long long)s_m.finish[i]);
    s_head(&b, "gptoss:prompt_tokens_total", "counter", "Prompt tokens of answered requests.");
    s_pf(&b, "gptoss:prompt_tokens_total %llu\n", (unsigned long long)s_m.prompt_tokens);
    s_head(&b, "gptoss:generation_tokens_total", "counter", "Generated tokens.");
    s_pf(&b, "gptoss:generation_tokens_total %llu\n", (unsigned long long)s_m.generated_tokens);
    for (int h = 0; h < METRICS_HIST_COUNT; h++) {
        const char *name = s_hist_info[h].name;
        s_head(&b, name, "histogram", s_hist_info[h].help);
        uint64_t cum = 0;
        for (size_t k = 0; k < METRICS_NBUCKETS; k++) {
            cum += s_m.hist[h].counts[k];
            s_pf(&b, "%s_bucket{le=\"%g\"} %llu\n", name, s_buckets[k], (unsigned long long)cum);
        }
        cum += s_m.hist[h].counts[METRICS_NBUCKETS];
        s_pf(&b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        s_pf(&b, "%s_sum %.9g\n%s_count %llu\n", name, s_m.hist[h].sum, name,
             (unsigned long long)s_m.hist[h].n);
    }
    pthread_mutex_unlock(&s_m.mu);

    if (st) {
        s_head(&b, "gptoss:num_requests_running", "gauge", "Sequences being decoded.");
        s_pf(&b, "gptoss:num_requests_running %d\n", st->running);
        s_head(&b, "gptoss:num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
        s_pf(&b, "gptoss:num_requests_waiting %d\n", st->waiting);
        s_head(&b, "gptoss:kv_cache_usage_perc", "gauge", "KV cache blocks in use (0 to 1).");
        s_pf(&b, "gptoss:kv_cache_usage_perc %.6g\n",
             st->kv_blocks_total > 0 ? (double)st->kv_blocks_used / st->kv_blocks_total : 0.0);
        s_head(&b, "gptoss:ready", "gauge", "1 when serving and the self-test passed.");
        s_pf(&b, "gptoss:ready %d\n", st->state == SCHED_STATE_READY && st->ready_checked);
        s_head(&b, "gptoss:uptime_seconds", "gauge", "Seconds since the scheduler started.");
        s_pf(&b, "gptoss:uptime_seconds %.3f\n", st->uptime_s);
        s_head(&b, "gptoss:shard_up", "gauge", "1 when the shard is ready and heartbeating.");
        for (int i = 0; i < st->n_shards && i < SCHED_MAX_SHARDS; i++)
            s_pf(&b, "gptoss:shard_up{shard=\"%d\"} %d\n", st->shards[i].rank, st->shards[i].up);
        s_head(&b, "gptoss:shard_heartbeat_age_seconds", "gauge",
               "Seconds since the shard's last message.");
        for (int i = 0; i < st->n_shards && i < SCHED_MAX_SHARDS; i++)
            s_pf(&b, "gptoss:shard_heartbeat_age_seconds{shard=\"%d\"} %.3f\n", st->shards[i].rank,
                 st->shards[i].heartbeat_age_s);
        s_head(&b, "gptoss:shard_restarts_total", "counter", "Restarts of the shard.");
        for (int i = 0; i < st->n_shards && i < SCHED_MAX_SHARDS; i++)
            s_pf(&b, "gptoss:shard_restarts_total{shard=\"%d\"} %d\n", st->shards[i].rank,
                 st->shards[i].restarts);
    }
    if (b.oom) {
        api_buf_free(&b);
        return NULL;
    }
    return b.p;
}
