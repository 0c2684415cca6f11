/* gptoss-gateway: the server process. Loads the tokenizer, starts the scheduler
 * (which spawns and drives the gptoss-shardd processes) and the HTTP server, and
 * waits for SIGINT / SIGTERM.
 *
 *   gptoss-gateway --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]
 *                  [--run-dir DIR] [--kv-dtype f32|bf16] [--kv-gib G] [--max-running N]
 *                  [--max-queue N] [--max-batch-tokens N] [--threads N] [--model-name NAME]
 *                  [--reasoning-effort low|medium|high] [--default-max-tokens N]
 *                  [--max-context N] [--shards N] [--shardd PATH] [--shutdown-grace S]
 *                  [--control ENDPOINT]
 *
 * Signals are blocked in every thread and taken by the main thread with
 * sigtimedwait, so no handler runs at an arbitrary point. Shutdown is graceful:
 * the scheduler drains (new requests get 503, running ones finish, up to
 * --shutdown-grace seconds; a second signal cuts it short), then HTTP stops, the
 * shards get SHUTDOWN (SIGKILL after a grace period), and a run dir this process
 * created is removed. If the gateway dies instead, the shards exit on their own
 * when its heartbeats stop (PROTOCOL.md), so no shard outlives it for long.
 *
 * The control socket (control.h; default ipc://RUN/control.ipc) answers status,
 * stats, drain, resume and shutdown; the other commands are not supported yet.
 *
 * Not here: HTTP handling (http.c), scheduling (sched.c). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <stdatomic.h>

#include "control.h"
#include "gerr.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "sched.h"
#include "tokenizer.h"

typedef struct {
    const char *model, *host, *api_key, *run_dir, *kv_dtype, *model_name, *reasoning, *shardd;
    const char *control; /* control socket endpoint (default ipc://RUN/control.ipc) */
    int port, max_running, max_queue, max_batch_tokens, threads, default_max_tokens;
    int max_context, shards;
    double kv_gib, shutdown_grace;
} s_args_t;

static int s_usage(void) {
    fprintf(stderr,
            "usage: gptoss-gateway --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]\n"
            "         [--run-dir DIR] [--kv-dtype f32|bf16] [--kv-gib G] [--max-running N]\n"
            "         [--max-queue N] [--max-batch-tokens N] [--threads N] [--model-name NAME]\n"
            "         [--reasoning-effort low|medium|high] [--default-max-tokens N]\n"
            "         [--max-context N] [--shards N] [--shardd PATH] [--shutdown-grace S]\n"
            "         [--control ipc://PATH | tcp://127.0.0.1:PORT]\n"
            "  --api-key defaults to $GPTOSS_API_KEY; --run-dir to a fresh /tmp/gptoss-<pid>\n");
    return 2;
}

static int s_int(const char *name, const char *v, long lo, long hi, int *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || !end || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "gptoss-gateway: %s '%s' is not an integer in [%ld, %ld]\n", name, v, lo,
                hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int s_double(const char *name, const char *v, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || !end || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "gptoss-gateway: %s '%s' is not a number in [%g, %g]\n", name, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int s_parse(int argc, char **argv, s_args_t *a) {
    *a = (s_args_t){
        .host = "127.0.0.1", .port = 8000, .kv_dtype = "f32", .shards = 1, .shutdown_grace = 30};
    a->api_key = getenv("GPTOSS_API_KEY");
    if (a->api_key && !*a->api_key) a->api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) return -1;
        if (i + 1 >= argc) {
            fprintf(stderr, "gptoss-gateway: %s needs a value (or is unknown)\n", o);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (strcmp(o, "--model") == 0)
            a->model = v;
        else if (strcmp(o, "--host") == 0)
            a->host = v;
        else if (strcmp(o, "--port") == 0)
            bad = s_int(o, v, 0, 65535, &a->port);
        else if (strcmp(o, "--api-key") == 0)
            a->api_key = *v ? v : NULL;
        else if (strcmp(o, "--run-dir") == 0)
            a->run_dir = v;
        else if (strcmp(o, "--kv-dtype") == 0) {
            a->kv_dtype = v;
            if (strcmp(v, "f32") != 0 && strcmp(v, "bf16") != 0) {
                fprintf(stderr, "gptoss-gateway: --kv-dtype must be f32 or bf16, not '%s'\n", v);
                bad = -1;
            }
        } else if (strcmp(o, "--kv-gib") == 0)
            bad = s_double(o, v, 1.0 / 1024, 4096, &a->kv_gib);
        else if (strcmp(o, "--max-running") == 0)
            bad = s_int(o, v, 1, 4096, &a->max_running);
        else if (strcmp(o, "--max-queue") == 0)
            bad = s_int(o, v, 1, 1 << 20, &a->max_queue);
        else if (strcmp(o, "--max-batch-tokens") == 0)
            bad = s_int(o, v, 1, 1 << 20, &a->max_batch_tokens);
        else if (strcmp(o, "--threads") == 0)
            bad = s_int(o, v, 0, 1024, &a->threads);
        else if (strcmp(o, "--model-name") == 0)
            a->model_name = v;
        else if (strcmp(o, "--reasoning-effort") == 0) {
            a->reasoning = v;
            if (strcmp(v, "low") && strcmp(v, "medium") && strcmp(v, "high")) {
                fprintf(stderr, "gptoss-gateway: --reasoning-effort must be low, medium or high\n");
                bad = -1;
            }
        } else if (strcmp(o, "--default-max-tokens") == 0)
            bad = s_int(o, v, 1, 1 << 24, &a->default_max_tokens);
        else if (strcmp(o, "--max-context") == 0)
            bad = s_int(o, v, 2, 1 << 24, &a->max_context);
        else if (strcmp(o, "--shards") == 0)
            bad = s_int(o, v, 1, SCHED_MAX_SHARDS, &a->shards);
        else if (strcmp(o, "--shardd") == 0)
            a->shardd = v;
        else if (strcmp(o, "--control") == 0)
            a->control = v;
        else if (strcmp(o, "--shutdown-grace") == 0)
            bad = s_double(o, v, 0, 3600, &a->shutdown_grace);
        else {
            fprintf(stderr, "gptoss-gateway: unknown option %s\n", o);
            return -1;
        }
        if (bad) return -1;
    }
    if (!a->model) {
        fprintf(stderr, "gptoss-gateway: --model DIR is required\n");
        return -1;
    }
    return 0;
}

/* ---- control socket handlers (run on the control thread) ---- */

static atomic_bool s_stop_now; /* shutdown {"graceful": false}: skip the drain */

static int s_ctl_status(void *user, cJSON *reply, gerr_t *err) {
    sched_stats_t st;
    sched_snapshot(user, &st);
    cJSON *shards = cJSON_AddArrayToObject(reply, "shards");
    if (!cJSON_AddStringToObject(reply, "state", sched_state_name(st.state)) ||
        !cJSON_AddStringToObject(reply, "message", st.state_message) ||
        !cJSON_AddBoolToObject(reply, "ready_checked", st.ready_checked) ||
        !cJSON_AddNumberToObject(reply, "uptime_s", st.uptime_s) || !shards)
        goto nomem;
    for (int r = 0; r < st.n_shards; r++) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(shards, o)) {
            cJSON_Delete(o);
            goto nomem;
        }
        const sched_shard_stats_t *sh = &st.shards[r];
        if (!cJSON_AddNumberToObject(o, "rank", sh->rank) ||
            !cJSON_AddNumberToObject(o, "pid", sh->pid) ||
            !cJSON_AddBoolToObject(o, "up", sh->up) ||
            !cJSON_AddNumberToObject(o, "heartbeat_age_s", sh->heartbeat_age_s) ||
            !cJSON_AddNumberToObject(o, "restarts", sh->restarts) ||
            !cJSON_AddStringToObject(o, "last_error", sh->last_error))
            goto nomem;
    }
    return 0;
nomem:
    gerr_set(err, "out of memory");
    return GERR_NOMEM;
}

static int s_ctl_stats(void *user, cJSON *reply, gerr_t *err) {
    sched_stats_t st;
    sched_snapshot(user, &st);
    if (!cJSON_AddNumberToObject(reply, "requests_total", (double)st.requests_total) ||
        !cJSON_AddNumberToObject(reply, "requests_finished", (double)st.requests_finished) ||
        !cJSON_AddNumberToObject(reply, "prompt_tokens", (double)st.prompt_tokens_total) ||
        !cJSON_AddNumberToObject(reply, "generated_tokens", (double)st.generated_tokens_total) ||
        !cJSON_AddNumberToObject(reply, "tokens_per_s", st.tokens_per_s) ||
        !cJSON_AddNumberToObject(reply, "running", st.running) ||
        !cJSON_AddNumberToObject(reply, "waiting", st.waiting) ||
        !cJSON_AddNumberToObject(reply, "kv_blocks_total", st.kv_blocks_total) ||
        !cJSON_AddNumberToObject(reply, "kv_blocks_used", st.kv_blocks_used) ||
        !cJSON_AddNumberToObject(reply, "max_context", st.max_context)) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    return s_ctl_status(user, reply, err);
}

static int s_ctl_drain(void *user, cJSON *reply, gerr_t *err) {
    sched_drain(user);
    return 0;
}

static int s_ctl_resume(void *user, cJSON *reply, gerr_t *err) {
    sched_resume(user);
    return 0;
}

static int s_ctl_shutdown(void *user, bool graceful, cJSON *reply, gerr_t *err) {
    if (!graceful) atomic_store(&s_stop_now, true);
    if (kill(getpid(), SIGTERM) != 0) {
        gerr_set(err, "cannot signal the gateway: %s", strerror(errno));
        return GERR_IO;
    }
    return 0;
}

/* Waits up to timeout_ms for SIGINT/SIGTERM (blocked in every thread); returns it or 0. */
static int s_wait_signal(const sigset_t *set, int timeout_ms) {
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

int main(int argc, char **argv) {
    log_set_role("gateway");
    s_args_t a;
    if (s_parse(argc, argv, &a)) return s_usage();

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    int rc = pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* before any thread starts */
    if (rc != 0) {
        fprintf(stderr, "gptoss-gateway: pthread_sigmask: %s\n", strerror(rc));
        return 1;
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "gptoss-gateway: cannot ignore SIGPIPE\n");
        return 1;
    }

    char run_dir[PATH_MAX];
    bool made_run_dir = false;
    if (a.run_dir) {
        snprintf(run_dir, sizeof run_dir, "%s", a.run_dir);
        if (mkdir(run_dir, 0700) == 0)
            made_run_dir = true;
        else if (errno != EEXIST) {
            fprintf(stderr, "gptoss-gateway: cannot create run dir %s: %s\n", run_dir,
                    strerror(errno));
            return 1;
        }
    } else {
        snprintf(run_dir, sizeof run_dir, "/tmp/gptoss-%d", (int)getpid());
        if (mkdir(run_dir, 0700) != 0) {
            fprintf(stderr, "gptoss-gateway: cannot create run dir %s: %s (use --run-dir)\n",
                    run_dir, strerror(errno));
            return 1;
        }
        made_run_dir = true;
    }

    int status = 1;
    gerr_t err = {{0}};
    tokenizer_t *tok = NULL;
    sched_t *sched = NULL;
    http_t *http = NULL;
    control_t *ctl = NULL;
    if (tok_load(a.model, &tok, &err) != 0) {
        LOG_WARN("main", "no tokenizer (%s): text endpoints answer 503; token-id prompts work",
                 err.msg);
        tok = NULL;
    }
    metrics_init();
    sched_opts_t so = {
        .model_dir = a.model,
        .shardd_path = a.shardd,
        .run_dir = run_dir,
        .n_shards = a.shards,
        .threads = a.threads,
        .kv_dtype = a.kv_dtype,
        .kv_budget_gib = a.kv_gib,
        .max_running = a.max_running,
        .max_queue = a.max_queue,
        .max_batch_tokens = a.max_batch_tokens,
        .max_context = a.max_context,
        .vocab_limit = tok ? tok_vocab_size(tok) : 0,
    };
    if (sched_new(&so, &sched, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
        goto out;
    }
    http_opts_t ho = {
        .bind_addr = a.host,
        .port = a.port,
        .api_key = a.api_key,
        .model_name = a.model_name,
        .default_max_tokens = a.default_max_tokens,
        .default_reasoning = a.reasoning,
    };
    if (http_new(&ho, sched, tok, &http, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
        goto out;
    }
    char ctl_ep[PATH_MAX + 32];
    snprintf(ctl_ep, sizeof ctl_ep, "ipc://%s/%s", run_dir, CONTROL_SOCKET_NAME);
    control_handlers_t ch = {.user = sched,
                             .status = s_ctl_status,
                             .stats = s_ctl_stats,
                             .drain = s_ctl_drain,
                             .resume = s_ctl_resume,
                             .shutdown = s_ctl_shutdown};
    if (control_start(a.control ? a.control : ctl_ep, &ch, &ctl, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: control socket: %s\n", err.msg);
        goto out;
    }
    LOG_INFO("main", "control socket on %s", control_endpoint(ctl));
    fprintf(stderr, "gptoss-gateway: listening on http://%s:%d\n", a.host, http_port(http));

    int sig = 0;
    while (!(sig = s_wait_signal(&sigs, 1000))) {
    }
    LOG_INFO("main", "signal %d: draining (up to %.0f s; a second signal stops at once)", sig,
             a.shutdown_grace);
    sched_drain(sched);
    double until = atomic_load(&s_stop_now) ? 0 : gw_now() + a.shutdown_grace;
    for (;;) {
        sched_stats_t st;
        sched_snapshot(sched, &st);
        if (st.running == 0 && st.waiting == 0) break;
        if (gw_now() >= until) {
            LOG_WARN("main", "grace period over: %d running, %d waiting requests are failed",
                     st.running, st.waiting);
            break;
        }
        if (s_wait_signal(&sigs, 100)) {
            LOG_WARN("main", "second signal: stopping now");
            break;
        }
    }
    status = 0;
out:
    control_stop(&ctl);
    http_free(&http);
    sched_free(&sched);
    tok_free(&tok);
    if (made_run_dir && rmdir(run_dir) != 0)
        LOG_WARN("main", "cannot remove run dir %s: %s", run_dir, strerror(errno));
    LOG_INFO("main", "stopped");
    return status;
}
