/* test_control: the control socket server (gateway/control.c) under test, with
 * a test double of the gateway's handlers behind it.
 *
 * Runs the real gptoss-ctl ($GPTOSS_BIN/gptoss-ctl) for every command and
 * checks its output and exit status; sends garbage over a raw REQ socket
 * (non-JSON, binary, empty, oversized, multipart, arrays, wrong argument types,
 * unknown commands and arguments) and checks that each gets an error reply
 * naming the problem and that the server keeps answering; checks the ipc socket
 * file is 0600 and removed at stop, that a live socket is not taken over, and
 * that tcp is refused on anything but loopback. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "control.h"
#include "tcheck.h"

/* ---- the gateway test double ---------------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    char state[32];
    int calls;
    int last_shard;
    char last_profile[4200];
    int last_graceful; /* -1: shutdown not called */
} s_gw_t;

static s_gw_t s_gw = {.mu = PTHREAD_MUTEX_INITIALIZER, .state = "ready", .last_graceful = -1};

static int h_status(void *user, cJSON *reply, gerr_t *err) {
    s_gw_t *g = user;
    pthread_mutex_lock(&g->mu);
    g->calls++;
    cJSON_AddStringToObject(reply, "state", g->state);
    pthread_mutex_unlock(&g->mu);
    cJSON_AddStringToObject(reply, "model", "tiny");
    cJSON *prof = cJSON_AddObjectToObject(reply, "profile");
    cJSON_AddStringToObject(prof, "name", "cpu-demo");
    cJSON *shards = cJSON_AddArrayToObject(reply, "shards");
    for (int r = 0; r < 2; r++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "rank", r);
        cJSON_AddBoolToObject(s, "up", true);
        cJSON_AddItemToArray(shards, s);
    }
    cJSON *dev = cJSON_AddArrayToObject(reply, "devices");
    cJSON_AddItemToArray(dev, cJSON_CreateNumber(0));
    cJSON_AddItemToArray(dev, cJSON_CreateNumber(1));
    return 0;
}

static int h_stats(void *user, cJSON *reply, gerr_t *err) {
    cJSON_AddNumberToObject(reply, "requests_total", 42);
    cJSON_AddNumberToObject(reply, "tokens_per_s", 12.5);
    cJSON *kv = cJSON_AddObjectToObject(reply, "kv");
    cJSON_AddNumberToObject(kv, "used", 3);
    cJSON_AddNumberToObject(kv, "total", 10);
    return 0;
}

static int h_restart(void *user, int shard, cJSON *reply, gerr_t *err) {
    s_gw_t *g = user;
    if (shard >= 2) {
        gerr_set(err, "no shard %d (this gateway has 2 shards: 0..1)", shard);
        return GERR_NOTFOUND;
    }
    pthread_mutex_lock(&g->mu);
    g->last_shard = shard;
    pthread_mutex_unlock(&g->mu);
    cJSON_AddNumberToObject(reply, "restarting", shard);
    return 0;
}

static int s_set_state(s_gw_t *g, const char *st, cJSON *reply) {
    pthread_mutex_lock(&g->mu);
    snprintf(g->state, sizeof g->state, "%s", st);
    pthread_mutex_unlock(&g->mu);
    cJSON_AddStringToObject(reply, "state", st);
    return 0;
}

static int h_drain(void *user, cJSON *reply, gerr_t *err) {
    return s_set_state(user, "draining", reply);
}

static int h_resume(void *user, cJSON *reply, gerr_t *err) {
    return s_set_state(user, "ready", reply);
}

static int h_switch(void *user, const char *profile, cJSON *reply, gerr_t *err) {
    s_gw_t *g = user;
    if (strcmp(profile, "missing") == 0) {
        gerr_set(err, "profile missing: no such profile");
        return GERR_NOTFOUND;
    }
    pthread_mutex_lock(&g->mu);
    snprintf(g->last_profile, sizeof g->last_profile, "%s", profile);
    pthread_mutex_unlock(&g->mu);
    cJSON_AddStringToObject(reply, "switching_to", profile);
    return 0;
}

static int h_shutdown(void *user, bool graceful, cJSON *reply, gerr_t *err) {
    s_gw_t *g = user;
    pthread_mutex_lock(&g->mu);
    g->last_graceful = graceful;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static const control_handlers_t s_handlers = {
    .user = &s_gw,
    .status = h_status,
    .stats = h_stats,
    .restart_shard = h_restart,
    .drain = h_drain,
    .resume = h_resume,
    .switch_profile = h_switch,
    .reload = NULL, /* "not supported" */
    .shutdown = h_shutdown,
};

/* ---- helpers ---------------------------------------------------------------- */

static char s_dir[256];
static char s_out[1 << 16], s_err[1 << 16];

static void s_slurp(const char *path, char *buf, size_t size) {
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* Runs gptoss-ctl with `args` (shell words); fills s_out/s_err; returns its exit status. */
static int s_ctl(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/gptoss-ctl' %s >'%s/out' 2>'%s/err'", tcheck_bindir(), args,
             s_dir, s_dir);
    int st = system(cmd);
    char path[512];
    snprintf(path, sizeof path, "%s/out", s_dir);
    s_slurp(path, s_out, sizeof s_out);
    snprintf(path, sizeof path, "%s/err", s_dir);
    s_slurp(path, s_err, sizeof s_err);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

/* Runs gptoss-ctl against endpoint ep. */
static int s_ctl_ep(const char *ep, const char *args) {
    char a[4096];
    snprintf(a, sizeof a, "--socket '%s' %s", ep, args);
    return s_ctl(a);
}

/* Sends the parts over a fresh REQ socket and returns the parsed reply (NULL: none in 5 s). */
static cJSON *s_raw(void *ctx, const char *ep, const char *const *parts, const size_t *lens, int n,
                    int timeout_ms) {
    void *s = zmq_socket(ctx, ZMQ_REQ);
    CHECK(s != NULL);
    if (!s) return NULL;
    int zero = 0;
    CHECK(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) == 0);
    CHECK(zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms) == 0);
    CHECK(zmq_connect(s, ep) == 0);
    for (int i = 0; i < n; i++)
        CHECK(zmq_send(s, parts[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) == (int)lens[i]);
    char *buf = malloc(1 << 16);
    int got = zmq_recv(s, buf, (1 << 16) - 1, 0);
    cJSON *r = NULL;
    if (got >= 0) {
        buf[got < (1 << 16) - 1 ? got : (1 << 16) - 1] = 0;
        r = cJSON_Parse(buf);
        CHECK_MSG(r != NULL, "reply is not JSON: %s", buf);
    }
    free(buf);
    CHECK(zmq_close(s) == 0);
    return r;
}

/* Sends one message and expects {"ok":false,"error":...needle...}. */
static void s_expect_error(void *ctx, const char *ep, const char *msg, size_t len,
                           const char *needle) {
    const char *parts[1] = {msg};
    size_t lens[1] = {len};
    cJSON *r = s_raw(ctx, ep, parts, lens, 1, 5000);
    CHECK_MSG(r != NULL, "no reply to %.40s", msg);
    if (!r) return;
    const cJSON *ok = cJSON_GetObjectItem(r, "ok"), *e = cJSON_GetObjectItem(r, "error");
    CHECK_MSG(cJSON_IsFalse(ok), "%.60s: not refused", msg);
    CHECK_MSG(cJSON_IsString(e) && strstr(e->valuestring, needle), "%.60s: error '%s' lacks '%s'",
              msg, cJSON_IsString(e) ? e->valuestring : "(none)", needle);
    cJSON_Delete(r);
}

static bool s_status_ok(void *ctx, const char *ep) {
    const char *m = "{\"cmd\":\"status\"}";
    const char *parts[1] = {m};
    size_t lens[1] = {strlen(m)};
    cJSON *r = s_raw(ctx, ep, parts, lens, 1, 5000);
    bool ok = r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok"));
    cJSON_Delete(r);
    return ok;
}

/* ---- tests ---------------------------------------------------------------- */

static void t_ctl(const char *ep) {
    int rc = s_ctl_ep(ep, "status");
    CHECK_MSG(rc == 0, "status rc %d: %s", rc, s_err);
    CHECK_MSG(strstr(s_out, "state: ready\n") && strstr(s_out, "model: tiny\n"), "%s", s_out);
    CHECK_MSG(strstr(s_out, "profile:\n  name: cpu-demo\n"), "%s", s_out);
    CHECK_MSG(strstr(s_out, "shards:\n  [0]:\n    rank: 0\n    up: true\n  [1]:\n"), "%s", s_out);
    CHECK_MSG(strstr(s_out, "devices: 0, 1\n"), "%s", s_out);
    CHECK(strstr(s_out, "ok:") == NULL);

    rc = s_ctl_ep(ep, "--json status");
    CHECK(rc == 0);
    cJSON *j = cJSON_Parse(s_out);
    CHECK_MSG(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")), "%s", s_out);
    CHECK(j && cJSON_IsArray(cJSON_GetObjectItem(j, "shards")));
    cJSON_Delete(j);

    rc = s_ctl_ep(ep, "stats");
    CHECK(rc == 0);
    CHECK_MSG(strstr(s_out, "requests_total: 42\n") && strstr(s_out, "tokens_per_s: 12.5\n") &&
                  strstr(s_out, "kv:\n  used: 3\n  total: 10\n"),
              "%s", s_out);

    CHECK(s_ctl_ep(ep, "restart-shard 1") == 0);
    CHECK(strstr(s_out, "restarting: 1") != NULL);
    pthread_mutex_lock(&s_gw.mu);
    CHECK(s_gw.last_shard == 1);
    pthread_mutex_unlock(&s_gw.mu);
    rc = s_ctl_ep(ep, "restart-shard 5");
    CHECK_MSG(rc == 1 && strstr(s_err, "no shard 5"), "rc %d: %s", rc, s_err);
    CHECK(s_ctl_ep(ep, "restart-shard abc") == 2);
    CHECK(s_ctl_ep(ep, "restart-shard -1") == 2);
    CHECK(s_ctl_ep(ep, "restart-shard") == 2);
    CHECK(s_ctl_ep(ep, "restart-shard 1 2") == 2);

    CHECK(s_ctl_ep(ep, "drain") == 0);
    CHECK(strstr(s_out, "state: draining") != NULL);
    CHECK(s_ctl_ep(ep, "status") == 0);
    CHECK(strstr(s_out, "state: draining") != NULL);
    CHECK(s_ctl_ep(ep, "resume") == 0);
    CHECK(s_ctl_ep(ep, "status") == 0);
    CHECK(strstr(s_out, "state: ready") != NULL);
    CHECK(s_ctl_ep(ep, "drain extra") == 2);

    CHECK(s_ctl_ep(ep, "switch-profile cpu-demo") == 0);
    pthread_mutex_lock(&s_gw.mu);
    CHECK(strcmp(s_gw.last_profile, "cpu-demo") == 0);
    pthread_mutex_unlock(&s_gw.mu);
    /* a file is checked locally and sent as an absolute path */
    const char *src = getenv("GPTOSS_SRC");
    char a[2048];
    snprintf(a, sizeof a, "switch-profile '%s/deploy/profiles/balanced.json'", src ? src : ".");
    rc = s_ctl_ep(ep, a);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, s_err);
    pthread_mutex_lock(&s_gw.mu);
    size_t pl = strlen(s_gw.last_profile);
    CHECK_MSG(s_gw.last_profile[0] == '/' && pl > 14 &&
                  strcmp(s_gw.last_profile + pl - 14, "/balanced.json") == 0,
              "%s", s_gw.last_profile);
    pthread_mutex_unlock(&s_gw.mu);
    rc = s_ctl_ep(ep, "switch-profile missing");
    CHECK_MSG(rc == 1 && strstr(s_err, "no such profile"), "rc %d: %s", rc, s_err);
    /* a bad file never reaches the gateway */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/bad.json", s_dir);
    FILE *f = fopen(bad, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"model\": \"m\", \"tp\": 99}", f);
        fclose(f);
    }
    snprintf(a, sizeof a, "switch-profile '%s'", bad);
    rc = s_ctl_ep(ep, a);
    CHECK_MSG(rc == 2 && strstr(s_err, "'tp'"), "rc %d: %s", rc, s_err);
    CHECK(s_ctl_ep(ep, "switch-profile /nonexistent/x.json") == 2);

    rc = s_ctl_ep(ep, "reload");
    CHECK_MSG(rc == 1 && strstr(s_err, "not supported"), "rc %d: %s", rc, s_err);
    rc = s_ctl_ep(ep, "--json reload");
    CHECK(rc == 1);
    CHECK_MSG(strstr(s_out, "\"ok\":false"), "%s", s_out);

    CHECK(s_ctl_ep(ep, "shutdown") == 0);
    CHECK(strcmp(s_out, "ok\n") == 0);
    pthread_mutex_lock(&s_gw.mu);
    CHECK(s_gw.last_graceful == 0);
    pthread_mutex_unlock(&s_gw.mu);
    CHECK(s_ctl_ep(ep, "shutdown --graceful") == 0);
    pthread_mutex_lock(&s_gw.mu);
    CHECK(s_gw.last_graceful == 1);
    pthread_mutex_unlock(&s_gw.mu);
    CHECK(s_ctl_ep(ep, "drain --graceful") == 2);

    /* usage errors */
    CHECK(s_ctl_ep(ep, "frobnicate") == 2);
    CHECK(s_ctl("") == 2);
    CHECK(s_ctl("--bogus status") == 2);
    CHECK(s_ctl("--timeout-ms x status") == 2);
    CHECK(s_ctl("--help") == 0 && strstr(s_out, "usage:"));
    /* --run-dir finds DIR/control.ipc */
    snprintf(a, sizeof a, "--run-dir '%s' status", s_dir);
    CHECK(s_ctl(a) == 0);
    /* nobody there: a clear message and exit 3 */
    snprintf(a, sizeof a, "--timeout-ms 200 --socket 'ipc://%s/nobody.ipc' status", s_dir);
    rc = s_ctl(a);
    CHECK_MSG(rc == 3 && strstr(s_err, "no answer from") && strstr(s_err, "within 200 ms"),
              "rc %d: %s", rc, s_err);
}

static void t_garbage(const char *ep) {
    void *ctx = zmq_ctx_new();
    CHECK(ctx != NULL);
#define E(msg, needle) s_expect_error(ctx, ep, msg, strlen(msg), needle)
    E("hello", "malformed JSON");
    E("{\"cmd\":\"status\"", "malformed JSON");
    E("{\"cmd\":\"status\"} {}", "malformed JSON");
    E("\xff\xfe\xfd", "malformed JSON");
    s_expect_error(ctx, ep, "{\"cmd\"\0:1}", 10, "NUL byte");
    s_expect_error(ctx, ep, "", 0, "empty message");
    E("[1,2,3]", "must be a JSON object, not an array");
    E("\"status\"", "must be a JSON object, not a string");
    E("42", "not a number");
    E("null", "not null");
    E("{}", "missing \"cmd\"");
    E("{\"cmd\":5}", "\"cmd\" must be a string");
    E("{\"cmd\":\"nope\"}", "unknown command 'nope'");
    E("{\"cmd\":\"\xff\x01\"}", "unknown command '?"
                                "?'");
    E("{\"cmd\":\"restart-shard\"}", "needs an integer \"shard\"");
    E("{\"cmd\":\"restart-shard\",\"shard\":\"1\"}", "needs an integer \"shard\"");
    E("{\"cmd\":\"restart-shard\",\"shard\":1.5}", "needs an integer \"shard\"");
    E("{\"cmd\":\"restart-shard\",\"shard\":-1}", "needs an integer \"shard\"");
    E("{\"cmd\":\"restart-shard\",\"shard\":1e300}", "needs an integer \"shard\"");
    E("{\"cmd\":\"switch-profile\"}", "needs a string \"profile\"");
    E("{\"cmd\":\"switch-profile\",\"profile\":7}", "needs a string \"profile\"");
    E("{\"cmd\":\"switch-profile\",\"profile\":\"\"}", "needs a string \"profile\"");
    E("{\"cmd\":\"shutdown\",\"graceful\":\"yes\"}", "\"graceful\" must be true or false");
    E("{\"cmd\":\"drain\",\"force\":true}", "unknown argument 'force'");
    E("{\"cmd\":\"restart-shard\",\"shard\":0,\"shrad\":1}", "unknown argument 'shrad'");
    E("{\"cmd\":\"status\",\"cmd\":\"drain\"}", "given twice");
    E("{\"cmd\":\"reload\"}", "not supported");
    /* deep nesting: cJSON's limit, a refusal, not a crash */
    size_t dn = 4000;
    char *deep = malloc(dn + 1);
    for (size_t i = 0; i < dn; i++)
        deep[i] = i < dn / 2 ? '[' : ']';
    deep[dn] = 0;
    E(deep, "malformed JSON");
    free(deep);
    /* over 64 KiB */
    size_t big = 100 * 1024;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    memcpy(huge, "{\"cmd\":\"status\"}", 16);
    huge[big] = 0;
    s_expect_error(ctx, ep, huge, big, "over the 65536-byte limit");
    free(huge);
    /* multipart */
    const char *parts[3] = {"{\"cmd\":\"status\"}", "x", "y"};
    size_t lens[3] = {16, 1, 1};
    cJSON *r = s_raw(ctx, ep, parts, lens, 3, 5000);
    CHECK(r && cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")));
    const cJSON *e = r ? cJSON_GetObjectItem(r, "error") : NULL;
    CHECK_MSG(cJSON_IsString(e) && strstr(e->valuestring, "multipart"), "%s",
              cJSON_IsString(e) ? e->valuestring : "(none)");
    cJSON_Delete(r);
    CHECK(s_status_ok(ctx, ep));
    /* beyond CONTROL_HARD_MAX_MSG ZeroMQ drops the peer: no reply, but the server lives on */
    size_t vast = CONTROL_HARD_MAX_MSG + 1024;
    char *v = calloc(1, vast);
    const char *vp[1] = {v};
    size_t vl[1] = {vast};
    r = s_raw(ctx, ep, vp, vl, 1, 1000);
    CHECK(r == NULL);
    cJSON_Delete(r);
    free(v);
    CHECK(s_status_ok(ctx, ep));
#undef E
    /* the server answered everything and still works */
    for (int i = 0; i < 20; i++)
        CHECK(s_status_ok(ctx, ep));
    CHECK(zmq_ctx_term(ctx) == 0);
}

static void t_endpoints(void) {
    const char *refused[] = {
        "tcp://0.0.0.0:5555",
        "tcp://192.168.1.10:5555",
        "tcp://*:5555",
        "tcp://localhost:5555",
        "tcp://[::]:5555",
        "tcp://[2001:db8::1]:5555",
        "tcp://10.0.0.1:5555",
        "tcp://eth0:5555",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "tcp://127.0.0.1:x",
        "udp://127.0.0.1:5555",
        "inproc://control",
        "ipc://",
        "ipc://@abstract",
        "ipc://*",
        "",
        "tcp://128.0.0.1:5555",
        "tcp://127.0.0.1;10.0.0.1:5555",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        gerr_t err = {{0}};
        control_t *c = NULL;
        int rc = control_start(refused[i], &s_handlers, &c, &err);
        CHECK_MSG(rc < 0 && c == NULL, "%s accepted", refused[i]);
        CHECK_MSG(err.msg[0], "%s: no message", refused[i]);
        control_stop(&c);
    }
    gerr_t err = {{0}};
    CHECK(control_start("tcp://0.0.0.0:5555", &s_handlers, &(control_t *){NULL}, &err) < 0);
    CHECK_MSG(strstr(err.msg, "loopback"), "%s", err.msg);
    CHECK(control_check_endpoint("tcp://127.0.0.1:5555", &err) == 0);
    CHECK(control_check_endpoint("tcp://127.1.2.3:*", &err) == 0);
    CHECK(control_check_endpoint("tcp://[::1]:5555", &err) == 0);
    CHECK(control_check_endpoint("ipc:///tmp/x/control.ipc", &err) == 0);
    char longp[300];
    memset(longp, 'a', sizeof longp);
    memcpy(longp, "ipc:///", 7);
    longp[sizeof longp - 1] = 0;
    CHECK(control_check_endpoint(longp, &err) < 0);
    CHECK_MSG(strstr(err.msg, "shorter run directory"), "%s", err.msg);

    /* loopback tcp works end to end */
    control_t *c = NULL;
    int rc = control_start("tcp://127.0.0.1:*", &s_handlers, &c, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        const char *ep = control_endpoint(c);
        CHECK_MSG(strncmp(ep, "tcp://127.0.0.1:", 16) == 0, "%s", ep);
        rc = s_ctl_ep(ep, "status");
        CHECK_MSG(rc == 0, "tcp status rc %d: %s", rc, s_err);
        control_stop(&c);
        CHECK(c == NULL);
        control_stop(&c); /* safe twice */
    }

    /* defaults */
    char buf[1024];
    CHECK(control_default_endpoint("/run/x", buf, sizeof buf) == 0);
    CHECK(strcmp(buf, "ipc:///run/x/control.ipc") == 0);
    CHECK(control_default_endpoint("/run/x", buf, 10) < 0);
    CHECK(control_default_run_dir(buf, sizeof buf) == 0 && buf[0]);
}

static void t_ipc_file(void) {
    char ep[600], path[300];
    snprintf(path, sizeof path, "%s/c2.ipc", s_dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    gerr_t err = {{0}};
    control_t *c = NULL, *c2 = NULL;

    /* missing directory */
    CHECK(control_start("ipc:///nonexistent-gptoss-dir/control.ipc", &s_handlers, &c2, &err) < 0);
    CHECK_MSG(strstr(err.msg, "does not exist"), "%s", err.msg);

    /* a regular file in the way */
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    CHECK(control_start(ep, &s_handlers, &c2, &err) < 0);
    CHECK_MSG(strstr(err.msg, "not a socket"), "%s", err.msg);
    CHECK(unlink(path) == 0);

    /* a stale socket file (nobody listening) is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    CHECK(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1 < sizeof sa.sun_path ? strlen(path) + 1 : 0);
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK(close(fd) == 0);
    int rc = control_start(ep, &s_handlers, &c, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && S_ISSOCK(sb.st_mode));
    CHECK_MSG((sb.st_mode & 0777) == 0600, "mode %o", (unsigned)(sb.st_mode & 0777));

    /* a live socket is not taken over */
    CHECK(control_start(ep, &s_handlers, &c2, &err) < 0);
    CHECK_MSG(strstr(err.msg, "in use by another process"), "%s", err.msg);
    CHECK(s_ctl_ep(ep, "status") == 0);

    control_stop(&c);
    CHECK_MSG(access(path, F_OK) != 0 && errno == ENOENT, "socket file left behind");
}

int main(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/gctl-XXXXXX");
    if (!mkdtemp(s_dir)) {
        perror("mkdtemp");
        return 1;
    }
    char ep[600], path[300];
    snprintf(path, sizeof path, "%s/control.ipc", s_dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    gerr_t err = {{0}};
    control_t *c = NULL;
    int rc = control_start(ep, &s_handlers, &c, &err);
    CHECK_MSG(rc == 0, "control_start: %s", err.msg);
    if (rc == 0) {
        struct stat sb;
        CHECK(stat(path, &sb) == 0);
        CHECK_MSG((sb.st_mode & 0777) == 0600, "mode %o", (unsigned)(sb.st_mode & 0777));
        CHECK(strcmp(control_endpoint(c), ep) == 0);
        t_ctl(ep);
        t_garbage(ep);
        control_stop(&c);
    }
    t_endpoints();
    t_ipc_file();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s_dir);
    return tcheck_done("test_control");
}
