/* shardlink: shard processes and the ROUTER socket of the gateway (see
 * shardlink.h and PROTOCOL.md).
 *
 * Each shard connects two DEALERs: "shard-R" (commands, steps) and "shard-R-hb"
 * (its heartbeat thread). A message from either counts as a sign of life; the
 * gateway sends its own heartbeats to "shard-R-hb" (falling back to "shard-R"
 * until the heartbeat socket is connected), so a shard busy in a long step still
 * hears them. Messages from routing ids this gateway did not spawn, from a
 * process other than the one spawned (HELLO pid), or in the wrong state are
 * logged and dropped. Processes are spawned with posix_spawn in their own
 * process group with default signal dispositions, and are reaped by pid only
 * (never waitpid(-1): the embedding program may have other children). */
#include "shardlink.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "comm.h"
#include "gw.h"
#include "log.h"

/* Copies src into dst[n], truncating. */
static void s_copy(char *dst, size_t n, const char *src) {
    size_t l = strnlen(src, n - 1);
    memcpy(dst, src, l);
    dst[l] = 0;
}

extern char **environ;

struct shardlink {
    shardlink_opts_t o;
    char *shardd_path, *run_dir, *model_dir, *kv_dtype; /* owned copies */
    char endpoint[512];
    void *ctx, *router;
    int gen;            /* start generation (names the shm communicator) */
    char comm_name[64]; /* "/gptoss-<pid>-<gen>" of the current group ("" before a start) */
    double last_hb_sent;
    shardlink_shard_t sh[SHARDLINK_MAX_SHARDS];
};

static char *s_strdup(const char *s) {
    return s ? strdup(s) : NULL;
}

const char *shardlink_state_name(shardlink_state_t st) {
    switch (st) {
    case SHARDLINK_DOWN:
        return "down";
    case SHARDLINK_STARTING:
        return "starting";
    case SHARDLINK_LOADING:
        return "loading";
    case SHARDLINK_UP:
        return "up";
    case SHARDLINK_FAILED:
        return "failed";
    }
    return "?";
}

int shardlink_new(const shardlink_opts_t *opts, shardlink_t **out, gerr_t *err) {
    *out = NULL;
    if (opts->n_shards < 1 || opts->n_shards > SHARDLINK_MAX_SHARDS) {
        gerr_set(err, "shards: %d shards requested; 1..%d supported", opts->n_shards,
                 SHARDLINK_MAX_SHARDS);
        return GERR_INVALID;
    }
    if (!opts->shardd_path || !opts->run_dir || !opts->model_dir) {
        gerr_set(err, "shards: shardd path, run dir and model dir are required");
        return GERR_INVALID;
    }
    shardlink_t *sl = calloc(1, sizeof *sl);
    if (!sl) {
        gerr_set(err, "shards: out of memory");
        return GERR_NOMEM;
    }
    sl->o = *opts;
    sl->shardd_path = s_strdup(opts->shardd_path);
    sl->run_dir = s_strdup(opts->run_dir);
    sl->model_dir = s_strdup(opts->model_dir);
    sl->kv_dtype = s_strdup(opts->kv_dtype ? opts->kv_dtype : "f32");
    /* the backend is one of two names: keep a static string rather than a copy */
    bool cuda = opts->backend && strcmp(opts->backend, "cuda") == 0;
    if (opts->backend && !cuda && strcmp(opts->backend, "cpu") != 0) {
        gerr_set(err, "shards: backend '%.32s' is not \"cpu\" or \"cuda\"", opts->backend);
        shardlink_free(&sl, 0);
        return GERR_INVALID;
    }
    if (cuda && opts->n_shards > 1) {
        gerr_set(err,
                 "shards: backend \"cuda\" with %d shards: tensor parallelism on GPUs (NCCL) is "
                 "not wired into gptoss-shardd yet; use tp 1",
                 opts->n_shards);
        shardlink_free(&sl, 0);
        return GERR_INVALID;
    }
    sl->o.backend = cuda ? "cuda" : "cpu";
    if (!sl->shardd_path || !sl->run_dir || !sl->model_dir || !sl->kv_dtype) {
        gerr_set(err, "shards: out of memory");
        shardlink_free(&sl, 0);
        return GERR_NOMEM;
    }
    if (sl->o.heartbeat_s <= 0) sl->o.heartbeat_s = 1;
    if (sl->o.hello_timeout_s <= 0) sl->o.hello_timeout_s = 60;
    for (int r = 0; r < SHARDLINK_MAX_SHARDS; r++)
        sl->sh[r].rank = r;
    /* an ipc path is limited to about 107 bytes (sun_path) */
    int n = snprintf(sl->endpoint, sizeof sl->endpoint, "ipc://%s/shards.ipc", sl->run_dir);
    if (n < 0 || n - 6 > 100) {
        gerr_set(err,
                 "shards: run dir '%s' is too long for an ipc socket path (keep it under 80 "
                 "bytes, e.g. --run-dir /tmp/gptoss)",
                 sl->run_dir);
        shardlink_free(&sl, 0);
        return GERR_INVALID;
    }
    int one = 1, zero = 0;
    sl->ctx = zmq_ctx_new();
    if (!sl->ctx || !(sl->router = zmq_socket(sl->ctx, ZMQ_ROUTER)) ||
        zmq_setsockopt(sl->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(sl->router, ZMQ_ROUTER_HANDOVER, &one, sizeof one) ||
        zmq_setsockopt(sl->router, ZMQ_LINGER, &zero, sizeof zero)) {
        gerr_set(err, "shards: cannot create the ZeroMQ ROUTER socket: %s", zmq_strerror(errno));
        shardlink_free(&sl, 0);
        return GERR_IO;
    }
    if (zmq_bind(sl->router, sl->endpoint) != 0) {
        gerr_set(err, "shards: cannot bind %s: %s (is the run dir writable?)", sl->endpoint,
                 zmq_strerror(errno));
        shardlink_free(&sl, 0);
        return GERR_IO;
    }
    *out = sl;
    return 0;
}

/* Describes a wait status into buf. */
static void s_describe_status(int status, char *buf, size_t n) {
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d%s", WEXITSTATUS(status),
                 WEXITSTATUS(status) == 2   ? " (load failed)"
                 : WEXITSTATUS(status) == 3 ? " (lost the gateway's heartbeat)"
                                            : "");
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "stopped (status 0x%x)", status);
}

/* Kills (if kill_sig) and reaps shard r, waiting up to wait_s; returns 1 if reaped. */
static int s_reap(shardlink_shard_t *s, int kill_sig, double wait_s) {
    if (s->pid <= 0) return 1;
    if (kill_sig && kill(s->pid, kill_sig) != 0 && errno != ESRCH)
        LOG_WARN("shards", "shard %d: kill(%d): %s", s->rank, s->pid, strerror(errno));
    double until = gw_now() + wait_s;
    for (;;) {
        int status = 0;
        pid_t p = waitpid(s->pid, &status, WNOHANG);
        if (p == s->pid || (p < 0 && errno == ECHILD)) {
            s->pid = 0;
            s->state = SHARDLINK_DOWN;
            return 1;
        }
        if (p < 0 && errno != EINTR) {
            LOG_WARN("shards", "shard %d: waitpid: %s", s->rank, strerror(errno));
            s->pid = 0;
            s->state = SHARDLINK_DOWN;
            return 1;
        }
        if (gw_now() >= until) return 0;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int s_send(shardlink_t *sl, const char *ident, uint8_t cmd, uint32_t rank, uint64_t seq,
                  const void *body, size_t len) {
    uint8_t hdr[PROTO_HEADER_SIZE];
    proto_header_t h = {.cmd = cmd, .rank = rank, .seq = seq};
    proto_header_encode(&h, hdr);
    if (zmq_send(sl->router, ident, strlen(ident), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -1;
    if (zmq_send(sl->router, hdr, sizeof hdr, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -1;
    if (zmq_send(sl->router, body ? body : "", len, ZMQ_DONTWAIT) < 0) return -1;
    return 0;
}

static int s_send_rank(shardlink_t *sl, int r, uint8_t cmd, uint64_t seq, const void *body,
                       size_t len) {
    char ident[32];
    snprintf(ident, sizeof ident, "shard-%d", r);
    return s_send(sl, ident, cmd, (uint32_t)r, seq, body, len);
}

static void s_comm_retire(shardlink_t *sl);

void shardlink_free(shardlink_t **psl, double grace_s) {
    if (!psl || !*psl) return;
    shardlink_t *sl = *psl;
    if (sl->router) {
        for (int r = 0; r < sl->o.n_shards; r++) {
            shardlink_shard_t *s = &sl->sh[r];
            if (s->pid <= 0) continue;
            /* a shard that has not said HELLO cannot be reached over the socket yet */
            if (s->state < SHARDLINK_LOADING || s_send_rank(sl, r, PROTO_SHUTDOWN, 0, NULL, 0))
                if (kill(s->pid, SIGTERM) != 0 && errno != ESRCH)
                    LOG_WARN("shards", "shard %d: kill(SIGTERM): %s", r, strerror(errno));
        }
    }
    double until = gw_now() + grace_s;
    for (int r = 0; r < sl->o.n_shards; r++) {
        double left = until - gw_now();
        if (!s_reap(&sl->sh[r], 0, left > 0 ? left : 0)) {
            LOG_WARN("shards", "shard %d (pid %d) did not exit within %.1f s; killing it", r,
                     sl->sh[r].pid, grace_s);
            s_reap(&sl->sh[r], SIGKILL, 5);
        }
    }
    s_comm_retire(sl);
    if (sl->router) zmq_close(sl->router);
    if (sl->ctx) zmq_ctx_term(sl->ctx);
    if (sl->run_dir) {
        char path[600];
        snprintf(path, sizeof path, "%s/shards.ipc", sl->run_dir);
        (void)unlink(path);
    }
    free(sl->shardd_path);
    free(sl->run_dir);
    free(sl->model_dir);
    free(sl->kv_dtype);
    free(sl);
    *psl = NULL;
}

static int s_spawn(shardlink_t *sl, int r, gerr_t *err) {
    char rank[16], world[16], threads[16];
    snprintf(rank, sizeof rank, "%d", r);
    snprintf(world, sizeof world, "%d", sl->o.n_shards);
    snprintf(threads, sizeof threads, "%d", sl->o.threads > 0 ? sl->o.threads : 0);
    char *argv[] = {sl->shardd_path, "--endpoint", sl->endpoint, "--rank",    rank,    "--world",
                    world,           "--run-dir",  sl->run_dir,  "--threads", threads, NULL};
    posix_spawnattr_t at;
    if (posix_spawnattr_init(&at) != 0) {
        gerr_set(err, "shard %d: posix_spawnattr_init failed", r);
        return GERR_IO;
    }
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGCHLD);
    sigaddset(&def, SIGHUP);
    int rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                               POSIX_SPAWN_SETSIGDEF);
    if (!rc) rc = posix_spawnattr_setpgroup(&at, 0);
    if (!rc) rc = posix_spawnattr_setsigmask(&at, &none);
    if (!rc) rc = posix_spawnattr_setsigdefault(&at, &def);
    pid_t pid = 0;
    if (!rc) rc = posix_spawn(&pid, sl->shardd_path, NULL, &at, argv, environ);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        gerr_set(err, "shard %d: cannot start %s: %s (check --shardd or that the build made it)", r,
                 sl->shardd_path, strerror(rc));
        return GERR_IO;
    }
    shardlink_shard_t *s = &sl->sh[r];
    s->pid = (int)pid;
    s->state = SHARDLINK_STARTING;
    s->spawned_at = s->last_heard = gw_now();
    s->vocab = 0;
    s->backend[0] = 0;
    LOG_INFO("shards", "shard %d: started pid %d (%s)", r, s->pid, sl->endpoint);
    return 0;
}

/* Aborts the current group's shm collectives (so no survivor waits on a dead peer) and
 * removes the segment; absent segments are fine (rank 0 may not have made it yet). */
static void s_comm_retire(shardlink_t *sl) {
    if (sl->o.n_shards < 2 || !sl->comm_name[0]) return;
    gerr_t e = {{0}};
    int rc = comm_shm_abort_name(sl->comm_name, &e);
    if (rc != 0 && rc != GERR_NOTFOUND)
        LOG_WARN("shards", "comm %s: abort: %s", sl->comm_name, e.msg);
    rc = comm_shm_unlink(sl->comm_name, &e);
    if (rc != 0 && rc != GERR_NOTFOUND)
        LOG_WARN("shards", "comm %s: unlink: %s", sl->comm_name, e.msg);
}

int shardlink_start(shardlink_t *sl, gerr_t *err) {
    s_comm_retire(sl); /* the previous generation's segment, if any */
    sl->gen++;
    snprintf(sl->comm_name, sizeof sl->comm_name, "/gptoss-%d-%d", (int)getpid(), sl->gen);
    if (sl->o.n_shards > 1 && sl->o.comm_by_gateway) {
        int rc = comm_shm_create(sl->comm_name, sl->o.n_shards, 0, err);
        if (rc) {
            gerr_prefix(err, "shards: cannot create the shm communicator %s", sl->comm_name);
            return rc;
        }
    }
    for (int r = 0; r < sl->o.n_shards; r++) {
        if (sl->sh[r].pid > 0) s_reap(&sl->sh[r], SIGKILL, 5);
        int rc = s_spawn(sl, r, err);
        if (rc) {
            shardlink_kill_all(sl);
            return rc;
        }
    }
    sl->last_hb_sent = gw_now();
    return 0;
}

void shardlink_kill_all(shardlink_t *sl) {
    if (sl->o.n_shards > 1 && sl->comm_name[0]) { /* wake survivors blocked in a collective */
        gerr_t e = {{0}};
        int rc = comm_shm_abort_name(sl->comm_name, &e);
        if (rc != 0 && rc != GERR_NOTFOUND)
            LOG_WARN("shards", "comm %s: abort: %s", sl->comm_name, e.msg);
    }
    for (int r = 0; r < sl->o.n_shards; r++)
        if (sl->sh[r].pid > 0 && !s_reap(&sl->sh[r], SIGKILL, 5))
            LOG_ERROR("shards", "shard %d (pid %d) survives SIGKILL for 5 s", r, sl->sh[r].pid);
}

void *shardlink_socket(shardlink_t *sl) {
    return sl->router;
}

bool shardlink_all_up(const shardlink_t *sl) {
    for (int r = 0; r < sl->o.n_shards; r++)
        if (sl->sh[r].state != SHARDLINK_UP) return false;
    return true;
}

bool shardlink_any_alive(const shardlink_t *sl) {
    for (int r = 0; r < sl->o.n_shards; r++)
        if (sl->sh[r].pid > 0) return true;
    return false;
}

const shardlink_shard_t *shardlink_shard(const shardlink_t *sl, int rank) {
    return &sl->sh[rank];
}

void shardlink_event_clear(shardlink_event_t *ev) {
    free(ev->samples);
    memset(ev, 0, sizeof *ev);
}

static char *s_load_json(const shardlink_t *sl) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = cJSON_AddStringToObject(o, "model", sl->model_dir) &&
              cJSON_AddStringToObject(o, "kv_dtype", sl->kv_dtype) &&
              cJSON_AddStringToObject(o, "backend", sl->o.backend) &&
              cJSON_AddNumberToObject(o, "block_size", sl->o.block_size) &&
              cJSON_AddNumberToObject(o, "kv_full_blocks", sl->o.kv_full_blocks) &&
              cJSON_AddNumberToObject(o, "kv_window_blocks", sl->o.kv_window_blocks) &&
              cJSON_AddNumberToObject(o, "max_seqs", sl->o.max_seqs) &&
              cJSON_AddNumberToObject(o, "max_chunk", sl->o.max_chunk) &&
              cJSON_AddNumberToObject(o, "threads", sl->o.threads) &&
              cJSON_AddStringToObject(o, "comm", sl->o.n_shards > 1 ? "shm" : "single") &&
              cJSON_AddStringToObject(o, "comm_name", sl->comm_name) &&
              cJSON_AddNumberToObject(o, "vocab_limit", sl->o.vocab_limit);
    if (ok && strcmp(sl->o.backend, "cuda") == 0)
        ok = cJSON_AddNumberToObject(o, "device", sl->o.device) != NULL;
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* Reads {"message": ...} of a JSON body into msg (or the raw text if not JSON). */
static void s_json_message(const uint8_t *body, size_t len, char *msg, size_t n) {
    cJSON *o = cJSON_ParseWithLength((const char *)body, len);
    const cJSON *m = o ? cJSON_GetObjectItemCaseSensitive(o, "message") : NULL;
    if (cJSON_IsString(m))
        snprintf(msg, n, "%s", m->valuestring);
    else
        snprintf(msg, n, "%.*s", (int)(len < 200 ? len : 200), (const char *)body);
    cJSON_Delete(o);
}

static int s_json_int(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : dflt;
}

/* Parses a routing id "shard-R" / "shard-R-hb"; returns R or -1. */
static int s_parse_ident(const uint8_t *id, size_t len, bool *hb) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, id, len);
    buf[len] = 0;
    int r = -1, n = 0;
    *hb = false;
    if (sscanf(buf, "shard-%d%n", &r, &n) != 1) return -1;
    if (buf[n] == 0) return r;
    if (strcmp(buf + n, "-hb") == 0) {
        *hb = true;
        return r;
    }
    return -1;
}

static void s_handle_hello(shardlink_t *sl, shardlink_shard_t *s, const uint8_t *body, size_t len) {
    cJSON *o = cJSON_ParseWithLength((const char *)body, len);
    int pid = o ? s_json_int(o, "pid", -1) : -1;
    int world = o ? s_json_int(o, "world", -1) : -1;
    int version = o ? s_json_int(o, "version", -1) : -1;
    cJSON_Delete(o);
    if (pid != s->pid || world != sl->o.n_shards || version != PROTO_VERSION) {
        LOG_WARN("shards",
                 "proto: dropped HELLO from shard %d (pid %d world %d version %d; "
                 "expected pid %d world %d version %d)",
                 s->rank, pid, world, version, s->pid, sl->o.n_shards, PROTO_VERSION);
        return;
    }
    char *load = s_load_json(sl);
    if (!load) {
        snprintf(s->last_error, sizeof s->last_error, "out of memory building LOAD");
        return;
    }
    if (s_send_rank(sl, s->rank, PROTO_LOAD, 0, load, strlen(load)) != 0) {
        LOG_WARN("shards", "shard %d: cannot send LOAD: %s", s->rank, zmq_strerror(errno));
    } else {
        s->state = SHARDLINK_LOADING;
        LOG_INFO("shards", "shard %d: HELLO, LOAD sent", s->rank);
    }
    free(load);
}

/* READY: checks that the shard built the pools the gateway asked for. */
static int s_handle_ready(shardlink_t *sl, shardlink_shard_t *s, const uint8_t *body, size_t len,
                          shardlink_event_t *ev) {
    cJSON *o = cJSON_ParseWithLength((const char *)body, len);
    if (!o) {
        LOG_WARN("shards", "proto: dropped READY from shard %d: body is not JSON", s->rank);
        return 0;
    }
    int full = s_json_int(o, "kv_full_blocks", -1), win = s_json_int(o, "kv_window_blocks", -1);
    int bs = s_json_int(o, "block_size", -1);
    s->vocab = s_json_int(o, "vocab", 0);
    const cJSON *lm = cJSON_GetObjectItemCaseSensitive(o, "load_ms");
    s->load_ms = cJSON_IsNumber(lm) ? lm->valuedouble : 0;
    const cJSON *be = cJSON_GetObjectItemCaseSensitive(o, "backend");
    s_copy(s->backend, sizeof s->backend, cJSON_IsString(be) ? be->valuestring : "");
    cJSON_Delete(o);
    ev->rank = s->rank;
    if (full != sl->o.kv_full_blocks || win != sl->o.kv_window_blocks || bs != sl->o.block_size) {
        ev->kind = SHARDLINK_EV_LOAD_ERROR;
        snprintf(
            ev->message, sizeof ev->message,
            "shard %d built KV pools %d + %d blocks of %d, the gateway asked for %d + %d of %d",
            s->rank, full, win, bs, sl->o.kv_full_blocks, sl->o.kv_window_blocks, sl->o.block_size);
        s->state = SHARDLINK_FAILED;
        s_copy(s->last_error, sizeof s->last_error, ev->message);
        return 1;
    }
    s->state = SHARDLINK_UP;
    ev->kind = SHARDLINK_EV_READY;
    LOG_INFO("shards", "shard %d: READY (vocab %d, load %.0f ms, backend %s)", s->rank, s->vocab,
             s->load_ms, s->backend[0] ? s->backend : "?");
    return 1;
}

int shardlink_recv(shardlink_t *sl, shardlink_event_t *ev) {
    memset(ev, 0, sizeof *ev);
    zmq_msg_t part[4];
    int n = 0, more = 1, rc = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sl->router, ZMQ_DONTWAIT) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            if (n == 0 && (e == EAGAIN || e == EINTR)) return 0;
            LOG_WARN("shards", "proto: receive failed: %s", zmq_strerror(e));
            rc = n == 0 ? -1 : 0;
            goto done;
        }
        more = zmq_msg_more(&m);
        if (n < 4)
            part[n++] = m;
        else
            zmq_msg_close(&m);
    }
    bool hb = false;
    int r = s_parse_ident(zmq_msg_data(&part[0]), zmq_msg_size(&part[0]), &hb);
    if (r < 0 || r >= sl->o.n_shards || sl->sh[r].pid <= 0) {
        LOG_WARN("shards", "proto: dropped a message from an unknown routing id (%zu bytes)",
                 zmq_msg_size(&part[0]));
        goto done;
    }
    shardlink_shard_t *s = &sl->sh[r];
    proto_header_t h;
    gerr_t e = {{0}};
    if (n != 3) {
        LOG_WARN("shards", "proto: dropped a %d-frame message from shard %d", n, r);
        goto done;
    }
    if (proto_header_decode(zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), &h, &e) != 0) {
        LOG_WARN("shards", "proto: dropped a message from shard %d: %s", r, e.msg);
        goto done;
    }
    if (h.rank != (uint32_t)r) {
        LOG_WARN("shards", "proto: dropped %s from shard %d claiming rank %u",
                 proto_cmd_name(h.cmd), r, h.rank);
        goto done;
    }
    const uint8_t *body = zmq_msg_data(&part[2]);
    size_t len = zmq_msg_size(&part[2]);
    if (h.cmd == PROTO_HELLO && s->state == SHARDLINK_STARTING && !hb) {
        s->last_heard = gw_now();
        s_handle_hello(sl, s, body, len);
        goto done;
    }
    if (s->state == SHARDLINK_STARTING) {
        if (h.cmd == PROTO_HEARTBEAT) goto done; /* the heartbeat thread may beat the HELLO */
        LOG_WARN("shards", "proto: dropped %s from shard %d before its HELLO",
                 proto_cmd_name(h.cmd), r);
        goto done;
    }
    s->last_heard = gw_now();
    switch (h.cmd) {
    case PROTO_HEARTBEAT:
        break;
    case PROTO_READY:
        if (s->state != SHARDLINK_LOADING) goto unexpected;
        rc = s_handle_ready(sl, s, body, len, ev);
        break;
    case PROTO_LOAD_ERROR:
        if (s->state != SHARDLINK_LOADING) goto unexpected;
        ev->kind = SHARDLINK_EV_LOAD_ERROR;
        ev->rank = r;
        s_json_message(body, len, ev->message, sizeof ev->message);
        snprintf(s->last_error, sizeof s->last_error, "load failed: %.200s", ev->message);
        s->state = SHARDLINK_FAILED;
        LOG_ERROR("shards", "shard %d: LOAD_ERROR: %s", r, ev->message);
        rc = 1;
        break;
    case PROTO_RESULT:
        if (s->state != SHARDLINK_UP) goto unexpected;
        ev->kind = SHARDLINK_EV_RESULT;
        ev->rank = r;
        ev->seq = h.seq;
        if (proto_result_decode(body, len, &ev->samples, &ev->n_samples, &ev->step_ms, &e) != 0) {
            /* an undecodable result: the step has no answer; the scheduler treats it as an
             * error of this step */
            ev->kind = SHARDLINK_EV_STEP_ERROR;
            snprintf(ev->message, sizeof ev->message, "shard %d sent a bad RESULT: %.400s", r,
                     e.msg);
        }
        rc = 1;
        break;
    case PROTO_STEP_ERROR:
        if (s->state != SHARDLINK_UP) goto unexpected;
        ev->kind = SHARDLINK_EV_STEP_ERROR;
        ev->rank = r;
        ev->seq = h.seq;
        s_json_message(body, len, ev->message, sizeof ev->message);
        rc = 1;
        break;
    default:
        goto unexpected;
    }
    goto done;
unexpected:
    LOG_WARN("shards", "proto: dropped %s from shard %d in state %s", proto_cmd_name(h.cmd), r,
             shardlink_state_name(s->state));
done:
    for (int i = 0; i < n; i++)
        zmq_msg_close(&part[i]);
    return rc;
}

int shardlink_tick(shardlink_t *sl, shardlink_event_t *ev) {
    memset(ev, 0, sizeof *ev);
    double now = gw_now();
    if (now - sl->last_hb_sent >= sl->o.heartbeat_s) {
        sl->last_hb_sent = now;
        for (int r = 0; r < sl->o.n_shards; r++) {
            shardlink_shard_t *s = &sl->sh[r];
            if (s->pid <= 0 || s->state == SHARDLINK_STARTING) continue;
            char ident[32];
            snprintf(ident, sizeof ident, "shard-%d-hb", r);
            if (s_send(sl, ident, PROTO_HEARTBEAT, (uint32_t)r, 0, NULL, 0) != 0 &&
                s_send_rank(sl, r, PROTO_HEARTBEAT, 0, NULL, 0) != 0)
                LOG_DEBUG("shards", "shard %d: heartbeat not sent: %s", r, zmq_strerror(errno));
        }
    }
    for (int r = 0; r < sl->o.n_shards; r++) {
        shardlink_shard_t *s = &sl->sh[r];
        if (s->pid <= 0) continue;
        int status = 0;
        pid_t p = waitpid(s->pid, &status, WNOHANG);
        char why[200] = "";
        if (p == s->pid) {
            s_describe_status(status, why, sizeof why);
            s->pid = 0;
        } else if (p < 0 && errno == ECHILD) {
            snprintf(why, sizeof why, "is gone (not our child any more)");
            s->pid = 0;
        } else if (s->state == SHARDLINK_STARTING && now - s->spawned_at > sl->o.hello_timeout_s) {
            snprintf(why, sizeof why, "sent no HELLO within %.0f s", sl->o.hello_timeout_s);
        } else if (s->state != SHARDLINK_STARTING && now - s->last_heard > 3 * sl->o.heartbeat_s) {
            snprintf(why, sizeof why, "was silent for %.1f s (3 heartbeats)", now - s->last_heard);
        } else {
            continue;
        }
        if (s->pid > 0) s_reap(s, SIGKILL, 5);
        s->state = SHARDLINK_DOWN;
        ev->kind = SHARDLINK_EV_DEAD;
        ev->rank = r;
        snprintf(ev->message, sizeof ev->message, "shard %d %s", r, why);
        s_copy(s->last_error, sizeof s->last_error, ev->message);
        LOG_ERROR("shards", "%s", ev->message);
        return 1;
    }
    return 0;
}

int shardlink_send_all(shardlink_t *sl, uint8_t cmd, uint64_t seq, const void *body, size_t len,
                       gerr_t *err) {
    for (int r = 0; r < sl->o.n_shards; r++) {
        if (s_send_rank(sl, r, cmd, seq, body, len) != 0) {
            gerr_set(err, "cannot send %s to shard %d: %s", proto_cmd_name(cmd), r,
                     zmq_strerror(errno));
            return GERR_IO;
        }
    }
    return 0;
}

int shardlink_generation(const shardlink_t *sl) {
    return sl->gen;
}

const char *shardlink_comm_name(const shardlink_t *sl) {
    return sl->comm_name;
}

int shardlink_n_shards(const shardlink_t *sl) {
    return sl->o.n_shards;
}
