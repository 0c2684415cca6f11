/* test_gateway_main: the gptoss-gateway process on tests/fixtures/tiny-a: it prints
 * its "listening on" line, answers GET /ready with 200 once the self-test passed,
 * and on SIGTERM exits 0, leaves no shard process and removes its run dir. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tcheck.h"

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* GET path on 127.0.0.1:port; returns the HTTP status or -1. */
static int s_get(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char buf[512] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    int status = -1;
    if (got > 0 && sscanf(buf, "HTTP/1.%*d %d", &status) != 1) status = -1;
    return status;
}

int main(void) {
    char gw[1024], model[1024], run_dir[256];
    snprintf(gw, sizeof gw, "%s/gptoss-gateway", tcheck_bindir());
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    snprintf(run_dir, sizeof run_dir, "/tmp/gptoss-test-gw-%d", (int)getpid());
    if (access(gw, X_OK) != 0) {
        fprintf(stderr, "no %s\n", gw);
        CHECK(0);
        return tcheck_done("test_gateway_main");
    }
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execl(gw, gw, "--model", model, "--port", "0", "--threads", "1", "--run-dir", run_dir,
              "--kv-gib", "0.05", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    /* read stderr until the listening line (max 30 s) */
    char log[65536];
    size_t len = 0;
    int port = 0;
    double until = s_now() + 30;
    while (!port && s_now() < until) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t n = read(pfd[0], log + len, sizeof log - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        log[len] = 0;
        const char *l = strstr(log, "gptoss-gateway: listening on http://127.0.0.1:");
        if (l) port = atoi(l + strlen("gptoss-gateway: listening on http://127.0.0.1:"));
    }
    CHECK_MSG(port > 0, "no listening line; stderr:\n%s", log);
    int status = -1;
    for (int i = 0; i < 300 && port > 0; i++) {
        status = s_get(port, "/ready");
        if (status == 200) break;
        usleep(20000);
    }
    CHECK_MSG(status == 200, "GET /ready -> %d", status);
    struct stat st;
    CHECK(stat(run_dir, &st) == 0 && S_ISDIR(st.st_mode));
    /* the shard's pid, from the scheduler's log line "shard 0: started pid N"; the scheduler
     * thread may log it after the listening line, so read what stderr has by now */
    for (;;) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) break;
        ssize_t n = read(pfd[0], log + len, sizeof log - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        log[len] = 0;
    }
    int shard_pid = 0;
    const char *sp = strstr(log, "started pid ");
    if (sp) shard_pid = atoi(sp + strlen("started pid "));
    CHECK(shard_pid > 0);
    CHECK(kill(pid, SIGTERM) == 0);
    int ws = 0;
    pid_t w = 0;
    until = s_now() + 30;
    while ((w = waitpid(pid, &ws, WNOHANG)) == 0 && s_now() < until) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t n = read(pfd[0], log + len, sizeof log - 1 - len);
        if (n > 0) {
            len += (size_t)n;
            log[len] = 0;
        } else {
            usleep(10000);
        }
    }
    ssize_t n;
    while (len < sizeof log - 1 && (n = read(pfd[0], log + len, sizeof log - 1 - len)) > 0)
        len += (size_t)n;
    log[len] = 0;
    CHECK_MSG(!strstr(log, "AddressSanitizer") && !strstr(log, "runtime error"),
              "sanitizer report in the gateway's stderr:\n%s", log);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &ws, 0);
    }
    CHECK_MSG(w == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "gateway exit status 0x%x", ws);
    CHECK_MSG(shard_pid <= 0 || (kill(shard_pid, 0) != 0 && errno == ESRCH), "shard %d still alive",
              shard_pid);
    CHECK_MSG(stat(run_dir, &st) != 0, "run dir %s left behind", run_dir);
    close(pfd[0]);
    return tcheck_done("test_gateway_main");
}
