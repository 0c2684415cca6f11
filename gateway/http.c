/* http: the gateway's HTTP server on libmicrohttpd — routing, API-key check, body limits,
 * and the plumbing that lets a request wait for tokens without holding a thread.
 *
 * Threads: libmicrohttpd's internal polling (epoll where available) with a pool of
 * opts.threads workers. A chat or completion request is parsed (api_chat.c), handed to the
 * scheduler, and then its connection is *suspended* whenever its stream has nothing new:
 * the stream's notify hook (run on the scheduler thread after each push) resumes it, the way
 * czmq's zhttp_server bridges libmicrohttpd to ZeroMQ. A non-streaming request waits in the
 * access handler (no response queued until the job is done, so an inference error becomes a
 * real HTTP error); a streaming one waits for its first event the same way, then answers
 * with an SSE response whose content reader suspends when it runs dry.
 *
 * The notify hook may run after the connection is gone (the scheduler keeps its own stream
 * reference), so it never sees a connection pointer: its argument is a handle (slot index +
 * generation) into a process-wide registry under one mutex, and a stale handle is ignored.
 * Our own "suspended" / "pending" flags in the slot close the race between "found no event"
 * and "suspended": a push that lands in between marks the slot pending and the suspend is
 * skipped. A suspended connection is blind to its socket, so a ticker resumes every suspended
 * connection once a second; each one then peeks at its socket (recv MSG_PEEK) and a closed
 * peer cancels the request at once. libmicrohttpd's request-completed callback cancels any
 * request whose job did not finish (client gone, timeout, shutdown).
 *
 * Not here: JSON of the requests and responses (api_*.c), request state (sched.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "api.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

#define HTTP_IDLE_TIMEOUT_S 60   /* an idle keep-alive or slow client is dropped after this */
#define HTTP_TICK_MS        1000 /* suspended connections re-check their socket this often */
#define HTTP_SSE_BLOCK      (32 * 1024)
#define HTTP_POP_BATCH      32

struct http {
    struct MHD_Daemon *d;
    http_opts_t o;
    sched_t *sched;
    const tokenizer_t *tok;
    long long started; /* unix seconds, "created" of /v1/models */
    atomic_bool stopping;
    pthread_t ticker;
    bool ticker_started;
    pthread_mutex_t tick_mu;
    pthread_cond_t tick_cv;
};

typedef enum {
    ROUTE_NONE = 0,
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_MODELS,
    ROUTE_MODEL,
    ROUTE_CANCEL,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_HEALTH,
    ROUTE_READY,
    ROUTE_STATS,
    ROUTE_METRICS,
    ROUTE_PROFILES,
} route_t;

static const struct {
    const char *path; /* exact path, or prefix when it ends in '/' */
    const char *method;
    route_t route;
    bool auth;         /* needs the API key even without auth_all */
    const char *label; /* metrics endpoint label */
} s_routes[] = {
    {"/v1/chat/completions", "POST", ROUTE_CHAT, true, "/v1/chat/completions"},
    {"/v1/completions", "POST", ROUTE_COMPLETIONS, true, "/v1/completions"},
    {"/v1/models", "GET", ROUTE_MODELS, true, "/v1/models"},
    {"/v1/models/", "GET", ROUTE_MODEL, true, "/v1/models/{id}"},
    {"/v1/cancel/", "POST", ROUTE_CANCEL, true, "/v1/cancel/{id}"},
    {"/tokenize", "POST", ROUTE_TOKENIZE, true, "/tokenize"},
    {"/detokenize", "POST", ROUTE_DETOKENIZE, true, "/detokenize"},
    {"/health", "GET", ROUTE_HEALTH, false, "/health"},
    {"/ready", "GET", ROUTE_READY, false, "/ready"},
    {"/stats", "GET", ROUTE_STATS, false, "/stats"},
    {"/metrics", "GET", ROUTE_METRICS, false, "/metrics"},
    {"/profiles", "GET", ROUTE_PROFILES, false, "/profiles"},
};
#define HTTP_NROUTES (sizeof s_routes / sizeof s_routes[0])

/* Per-connection (per-request) state; owned by libmicrohttpd's con_cls slot. */
typedef struct {
    http_t *h;
    struct MHD_Connection *conn;
    int ri;          /* index into s_routes, -1 for none */
    const char *arg; /* the {id} of prefix routes (points into url) */
    char *url;       /* copy, for logs */
    char method[12];
    double t0;
    api_buf_t body;
    size_t body_seen; /* bytes received, kept or not */
    bool too_large;
    bool dispatched;
    bool responded;
    int status; /* answered status, 0 while none */
    api_job_t *job;
    bool submitted;
    bool cancel_sent;
    long slot; /* registry slot, -1 when none */
} conn_t;

/* ---- registry of waiting connections ----------------------------------------------------- */

typedef struct {
    conn_t *c;
    uint32_t gen;
    bool used, suspended, pending;
} slot_t;

static pthread_mutex_t s_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static slot_t *s_reg;
static size_t s_reg_cap;

/* Registers c; returns the notify handle, or 0 when out of memory. */
static uintptr_t s_reg_add(conn_t *c) {
    pthread_mutex_lock(&s_reg_mu);
    size_t i = 0;
    while (i < s_reg_cap && s_reg[i].used)
        i++;
    if (i == s_reg_cap) {
        size_t cap = s_reg_cap ? 2 * s_reg_cap : 64;
        slot_t *n = realloc(s_reg, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&s_reg_mu);
            return 0;
        }
        memset(n + s_reg_cap, 0, (cap - s_reg_cap) * sizeof *n);
        s_reg = n;
        s_reg_cap = cap;
    }
    slot_t *s = &s_reg[i];
    s->used = true;
    s->suspended = s->pending = false;
    s->c = c;
    s->gen++;
    c->slot = (long)i;
    uintptr_t handle = ((uintptr_t)s->gen << 32) | (uintptr_t)i;
    pthread_mutex_unlock(&s_reg_mu);
    return handle;
}

static void s_reg_remove(conn_t *c) {
    if (c->slot < 0) return;
    pthread_mutex_lock(&s_reg_mu);
    slot_t *s = &s_reg[c->slot];
    s->used = s->suspended = s->pending = false;
    s->c = NULL;
    pthread_mutex_unlock(&s_reg_mu);
    c->slot = -1;
}

/* Stream notify hook (scheduler thread): wake the connection or mark it pending. */
static void s_notify(void *arg) {
    uintptr_t handle = (uintptr_t)arg;
    size_t i = handle & 0xffffffffu;
    uint32_t gen = (uint32_t)(handle >> 32);
    pthread_mutex_lock(&s_reg_mu);
    if (i < s_reg_cap && s_reg[i].used && s_reg[i].gen == gen) {
        if (s_reg[i].suspended) {
            s_reg[i].suspended = false;
            MHD_resume_connection(s_reg[i].c->conn);
        } else {
            s_reg[i].pending = true;
        }
    }
    pthread_mutex_unlock(&s_reg_mu);
}

/* Suspends c unless an event arrived since the last check or the server is stopping;
 * true when suspended (the caller must return to libmicrohttpd at once). */
static bool s_try_suspend(conn_t *c) {
    bool done = false;
    pthread_mutex_lock(&s_reg_mu);
    slot_t *s = &s_reg[c->slot];
    if (s->pending || atomic_load(&c->h->stopping)) {
        s->pending = false;
    } else {
        s->suspended = true;
        MHD_suspend_connection(c->conn);
        done = true;
    }
    pthread_mutex_unlock(&s_reg_mu);
    return done;
}

/* Resumes every suspended connection of h (ticker, shutdown). */
static void s_resume_all(http_t *h) {
    pthread_mutex_lock(&s_reg_mu);
    for (size_t i = 0; i < s_reg_cap; i++) {
        if (s_reg[i].used && s_reg[i].suspended && s_reg[i].c->h == h) {
            s_reg[i].suspended = false;
            MHD_resume_connection(s_reg[i].c->conn);
        }
    }
    pthread_mutex_unlock(&s_reg_mu);
}

static void *s_ticker(void *arg) {
    http_t *h = arg;
    pthread_mutex_lock(&h->tick_mu);
    while (!atomic_load(&h->stopping)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += HTTP_TICK_MS / 1000;
        ts.tv_nsec += (long)(HTTP_TICK_MS % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->tick_cv, &h->tick_mu, &ts);
        if (atomic_load(&h->stopping)) break;
        pthread_mutex_unlock(&h->tick_mu);
        s_resume_all(h);
        pthread_mutex_lock(&h->tick_mu);
    }
    pthread_mutex_unlock(&h->tick_mu);
    return NULL;
}

/* True when the client has closed its end (or the socket failed). */
static bool s_peer_gone(conn_t *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return true;
    return r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* ---- responses --------------------------------------------------------------------------- */

/* Queues body (owned; freed here) with status; extra header may be NULL. */
static enum MHD_Result s_send(conn_t *c, int status, char *body, const char *ctype, const char *xh,
                              const char *xv) {
    static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                        "\"param\":null,\"code\":null}}";
    struct MHD_Response *r;
    if (body) {
        r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        if (!r) free(body);
    } else {
        status = 500;
        ctype = "application/json";
        xh = NULL;
        r = MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
    }
    if (!r) return MHD_NO;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
        (xh && MHD_add_response_header(r, xh, xv) != MHD_YES)) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    enum MHD_Result ok = MHD_queue_response(c->conn, (unsigned)status, r);
    MHD_destroy_response(r);
    c->responded = true;
    c->status = status;
    return ok;
}

static enum MHD_Result s_send_json(conn_t *c, int status, char *body) {
    return s_send(c, status, body, "application/json", NULL, NULL);
}

static enum MHD_Result s_send_error(conn_t *c, const api_error_t *e) {
    const char *xh = NULL, *xv = NULL;
    if (e->status == 429)
        xh = "Retry-After", xv = "1";
    else if (e->status == 401)
        xh = "WWW-Authenticate", xv = "Bearer";
    else if (e->status == 405 && c->ri >= 0)
        xh = "Allow", xv = s_routes[c->ri].method;
    return s_send(c, e->status, api_error_json(e), "application/json", xh, xv);
}

static enum MHD_Result s_fail(conn_t *c, int status, const char *param, const char *code,
                              const char *msg) {
    api_error_t e;
    api_error_set(&e, status, param, code, "%s", msg);
    return s_send_error(c, &e);
}

/* ---- generation requests ------------------------------------------------------------------ */

static void s_cancel(conn_t *c) {
    if (!c->submitted || c->cancel_sent) return;
    c->cancel_sent = true;
    sched_cancel_by_name(c->h->sched, c->job->id);
}

/* Moves queued events into the job; cancels the scheduler's side when the job ended here. */
static void s_pump(conn_t *c) {
    api_job_t *job = c->job;
    gw_event_t ev[HTTP_POP_BATCH];
    size_t n;
    while (!job->done && (job->out.len - job->out_off) < 256 * 1024 &&
           (n = gw_stream_pop(job->stream_ref, ev, HTTP_POP_BATCH)) > 0) {
        if (api_job_feed(job, ev, n) < 0)
            LOG_ERROR("http", "%s: out of memory building the response", job->id);
    }
    if (job->done && job->want_cancel) s_cancel(c);
}

static int s_job_tokens(const api_job_t *job) {
    int n = 0;
    for (int i = 0; i < job->n_choices; i++)
        n += api_job_choice_tokens(job, i);
    return n;
}

static ssize_t s_sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    conn_t *c = cls;
    api_job_t *job = c->job;
    for (;;) {
        size_t avail = job->out.len - job->out_off;
        if (avail) {
            size_t n = avail < max ? avail : max;
            memcpy(buf, job->out.p + job->out_off, n);
            job->out_off += n;
            if (job->out_off == job->out.len) job->out.len = job->out_off = 0;
            return (ssize_t)n;
        }
        if (job->done) return MHD_CONTENT_READER_END_OF_STREAM;
        s_pump(c);
        if (job->out.len > job->out_off || job->done) continue;
        if (atomic_load(&c->h->stopping)) {
            api_job_fail(job, 503, "shutting_down", "the server is shutting down");
            continue;
        }
        if (s_peer_gone(c)) {
            LOG_INFO("http", "%s: client went away; cancelling", job->id);
            s_cancel(c);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (s_try_suspend(c)) return 0;
    }
}

/* Runs (or resumes) a submitted job in the access handler until it can answer or must wait. */
static enum MHD_Result s_continue(conn_t *c) {
    api_job_t *job = c->job;
    for (;;) {
        s_pump(c);
        if (job->done || (job->stream && job->out.len > job->out_off)) break;
        if (atomic_load(&c->h->stopping)) {
            api_job_fail(job, 503, "shutting_down", "the server is shutting down");
            break;
        }
        if (s_peer_gone(c)) {
            LOG_INFO("http", "%s: client went away; cancelling", job->id);
            s_cancel(c);
            return MHD_NO;
        }
        if (s_try_suspend(c)) return MHD_YES;
    }
    if (!job->stream || (job->failed && s_job_tokens(job) == 0)) {
        int status = 500;
        char *body = api_job_response(job, &status);
        return s_send_json(c, status, body);
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_SSE_BLOCK, s_sse_reader, c, NULL);
    if (!r) return MHD_NO;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream") != MHD_YES ||
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        MHD_add_response_header(r, "X-Accel-Buffering", "no") != MHD_YES) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    enum MHD_Result ok = MHD_queue_response(c->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    c->responded = true;
    c->status = 200;
    return ok;
}

static enum MHD_Result s_start_job(conn_t *c, const cJSON *body) {
    http_t *h = c->h;
    if (!h->tok)
        return s_fail(c, 503, NULL, "no_tokenizer",
                      "this model folder has no tokenizer.json; text endpoints are unavailable");
    sched_stats_t st;
    sched_snapshot(h->sched, &st);
    api_limits_t lim = {
        .model_name = h->o.model_name,
        .max_messages = h->o.max_messages,
        .max_tokens_limit = h->o.max_tokens_limit,
        /* the active profile's defaults (they follow a profile switch) */
        .default_max_tokens =
            st.default_max_tokens > 0 ? st.default_max_tokens : h->o.default_max_tokens,
        .default_temperature =
            st.default_temperature > 0 ? (float)st.default_temperature : h->o.default_temperature,
        .default_reasoning =
            st.default_reasoning[0] ? st.default_reasoning : h->o.default_reasoning,
        .max_context = st.max_context,
        .vocab_size = st.vocab_size,
    };
    api_job_t *job = NULL;
    gw_request_t *req = NULL;
    api_error_t e;
    int rc = s_routes[c->ri].route == ROUTE_CHAT
                 ? api_job_from_chat(body, &lim, h->tok, &job, &req, &e)
                 : api_job_from_completion(body, &lim, h->tok, &job, &req, &e);
    if (rc < 0) return s_send_error(c, &e);
    c->job = job;
    uintptr_t handle = s_reg_add(c);
    if (!handle) {
        gw_request_free(&req);
        return s_fail(c, 500, NULL, NULL, "out of memory");
    }
    gw_stream_set_notify(req->stream, s_notify, (void *)handle);
    gerr_t ge = {{0}};
    rc = sched_submit(h->sched, req, &ge);
    if (rc < 0) {
        gw_request_free(&req);
        int status = rc == GERR_LIMIT ? 429 : rc == GERR_INVALID ? 400 : rc == GERR_IO ? 503 : 500;
        const char *code = rc == GERR_LIMIT     ? "queue_full"
                           : rc == GERR_INVALID ? "invalid_request"
                           : rc == GERR_IO      ? "not_ready"
                                                : NULL;
        LOG_INFO("http", "%s: refused by the scheduler (%d): %s", job->id, status, ge.msg);
        return s_fail(c, status, NULL, code, ge.msg[0] ? ge.msg : "the request was refused");
    }
    c->submitted = true;
    LOG_DEBUG("http", "%s: submitted (%d prompt tokens, n=%d, max_tokens=%d%s)", job->id,
              job->prompt_tokens, job->n_choices, job->max_tokens, job->stream ? ", stream" : "");
    return s_continue(c);
}

/* ---- routing ------------------------------------------------------------------------------ */

static int s_route(const char *url, const char **arg) {
    *arg = NULL;
    for (size_t i = 0; i < HTTP_NROUTES; i++) {
        size_t n = strlen(s_routes[i].path);
        if (s_routes[i].path[n - 1] == '/') {
            if (strncmp(url, s_routes[i].path, n) == 0 && url[n]) {
                *arg = url + n;
                return (int)i;
            }
        } else if (strcmp(url, s_routes[i].path) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static bool s_auth_ok(conn_t *c) {
    const char *key = c->h->o.api_key;
    if (!key || !key[0]) return true;
    const char *a =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return false;
    a += 7;
    while (*a == ' ')
        a++;
    size_t n = strlen(a);
    while (n && (a[n - 1] == ' ' || a[n - 1] == '\t'))
        n--;
    return api_ct_equal(a, n, key, strlen(key));
}

/* Checks done before reading a body: route, method, key, declared size. Returns MHD_YES
 * with c->responded set when it answered. */
static enum MHD_Result s_precheck(conn_t *c) {
    http_t *h = c->h;
    if (c->ri < 0) {
        /* unknown paths under /v1 need the key too, so they reveal nothing without it */
        if (strncmp(c->url, "/v1/", 4) == 0 && !s_auth_ok(c))
            return s_fail(c, 401, NULL, "invalid_api_key",
                          "missing or wrong API key: send \"Authorization: Bearer <key>\"");
        api_error_t e;
        api_error_set(&e, 404, NULL, "not_found", "no such endpoint: %s %.200s", c->method, c->url);
        return s_send_error(c, &e);
    }
    if ((s_routes[c->ri].auth || h->o.auth_all) && !s_auth_ok(c))
        return s_fail(c, 401, NULL, "invalid_api_key",
                      "missing or wrong API key: send \"Authorization: Bearer <key>\"");
    if (strcmp(c->method, s_routes[c->ri].method) != 0 &&
        !(strcmp(c->method, "HEAD") == 0 && strcmp(s_routes[c->ri].method, "GET") == 0)) {
        api_error_t e;
        api_error_set(&e, 405, NULL, "method_not_allowed", "%s %s: use %s", c->method,
                      s_routes[c->ri].path, s_routes[c->ri].method);
        return s_send_error(c, &e);
    }
    const char *cl =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    /* A body a bit over the limit is read and dropped, so that the client (which is still
     * sending) gets to read the 413; an absurd declared size is answered at once. */
    if (cl && strtoull(cl, NULL, 10) / 4 > h->o.max_body_bytes) {
        api_error_t e;
        api_error_set(&e, 413, NULL, "request_too_large",
                      "the request body is %s bytes; this server accepts at most %zu", cl,
                      h->o.max_body_bytes);
        return s_send_error(c, &e);
    }
    return MHD_YES;
}

static enum MHD_Result s_dispatch(conn_t *c) {
    http_t *h = c->h;
    route_t r = s_routes[c->ri].route;
    if (c->too_large) {
        api_error_t e;
        api_error_set(&e, 413, NULL, "request_too_large",
                      "the request body is larger than %zu bytes", h->o.max_body_bytes);
        return s_send_error(c, &e);
    }
    cJSON *body = NULL;
    if (strcmp(s_routes[c->ri].method, "POST") == 0 && r != ROUTE_CANCEL) {
        const char *end = NULL;
        body = c->body.len ? cJSON_ParseWithLengthOpts(c->body.p, c->body.len, &end, false) : NULL;
        if (!body)
            return s_fail(c, 400, NULL, "invalid_json",
                          c->body.len ? "the request body is not valid JSON"
                                      : "the request body is empty; send a JSON object");
        if (!cJSON_IsObject(body)) {
            cJSON_Delete(body);
            return s_fail(c, 400, NULL, "invalid_json", "the request body must be a JSON object");
        }
    }
    enum MHD_Result ret;
    api_error_t e;
    char *out = NULL;
    sched_stats_t st;
    switch (r) {
    case ROUTE_CHAT:
    case ROUTE_COMPLETIONS:
        ret = s_start_job(c, body);
        break;
    case ROUTE_MODELS:
    case ROUTE_MODEL:
        out = api_models(h->o.model_name, h->started, r == ROUTE_MODEL ? c->arg : NULL, &e);
        ret = out ? s_send_json(c, 200, out) : s_send_error(c, &e);
        break;
    case ROUTE_CANCEL:
        if (sched_cancel_by_name(h->sched, c->arg) == 0) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", c->arg);
            cJSON_AddBoolToObject(o, "cancelled", true);
            out = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            ret = s_send_json(c, 200, out);
        } else {
            api_error_set(&e, 404, "id", "not_found", "no running request with id '%.200s'",
                          c->arg);
            ret = s_send_error(c, &e);
        }
        break;
    case ROUTE_TOKENIZE:
    case ROUTE_DETOKENIZE:
        if (!h->tok) {
            ret = s_fail(c, 503, NULL, "no_tokenizer",
                         "this model folder has no tokenizer.json; text endpoints are unavailable");
            break;
        }
        out =
            r == ROUTE_TOKENIZE ? api_tokenize(body, h->tok, &e) : api_detokenize(body, h->tok, &e);
        ret = out ? s_send_json(c, 200, out) : s_send_error(c, &e);
        break;
    case ROUTE_HEALTH:
        sched_snapshot(h->sched, &st);
        ret = s_send_json(c, 200, api_health(&st));
        break;
    case ROUTE_READY: {
        int status = 503;
        sched_snapshot(h->sched, &st);
        out = api_ready(&st, &status);
        ret = s_send_json(c, status, out);
        break;
    }
    case ROUTE_STATS:
        sched_snapshot(h->sched, &st);
        ret = s_send_json(c, 200, api_stats(&st));
        break;
    case ROUTE_METRICS:
        sched_snapshot(h->sched, &st);
        ret = s_send(c, 200, metrics_render(&st), "text/plain; version=0.0.4; charset=utf-8", NULL,
                     NULL);
        break;
    case ROUTE_PROFILES:
        sched_snapshot(h->sched, &st);
        out = api_profiles(sched_profiles_dir(h->sched), &st, &e);
        ret = out ? s_send_json(c, 200, out) : s_send_error(c, &e);
        break;
    default:
        ret = s_fail(c, 404, NULL, "not_found", "no such endpoint");
    }
    cJSON_Delete(body);
    return ret;
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls) {
    http_t *h = cls;
    conn_t *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        c->h = h;
        c->conn = conn;
        c->slot = -1;
        c->t0 = gw_now();
        c->url = strndup(url ? url : "", 512);
        snprintf(c->method, sizeof c->method, "%s", method ? method : "");
        *con_cls = c;
        if (!c->url) return MHD_NO;
        c->ri = s_route(c->url, &c->arg);
        return s_precheck(c);
    }
    if (c->responded) { /* answered early (404/401/413): drop whatever body follows */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        c->body_seen += n;
        if (!c->too_large && c->body.len + n > h->o.max_body_bytes) {
            c->too_large = true;
            api_buf_free(&c->body);
        }
        if (!c->too_large && api_buf_put(&c->body, upload_data, n) < 0) return MHD_NO;
        *upload_data_size = 0;
        /* a chunked body far past the limit is not worth reading to the end */
        return c->body_seen > 4 * h->o.max_body_bytes ? MHD_NO : MHD_YES;
    }
    if (!c->dispatched) {
        c->dispatched = true;
        return s_dispatch(c);
    }
    if (c->job && !c->responded) return s_continue(c);
    return MHD_YES;
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe) {
    conn_t *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    api_job_t *job = c->job;
    if (job && !job->done) s_cancel(c);
    s_reg_remove(c);
    int status = c->status ? c->status : 499; /* 499: the client went before an answer */
    if (c->ri >= 0 || c->url)
        metrics_count_request(c->ri >= 0 ? s_routes[c->ri].label : "other", status);
    /* Finish reasons are counted here, where tool_calls and stop strings are known; token
     * counts and latency histograms by the scheduler, per token. */
    if (job && c->submitted) {
        for (int i = 0; i < job->n_choices; i++) {
            const char *reason = api_job_finish_reason(job, i);
            metrics_count_finish(reason ? reason : "abort");
        }
    }
    bool quiet = c->ri >= 0 && !s_routes[c->ri].auth && status == 200;
    log_msg(quiet ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, "http", "%s %s %.200s -> %d%s (%.1f ms)",
            job ? job->id : "-", c->method, c->url ? c->url : "", status,
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)",
            (gw_now() - c->t0) * 1e3);
    api_job_free(&c->job);
    api_buf_free(&c->body);
    free(c->url);
    free(c);
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap) {
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    LOG_WARN("http", "libmicrohttpd: %s", line);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

int http_new(const http_opts_t *opts, sched_t *sched, const tokenizer_t *tok, http_t **out,
             gerr_t *err) {
    *out = NULL;
    http_t *h = calloc(1, sizeof *h);
    if (!h) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    h->o = *opts;
    if (!h->o.bind_addr) h->o.bind_addr = "127.0.0.1";
    if (h->o.port < 0) h->o.port = 8000;
    if (!h->o.model_name) h->o.model_name = "gpt-oss";
    if (!h->o.max_body_bytes) h->o.max_body_bytes = 4u << 20;
    if (h->o.max_messages <= 0) h->o.max_messages = 1024;
    if (h->o.default_max_tokens <= 0) h->o.default_max_tokens = 1024;
    if (h->o.default_temperature <= 0) h->o.default_temperature = 1.0f;
    if (!h->o.default_reasoning) h->o.default_reasoning = "medium";
    if (h->o.threads <= 0) h->o.threads = 4;
    if (h->o.connection_limit <= 0) h->o.connection_limit = 4096;
    if (h->o.port > 65535) {
        gerr_set(err, "port %d: must be 0..65535", h->o.port);
        free(h);
        return GERR_INVALID;
    }
    h->sched = sched;
    h->tok = tok;
    h->started = (long long)time(NULL);
    atomic_init(&h->stopping, false);

    struct sockaddr_in sa4 = {0};
    struct sockaddr_in6 sa6 = {0};
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL : MHD_USE_POLL;
    if (inet_pton(AF_INET, h->o.bind_addr, &sa4.sin_addr) == 1) {
        sa4.sin_family = AF_INET;
        sa4.sin_port = htons((uint16_t)h->o.port);
        sa = (struct sockaddr *)&sa4;
    } else if (inet_pton(AF_INET6, h->o.bind_addr, &sa6.sin6_addr) == 1) {
        sa6.sin6_family = AF_INET6;
        sa6.sin6_port = htons((uint16_t)h->o.port);
        sa = (struct sockaddr *)&sa6;
        flags |= MHD_USE_IPv6;
    } else {
        gerr_set(err, "bind address '%s': not an IPv4 or IPv6 address", h->o.bind_addr);
        free(h);
        return GERR_INVALID;
    }
    if (pthread_mutex_init(&h->tick_mu, NULL) != 0) {
        gerr_set(err, "pthread_mutex_init failed");
        free(h);
        return GERR_IO;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&h->tick_cv, &ca) != 0) {
        gerr_set(err, "pthread_cond_init failed");
        pthread_mutex_destroy(&h->tick_mu);
        free(h);
        return GERR_IO;
    }
    pthread_condattr_destroy(&ca);
    h->d = MHD_start_daemon(
        flags, (uint16_t)h->o.port, NULL, NULL, s_access, h, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log,
        h, MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)h->o.threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->o.connection_limit, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)HTTP_IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, s_completed, h, MHD_OPTION_END);
    if (!h->d) {
        gerr_set(err, "cannot listen on %s:%d (address in use, or not allowed?)", h->o.bind_addr,
                 h->o.port);
        pthread_cond_destroy(&h->tick_cv);
        pthread_mutex_destroy(&h->tick_mu);
        free(h);
        return GERR_IO;
    }
    if (pthread_create(&h->ticker, NULL, s_ticker, h) != 0) {
        gerr_set(err, "cannot start the HTTP ticker thread");
        MHD_stop_daemon(h->d);
        pthread_cond_destroy(&h->tick_cv);
        pthread_mutex_destroy(&h->tick_mu);
        free(h);
        return GERR_IO;
    }
    h->ticker_started = true;
    LOG_INFO("http", "listening on %s:%d (%d threads%s)", h->o.bind_addr, http_port(h),
             h->o.threads, h->o.api_key && h->o.api_key[0] ? ", API key required" : "");
    *out = h;
    return 0;
}

int http_port(const http_t *h) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    return di ? (int)di->port : h->o.port;
}

void http_free(http_t **hp) {
    if (!hp || !*hp) return;
    http_t *h = *hp;
    *hp = NULL;
    /* stopping is set under the registry lock, so no connection suspends after the pass */
    pthread_mutex_lock(&s_reg_mu);
    atomic_store(&h->stopping, true);
    pthread_mutex_unlock(&s_reg_mu);
    pthread_mutex_lock(&h->tick_mu);
    pthread_cond_broadcast(&h->tick_cv);
    pthread_mutex_unlock(&h->tick_mu);
    if (h->ticker_started) pthread_join(h->ticker, NULL);
    s_resume_all(h);
    MHD_stop_daemon(h->d); /* completes every connection: unfinished requests are cancelled */
    pthread_cond_destroy(&h->tick_cv);
    pthread_mutex_destroy(&h->tick_mu);
    free(h);
}
