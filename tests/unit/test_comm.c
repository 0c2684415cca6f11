/* test_comm: the comm interface - single, and shm across real forked processes.
 *
 * Every group is N forked children on a fresh segment name; they write their return codes,
 * messages, times and results into a MAP_SHARED area that the parent checks. The parent waits
 * for the children with a deadline and SIGKILLs them if it passes, so a hang fails the test
 * instead of blocking it. Faults (a peer that exits, is SIGKILLed or SIGSTOPped, an abort from
 * outside, a wrong world size) must make the survivors fail within the timeout.
 * Throughput of all_reduce_sum is printed (no assertion: the machine may be shared). */
#include "comm.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tcheck.h"

#define MAXW     4
#define FAULT_MS 2000 /* collective timeout in the fault tests */
#define GROUP_MS 40000.0
#define N_SIZES  4

static const size_t k_sizes[N_SIZES] = {1, 7, 2880, 1000000};

/* Written by the children, read by the parent. */
typedef struct {
    int rc[MAXW];                 /* return code of the call under test */
    double t_ms[MAXW];            /* CLOCK_MONOTONIC when it returned */
    double took_ms[MAXW];         /* how long it took */
    long bad[MAXW];               /* wrong values seen by the child */
    char msg[MAXW][GERR_MSG_MAX]; /* its error message */
    double gbps[2], us[2];        /* bench: rank 0's figures per size */
} shared_t;

static shared_t *g_sh;
static float *g_data;  /* [MAXW][g_total] results of all_reduce */
static size_t g_total; /* sum of k_sizes */
static int g_group;    /* counter for unique names */

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void s_sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Deterministic values in [-1, 1) from (seed, i). */
static float s_val(uint64_t seed, size_t i) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ULL + i * 0xd1b54a32d192ed03ULL + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
}

static uint64_t s_seed(int rank, size_t n, int world) {
    return (uint64_t)rank * 1000003u + n * 31u + (uint64_t)world * 7u;
}

static void s_record(int rank, int rc, double t0, const gerr_t *e) {
    g_sh->rc[rank] = rc;
    g_sh->t_ms[rank] = s_now_ms();
    g_sh->took_ms[rank] = g_sh->t_ms[rank] - t0;
    snprintf(g_sh->msg[rank], GERR_MSG_MAX, "%s", rc ? e->msg : "");
}

/* ---- running a group ----------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int rank, world;
    comm_shm_opts_t opts;
    void *arg;
} worker_t;

typedef void (*worker_fn)(const worker_t *w);
typedef void (*parent_fn)(const pid_t *pids, const char *name, void *arg);

/* Joins the group (rank 0 creates unless the parent made the segment); records failure. */
static comm_t *s_join(const worker_t *w) {
    comm_t *c = NULL;
    gerr_t e = {{0}};
    double t0 = s_now_ms();
    int rc = comm_shm_new(w->name, w->rank, w->world, &w->opts, &c, &e);
    if (rc) s_record(w->rank, rc, t0, &e);
    return c;
}

/* Forks world children running fn; parent runs pfn (may be NULL), then reaps them with a
 * deadline. Returns the number of children that were killed for hanging. */
static int s_group(int world, bool parent_creates, size_t slot_bytes, int timeout_ms, worker_fn fn,
                   parent_fn pfn, void *arg, int *statuses) {
    char name[64];
    snprintf(name, sizeof name, "/gptoss-test-%d-%d", (int)getpid(), g_group++);
    memset(g_sh, 0, sizeof *g_sh);
    for (int r = 0; r < MAXW; r++)
        g_sh->rc[r] = 12345; /* "never reported" */
    if (parent_creates) {
        gerr_t e;
        int rc = comm_shm_create(name, world, slot_bytes, &e);
        CHECK_MSG(rc == 0, "comm_shm_create: %s", e.msg);
    }
    pid_t pids[MAXW];
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < world; r++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            exit(2);
        }
        if (p == 0) {
            worker_t w = {.name = name,
                          .rank = r,
                          .world = world,
                          .opts = {.create = !parent_creates && r == 0,
                                   .slot_bytes = slot_bytes,
                                   .attach_timeout_ms = 10000,
                                   .timeout_ms = timeout_ms},
                          .arg = arg};
            fn(&w);
            _exit(0);
        }
        pids[r] = p;
    }
    if (pfn) pfn(pids, name, arg);
    double deadline = s_now_ms() + GROUP_MS;
    int left = world, hung = 0;
    bool done[MAXW] = {0};
    while (left) {
        for (int r = 0; r < world; r++) {
            int st;
            if (!done[r] && waitpid(pids[r], &st, WNOHANG) == pids[r]) {
                done[r] = true;
                if (statuses) statuses[r] = st;
                left--;
            }
        }
        if (left && s_now_ms() > deadline) {
            for (int r = 0; r < world; r++)
                if (!done[r]) {
                    kill(pids[r], SIGKILL);
                    waitpid(pids[r], NULL, 0);
                    done[r] = true;
                    hung++;
                }
            left = 0;
        }
        if (left) s_sleep_ms(1);
    }
    gerr_t e;
    (void)comm_shm_unlink(name, &e); /* rank 0 normally did; NOTFOUND is fine */
    return hung;
}

/* ---- single -------------------------------------------------------------------------------- */

static void s_test_single(void) {
    comm_t *c = NULL;
    gerr_t e;
    CHECK(comm_single_new(&c, &e) == 0);
    CHECK(c && c->rank == 0 && c->world == 1 && strcmp(c->kind, "single") == 0);
    float buf[3] = {1, 2, 3}, out[3] = {0};
    CHECK(comm_all_reduce_sum(c, buf, 3, &e) == 0 && buf[0] == 1 && buf[2] == 3);
    CHECK(comm_gather_to_root(c, buf, 3, out, &e) == 0 && memcmp(buf, out, sizeof buf) == 0);
    CHECK(comm_broadcast(c, buf, sizeof buf, 0, &e) == 0);
    CHECK(comm_barrier(c, &e) == 0);
    comm_abort(c);
    CHECK(comm_barrier(c, &e) == COMM_ERR_ABORTED && strstr(e.msg, "aborted"));
    CHECK(comm_all_reduce_sum(c, buf, 3, &e) == COMM_ERR_ABORTED);
    comm_destroy(&c);
    CHECK(c == NULL);
    comm_destroy(&c);
}

/* ---- all-reduce ---------------------------------------------------------------------------- */

static void s_w_all_reduce(const worker_t *w) {
    comm_t *c = s_join(w);
    if (!c) return;
    gerr_t e = {{0}};
    size_t off = 0;
    int rc = 0;
    double t0 = s_now_ms();
    for (int k = 0; k < N_SIZES && !rc; k++) {
        size_t n = k_sizes[k];
        float *x = g_data + (size_t)w->rank * g_total + off;
        for (size_t i = 0; i < n; i++)
            x[i] = s_val(s_seed(w->rank, n, w->world), i);
        rc = comm_all_reduce_sum(c, x, n, &e);
        off += n;
    }
    s_record(w->rank, rc, t0, &e);
    comm_destroy(&c);
}

/* One all-reduce run of world ranks; checks values and cross-rank identity; copies rank 0's
 * results to keep (g_total floats) for the run-to-run comparison. */
static void s_all_reduce_run(int world, bool parent_creates, size_t slot, float *keep) {
    int hung = s_group(world, parent_creates, slot, 20000, s_w_all_reduce, NULL, NULL, NULL);
    CHECK_MSG(hung == 0, "world %d: %d ranks hung", world, hung);
    for (int r = 0; r < world; r++)
        CHECK_MSG(g_sh->rc[r] == 0, "world %d rank %d: rc %d %s", world, r, g_sh->rc[r],
                  g_sh->msg[r]);
    size_t off = 0;
    double max_err = 0;
    long not_exact = 0, not_same = 0, not_near = 0;
    for (int k = 0; k < N_SIZES; k++) {
        size_t n = k_sizes[k];
        const float *r0 = g_data + off;
        for (int r = 1; r < world; r++)
            if (memcmp(r0, g_data + (size_t)r * g_total + off, n * sizeof(float)) != 0) not_same++;
        for (size_t i = 0; i < n; i++) {
            double ref = 0, mag = 0;
            float seq = 0; /* the promised order: ((x0 + x1) + x2) + ... in fp32 */
            for (int r = 0; r < world; r++) {
                float v = s_val(s_seed(r, n, world), i);
                ref += v;
                mag += fabs(v);
                seq = r == 0 ? v : seq + v;
            }
            double d = fabs((double)r0[i] - ref);
            if (d > max_err) max_err = d;
            if (d > world * 1.2e-7 * mag + 1e-30) not_near++;
            if (r0[i] != seq) not_exact++;
        }
        off += n;
    }
    CHECK_MSG(not_same == 0, "world %d: %ld sizes differ between ranks", world, not_same);
    CHECK_MSG(not_near == 0, "world %d: %ld values off the double sum", world, not_near);
    CHECK_MSG(not_exact == 0, "world %d: %ld values differ from the rank-order fp32 sum", world,
              not_exact);
    printf("all_reduce world %d slot %zu: max |err| vs double sum %.3g, bit-identical across "
           "ranks: %s\n",
           world, slot, max_err, not_same ? "NO" : "yes");
    if (keep) memcpy(keep, g_data, g_total * sizeof(float));
}

static void s_test_all_reduce(void) {
    float *first = malloc(g_total * sizeof(float)), *second = malloc(g_total * sizeof(float));
    if (!first || !second) exit(2);
    for (int world = 2; world <= 4; world++) {
        s_all_reduce_run(world, false, 0, first);
        s_all_reduce_run(world, world == 4, 0, second); /* world 4: the gateway made it */
        CHECK_MSG(memcmp(first, second, g_total * sizeof(float)) == 0, "world %d: two runs differ",
                  world);
    }
    /* A small slot (512 floats per phase) through every size: chunking and parity stress
     * (1M floats take ~2000 phases; a 32-float slot took 31000, each needing all three ranks
     * scheduled, which outlasted the group deadline on a 2-core machine busy with builds). */
    s_all_reduce_run(3, false, 4096, second);
    s_all_reduce_run(3, false, 0, first);
    CHECK_MSG(memcmp(first, second, g_total * sizeof(float)) == 0, "slot size changed the result");
    free(first);
    free(second);
}

/* ---- gatherv, broadcast, barrier ------------------------------------------------------------ */

static const size_t k_counts[MAXW] = {3, 300001, 0, 17}; /* uneven, one empty, one > a slot */

static void s_w_gather_bcast(const worker_t *w) {
    comm_t *c = s_join(w);
    if (!c) return;
    gerr_t e = {{0}};
    double t0 = s_now_ms();
    long bad = 0;
    int rc = 0;
    size_t total = 0;
    for (int r = 0; r < w->world; r++)
        total += k_counts[r];
    float *send = malloc((k_counts[w->rank] + 1) * sizeof(float));
    float *recv = w->rank == 0 ? malloc(total * sizeof(float)) : NULL;
    unsigned char *b = malloc(1234567);
    if (!send || (w->rank == 0 && !recv) || !b) _exit(2);
    for (size_t i = 0; i < k_counts[w->rank]; i++)
        send[i] = (float)(w->rank * 1000000 + (int)i);
    for (int rep = 0; rep < 2 && !rc; rep++) {
        rc = comm_gatherv(c, send, k_counts, recv, &e);
        if (!rc && w->rank == 0) {
            size_t at = 0;
            for (int r = 0; r < w->world; r++)
                for (size_t i = 0; i < k_counts[r]; i++)
                    if (recv[at++] != (float)(r * 1000000 + (int)i)) bad++;
        }
    }
    /* equal counts through the convenience wrapper */
    if (!rc) {
        float mine[5], all[5 * MAXW];
        for (int i = 0; i < 5; i++)
            mine[i] = (float)(w->rank * 10 + i);
        rc = comm_gather_to_root(c, mine, 5, w->rank == 0 ? all : NULL, &e);
        if (!rc && w->rank == 0)
            for (int r = 0; r < w->world; r++)
                for (int i = 0; i < 5; i++)
                    if (all[r * 5 + i] != (float)(r * 10 + i)) bad++;
    }
    /* broadcast of an odd byte count larger than a slot, from the last rank */
    if (!rc) {
        int root = w->world - 1;
        for (size_t i = 0; i < 1234567; i++)
            b[i] = w->rank == root ? (unsigned char)(i * 7 + 3) : 0;
        rc = comm_broadcast(c, b, 1234567, root, &e);
        for (size_t i = 0; !rc && i < 1234567; i++)
            if (b[i] != (unsigned char)(i * 7 + 3)) bad++;
    }
    for (int i = 0; i < 200 && !rc; i++)
        rc = comm_barrier(c, &e);
    if (!rc) { /* a zero-length all-reduce still synchronises */
        rc = comm_all_reduce_sum(c, send, 0, &e);
    }
    g_sh->bad[w->rank] = bad;
    s_record(w->rank, rc, t0, &e);
    free(send);
    free(recv);
    free(b);
    comm_destroy(&c);
}

static void s_test_gather_bcast(void) {
    for (int world = 2; world <= 4; world++) {
        for (int tiny = 0; tiny < 2; tiny++) {
            size_t slot = tiny ? 4096 : 0;
            int hung = s_group(world, false, slot, 20000, s_w_gather_bcast, NULL, NULL, NULL);
            CHECK(hung == 0);
            for (int r = 0; r < world; r++) {
                CHECK_MSG(g_sh->rc[r] == 0, "world %d slot %zu rank %d: rc %d %s", world, slot, r,
                          g_sh->rc[r], g_sh->msg[r]);
                CHECK_MSG(g_sh->bad[r] == 0, "world %d slot %zu rank %d: %ld wrong values", world,
                          slot, r, g_sh->bad[r]);
            }
        }
    }
}

/* ---- mismatched collectives ---------------------------------------------------------------- */

static void s_w_mismatch(const worker_t *w) {
    comm_t *c = s_join(w);
    if (!c) return;
    gerr_t e = {{0}};
    float x[16] = {0};
    double t0 = s_now_ms();
    int rc = comm_all_reduce_sum(c, x, w->rank == 1 ? 11 : 10, &e);
    s_record(w->rank, rc, t0, &e);
    comm_destroy(&c);
}

static void s_test_mismatch(void) {
    int hung = s_group(3, false, 0, FAULT_MS, s_w_mismatch, NULL, NULL, NULL);
    CHECK(hung == 0);
    for (int r = 0; r < 3; r++) {
        CHECK_MSG(g_sh->rc[r] == COMM_ERR_MISMATCH || g_sh->rc[r] == COMM_ERR_ABORTED,
                  "rank %d: rc %d %s", r, g_sh->rc[r], g_sh->msg[r]);
        CHECK_MSG(strstr(g_sh->msg[r], "mismatch"), "rank %d: %s", r, g_sh->msg[r]);
    }
    printf("mismatch: rank 0 says: %s\n", g_sh->msg[0]);
}

/* ---- faults -------------------------------------------------------------------------------- */

typedef enum {
    FAULT_EXIT,
    FAULT_KILL,
    FAULT_STOP,
    FAULT_ABORT_NAME,
    FAULT_RANK_ABORT,
    FAULT_LEAVE
} fault_t;

typedef struct {
    fault_t kind;
    double t_fault; /* parent: when it injected the fault (CLOCK_MONOTONIC ms) */
} fault_arg_t;

/* Ranks loop on all-reduces until one fails; the victim (last rank) misbehaves. */
static void s_w_fault(const worker_t *w) {
    const fault_arg_t *fa = w->arg;
    comm_t *c = s_join(w);
    if (!c) return;
    gerr_t e = {{0}};
    float *x = calloc(100000, sizeof(float));
    if (!x) _exit(2);
    bool victim = w->rank == w->world - 1;
    int rc = comm_barrier(c, &e);
    double t0 = s_now_ms();
    for (long it = 0; !rc; it++) {
        if (victim && it == 20) {
            if (fa->kind == FAULT_EXIT) _exit(0); /* no destroy: looks like a crash */
            if (fa->kind == FAULT_LEAVE) {
                comm_destroy(&c);
                _exit(0);
            }
            if (fa->kind == FAULT_RANK_ABORT) comm_abort(c);
        }
        t0 = s_now_ms();
        rc = comm_all_reduce_sum(c, x, it % 2 ? 100000 : 2880, &e);
    }
    s_record(w->rank, rc, t0, &e);
    free(x);
    comm_destroy(&c);
}

static void s_p_fault(const pid_t *pids, const char *name, void *arg) {
    fault_arg_t *fa = arg;
    int victim = 2;
    if (fa->kind == FAULT_EXIT || fa->kind == FAULT_RANK_ABORT || fa->kind == FAULT_LEAVE) return;
    s_sleep_ms(300); /* let them run collectives for a while */
    fa->t_fault = s_now_ms();
    if (fa->kind == FAULT_KILL) kill(pids[victim], SIGKILL);
    if (fa->kind == FAULT_STOP) {
        kill(pids[victim], SIGSTOP);
        s_sleep_ms(FAULT_MS + 1000);
        kill(pids[victim], SIGCONT);
    }
    if (fa->kind == FAULT_ABORT_NAME) {
        gerr_t e;
        int rc = comm_shm_abort_name(name, &e);
        CHECK_MSG(rc == 0, "comm_shm_abort_name: %s", e.msg);
    }
}

static void s_test_fault(fault_t kind, const char *label, const char *want) {
    fault_arg_t fa = {.kind = kind};
    /* fa is copied into the children by fork; the parent's t_fault is read here */
    int st[MAXW] = {0};
    int hung = s_group(3, false, 0, FAULT_MS, s_w_fault, s_p_fault, &fa, st);
    CHECK_MSG(hung == 0, "%s: %d ranks hung", label, hung);
    double worst = 0;
    for (int r = 0; r < 2; r++) { /* the survivors */
        CHECK_MSG(g_sh->rc[r] < 0, "%s: rank %d rc %d", label, r, g_sh->rc[r]);
        CHECK_MSG(strstr(g_sh->msg[r], want) || g_sh->rc[r] == COMM_ERR_ABORTED, "%s: rank %d: %s",
                  label, r, g_sh->msg[r]);
        double lat = g_sh->took_ms[r];
        if (lat > worst) worst = lat;
        CHECK_MSG(lat < FAULT_MS + 1500, "%s: rank %d took %.0f ms to fail", label, r, lat);
    }
    bool any_want = strstr(g_sh->msg[0], want) || strstr(g_sh->msg[1], want);
    CHECK_MSG(any_want, "%s: want \"%s\" in \"%s\" or \"%s\"", label, want, g_sh->msg[0],
              g_sh->msg[1]);
    if (kind == FAULT_STOP || kind == FAULT_ABORT_NAME || kind == FAULT_RANK_ABORT)
        CHECK_MSG(g_sh->rc[2] < 0, "%s: the victim must fail too, rc %d", label, g_sh->rc[2]);
    printf("fault %-10s survivors failed after %6.0f ms: %s\n", label, worst, g_sh->msg[0]);
}

/* ---- attach errors --------------------------------------------------------------------------- */

static void s_w_dup_rank(const worker_t *w) {
    comm_shm_opts_t o = w->opts;
    o.attach_timeout_ms = 1000;
    if (w->rank == 1) s_sleep_ms(100);
    comm_t *c = NULL;
    gerr_t e = {{0}};
    double t0 = s_now_ms();
    int rc = comm_shm_new(w->name, 0, w->world, &o, &c, &e); /* both children claim rank 0 */
    s_record(w->rank, rc, t0, &e);
    comm_destroy(&c);
}

static void s_test_attach(void) {
    /* wrong world: the gateway made the segment for 3 ranks, a shard says 2 */
    char name[64];
    snprintf(name, sizeof name, "/gptoss-test-%d-ww", (int)getpid());
    gerr_t e = {{0}};
    CHECK(comm_shm_create(name, 3, 0, &e) == 0);
    comm_t *c = NULL;
    comm_shm_opts_t o = {.attach_timeout_ms = 500, .timeout_ms = 500};
    int rc = comm_shm_new(name, 0, 2, &o, &c, &e);
    CHECK_MSG(rc == GERR_INVALID && c == NULL, "rc %d", rc);
    CHECK_MSG(strstr(e.msg, "world 3") && strstr(e.msg, "world 2"), "%s", e.msg);
    printf("wrong world: %s\n", e.msg);
    /* the same name cannot be created twice */
    CHECK(comm_shm_create(name, 3, 0, &e) == GERR_IO && strstr(e.msg, "exists"));
    CHECK(comm_shm_unlink(name, &e) == 0);
    CHECK(comm_shm_unlink(name, &e) == GERR_NOTFOUND);
    CHECK(comm_shm_abort_name(name, &e) == GERR_NOTFOUND);
    /* a segment that never appears: bounded */
    double t0 = s_now_ms();
    rc = comm_shm_new(name, 1, 2, &o, &c, &e);
    CHECK_MSG(rc == COMM_ERR_TIMEOUT, "rc %d %s", rc, e.msg);
    CHECK(s_now_ms() - t0 < 2000);
    /* a peer that never attaches: bounded, names it */
    o.create = true;
    t0 = s_now_ms();
    rc = comm_shm_new(name, 0, 2, &o, &c, &e);
    CHECK_MSG(rc == COMM_ERR_TIMEOUT && strstr(e.msg, "peer 1") && strstr(e.msg, "never attached"),
              "rc %d %s", rc, e.msg);
    CHECK(s_now_ms() - t0 < 2000);
    CHECK(comm_shm_unlink(name, &e) == GERR_NOTFOUND); /* the creator removed it */
    /* bad names */
    CHECK(comm_shm_new("no-slash", 0, 1, &o, &c, &e) == GERR_INVALID);
    CHECK(comm_shm_new("/a/b", 0, 1, &o, &c, &e) == GERR_INVALID);
    /* world 1 over shm works without peers */
    snprintf(name, sizeof name, "/gptoss-test-%d-w1", (int)getpid());
    CHECK(comm_shm_new(name, 0, 1, &o, &c, &e) == 0);
    float x[3] = {1, 2, 3};
    CHECK(c && comm_all_reduce_sum(c, x, 3, &e) == 0 && x[1] == 2);
    comm_destroy(&c);
    /* two processes claiming the same rank: the second is refused */
    int hung = s_group(2, true, 0, 1000, s_w_dup_rank, NULL, NULL, NULL);
    CHECK(hung == 0);
    CHECK_MSG(g_sh->rc[1] == GERR_INVALID, "dup rank: rc %d", g_sh->rc[1]);
}

/* ---- throughput ----------------------------------------------------------------------------- */

static void s_w_bench(const worker_t *w) {
    comm_t *c = s_join(w);
    if (!c) return;
    gerr_t e = {{0}};
    static const size_t ns[2] = {2880, 1000000};
    static const int iters[2] = {2000, 20};
    float *x = calloc(1000000, sizeof(float));
    if (!x) _exit(2);
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        for (size_t i = 0; i < ns[k]; i++)
            x[i] = s_val(w->rank, i);
        for (int i = 0; i < 3 && !rc; i++)
            rc = comm_all_reduce_sum(c, x, ns[k], &e);
        if (!rc) rc = comm_barrier(c, &e);
        double t0 = s_now_ms();
        for (int i = 0; i < iters[k] && !rc; i++) {
            rc = comm_all_reduce_sum(c, x, ns[k], &e);
            /* keep values bounded: scale back after each sum */
            if (k == 0)
                for (size_t j = 0; j < ns[k]; j++)
                    x[j] *= 0.25f;
        }
        double dt = (s_now_ms() - t0) / iters[k];
        if (w->rank == 0) {
            g_sh->us[k] = dt * 1e3;
            g_sh->gbps[k] = (double)ns[k] * sizeof(float) / (dt * 1e-3) / 1e9;
        }
    }
    s_record(w->rank, rc, s_now_ms(), &e);
    free(x);
    comm_destroy(&c);
}

static void s_bench(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    static const int worlds[3] = {1, 2, 4}; /* world 1: the copy/sum cost without waiting */
    for (int wi = 0; wi < 3; wi++) {
        int world = worlds[wi];
        int hung = s_group(world, false, 0, 20000, s_w_bench, NULL, NULL, NULL);
        CHECK(hung == 0);
        for (int r = 0; r < world; r++)
            CHECK_MSG(g_sh->rc[r] == 0, "bench rank %d: %s", r, g_sh->msg[r]);
        printf("bench all_reduce_sum shm world %d (%ld cpus): n=2880 %.1f us %.3f GB/s; "
               "n=1e6 %.0f us %.3f GB/s\n",
               world, ncpu, g_sh->us[0], g_sh->gbps[0], g_sh->us[1], g_sh->gbps[1]);
    }
}

int main(void) {
    for (int k = 0; k < N_SIZES; k++)
        g_total += k_sizes[k];
    g_sh = mmap(NULL, sizeof *g_sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    g_data = mmap(NULL, MAXW * g_total * sizeof(float), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (g_sh == MAP_FAILED || g_data == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    s_test_single();
    s_test_attach();
    s_test_all_reduce();
    s_test_gather_bcast();
    s_test_mismatch();
    s_test_fault(FAULT_EXIT, "exit", "died");
    s_test_fault(FAULT_KILL, "SIGKILL", "died");
    s_test_fault(FAULT_STOP, "SIGSTOP", "stopped");
    s_test_fault(FAULT_ABORT_NAME, "abort_name", "supervisor");
    s_test_fault(FAULT_RANK_ABORT, "rank abort", "rank 2 called abort");
    s_test_fault(FAULT_LEAVE, "leave", "left the group");
    s_bench();
    return tcheck_done("test_comm");
}
