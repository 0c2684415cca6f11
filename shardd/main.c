/* gptoss-shardd: one shard process, driven by the gateway over ZeroMQ (PROTOCOL.md).
 *
 *   gptoss-shardd --endpoint EP --rank R --world N [--run-dir D] [--threads T]
 *                 [--heartbeat-ms MS]
 *
 * The main thread owns a DEALER with routing id "shard-R": it sends HELLO, then answers
 * LOAD with READY / LOAD_ERROR and each STEP with RESULT / STEP_ERROR (shard.c does the
 * work). A heartbeat thread owns a second DEALER "shard-R-hb" and sends HEARTBEAT every
 * interval, so a long step or load never silences the shard. Both sockets count anything
 * the gateway sends as a sign of life; when nothing came for 3 intervals the shard exits,
 * so an orphaned shard never lingers. Every wait is a poll with a timeout.
 *
 * With --world N > 1 the shard is rank R of a tensor-parallel group: LOAD names the shm
 * comm segment the gateway created, every rank answers every STEP (ranks other than 0 with
 * an empty RESULT), and a failed collective (a peer died, the group was aborted, a wait
 * timed out) is answered with STEP_ERROR and ends the process with status 4, so the
 * supervisor restarts the group; the comm's bounded waits mean it never hangs.
 *
 * Exit status: 0 after SHUTDOWN or SIGTERM/SIGINT, 1 when it cannot start (bad arguments,
 * ZeroMQ setup), 2 after LOAD_ERROR, 3 when the gateway went silent, 4 when the
 * tensor-parallel group broke (a collective failed).
 *
 * Not here: the model and step logic (shard.c), restarts (the gateway's supervisor). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include <cjson/cJSON.h>

#include "gerr.h"
#include "log.h"
#include "proto.h"
#include "shard.h"

enum { S_EXIT_OK = 0, S_EXIT_START = 1, S_EXIT_LOAD = 2, S_EXIT_SILENT = 3, S_EXIT_COMM = 4 };

#define S_MISSED_BEATS  3
#define S_MAX_MSG_BYTES (256LL << 20) /* refuse larger frames from the peer */
#define S_SEND_TIMEO_MS 5000          /* a reply that cannot be queued for this long is dropped */
#define S_LINGER_MS     500           /* time to flush the last replies at exit */

typedef struct {
    const char *endpoint, *run_dir;
    int rank, world, threads, heartbeat_ms;
} s_args_t;

static volatile sig_atomic_t s_stop_signal;

/* The heartbeat thread's state (shared fields are atomics). */
typedef struct {
    void *ctx;
    const char *endpoint;
    int rank, interval_ms;
    atomic_bool stop;
    atomic_llong last_heard_ms; /* last message the gateway sent to the hb socket */
    atomic_bool failed;         /* the thread could not set up its socket */
} s_hb_t;

static long long s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_on_signal(int sig) {
    s_stop_signal = sig;
}

static int s_usage(void) {
    fprintf(stderr, "usage: gptoss-shardd --endpoint EP --rank R --world N [--run-dir D] "
                    "[--threads T] [--heartbeat-ms MS]\n");
    return S_EXIT_START;
}

static int s_parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int s_parse_args(int argc, char **argv, s_args_t *a) {
    *a = (s_args_t){.rank = -1, .world = -1, .heartbeat_ms = 1000};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "gptoss-shardd: %s needs a value\n", o);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (strcmp(o, "--endpoint") == 0)
            a->endpoint = v;
        else if (strcmp(o, "--run-dir") == 0)
            a->run_dir = v;
        else if (strcmp(o, "--rank") == 0)
            bad = s_parse_int(v, 0, 1 << 20, &a->rank);
        else if (strcmp(o, "--world") == 0)
            bad = s_parse_int(v, 1, 1 << 20, &a->world);
        else if (strcmp(o, "--threads") == 0)
            bad = s_parse_int(v, 0, 4096, &a->threads);
        else if (strcmp(o, "--heartbeat-ms") == 0)
            bad = s_parse_int(v, 10, 3600 * 1000, &a->heartbeat_ms);
        else {
            fprintf(stderr, "gptoss-shardd: unknown option %s\n", o);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "gptoss-shardd: bad value '%s' for %s\n", v, o);
            return -1;
        }
    }
    if (!a->endpoint || a->rank < 0 || a->world < 1) {
        fprintf(stderr, "gptoss-shardd: --endpoint, --rank and --world are required\n");
        return -1;
    }
    if (a->rank >= a->world) {
        fprintf(stderr, "gptoss-shardd: --rank %d must be below --world %d\n", a->rank, a->world);
        return -1;
    }
    return 0;
}

/* Creates a DEALER with routing id `id`, connected to endpoint; NULL (logged) on failure. */
static void *s_dealer(void *ctx, const char *endpoint, const char *id) {
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    if (!sock) {
        LOG_ERROR("zmq", "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int linger = S_LINGER_MS, sndtimeo = S_SEND_TIMEO_MS;
    int64_t maxmsg = S_MAX_MSG_BYTES;
    if (zmq_setsockopt(sock, ZMQ_ROUTING_ID, id, strlen(id)) ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) {
        LOG_ERROR("zmq", "zmq_setsockopt on %s: %s", id, zmq_strerror(zmq_errno()));
        zmq_close(sock);
        return NULL;
    }
    if (zmq_connect(sock, endpoint)) {
        LOG_ERROR("zmq", "zmq_connect %s to %s: %s", id, endpoint, zmq_strerror(zmq_errno()));
        zmq_close(sock);
        return NULL;
    }
    return sock;
}

/* Sends header + body as two frames. Returns 0, or -1 (logged) when it could not be sent. */
static int s_send(void *sock, uint8_t cmd, uint32_t rank, uint64_t seq, const void *body,
                  size_t len, int flags) {
    uint8_t hdr[PROTO_HEADER_SIZE];
    proto_header_encode(&(proto_header_t){.cmd = cmd, .rank = rank, .seq = seq}, hdr);
    if (zmq_send(sock, hdr, sizeof hdr, ZMQ_SNDMORE | flags) < 0 ||
        zmq_send(sock, body, len, flags) < 0) {
        int e = zmq_errno();
        if (!(flags & ZMQ_DONTWAIT) || e != EAGAIN)
            LOG_WARN("zmq", "sending %s failed: %s", proto_cmd_name(cmd), zmq_strerror(e));
        return -1;
    }
    return 0;
}

/* Sends a {"message": msg} body (LOAD_ERROR / STEP_ERROR). */
static int s_send_error(void *sock, uint8_t cmd, uint32_t rank, uint64_t seq, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    char *txt = NULL;
    if (o && cJSON_AddStringToObject(o, "message", msg)) txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int rc = txt ? s_send(sock, cmd, rank, seq, txt, strlen(txt), 0)
                 : s_send(sock, cmd, rank, seq, "{\"message\":\"out of memory\"}", 27, 0);
    free(txt);
    return rc;
}

/* Heartbeat thread: beats every interval on its own socket and notes what it hears. */
static void *s_hb_main(void *arg) {
    s_hb_t *hb = arg;
    char id[64];
    snprintf(id, sizeof id, "shard-%d-hb", hb->rank);
    void *sock = s_dealer(hb->ctx, hb->endpoint, id);
    if (!sock) {
        atomic_store(&hb->failed, true);
        return NULL;
    }
    long long next = s_now_ms();
    while (!atomic_load(&hb->stop)) {
        long long now = s_now_ms();
        if (now >= next) {
            s_send(sock, PROTO_HEARTBEAT, (uint32_t)hb->rank, 0, "", 0, ZMQ_DONTWAIT);
            next = now + hb->interval_ms;
        }
        long wait = (long)(next - now);
        if (wait > 100) wait = 100; /* notice stop within 100 ms */
        if (wait < 0) wait = 0;
        zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, wait);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("hb", "zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        while (rc > 0) { /* drain: anything the gateway sends here counts as life */
            zmq_msg_t m;
            zmq_msg_init(&m);
            int n = zmq_msg_recv(&m, sock, ZMQ_DONTWAIT);
            zmq_msg_close(&m);
            if (n < 0) break;
            atomic_store(&hb->last_heard_ms, s_now_ms());
        }
    }
    zmq_close(sock);
    return NULL;
}

/* One message as received: up to two frames kept, the rest counted. */
typedef struct {
    zmq_msg_t f[2];
    int n_frames;
} s_msg_t;

/* Receives one whole message (all frames) without waiting. Returns 1, 0 (none), -1 error. */
static int s_recv(void *sock, s_msg_t *m) {
    zmq_msg_init(&m->f[0]);
    zmq_msg_init(&m->f[1]);
    m->n_frames = 0;
    for (;;) {
        zmq_msg_t tmp;
        zmq_msg_t *dst = m->n_frames < 2 ? &m->f[m->n_frames] : &tmp;
        if (dst == &tmp) zmq_msg_init(&tmp);
        if (zmq_msg_recv(dst, sock, m->n_frames ? 0 : ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            if (dst == &tmp) zmq_msg_close(&tmp);
            if (m->n_frames == 0 && (e == EAGAIN || e == EINTR)) return 0;
            LOG_ERROR("zmq", "zmq_msg_recv: %s", zmq_strerror(e));
            return -1;
        }
        m->n_frames++;
        bool more = zmq_msg_more(dst);
        if (dst == &tmp) zmq_msg_close(&tmp);
        if (!more) return 1;
    }
}

static void s_msg_close(s_msg_t *m) {
    zmq_msg_close(&m->f[0]);
    zmq_msg_close(&m->f[1]);
}

typedef struct {
    void *sock;
    shard_t *shard;
    uint32_t rank;
    proto_buf_t out;
    int exit_code; /* >= 0: leave the loop with this status */
} s_state_t;

/* Handles one received message. */
static void s_handle(s_state_t *st, s_msg_t *m) {
    gerr_t err = {{0}};
    proto_header_t h;
    if (m->n_frames > 2) {
        LOG_WARN("proto", "proto: dropped a message of %d frames (expected header + body)",
                 m->n_frames);
        return;
    }
    if (proto_header_decode(zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]), &h, &err)) {
        LOG_WARN("proto", "proto: dropped a message: %s", err.msg);
        return;
    }
    if (h.rank != PROTO_RANK_ALL && h.rank != st->rank) {
        LOG_WARN("proto", "proto: dropped %s addressed to rank %u", proto_cmd_name(h.cmd), h.rank);
        return;
    }
    const uint8_t *body = m->n_frames == 2 ? zmq_msg_data(&m->f[1]) : NULL;
    size_t len = m->n_frames == 2 ? zmq_msg_size(&m->f[1]) : 0;
    switch (h.cmd) {
    case PROTO_HEARTBEAT:
        return;
    case PROTO_SHUTDOWN:
        LOG_INFO("main", "SHUTDOWN received, exiting");
        st->exit_code = S_EXIT_OK;
        return;
    case PROTO_LOAD: {
        if (shard_loaded(st->shard)) {
            LOG_WARN("proto", "a second LOAD is refused and ignored");
            s_send_error(st->sock, PROTO_LOAD_ERROR, st->rank, h.seq,
                         "LOAD: the model is already loaded; the second LOAD is ignored");
            return;
        }
        char *ready = NULL;
        if (shard_load(st->shard, (const char *)body, len, &ready, &err)) {
            LOG_ERROR("load", "%s", err.msg);
            s_send_error(st->sock, PROTO_LOAD_ERROR, st->rank, h.seq, err.msg);
            st->exit_code = S_EXIT_LOAD;
            return;
        }
        s_send(st->sock, PROTO_READY, st->rank, h.seq, ready, strlen(ready), 0);
        free(ready);
        return;
    }
    case PROTO_STEP: {
        if (shard_step(st->shard, body ? body : (const uint8_t *)"", len, &st->out, &err)) {
            if (shard_broken(st->shard)) {
                LOG_ERROR("step", "step %llu failed, the tensor-parallel group is broken: %s",
                          (unsigned long long)h.seq, err.msg);
                s_send_error(st->sock, PROTO_STEP_ERROR, st->rank, h.seq, err.msg);
                st->exit_code = S_EXIT_COMM;
                return;
            }
            LOG_WARN("step", "step %llu refused: %s", (unsigned long long)h.seq, err.msg);
            s_send_error(st->sock, PROTO_STEP_ERROR, st->rank, h.seq, err.msg);
            return;
        }
        s_send(st->sock, PROTO_RESULT, st->rank, h.seq, st->out.data ? st->out.data : (void *)"",
               st->out.len, 0);
        return;
    }
    default:
        LOG_WARN("proto", "proto: dropped unexpected %s from the gateway", proto_cmd_name(h.cmd));
        return;
    }
}

int main(int argc, char **argv) {
    s_args_t a;
    if (s_parse_args(argc, argv, &a)) return s_usage();
    char role[32];
    snprintf(role, sizeof role, "shard %d", a.rank);
    log_set_role(role);

    struct sigaction sa = {0};
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) ||
        signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        LOG_ERROR("main", "cannot install signal handlers: %s", strerror(errno));
        return S_EXIT_START;
    }

    gerr_t err = {{0}};
    shard_t *shard = NULL;
    if (shard_new(
            &(shard_opts_t){
                .rank = a.rank, .world = a.world, .threads = a.threads, .run_dir = a.run_dir},
            &shard, &err)) {
        LOG_ERROR("main", "%s", err.msg);
        return S_EXIT_START;
    }

    int code = S_EXIT_START;
    void *ctx = zmq_ctx_new();
    void *sock = NULL;
    bool hb_started = false;
    pthread_t hb_thread;
    s_hb_t hb = {.endpoint = a.endpoint, .rank = a.rank, .interval_ms = a.heartbeat_ms};
    atomic_init(&hb.stop, false);
    atomic_init(&hb.failed, false);
    atomic_init(&hb.last_heard_ms, s_now_ms());
    if (!ctx) {
        LOG_ERROR("zmq", "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto out;
    }
    hb.ctx = ctx;
    char id[64];
    snprintf(id, sizeof id, "shard-%d", a.rank);
    if (!(sock = s_dealer(ctx, a.endpoint, id))) goto out;
    int prc = pthread_create(&hb_thread, NULL, s_hb_main, &hb);
    if (prc) {
        LOG_ERROR("main", "cannot start the heartbeat thread: %s", strerror(prc));
        goto out;
    }
    hb_started = true;

    char *hello = shard_hello_json(shard);
    if (!hello) {
        LOG_ERROR("main", "out of memory");
        goto out;
    }
    int src = s_send(sock, PROTO_HELLO, (uint32_t)a.rank, 0, hello, strlen(hello), 0);
    free(hello);
    if (src) goto out;
    LOG_INFO("main", "connected to %s as %s (world %d), heartbeat %d ms", a.endpoint, id, a.world,
             a.heartbeat_ms);

    s_state_t st = {.sock = sock, .shard = shard, .rank = (uint32_t)a.rank, .exit_code = -1};
    long long last_main = s_now_ms();
    const long long silent_ms = (long long)S_MISSED_BEATS * a.heartbeat_ms;
    while (st.exit_code < 0) {
        if (s_stop_signal) {
            LOG_INFO("main", "signal %d received, exiting", (int)s_stop_signal);
            st.exit_code = S_EXIT_OK;
            break;
        }
        if (atomic_load(&hb.failed)) {
            LOG_ERROR("main", "the heartbeat thread could not start its socket");
            break;
        }
        zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, a.heartbeat_ms < 200 ? a.heartbeat_ms / 2 : 100);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("zmq", "zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (rc == 0) {
            /* silence is judged only when nothing is queued: after a long step the
             * gateway's heartbeats are waiting in the socket, not missing */
            long long heard = atomic_load(&hb.last_heard_ms);
            if (last_main > heard) heard = last_main;
            if (s_now_ms() - heard > silent_ms) {
                LOG_ERROR("main", "nothing from the gateway for %lld ms (%d heartbeats), exiting",
                          s_now_ms() - heard, S_MISSED_BEATS);
                st.exit_code = S_EXIT_SILENT;
            }
            continue;
        }
        s_msg_t m;
        int r = s_recv(sock, &m);
        if (r < 0) {
            s_msg_close(&m);
            break;
        }
        if (r > 0) {
            last_main = s_now_ms();
            s_handle(&st, &m);
        }
        s_msg_close(&m);
    }
    code = st.exit_code < 0 ? S_EXIT_START : st.exit_code;
    proto_buf_free(&st.out);
out:
    if (hb_started) {
        atomic_store(&hb.stop, true);
        pthread_join(hb_thread, NULL);
    }
    if (sock) zmq_close(sock);
    while (ctx && zmq_ctx_term(ctx) < 0 && zmq_errno() == EINTR) {
    }
    shard_free(&shard);
    LOG_INFO("main", "exit status %d", code);
    return code;
}
