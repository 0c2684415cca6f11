/* test_gateway_cuda: the real gptoss-gateway + gptoss-shardd started with a "backend": "cuda"
 * profile (tests/fixtures/tiny-a, tp 1), no mocks.
 *
 * On a host without a GPU (or a build without CUDA) the shard's LOAD_ERROR must reach the
 * operator: the gateway keeps serving HTTP, GET /health says DEGRADED with the shard's reason
 * ("device 0 does not exist" / "built without CUDA"), GET /ready is 503, and SIGTERM still exits
 * 0 with no shard left. On a GPU host GET /ready must turn 200 instead. A cuda profile with tp 2
 * is refused at start (exit 1, the message names NCCL) before any shard is spawned. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tcheck.h"
#ifdef GPTOSS_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* GET path on 127.0.0.1:port; returns the HTTP status (-1 on failure) and the response's
 * first n-1 bytes in buf (headers and body). */
static int s_get(int port, const char *path, char *buf, size_t n) {
    buf[0] = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {5, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int q =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)q) != q) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t got;
    while (len < n - 1 && (got = read(fd, buf + len, n - 1 - len)) > 0)
        len += (size_t)got;
    buf[len] = 0;
    close(fd);
    int status = -1;
    if (len == 0 || sscanf(buf, "HTTP/1.%*d %d", &status) != 1) status = -1;
    return status;
}

/* Appends what the gateway's stderr has within wait_ms to log[*len..]. Returns false at EOF. */
static bool s_drain(int fd, char *log, size_t *len, size_t cap, int wait_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0) return true;
    if (*len >= cap - 1) return true;
    ssize_t n = read(fd, log + *len, cap - 1 - *len);
    if (n <= 0) return false;
    *len += (size_t)n;
    log[*len] = 0;
    return true;
}

/* Writes profile `name`.json into dir: tiny-a on backend cuda with tp and devices 0..tp-1. */
static int s_write_profile(const char *dir, const char *name, const char *model, int tp) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int rc = fprintf(f,
                     "{\"name\": \"%s\", \"model\": \"%s\", \"backend\": \"cuda\", \"tp\": %d, "
                     "\"devices\": %s, \"max_running\": 2, \"max_batch_tokens\": 64, "
                     "\"prefill_chunk\": 32, \"max_context\": 256, \"kv_gib\": 0.05, "
                     "\"kv_dtype\": \"f32\", \"defaults\": {\"max_tokens\": 64}}\n",
                     name, model, tp, tp == 1 ? "[0]" : "[0, 1]");
    return fclose(f) == 0 && rc > 0 ? 0 : -1;
}

/* Starts the gateway with --profile name; stderr goes to *err_fd. Returns the pid or -1. */
static pid_t s_start(const char *gw, const char *dir, const char *name, const char *run_dir,
                     int *err_fd) {
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execl(gw, gw, "--profiles-dir", dir, "--profile", name, "--port", "0", "--threads", "1",
              "--run-dir", run_dir, "--degraded-retry", "-1", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        return -1;
    }
    *err_fd = pfd[0];
    return pid;
}

/* Waits up to timeout_s for pid to exit, collecting stderr; returns the wait status or -1
 * (then it was killed). */
static int s_reap(pid_t pid, int fd, char *log, size_t *len, size_t cap, double timeout_s) {
    int ws = 0;
    pid_t w = 0;
    double until = s_now() + timeout_s;
    while ((w = waitpid(pid, &ws, WNOHANG)) == 0 && s_now() < until)
        if (!s_drain(fd, log, len, cap, 50)) usleep(10000);
    while (s_drain(fd, log, len, cap, 0) && *len < cap - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0) break;
    }
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &ws, 0);
        return -1;
    }
    return ws;
}

/* tp 1: the shard's load failure (or, with a GPU, success) seen through HTTP. */
static void test_cuda_tp1(const char *gw, const char *dir, const char *run_dir, int devices) {
    int fd = -1;
    pid_t pid = s_start(gw, dir, "cuda-tiny", run_dir, &fd);
    CHECK(pid > 0);
    if (pid <= 0) return;
    static char log[131072];
    size_t len = 0;
    log[0] = 0;
    int port = 0;
    const char *tag = "gptoss-gateway: listening on http://127.0.0.1:";
    double until = s_now() + 30;
    while (!port && s_now() < until && s_drain(fd, log, &len, sizeof log, 200)) {
        const char *l = strstr(log, tag);
        if (l) port = atoi(l + strlen(tag));
    }
    CHECK_MSG(port > 0, "no listening line; stderr:\n%s", log);
    char body[8192] = "";
    int health = -1, ready = -1;
    /* the shard starts, fails its LOAD (or loads): bounded, never a hang */
    until = s_now() + 60;
    while (port > 0 && s_now() < until) {
        s_drain(fd, log, &len, sizeof log, 0);
        if (devices > 0) {
            if ((ready = s_get(port, "/ready", body, sizeof body)) == 200) break;
        } else {
            health = s_get(port, "/health", body, sizeof body);
            if (strstr(body, "DEGRADED") || strstr(body, "degraded")) break;
        }
        usleep(100000);
    }
    if (devices > 0) {
        CHECK_MSG(ready == 200, "GET /ready -> %d on a GPU host:\n%s\nstderr:\n%s", ready, body,
                  log);
    } else {
        const char *want = devices < 0 ? "built without CUDA (GPTOSS_CUDA=OFF or no toolkit)"
                                       : "device 0 does not exist";
        CHECK_MSG(strstr(body, "cannot load the model") && strstr(body, want) &&
                      strstr(body, "backend \\\"cuda\\\""),
                  "GET /health -> %d, want DEGRADED naming '%s':\n%s\nstderr:\n%s", health, want,
                  body, log);
        const char *hb = strstr(body, "\r\n\r\n");
        fprintf(stderr, "test_gateway_cuda: GET /health -> %d %s\n", health, hb ? hb + 4 : body);
        ready = s_get(port, "/ready", body, sizeof body);
        CHECK_MSG(ready == 503, "GET /ready -> %d while DEGRADED", ready);
    }
    int shard_pid = 0;
    const char *sp = strstr(log, "started pid ");
    if (sp) shard_pid = atoi(sp + strlen("started pid "));
    CHECK(shard_pid > 0);
    CHECK(kill(pid, SIGTERM) == 0);
    int ws = s_reap(pid, fd, log, &len, sizeof log, 30);
    close(fd);
    CHECK_MSG(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "gateway exit status 0x%x:\n%s", ws,
              log);
    if (devices <= 0)
        CHECK_MSG(strstr(log, "LOAD_ERROR") && strstr(log, "degraded"),
                  "the gateway's log does not show the load failure:\n%s", log);
    CHECK_MSG(!strstr(log, "AddressSanitizer") && !strstr(log, "runtime error"),
              "sanitizer report in the gateway's stderr:\n%s", log);
    CHECK_MSG(shard_pid <= 0 || (kill(shard_pid, 0) != 0 && errno == ESRCH), "shard %d still alive",
              shard_pid);
    struct stat st;
    CHECK_MSG(stat(run_dir, &st) != 0, "run dir %s left behind", run_dir);
}

/* tp 2 on cuda: refused at start with the reason, before any shard. */
static void test_cuda_tp2(const char *gw, const char *dir, const char *run_dir) {
    int fd = -1;
    pid_t pid = s_start(gw, dir, "cuda-tiny-tp2", run_dir, &fd);
    CHECK(pid > 0);
    if (pid <= 0) return;
    static char log[65536];
    size_t len = 0;
    log[0] = 0;
    int ws = s_reap(pid, fd, log, &len, sizeof log, 20);
    close(fd);
    CHECK_MSG(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "gateway exit status 0x%x:\n%s", ws,
              log);
    CHECK_MSG(strstr(log, "backend \"cuda\" with tp 2") && strstr(log, "NCCL") &&
                  strstr(log, "must have tp 1"),
              "stderr does not give the reason:\n%s", log);
    CHECK_MSG(!strstr(log, "started pid"), "a shard was spawned:\n%s", log);
}

int main(void) {
    char gw[1024], model[1024], dir[256], run_dir[256];
    snprintf(gw, sizeof gw, "%s/gptoss-gateway", tcheck_bindir());
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    if (access(gw, X_OK) != 0) {
        fprintf(stderr, "no %s\n", gw);
        CHECK(0);
        return tcheck_done("test_gateway_cuda");
    }
    int devices = -1;
#ifdef GPTOSS_HAVE_CUDA
    devices = ops_cuda_device_count();
#endif
    fprintf(stderr, "test_gateway_cuda: CUDA devices visible: %d (-1: a build without CUDA)\n",
            devices);
    snprintf(dir, sizeof dir, "/tmp/gptoss-test-gwcuda-%d", (int)getpid());
    snprintf(run_dir, sizeof run_dir, "/tmp/gptoss-test-gwcuda-run-%d", (int)getpid());
    CHECK(mkdir(dir, 0700) == 0);
    CHECK(s_write_profile(dir, "cuda-tiny", model, 1) == 0);
    CHECK(s_write_profile(dir, "cuda-tiny-tp2", model, 2) == 0);
    test_cuda_tp2(gw, dir, run_dir);
    test_cuda_tp1(gw, dir, run_dir, devices);
    char path[1024];
    snprintf(path, sizeof path, "%s/cuda-tiny.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/cuda-tiny-tp2.json", dir);
    unlink(path);
    rmdir(dir);
    rmdir(run_dir);
    return tcheck_done("test_gateway_cuda");
}
