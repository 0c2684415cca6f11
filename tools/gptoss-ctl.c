/* gptoss-ctl: command-line client of the gateway's control socket.
 *
 *   gptoss-ctl [--socket EP | --run-dir DIR] [--json] [--timeout-ms N] COMMAND [ARGS]
 *
 * Commands: status, stats, restart-shard N, drain, resume, switch-profile FILE|NAME,
 * reload, shutdown [--graceful]. Sends one JSON request over a ZeroMQ REQ socket
 * (gateway/control.h has the protocol), waits at most --timeout-ms for the reply
 * and prints it as "key: value" lines (nested objects indented) or, with --json,
 * as the raw JSON text.
 *
 * The endpoint is --socket EP, else ipc://DIR/control.ipc for --run-dir DIR, else
 * $GPTOSS_CONTROL, else the default run directory's socket ($GPTOSS_RUN_DIR,
 * $XDG_RUNTIME_DIR/gptoss or /tmp/gptoss-UID). A profile given as a file path is
 * checked here first (a typo is reported before the gateway drains anything) and
 * sent as an absolute path, since the gateway's working directory differs.
 *
 * Exit status: 0 the gateway answered ok, 1 it answered an error (or an
 * unreadable reply), 2 usage error, 3 no answer within the timeout. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "control.h"
#include "profile.h"

#define S_DEFAULT_TIMEOUT_MS 10000

static int s_usage(FILE *f, int rc) {
    fprintf(f,
            "usage: gptoss-ctl [--socket EP | --run-dir DIR] [--json] [--timeout-ms N] COMMAND "
            "[ARGS]\n"
            "commands:\n"
            "  status                      state, model, profile, shards\n"
            "  stats                       counters: requests, tokens, KV blocks, per shard\n"
            "  restart-shard N             restart shard N (its requests are replayed)\n"
            "  drain                       stop admitting requests; running ones finish\n"
            "  resume                      admit requests again\n"
            "  switch-profile FILE|NAME    drain, restart the shards with another profile\n"
            "  reload                      re-read the current profile and restart with it\n"
            "  shutdown [--graceful]       stop the gateway (--graceful: finish requests first)\n"
            "options:\n"
            "  --socket EP       control endpoint (ipc://PATH or tcp://127.0.0.1:PORT)\n"
            "  --run-dir DIR     the gateway's run directory (socket DIR/control.ipc)\n"
            "  --json            print the raw JSON reply\n"
            "  --timeout-ms N    wait at most N ms for the reply (default %d)\n"
            "exit status: 0 ok, 1 the gateway answered an error, 2 usage, 3 no answer\n",
            S_DEFAULT_TIMEOUT_MS);
    return rc;
}

/* Prints a scalar value; strings without their quotes, control characters as '?'. */
static void s_print_scalar(const cJSON *v) {
    if (cJSON_IsString(v)) {
        for (const char *s = v->valuestring; s && *s; s++)
            putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
    } else if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        if (x == (double)(long long)x && x > -1e15 && x < 1e15)
            printf("%lld", (long long)x);
        else
            printf("%g", x);
    } else if (cJSON_IsBool(v)) {
        printf("%s", cJSON_IsTrue(v) ? "true" : "false");
    } else {
        printf("null");
    }
}

static bool s_is_scalar(const cJSON *v) {
    return !cJSON_IsObject(v) && !cJSON_IsArray(v);
}

static void s_print_key(const char *k) {
    for (const char *s = k ? k : ""; *s; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

/* Prints the members of obj (an object or an array) at indent, as "key: value" lines. */
static void s_print_tree(const cJSON *obj, int indent, bool skip_ok) {
    int i = 0;
    for (const cJSON *it = obj->child; it; it = it->next, i++) {
        if (skip_ok && it->string && strcmp(it->string, "ok") == 0) continue;
        printf("%*s", indent, "");
        if (cJSON_IsArray(obj))
            printf("[%d]", i);
        else
            s_print_key(it->string);
        if (s_is_scalar(it)) {
            printf(": ");
            s_print_scalar(it);
            printf("\n");
        } else if (!it->child) {
            printf(": %s\n", cJSON_IsArray(it) ? "[]" : "{}");
        } else if (cJSON_IsArray(it)) {
            bool flat = true;
            for (const cJSON *e = it->child; e; e = e->next)
                flat = flat && s_is_scalar(e);
            if (flat) {
                printf(": ");
                for (const cJSON *e = it->child; e; e = e->next) {
                    s_print_scalar(e);
                    printf("%s", e->next ? ", " : "\n");
                }
            } else {
                printf(":\n");
                s_print_tree(it, indent + 2, false);
            }
        } else {
            printf(":\n");
            s_print_tree(it, indent + 2, false);
        }
    }
}

static int s_parse_nonneg(const char *s, long max, long *out) {
    if (!*s) return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > max) return -1;
    }
    *out = v;
    return 0;
}

/* Sends req to ep and waits for the reply; returns the reply text (malloc'd) or
 * NULL with the exit status in *rc. */
static char *s_exchange(const char *ep, const char *req, int timeout_ms, int *rc) {
    char *out = NULL;
    *rc = 3;
    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "gptoss-ctl: zmq_ctx_new: %s\n", zmq_strerror(errno));
        return NULL;
    }
    void *s = zmq_socket(ctx, ZMQ_REQ);
    if (!s) {
        fprintf(stderr, "gptoss-ctl: zmq_socket: %s\n", zmq_strerror(errno));
        goto done;
    }
    int zero = 0, one = 1;
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms) != 0 ||
        (strncmp(ep, "tcp://[", 7) == 0 && zmq_setsockopt(s, ZMQ_IPV6, &one, sizeof one) != 0)) {
        fprintf(stderr, "gptoss-ctl: zmq_setsockopt: %s\n", zmq_strerror(errno));
        goto done;
    }
    if (zmq_connect(s, ep) != 0) {
        fprintf(stderr,
                "gptoss-ctl: cannot connect to '%s': %s (expected ipc://PATH or "
                "tcp://HOST:PORT)\n",
                ep, zmq_strerror(errno));
        *rc = 2;
        goto done;
    }
    if (zmq_send(s, req, strlen(req), 0) < 0) {
        if (errno == EAGAIN)
            fprintf(stderr, "gptoss-ctl: no answer from %s within %d ms (could not send)\n", ep,
                    timeout_ms);
        else
            fprintf(stderr, "gptoss-ctl: send to %s: %s\n", ep, zmq_strerror(errno));
        goto done;
    }
    zmq_msg_t msg;
    if (zmq_msg_init(&msg) != 0) {
        fprintf(stderr, "gptoss-ctl: zmq_msg_init: %s\n", zmq_strerror(errno));
        goto done;
    }
    if (zmq_msg_recv(&msg, s, 0) < 0) {
        int e = errno;
        if (e == EAGAIN) {
            fprintf(stderr, "gptoss-ctl: no answer from %s within %d ms", ep, timeout_ms);
            struct stat sb;
            if (strncmp(ep, "ipc://", 6) == 0 && stat(ep + 6, &sb) != 0)
                fprintf(stderr,
                        " (no socket file %s: is the gateway running with this run "
                        "directory?)",
                        ep + 6);
            fprintf(stderr, "\n");
        } else {
            fprintf(stderr, "gptoss-ctl: receive from %s: %s\n", ep, zmq_strerror(e));
        }
        if (zmq_msg_close(&msg) != 0) fprintf(stderr, "gptoss-ctl: zmq_msg_close failed\n");
        goto done;
    }
    size_t n = zmq_msg_size(&msg);
    out = malloc(n + 1);
    if (out) {
        memcpy(out, zmq_msg_data(&msg), n);
        out[n] = 0;
        *rc = 0;
    } else {
        fprintf(stderr, "gptoss-ctl: out of memory for a %zu-byte reply\n", n);
        *rc = 1;
    }
    if (zmq_msg_close(&msg) != 0) fprintf(stderr, "gptoss-ctl: zmq_msg_close failed\n");
done:
    if (s && zmq_close(s) != 0) fprintf(stderr, "gptoss-ctl: zmq_close: %s\n", zmq_strerror(errno));
    while (zmq_ctx_term(ctx) != 0 && errno == EINTR) {
    }
    return out;
}

/* Builds the request for the command and its arguments; NULL after a usage message. */
static cJSON *s_build(const char *cmd, char **args, int nargs, bool graceful) {
    static const char *const plain[] = {"status", "stats", "drain", "resume", "reload", NULL};
    cJSON *req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "cmd", cmd)) {
        fprintf(stderr, "gptoss-ctl: out of memory\n");
        cJSON_Delete(req);
        return NULL;
    }
    int want = 0;
    bool known = false;
    for (int i = 0; plain[i]; i++)
        if (strcmp(cmd, plain[i]) == 0) known = true;
    if (graceful && strcmp(cmd, "shutdown") != 0) {
        fprintf(stderr, "gptoss-ctl: --graceful applies only to shutdown\n");
        goto bad;
    }
    if (strcmp(cmd, "restart-shard") == 0) {
        known = true;
        want = 1;
        long shard;
        if (nargs != 1 || s_parse_nonneg(args[0], 1000000, &shard) != 0) {
            fprintf(stderr, "gptoss-ctl: restart-shard needs one shard number N >= 0 (e.g. "
                            "restart-shard 0)\n");
            goto bad;
        }
        if (!cJSON_AddNumberToObject(req, "shard", (double)shard)) goto oom;
    } else if (strcmp(cmd, "switch-profile") == 0) {
        known = true;
        want = 1;
        if (nargs != 1 || !args[0][0]) {
            fprintf(stderr, "gptoss-ctl: switch-profile needs one profile name or file\n");
            goto bad;
        }
        const char *p = args[0];
        size_t n = strlen(p);
        char abs[PATH_MAX];
        if (strchr(p, '/') || (n > 5 && strcmp(p + n - 5, ".json") == 0)) {
            /* a file: check it here, send its absolute path */
            profile_t prof;
            gerr_t err = {{0}};
            int lrc = profile_load(p, NULL, &prof, &err);
            profile_free(&prof);
            if (lrc != 0) {
                fprintf(stderr, "gptoss-ctl: %s\n", err.msg);
                goto bad;
            }
            if (!realpath(p, abs)) {
                fprintf(stderr, "gptoss-ctl: %s: %s\n", p, strerror(errno));
                goto bad;
            }
            p = abs;
        }
        if (!cJSON_AddStringToObject(req, "profile", p)) goto oom;
    } else if (strcmp(cmd, "shutdown") == 0) {
        known = true;
        if (!cJSON_AddBoolToObject(req, "graceful", graceful)) goto oom;
    }
    if (!known) {
        fprintf(stderr, "gptoss-ctl: unknown command '%s'\n", cmd);
        s_usage(stderr, 2);
        goto bad;
    }
    if (nargs != want) {
        fprintf(stderr, "gptoss-ctl: %s takes %s\n", cmd, want ? "one argument" : "no arguments");
        goto bad;
    }
    return req;
oom:
    fprintf(stderr, "gptoss-ctl: out of memory\n");
bad:
    cJSON_Delete(req);
    return NULL;
}

int main(int argc, char **argv) {
    const char *sock = NULL, *run_dir = NULL, *cmd = NULL;
    bool json = false, graceful = false;
    long timeout_ms = S_DEFAULT_TIMEOUT_MS;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    int nargs = 0;
    if (!args) {
        fprintf(stderr, "gptoss-ctl: out of memory\n");
        return 1;
    }
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        char opt[32] = "";
        if (eq && (size_t)(eq - a) < sizeof opt) {
            memcpy(opt, a, (size_t)(eq - a));
            opt[eq - a] = 0;
            val = eq + 1;
            a = opt;
        }
        bool takes =
            !strcmp(a, "--socket") || !strcmp(a, "--run-dir") || !strcmp(a, "--timeout-ms");
        if (takes && !val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "gptoss-ctl: %s needs a value\n", a);
                goto out;
            }
            val = argv[++i];
        } else if (!takes && val) {
            fprintf(stderr, "gptoss-ctl: %s takes no value\n", a);
            goto out;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            rc = s_usage(stdout, 0);
            goto out;
        } else if (!strcmp(a, "--socket")) {
            sock = val;
        } else if (!strcmp(a, "--run-dir")) {
            run_dir = val;
        } else if (!strcmp(a, "--timeout-ms")) {
            if (s_parse_nonneg(val, 3600000, &timeout_ms) != 0 || timeout_ms < 1) {
                fprintf(stderr, "gptoss-ctl: --timeout-ms needs an integer in [1, 3600000]\n");
                goto out;
            }
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--graceful")) {
            graceful = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "gptoss-ctl: unknown option '%s'\n", a);
            rc = s_usage(stderr, 2);
            goto out;
        } else if (!cmd) {
            cmd = a;
        } else {
            args[nargs++] = argv[i];
        }
    }
    if (!cmd) {
        rc = s_usage(stderr, 2);
        goto out;
    }
    if (sock && run_dir) {
        fprintf(stderr, "gptoss-ctl: give --socket or --run-dir, not both\n");
        goto out;
    }
    char ep[1200];
    const char *env = getenv("GPTOSS_CONTROL");
    if (sock)
        snprintf(ep, sizeof ep, "%s", sock);
    else if (!run_dir && env && *env)
        snprintf(ep, sizeof ep, "%s", env);
    else if (control_default_endpoint(run_dir, ep, sizeof ep) != 0) {
        fprintf(stderr, "gptoss-ctl: run directory path too long\n");
        goto out;
    }
    cJSON *req = s_build(cmd, args, nargs, graceful);
    if (!req) goto out;
    char *text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!text) {
        fprintf(stderr, "gptoss-ctl: out of memory\n");
        rc = 1;
        goto out;
    }
    char *reply = s_exchange(ep, text, (int)timeout_ms, &rc);
    free(text);
    if (!reply) goto out;
    cJSON *r = cJSON_Parse(reply);
    const cJSON *ok = r ? cJSON_GetObjectItemCaseSensitive(r, "ok") : NULL;
    if (!r || !cJSON_IsObject(r) || !cJSON_IsBool(ok)) {
        fprintf(stderr,
                "gptoss-ctl: the gateway's reply is not a JSON object with \"ok\": %.200s\n",
                reply);
        rc = 1;
    } else {
        rc = cJSON_IsTrue(ok) ? 0 : 1;
        if (json) {
            printf("%s\n", reply);
        } else if (rc == 0) {
            if (r->child && r->child->next)
                s_print_tree(r, 0, true);
            else
                printf("ok\n");
        } else {
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
            fprintf(stderr, "gptoss-ctl: %s: %s\n", cmd,
                    cJSON_IsString(e) ? e->valuestring : "failed (no reason given)");
        }
    }
    cJSON_Delete(r);
    free(reply);
    if (fflush(stdout) != 0) rc = rc ? rc : 1;
out:
    free(args);
    return rc;
}
