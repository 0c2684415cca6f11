/* control: the control socket server (control.h).
 *
 * Two halves. control_handle_message is a pure function from request bytes to
 * reply text: it checks the message (one part, size, no NUL bytes, a JSON
 * object, a known "cmd", exactly the arguments that command takes, with their
 * types), calls the gateway's handler and wraps its answer. It is what the unit
 * test and the fuzz target exercise. The server half owns a ZeroMQ REP socket
 * on its own thread: poll with a timeout (so control_stop is noticed), receive
 * every part of a message, answer exactly once. A REP socket that skipped a
 * reply would refuse every later request, so no path skips it.
 *
 * Strings that came from the peer are echoed only as printable ASCII (at most
 * 64 bytes), so a reply is always valid UTF-8 JSON whatever was sent. */
#include "control.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#include "log.h"

#define S_POLL_MS 100 /* how often the thread looks at the stop flag */

struct control {
    void *ctx, *sock;
    pthread_t thread;
    atomic_int stop;
    control_handlers_t h;
    char endpoint[1024]; /* as bound (ZMQ_LAST_ENDPOINT) */
    char ipc_path[128];  /* the socket file to remove at stop ("" for tcp) */
};

typedef enum {
    S_CMD_STATUS,
    S_CMD_STATS,
    S_CMD_RESTART_SHARD,
    S_CMD_DRAIN,
    S_CMD_RESUME,
    S_CMD_SWITCH_PROFILE,
    S_CMD_RELOAD,
    S_CMD_SHUTDOWN,
    S_CMD_COUNT,
} s_cmd_t;

/* Command names and the arguments each takes (besides "cmd"). */
static const struct {
    const char *name;
    const char *args[2];
} s_cmds[S_CMD_COUNT] = {
    [S_CMD_STATUS] = {"status", {NULL}},
    [S_CMD_STATS] = {"stats", {NULL}},
    [S_CMD_RESTART_SHARD] = {"restart-shard", {"shard", NULL}},
    [S_CMD_DRAIN] = {"drain", {NULL}},
    [S_CMD_RESUME] = {"resume", {NULL}},
    [S_CMD_SWITCH_PROFILE] = {"switch-profile", {"profile", NULL}},
    [S_CMD_RELOAD] = {"reload", {NULL}},
    [S_CMD_SHUTDOWN] = {"shutdown", {"graceful", NULL}},
};

#define S_EXAMPLE "{\"cmd\":\"status\"}"

/* Copies at most 64 bytes of s into buf as printable ASCII ('?' for anything else). */
static void s_safe(char *buf, size_t size, const char *s, size_t len) {
    size_t o = 0, lim = size > 72 ? 64 : size - 8;
    for (size_t i = 0; i < len && o < lim; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (len > lim) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
}

static const char *s_command_list(void) {
    return "status, stats, restart-shard, drain, resume, switch-profile, reload, shutdown";
}

/* Builds {"ok":false,"error":msg} as text; NULL when out of memory. */
static char *s_error_reply(const char *msg) {
    cJSON *r = cJSON_CreateObject();
    char *s = NULL;
    if (r && cJSON_AddFalseToObject(r, "ok") && cJSON_AddStringToObject(r, "error", msg))
        s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

static const char *s_json_kind(const cJSON *v) {
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    return "an object";
}

/* Checks the arguments of cmd in root; on success fills the typed values. */
static int s_check_args(s_cmd_t cmd, const cJSON *root, int *shard, const char **profile,
                        bool *graceful, gerr_t *err) {
    const char *name = s_cmds[cmd].name;
    for (const cJSON *it = root->child; it; it = it->next) {
        const char *key = it->string ? it->string : "";
        for (const cJSON *o = root->child; o != it; o = o->next)
            if (o->string && strcmp(o->string, key) == 0) {
                char k[80];
                s_safe(k, sizeof k, key, strlen(key));
                gerr_set(err, "argument '%s' is given twice", k);
                return GERR_INVALID;
            }
        if (strcmp(key, "cmd") == 0) continue;
        int known = 0;
        for (int a = 0; a < 2 && s_cmds[cmd].args[a]; a++)
            if (strcmp(key, s_cmds[cmd].args[a]) == 0) known = 1;
        if (!known) {
            char k[80];
            s_safe(k, sizeof k, key, strlen(key));
            if (s_cmds[cmd].args[0])
                gerr_set(err, "%s: unknown argument '%s' (it takes only \"%s\")", name, k,
                         s_cmds[cmd].args[0]);
            else
                gerr_set(err, "%s: unknown argument '%s' (it takes no arguments)", name, k);
            return GERR_INVALID;
        }
    }
    if (cmd == S_CMD_RESTART_SHARD) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "shard");
        if (!v || !cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
            v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 || v->valuedouble > 1e6) {
            gerr_set(err,
                     "restart-shard needs an integer \"shard\" >= 0 (the shard's rank), e.g. "
                     "{\"cmd\":\"restart-shard\",\"shard\":0}; got %s",
                     v ? s_json_kind(v) : "none");
            return GERR_INVALID;
        }
        *shard = (int)v->valuedouble;
    } else if (cmd == S_CMD_SWITCH_PROFILE) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "profile");
        if (!v || !cJSON_IsString(v) || !v->valuestring || !v->valuestring[0] ||
            strlen(v->valuestring) > 4096) {
            gerr_set(err,
                     "switch-profile needs a string \"profile\" (a profile name or a file "
                     "path, at most 4096 bytes), e.g. "
                     "{\"cmd\":\"switch-profile\",\"profile\":\"cpu-demo\"}; got %s",
                     !v                  ? "none"
                     : cJSON_IsString(v) ? "an empty or too long string"
                                         : s_json_kind(v));
            return GERR_INVALID;
        }
        *profile = v->valuestring;
    } else if (cmd == S_CMD_SHUTDOWN) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "graceful");
        if (v && !cJSON_IsBool(v)) {
            gerr_set(err, "shutdown: \"graceful\" must be true or false; got %s", s_json_kind(v));
            return GERR_INVALID;
        }
        *graceful = v && cJSON_IsTrue(v);
    }
    return 0;
}

/* Calls the handler of cmd; 0 or a GERR code with err set. */
static int s_dispatch(const control_handlers_t *h, s_cmd_t cmd, int shard, const char *profile,
                      bool graceful, cJSON *reply, gerr_t *err) {
    void *u = h->user;
    int rc = GERR_NOTFOUND;
    switch (cmd) {
    case S_CMD_STATUS:
        if (h->status) rc = h->status(u, reply, err);
        break;
    case S_CMD_STATS:
        if (h->stats) rc = h->stats(u, reply, err);
        break;
    case S_CMD_RESTART_SHARD:
        if (h->restart_shard) rc = h->restart_shard(u, shard, reply, err);
        break;
    case S_CMD_DRAIN:
        if (h->drain) rc = h->drain(u, reply, err);
        break;
    case S_CMD_RESUME:
        if (h->resume) rc = h->resume(u, reply, err);
        break;
    case S_CMD_SWITCH_PROFILE:
        if (h->switch_profile) rc = h->switch_profile(u, profile, reply, err);
        break;
    case S_CMD_RELOAD:
        if (h->reload) rc = h->reload(u, reply, err);
        break;
    case S_CMD_SHUTDOWN:
        if (h->shutdown) rc = h->shutdown(u, graceful, reply, err);
        break;
    case S_CMD_COUNT:
        break;
    }
    if (rc == GERR_NOTFOUND && !err->msg[0])
        gerr_set(err, "command '%s' is not supported by this gateway", s_cmds[cmd].name);
    else if (rc < 0 && !err->msg[0])
        gerr_set(err, "command '%s' failed (no reason given)", s_cmds[cmd].name);
    else if (rc > 0)
        rc = 0;
    return rc;
}

/* Parses and runs one request; returns the reply object or NULL with err set. */
static cJSON *s_handle(const control_handlers_t *h, const char *data, size_t len, int parts,
                       s_cmd_t *cmd_out, gerr_t *err) {
    *cmd_out = S_CMD_COUNT;
    if (parts > 1) {
        gerr_set(err,
                 "multipart message (%d parts) refused: send the JSON command as one part, "
                 "e.g. " S_EXAMPLE,
                 parts);
        return NULL;
    }
    if (len > CONTROL_MAX_MSG) {
        gerr_set(err, "message of %zu bytes is over the %d-byte limit for a control command", len,
                 CONTROL_MAX_MSG);
        return NULL;
    }
    if (len == 0) {
        gerr_set(err, "empty message: send a JSON object, e.g. " S_EXAMPLE);
        return NULL;
    }
    if (memchr(data, 0, len)) {
        gerr_set(err,
                 "message contains a NUL byte (binary data?): send a JSON object, e.g. " S_EXAMPLE);
        return NULL;
    }
    char *buf = malloc(len + 1);
    if (!buf) {
        gerr_set(err, "out of memory");
        return NULL;
    }
    memcpy(buf, data, len);
    buf[len] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(buf, &end, true);
    if (!root) {
        size_t off = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        char near[80];
        s_safe(near, sizeof near, buf + off, len - off > 16 ? 16 : len - off);
        gerr_set(err, "malformed JSON near byte %zu ('%s'): send a JSON object, e.g. " S_EXAMPLE,
                 off, near);
        free(buf);
        return NULL;
    }
    free(buf);
    cJSON *reply = NULL;
    if (!cJSON_IsObject(root)) {
        gerr_set(err, "the command must be a JSON object, not %s, e.g. " S_EXAMPLE,
                 s_json_kind(root));
        goto done;
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "cmd");
    if (!c) {
        gerr_set(err, "missing \"cmd\": one of %s, e.g. " S_EXAMPLE, s_command_list());
        goto done;
    }
    if (!cJSON_IsString(c) || !c->valuestring) {
        gerr_set(err, "\"cmd\" must be a string (one of %s), not %s", s_command_list(),
                 s_json_kind(c));
        goto done;
    }
    s_cmd_t cmd = S_CMD_COUNT;
    for (int i = 0; i < S_CMD_COUNT; i++)
        if (strcmp(c->valuestring, s_cmds[i].name) == 0) cmd = (s_cmd_t)i;
    if (cmd == S_CMD_COUNT) {
        char name[80];
        s_safe(name, sizeof name, c->valuestring, strlen(c->valuestring));
        gerr_set(err, "unknown command '%s' (commands: %s)", name, s_command_list());
        goto done;
    }
    *cmd_out = cmd;
    int shard = -1;
    const char *profile = NULL;
    bool graceful = false;
    if (s_check_args(cmd, root, &shard, &profile, &graceful, err)) goto done;
    reply = cJSON_CreateObject();
    if (!reply || !cJSON_AddTrueToObject(reply, "ok")) {
        cJSON_Delete(reply);
        reply = NULL;
        gerr_set(err, "out of memory");
        goto done;
    }
    gerr_t herr = {{0}};
    if (s_dispatch(h, cmd, shard, profile, graceful, reply, &herr) < 0) {
        cJSON_Delete(reply);
        reply = NULL;
        gerr_set(err, "%s", herr.msg);
    }
done:
    cJSON_Delete(root);
    return reply;
}

char *control_handle_message(const control_handlers_t *h, const void *data, size_t len, int parts) {
    gerr_t err = {{0}};
    s_cmd_t cmd;
    cJSON *reply = s_handle(h, data, len, parts, &cmd, &err);
    char *text = NULL;
    if (reply) {
        text = cJSON_PrintUnformatted(reply);
        cJSON_Delete(reply);
        if (!text) return s_error_reply("out of memory while printing the reply");
        if (cmd != S_CMD_STATUS && cmd != S_CMD_STATS)
            LOG_INFO("control", "%s: ok", s_cmds[cmd].name);
        return text;
    }
    if (cmd != S_CMD_COUNT)
        LOG_WARN("control", "%s refused: %s", s_cmds[cmd].name, err.msg);
    else
        LOG_WARN("control", "refused a request: %s", err.msg);
    return s_error_reply(err.msg);
}

/* ---- endpoints ----------------------------------------------------------- */

static int s_port_ok(const char *p) {
    if (strcmp(p, "*") == 0) return 1;
    if (!*p || strlen(p) > 5) return 0;
    long v = 0;
    for (const char *q = p; *q; q++) {
        if (*q < '0' || *q > '9') return 0;
        v = v * 10 + (*q - '0');
    }
    return v >= 1 && v <= 65535;
}

int control_check_endpoint(const char *ep, gerr_t *err) {
    const char *hint =
        "use ipc://PATH (default ipc://<run-dir>/" CONTROL_SOCKET_NAME ") or tcp://127.0.0.1:PORT";
    if (!ep || !*ep) {
        gerr_set(err, "control endpoint is empty: %s", hint);
        return GERR_INVALID;
    }
    char shown[80];
    s_safe(shown, sizeof shown, ep, strlen(ep));
    if (strlen(ep) >= 1024) {
        gerr_set(err, "control endpoint '%s' is too long", shown);
        return GERR_INVALID;
    }
    if (strncmp(ep, "ipc://", 6) == 0) {
        const char *path = ep + 6;
        if (!*path || strcmp(path, "*") == 0) {
            gerr_set(err, "control endpoint '%s' names no socket file: %s", shown, hint);
            return GERR_INVALID;
        }
        if (path[0] == '@') {
            gerr_set(err,
                     "control endpoint '%s': abstract ipc sockets have no file permissions, so "
                     "any local user could connect; give a file path",
                     shown);
            return GERR_INVALID;
        }
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            gerr_set(err,
                     "control endpoint '%s': socket path is %zu bytes, the limit is %zu; use a "
                     "shorter run directory",
                     shown, strlen(path), sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
            return GERR_INVALID;
        }
        return 0;
    }
    if (strncmp(ep, "tcp://", 6) == 0) {
        const char *hp = ep + 6;
        char host[256];
        const char *port;
        if (hp[0] == '[') {
            const char *rb = strchr(hp, ']');
            if (!rb || rb[1] != ':' || (size_t)(rb - hp - 1) >= sizeof host) goto bad_tcp;
            memcpy(host, hp + 1, (size_t)(rb - hp - 1));
            host[rb - hp - 1] = 0;
            port = rb + 2;
        } else {
            const char *colon = strrchr(hp, ':');
            if (!colon || (size_t)(colon - hp) >= sizeof host) goto bad_tcp;
            memcpy(host, hp, (size_t)(colon - hp));
            host[colon - hp] = 0;
            port = colon + 1;
        }
        if (!s_port_ok(port)) goto bad_tcp;
        struct in_addr a4;
        struct in6_addr a6;
        if (hp[0] != '[' && inet_pton(AF_INET, host, &a4) == 1) {
            if ((ntohl(a4.s_addr) >> 24) == 127) return 0;
        } else if (hp[0] == '[' && inet_pton(AF_INET6, host, &a6) == 1) {
            if (IN6_IS_ADDR_LOOPBACK(&a6)) return 0;
        }
        gerr_set(err,
                 "control endpoint '%s' refused: the control socket has no authentication, so "
                 "tcp is allowed only on a loopback address (127.0.0.1 or [::1]); %s",
                 shown, hint);
        return GERR_INVALID;
    bad_tcp:
        gerr_set(err, "control endpoint '%s': expected tcp://HOST:PORT (PORT 1..65535 or *); %s",
                 shown, hint);
        return GERR_INVALID;
    }
    gerr_set(err, "control endpoint '%s': unsupported transport; %s", shown, hint);
    return GERR_INVALID;
}

int control_default_run_dir(char *buf, size_t size) {
    const char *d = getenv("GPTOSS_RUN_DIR");
    int n;
    if (d && *d)
        n = snprintf(buf, size, "%s", d);
    else if ((d = getenv("XDG_RUNTIME_DIR")) && *d)
        n = snprintf(buf, size, "%s/gptoss", d);
    else
        n = snprintf(buf, size, "/tmp/gptoss-%u", (unsigned)getuid());
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

int control_default_endpoint(const char *run_dir, char *buf, size_t size) {
    char dir[1024];
    if (!run_dir) {
        if (control_default_run_dir(dir, sizeof dir)) return -1;
        run_dir = dir;
    }
    int n = snprintf(buf, size, "ipc://%s/%s", run_dir, CONTROL_SOCKET_NAME);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* Refuses to take over a socket file another process is serving (ZeroMQ's bind
 * would silently unlink it) and a path that is not a socket. */
static int s_ipc_prepare(const char *path, gerr_t *err) {
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        if (errno == ENOENT) return 0;
        gerr_set(err, "control socket %s: %s", path, strerror(errno));
        return GERR_IO;
    }
    if (!S_ISSOCK(sb.st_mode)) {
        gerr_set(err,
                 "control socket %s exists and is not a socket; remove it or choose another "
                 "run directory",
                 path);
        return GERR_INVALID;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        gerr_set(err, "control socket %s: socket(): %s", path, strerror(errno));
        return GERR_IO;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (close(fd) != 0) LOG_WARN("control", "close: %s", strerror(errno));
    if (rc == 0) {
        gerr_set(err,
                 "control socket %s is in use by another process (is a gateway already running "
                 "with this run directory?)",
                 path);
        return GERR_INVALID;
    }
    /* ECONNREFUSED: a stale file from a previous run; bind replaces it */
    return 0;
}

/* ---- server thread --------------------------------------------------------- */

/* Receives one whole message (all parts) and sends exactly one reply. */
static void s_serve_one(control_t *c) {
    zmq_msg_t msg;
    if (zmq_msg_init(&msg) != 0) return;
    if (zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT) < 0) {
        if (errno != EAGAIN && errno != EINTR)
            LOG_WARN("control", "receive: %s", zmq_strerror(errno));
        if (zmq_msg_close(&msg) != 0) LOG_WARN("control", "zmq_msg_close: %s", zmq_strerror(errno));
        return;
    }
    int parts = 1;
    int more = zmq_msg_more(&msg);
    while (more) {
        zmq_msg_t extra;
        if (zmq_msg_init(&extra) != 0) break;
        if (zmq_msg_recv(&extra, c->sock, 0) < 0) {
            LOG_WARN("control", "receive (part %d): %s", parts + 1, zmq_strerror(errno));
            zmq_msg_close(&extra);
            break;
        }
        parts++;
        more = zmq_msg_more(&extra);
        if (zmq_msg_close(&extra) != 0)
            LOG_WARN("control", "zmq_msg_close: %s", zmq_strerror(errno));
    }
    char *reply = control_handle_message(&c->h, zmq_msg_data(&msg), zmq_msg_size(&msg), parts);
    if (zmq_msg_close(&msg) != 0) LOG_WARN("control", "zmq_msg_close: %s", zmq_strerror(errno));
    static const char oom[] = "{\"ok\":false,\"error\":\"gateway out of memory\"}";
    const char *out = reply ? reply : oom;
    if (zmq_send(c->sock, out, strlen(out), 0) < 0)
        LOG_WARN("control", "send reply: %s", zmq_strerror(errno));
    free(reply);
}

static void *s_thread(void *arg) {
    control_t *c = arg;
    while (!atomic_load(&c->stop)) {
        zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, S_POLL_MS);
        if (rc < 0) {
            if (errno == EINTR) continue;
            if (errno == ETERM) break;
            LOG_ERROR("control", "poll: %s", zmq_strerror(errno));
            usleep(S_POLL_MS * 1000);
            continue;
        }
        if (rc > 0 && (it.revents & ZMQ_POLLIN)) s_serve_one(c);
    }
    return NULL;
}

static void s_close(control_t *c) {
    if (c->sock && zmq_close(c->sock) != 0)
        LOG_WARN("control", "zmq_close: %s", zmq_strerror(errno));
    c->sock = NULL;
    if (c->ctx) {
        while (zmq_ctx_term(c->ctx) != 0) {
            if (errno != EINTR) {
                LOG_WARN("control", "zmq_ctx_term: %s", zmq_strerror(errno));
                break;
            }
        }
    }
    c->ctx = NULL;
    /* ZeroMQ leaves the socket file behind; remove it unless someone else serves it now */
    if (c->ipc_path[0] && s_ipc_prepare(c->ipc_path, NULL) == 0 && unlink(c->ipc_path) != 0 &&
        errno != ENOENT)
        LOG_WARN("control", "remove %s: %s", c->ipc_path, strerror(errno));
}

int control_start(const char *endpoint, const control_handlers_t *h, control_t **out, gerr_t *err) {
    *out = NULL;
    int rc = control_check_endpoint(endpoint, err);
    if (rc) return rc;
    bool ipc = strncmp(endpoint, "ipc://", 6) == 0;
    const char *path = endpoint + 6;
    if (ipc) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            struct stat sb;
            const char *d = dir[0] ? dir : "/";
            if (stat(d, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
                gerr_set(err,
                         "control socket %s: directory %s does not exist (create the run "
                         "directory first)",
                         path, d);
                return GERR_NOTFOUND;
            }
            if (sb.st_mode & 077)
                LOG_WARN("control",
                         "run directory %s is accessible to other users (mode %03o); 0700 is "
                         "safer (the socket is 0600 once bound)",
                         d, (unsigned)(sb.st_mode & 0777));
        }
        if ((rc = s_ipc_prepare(path, err))) return rc;
    }
    control_t *c = calloc(1, sizeof *c);
    if (!c) {
        gerr_set(err, "control: out of memory");
        return GERR_NOMEM;
    }
    c->h = *h;
    atomic_init(&c->stop, 0);
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        gerr_set(err, "control: zmq_ctx_new: %s", zmq_strerror(errno));
        free(c);
        return GERR_IO;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_REP);
    if (!c->sock) {
        gerr_set(err, "control: zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int zero = 0, one = 1, sndtimeo = 1000;
    int64_t maxsize = CONTROL_HARD_MAX_MSG;
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxsize, sizeof maxsize) != 0 ||
        (strncmp(endpoint, "tcp://[", 7) == 0 &&
         zmq_setsockopt(c->sock, ZMQ_IPV6, &one, sizeof one) != 0)) {
        gerr_set(err, "control: zmq_setsockopt: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(c->sock, endpoint) != 0) {
        gerr_set(err, "control socket %s: bind failed: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (ipc) snprintf(c->ipc_path, sizeof c->ipc_path, "%s", path);
    if (ipc && chmod(path, 0600) != 0) {
        gerr_set(err, "control socket %s: chmod 0600: %s", path, strerror(errno));
        goto fail;
    }
    size_t len = sizeof c->endpoint;
    if (zmq_getsockopt(c->sock, ZMQ_LAST_ENDPOINT, c->endpoint, &len) != 0) {
        gerr_set(err, "control: ZMQ_LAST_ENDPOINT: %s", zmq_strerror(errno));
        goto fail;
    }
    int prc = pthread_create(&c->thread, NULL, s_thread, c);
    if (prc != 0) {
        gerr_set(err, "control: cannot start thread: %s", strerror(prc));
        goto fail;
    }
    LOG_INFO("control", "listening on %s", c->endpoint);
    *out = c;
    return 0;
fail:
    s_close(c);
    free(c);
    return GERR_IO;
}

void control_stop(control_t **cp) {
    if (!cp || !*cp) return;
    control_t *c = *cp;
    atomic_store(&c->stop, 1);
    int rc = pthread_join(c->thread, NULL);
    if (rc != 0) LOG_WARN("control", "pthread_join: %s", strerror(rc));
    s_close(c);
    free(c);
    *cp = NULL;
}

const char *control_endpoint(const control_t *c) {
    return c->endpoint;
}
