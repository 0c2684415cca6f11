/* gptoss-gateway: the server process. Loads the tokenizer, starts the scheduler
 * (which spawns and drives the gptoss-shardd processes) and the HTTP server, and
 * waits for SIGINT / SIGTERM.
 *
 *   gptoss-gateway (--model DIR | --profile FILE|NAME) [--tp N] [--profiles-dir DIR]
 *                  [--host 127.0.0.1] [--port 8000] [--api-key KEY]
 *                  [--run-dir DIR] [--kv-dtype f32|bf16] [--kv-gib G] [--max-running N]
 *                  [--max-queue N] [--max-batch-tokens N] [--threads N] [--model-name NAME]
 *                  [--reasoning-effort low|medium|high] [--default-max-tokens N]
 *                  [--max-context N] [--shardd PATH] [--shutdown-grace S]
 *                  [--control ENDPOINT] [--heartbeat S] [--crash-loop N] [--crash-window S]
 *                  [--degraded-retry S]
 *
 * A profile (deploy/README.md) gives every setting; a flag given on the command line
 * overrides the profile's field for the start (a later switch-profile applies the new
 * profile as written, keeping only the flags that are not profile fields: --shardd,
 * --run-dir, --heartbeat, --crash-loop, --crash-window, --degraded-retry, --model-name).
 * The model's config.json is checked against the profile at once (profile_check_model:
 * a tp that does not divide the heads is refused with the reason).
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
 * stats, restart-shard N, drain, resume, switch-profile FILE|NAME, reload and
 * shutdown [graceful]. A switch is checked here (profile file, model config, tp)
 * and refused with the reason when wrong, leaving the running profile untouched;
 * otherwise the scheduler drains, stops the shards and starts the new profile's,
 * and if those fail to come up it goes back to the previous profile (status and
 * /health say so). HTTP stays up throughout; its address, API key, model name and
 * tokenizer are those of the start (all gpt-oss models share the o200k_harmony
 * tokenizer), while the request defaults follow the active profile.
 *
 * Not here: HTTP handling (http.c), scheduling (sched.c). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <stdatomic.h>

#include "control.h"
#include "gerr.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "profile.h"
#include "sched.h"
#include "tokenizer.h"

/* Command line. Profile fields are "unset" (NULL, -1, 0) unless given, so that a flag
 * overrides the profile and an absent one takes the profile's value or the default. */
typedef struct {
    const char *model, *host, *api_key, *run_dir, *kv_dtype, *model_name, *reasoning, *shardd;
    const char *control; /* control socket endpoint (default ipc://RUN/control.ipc) */
    const char *profile, *profiles_dir;
    int port, max_running, max_queue, max_batch_tokens, threads, default_max_tokens;
    int max_context, shards, crash_loop;
    double kv_gib, shutdown_grace, heartbeat, crash_window, degraded_retry;
} s_args_t;

static int s_usage(void) {
    fprintf(
        stderr,
        "usage: gptoss-gateway (--model DIR | --profile FILE|NAME) [--tp N] [--profiles-dir D]\n"
        "         [--host 127.0.0.1] [--port 8000] [--api-key KEY]\n"
        "         [--run-dir DIR] [--kv-dtype f32|bf16] [--kv-gib G] [--max-running N]\n"
        "         [--max-queue N] [--max-batch-tokens N] [--threads N] [--model-name NAME]\n"
        "         [--reasoning-effort low|medium|high] [--default-max-tokens N]\n"
        "         [--max-context N] [--shardd PATH] [--shutdown-grace S]\n"
        "         [--control ipc://PATH | tcp://127.0.0.1:PORT] [--heartbeat S]\n"
        "         [--crash-loop N] [--crash-window S] [--degraded-retry S]\n"
        "  --api-key defaults to $GPTOSS_API_KEY; --run-dir to $GPTOSS_RUN_DIR, "
        "$XDG_RUNTIME_DIR/gptoss or /tmp/gptoss-UID (where gptoss-ctl looks)\n"
        "  flags override the profile's fields; --crash-loop N deaths within --crash-window S\n"
        "  seconds (default 5 in 60) make the service DEGRADED, retried after\n"
        "  --degraded-retry S (default 30; -1: only on restart-shard)\n");
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
    *a = (s_args_t){.port = -1, .shutdown_grace = 30};
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
        else if (strcmp(o, "--shards") == 0 || strcmp(o, "--tp") == 0)
            bad = s_int(o, v, 1, SCHED_MAX_SHARDS, &a->shards);
        else if (strcmp(o, "--profile") == 0)
            a->profile = v;
        else if (strcmp(o, "--profiles-dir") == 0)
            a->profiles_dir = v;
        else if (strcmp(o, "--heartbeat") == 0)
            bad = s_double(o, v, 0.05, 60, &a->heartbeat);
        else if (strcmp(o, "--crash-loop") == 0)
            bad = s_int(o, v, 1, 1000, &a->crash_loop);
        else if (strcmp(o, "--crash-window") == 0)
            bad = s_double(o, v, 0.1, 86400, &a->crash_window);
        else if (strcmp(o, "--degraded-retry") == 0)
            bad = s_double(o, v, -1, 86400, &a->degraded_retry);
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
    if (!a->model && !a->profile) {
        fprintf(stderr, "gptoss-gateway: --model DIR or --profile FILE|NAME is required\n");
        return -1;
    }
    return 0;
}

/* ---- profiles ---- */

/* The profiles directory: --profiles-dir, else deploy/profiles under the cwd, else
 * deploy/profiles of the source tree above the executable (build dirs live in it). */
static void s_profiles_dir(const char *given, char *buf, size_t n) {
    struct stat stt;
    if (given) {
        snprintf(buf, n, "%s", given);
        return;
    }
    if (stat(PROFILE_DEFAULT_DIR, &stt) == 0 && S_ISDIR(stt.st_mode)) {
        if (!realpath(PROFILE_DEFAULT_DIR, buf)) snprintf(buf, n, "%s", PROFILE_DEFAULT_DIR);
        return;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        char cand[PATH_MAX + 32];
        snprintf(cand, sizeof cand, "%s/../%s", exe, PROFILE_DEFAULT_DIR);
        if (stat(cand, &stt) == 0 && S_ISDIR(stt.st_mode) && realpath(cand, buf)) return;
    }
    snprintf(buf, n, "%s", PROFILE_DEFAULT_DIR);
}

/* gptoss-shardd runs the CPU backend at any tp and the CUDA backend at tp 1 (one GPU, the
 * profile's devices[0]): tensor parallelism over NCCL is not wired into the shard yet, so a
 * cuda profile with tp > 1 is refused with that reason rather than started and failed. Whether
 * the shard binary has CUDA and the host a GPU is the shard's to say: its LOAD_ERROR (e.g. "built
 * without CUDA", "device 0 does not exist") makes the gateway DEGRADED with that message. */
static int s_backend_supported(const profile_t *p, gerr_t *err) {
    if (p->backend == PROFILE_BACKEND_CPU) return 0;
    if (p->backend == PROFILE_BACKEND_CUDA && p->tp == 1) return 0;
    if (p->backend == PROFILE_BACKEND_CUDA) {
        gerr_set(err,
                 "profile %s: backend \"cuda\" with tp %d is not available: tensor parallelism "
                 "over GPUs (NCCL) is not wired into gptoss-shardd yet, so a cuda profile must "
                 "have tp 1 (one GPU); use a cuda profile with tp 1, or a cpu profile for tp > 1",
                 p->name, p->tp);
        return GERR_INVALID;
    }
    gerr_set(err, "profile %s: backend \"%s\" is not available", p->name,
             profile_backend_name(p->backend));
    return GERR_INVALID;
}

/* Loads profile `name` and checks it against its model's config.json; 0 or an error in err
 * (p is the caller's to profile_free in both cases). */
static int s_profile_load_checked(const char *name, const char *dir, profile_t *p, gerr_t *err) {
    int rc = profile_load(name, dir, p, err);
    if (rc) return rc;
    if ((rc = s_backend_supported(p, err))) return rc;
    gptoss_config_t cfg;
    rc = config_load(p->model, &cfg, err);
    if (rc) {
        gerr_prefix(err, "profile %s: model %s", p->name, p->model);
        return rc;
    }
    return profile_check_model(p, &cfg, err);
}

/* Scheduler settings of profile p (may be NULL) with the flags of a on top when
 * `overrides` (the start); strings are borrowed from p and a. */
static void s_sched_opts(const profile_t *p, const s_args_t *a, bool overrides, const char *run_dir,
                         const char *profiles_dir, int vocab_limit, sched_opts_t *so) {
    *so = (sched_opts_t){
        .shardd_path = a->shardd,
        .run_dir = run_dir,
        .vocab_limit = vocab_limit,
        .profiles_dir = profiles_dir,
        .heartbeat_s = a->heartbeat,
        .crash_loop_deaths = a->crash_loop,
        .crash_loop_window_s = a->crash_window,
        .degraded_retry_s = a->degraded_retry,
    };
    if (p) {
        so->profile_name = p->name;
        so->model_dir = p->model;
        so->n_shards = p->tp;
        so->threads = p->threads;
        so->kv_dtype = p->kv_dtype;
        so->backend = profile_backend_name(p->backend);
        so->device = p->backend == PROFILE_BACKEND_CUDA && p->n_devices > 0 ? p->devices[0] : 0;
        so->kv_budget_gib = p->kv_gib;
        so->max_running = p->max_running;
        so->max_queue = p->max_queue;
        so->max_batch_tokens = p->max_batch_tokens;
        so->prefill_chunk = p->prefill_chunk;
        so->max_context = p->max_context;
        so->default_max_tokens = p->default_max_tokens;
        so->default_temperature = p->default_temperature;
        so->default_reasoning = p->default_reasoning;
    }
    if (!overrides) return;
    if (a->model) so->model_dir = a->model;
    if (a->shards) so->n_shards = a->shards;
    if (a->threads) so->threads = a->threads;
    if (a->kv_dtype) so->kv_dtype = a->kv_dtype;
    if (a->kv_gib > 0) so->kv_budget_gib = a->kv_gib;
    if (a->max_running) so->max_running = a->max_running;
    if (a->max_queue) so->max_queue = a->max_queue;
    if (a->max_batch_tokens) so->max_batch_tokens = a->max_batch_tokens;
    if (a->max_context) so->max_context = a->max_context;
    if (a->default_max_tokens) so->default_max_tokens = a->default_max_tokens;
    if (a->reasoning) so->default_reasoning = a->reasoning;
    if (so->prefill_chunk > so->max_batch_tokens && so->max_batch_tokens > 0)
        so->prefill_chunk = so->max_batch_tokens;
}

/* What the control handlers need (the control thread is their only user after start). */
typedef struct {
    sched_t *sched;
    const s_args_t *args;
    const char *run_dir;
    char profiles_dir[PATH_MAX];
    int vocab_limit;
    char active[PATH_MAX]; /* file of the profile last switched to ("" when --model only) */
} s_ctl_t;

/* ---- control socket handlers (run on the control thread) ---- */

static atomic_bool s_stop_now; /* shutdown {"graceful": false}: skip the drain */

static int s_ctl_status(void *user, cJSON *reply, gerr_t *err) {
    s_ctl_t *c = user;
    sched_stats_t st;
    sched_snapshot(c->sched, &st);
    cJSON *shards = cJSON_AddArrayToObject(reply, "shards");
    if (!cJSON_AddStringToObject(reply, "state", sched_state_name(st.state)) ||
        !cJSON_AddStringToObject(reply, "message", st.state_message) ||
        !cJSON_AddBoolToObject(reply, "ready_checked", st.ready_checked) ||
        !cJSON_AddNumberToObject(reply, "uptime_s", st.uptime_s) ||
        !cJSON_AddStringToObject(reply, "profile", st.profile) ||
        !cJSON_AddStringToObject(reply, "model", st.model_dir) ||
        !cJSON_AddStringToObject(reply, "switching_to", st.switching_to) ||
        !cJSON_AddNumberToObject(reply, "tp", st.n_shards) ||
        !cJSON_AddNumberToObject(reply, "generation", st.generation) ||
        !cJSON_AddNumberToObject(reply, "deaths_recent", st.deaths_recent) || !shards)
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
            !cJSON_AddStringToObject(o, "backend", sh->backend) ||
            !cJSON_AddStringToObject(o, "last_error", sh->last_error))
            goto nomem;
    }
    return 0;
nomem:
    gerr_set(err, "out of memory");
    return GERR_NOMEM;
}

static int s_ctl_stats(void *user, cJSON *reply, gerr_t *err) {
    s_ctl_t *c = user;
    sched_stats_t st;
    sched_snapshot(c->sched, &st);
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
    sched_drain(((s_ctl_t *)user)->sched);
    return 0;
}

static int s_ctl_resume(void *user, cJSON *reply, gerr_t *err) {
    sched_resume(((s_ctl_t *)user)->sched);
    return 0;
}

static int s_ctl_restart_shard(void *user, int shard, cJSON *reply, gerr_t *err) {
    s_ctl_t *c = user;
    int rc = sched_restart_shard(c->sched, shard, err);
    if (rc) return rc;
    if (!cJSON_AddNumberToObject(reply, "shard", shard) ||
        !cJSON_AddStringToObject(reply, "message",
                                 "the shard group restarts; running requests continue")) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    return 0;
}

/* Loads, checks and hands profile `name` to the scheduler; the reply names it. */
static int s_switch_to(s_ctl_t *c, const char *name, cJSON *reply, gerr_t *err) {
    profile_t p = {0};
    int rc = s_profile_load_checked(name, c->profiles_dir, &p, err);
    if (!rc) {
        sched_opts_t so;
        s_sched_opts(&p, c->args, false, c->run_dir, c->profiles_dir, c->vocab_limit, &so);
        rc = sched_switch(c->sched, &so, err);
    }
    if (!rc) {
        char abs[PATH_MAX];
        snprintf(c->active, sizeof c->active, "%s", realpath(p.path, abs) ? abs : p.path);
        LOG_INFO("main", "switch to profile '%s' (%s, model %s, tp %d) started", p.name, p.path,
                 p.model, p.tp);
        if (!cJSON_AddStringToObject(reply, "profile", p.name) ||
            !cJSON_AddStringToObject(reply, "model", p.model) ||
            !cJSON_AddNumberToObject(reply, "tp", p.tp) ||
            !cJSON_AddStringToObject(reply, "message",
                                     "switching: draining, then the new shards start; "
                                     "see status")) {
            gerr_set(err, "out of memory");
            rc = GERR_NOMEM;
        }
    } else {
        LOG_WARN("main", "switch-profile %s refused: %s", name, err->msg);
    }
    profile_free(&p);
    return rc;
}

static int s_ctl_switch(void *user, const char *profile, cJSON *reply, gerr_t *err) {
    return s_switch_to(user, profile, reply, err);
}

static int s_ctl_reload(void *user, cJSON *reply, gerr_t *err) {
    s_ctl_t *c = user;
    if (!c->active[0]) {
        gerr_set(err, "this gateway was started with --model, not a profile: nothing to reload "
                      "(use switch-profile FILE|NAME)");
        return GERR_INVALID;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", c->active);
    return s_switch_to(c, path, reply, err);
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

/* Whether a live process accepts connections on RUN/control.ipc (a gateway already serving
 * there: its shard socket must not be taken over). */
static bool s_run_dir_in_use(const char *run_dir) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", run_dir, CONTROL_SOCKET_NAME);
    if (n < 0 || (size_t)n >= sizeof sa.sun_path) return false;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool live = connect(fd, (const struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return live;
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

    /* The run dir holds the shard and control sockets. Its default is the one gptoss-ctl
     * looks in ($GPTOSS_RUN_DIR, $XDG_RUNTIME_DIR/gptoss or /tmp/gptoss-UID), so that
     * `gptoss-ctl status` finds the gateway; a second gateway on the host needs --run-dir
     * (the control socket refuses to take over a live one). */
    char run_dir[PATH_MAX];
    bool made_run_dir = false;
    if (a.run_dir)
        snprintf(run_dir, sizeof run_dir, "%s", a.run_dir);
    else if (control_default_run_dir(run_dir, sizeof run_dir) != 0) {
        fprintf(stderr, "gptoss-gateway: the default run dir path is too long (use --run-dir)\n");
        return 1;
    }
    if (mkdir(run_dir, 0700) == 0)
        made_run_dir = true;
    else if (errno != EEXIST) {
        fprintf(stderr, "gptoss-gateway: cannot create run dir %s: %s (use --run-dir)\n", run_dir,
                strerror(errno));
        return 1;
    }
    if (s_run_dir_in_use(run_dir)) {
        fprintf(stderr,
                "gptoss-gateway: another gateway is serving in %s (its control socket answers); "
                "stop it or give this one its own --run-dir\n",
                run_dir);
        return 1;
    }

    int status = 1;
    gerr_t err = {{0}};
    tokenizer_t *tok = NULL;
    sched_t *sched = NULL;
    http_t *http = NULL;
    control_t *ctl = NULL;
    profile_t prof = {0};
    bool have_profile = false;
    s_ctl_t cx = {.args = &a, .run_dir = run_dir};
    s_profiles_dir(a.profiles_dir, cx.profiles_dir, sizeof cx.profiles_dir);
    if (a.profile) {
        if (profile_load(a.profile, cx.profiles_dir, &prof, &err) != 0) {
            fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
            goto out;
        }
        have_profile = true;
        char abs[PATH_MAX];
        snprintf(cx.active, sizeof cx.active, "%s", realpath(prof.path, abs) ? abs : prof.path);
        /* the flags that change what profile_check_model looks at */
        if (a.shards) prof.tp = a.shards;
        if (a.max_context) prof.max_context = a.max_context;
        if (s_backend_supported(&prof, &err) != 0) { /* after --shards: it checks tp */
            fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
            goto out;
        }
        gptoss_config_t cfg;
        const char *model = a.model ? a.model : prof.model;
        if (config_load(model, &cfg, &err) != 0 || profile_check_model(&prof, &cfg, &err) != 0) {
            fprintf(stderr, "gptoss-gateway: profile %s (model %s): %s\n", prof.name, model,
                    err.msg);
            goto out;
        }
    }
    const char *model_dir = a.model ? a.model : prof.model;
    if (tok_load(model_dir, &tok, &err) != 0) {
        LOG_WARN("main", "no tokenizer (%s): text endpoints answer 503; token-id prompts work",
                 err.msg);
        tok = NULL;
    }
    metrics_init();
    sched_opts_t so;
    s_sched_opts(have_profile ? &prof : NULL, &a, true, run_dir, cx.profiles_dir,
                 tok ? tok_vocab_size(tok) : 0, &so);
    cx.vocab_limit = so.vocab_limit;
    if (sched_new(&so, &sched, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
        goto out;
    }
    cx.sched = sched;
    /* the id /v1/models shows: --model-name, else the model folder's name ("gpt-oss-20b") */
    char model_id[256] = "";
    if (!a.model_name && so.model_dir) {
        snprintf(model_id, sizeof model_id, "%s", so.model_dir);
        size_t ml = strlen(model_id);
        while (ml > 1 && model_id[ml - 1] == '/')
            model_id[--ml] = 0;
        const char *slash = strrchr(model_id, '/');
        if (slash) memmove(model_id, slash + 1, strlen(slash + 1) + 1);
    }
    http_opts_t ho = {
        .bind_addr = a.host         ? a.host
                     : have_profile ? prof.http_host
                                    : "127.0.0.1",
        .port = a.port >= 0    ? a.port
                : have_profile ? prof.http_port
                               : 8000,
        .api_key = a.api_key,
        .model_name = a.model_name  ? a.model_name
                      : model_id[0] ? model_id
                                    : NULL,
        .default_max_tokens = so.default_max_tokens,
        .default_temperature = (float)so.default_temperature,
        .default_reasoning = so.default_reasoning,
    };
    if (http_new(&ho, sched, tok, &http, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: %s\n", err.msg);
        goto out;
    }
    char ctl_ep[PATH_MAX + 32];
    snprintf(ctl_ep, sizeof ctl_ep, "ipc://%s/%s", run_dir, CONTROL_SOCKET_NAME);
    control_handlers_t ch = {.user = &cx,
                             .status = s_ctl_status,
                             .stats = s_ctl_stats,
                             .restart_shard = s_ctl_restart_shard,
                             .drain = s_ctl_drain,
                             .resume = s_ctl_resume,
                             .switch_profile = s_ctl_switch,
                             .reload = s_ctl_reload,
                             .shutdown = s_ctl_shutdown};
    if (control_start(a.control ? a.control : ctl_ep, &ch, &ctl, &err) != 0) {
        fprintf(stderr, "gptoss-gateway: control socket: %s\n", err.msg);
        goto out;
    }
    LOG_INFO("main", "control socket on %s", control_endpoint(ctl));
    fprintf(stderr, "gptoss-gateway: listening on http://%s:%d\n", ho.bind_addr, http_port(http));

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
    profile_free(&prof);
    if (made_run_dir && rmdir(run_dir) != 0)
        LOG_WARN("main", "cannot remove run dir %s: %s", run_dir, strerror(errno));
    LOG_INFO("main", "stopped");
    return status;
}
