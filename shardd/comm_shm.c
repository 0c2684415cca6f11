/* comm_shm: collectives between processes on one host over POSIX shared memory.
 *
 * One segment per group ("/gptoss-<gateway pid>-<generation>"), made by rank 0 or by the gateway
 * (comm_shm_create). Layout: a header (magic, world, slot size, the abort word and its reason,
 * a futex "bell", and per rank: pid, arrival counter, the tag of the collective it is in) and
 * then one data slot per rank. Re-forming a group after a restart uses a new name; a segment is
 * never reused.
 *
 * Synchronisation is a sequence of "phases". In phase p every rank writes its data into half
 * (p & 1) of its own slot, records its tag, publishes seq = p + 1 (release) and rings the bell;
 * it then waits until every rank's seq >= p + 1 and reads what it needs from the others' halves.
 * Alternating halves makes one barrier per phase enough: a rank can only write half (p & 1)
 * again in phase p + 2, which needs every rank to have arrived at p + 1, i.e. to have finished
 * reading phase p. Large buffers go through in chunks of half a slot, one phase per chunk.
 *
 * All-reduce: every rank sums all slots in rank order ((s0 + s1) + s2) + ..., so every rank gets
 * bit-identical results and the order (hence the result) is the same in every run.
 *
 * Waiting: spin briefly, then futex-wait on the bell in short slices; between slices check the
 * abort word, the liveness of the ranks that have not arrived (kill(pid, 0), and /proc state so
 * an unreaped zombie counts as dead and a stopped process is named), and the deadline. Any
 * failure (timeout, dead peer, mismatched collective, abort) sets the segment's abort word with
 * a reason, so every other rank fails at once instead of waiting out its own timeout.
 *
 * What it is not: a fast path across hosts, or safe against a peer that scribbles on the segment
 * (the peers are our own shards). */
#include "comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <assert.h>

#if ATOMIC_INT_LOCK_FREE != 2 || ATOMIC_LLONG_LOCK_FREE != 2
#error "comm_shm needs lock-free atomics (they live in memory shared between processes)"
#endif

#define SHM_MAGIC       0x6d6d6f6373747067ULL /* "gptscomm" */
#define SHM_VERSION     1u
#define SHM_REASON_MAX  384
#define SHM_SLICE_MS    10   /* futex wait slice between liveness checks */
#define SHM_SPIN        2000 /* pause-loop checks before yielding */
#define SHM_YIELD       32   /* sched_yield checks before the futex */
#define SHM_SLOT_MIN    256
#define SHM_SLOT_MAX    (1ull << 30)
#define SHM_PID_LEFT    (-1) /* rank destroyed its comm */
#define SHM_ATTACH_POLL 2    /* ms between looks for a segment that does not exist yet */

/* What a rank is doing in a phase, compared across ranks to catch mismatched collectives. */
typedef enum {
    SHM_OP_ATTACH = 1,
    SHM_OP_BARRIER,
    SHM_OP_ALL_REDUCE,
    SHM_OP_GATHERV,
    SHM_OP_BROADCAST,
} shm_op_t;

typedef struct {
    _Alignas(64) atomic_ullong seq; /* phases this rank has arrived at */
    atomic_int pid;                 /* 0 = not attached yet, SHM_PID_LEFT = left */
    uint32_t pad;
    uint64_t op[2];  /* by phase parity: shm_op_t | hash of the arguments << 32 */
    uint64_t arg[2]; /* by phase parity: element count or bytes (for messages) */
} shm_rank_t;

typedef struct {
    atomic_ullong magic;                 /* SHM_MAGIC, stored last (release) by the creator */
    uint32_t version;                    /* SHM_VERSION */
    int32_t world;                       /* ranks in the group */
    uint64_t slot_bytes;                 /* bytes of each rank's slot (two halves) */
    uint64_t total_bytes;                /* size of the whole segment */
    _Alignas(64) atomic_uint bell;       /* futex word: bumped on every arrival and on abort */
    atomic_uint waiters;                 /* ranks inside futex wait (skip the wake syscall if 0) */
    _Alignas(64) atomic_int abort_state; /* 0 none, 1 reason being written, 2 reason ready */
    char abort_reason[SHM_REASON_MAX];   /* NUL-terminated, valid when abort_state == 2 */
    shm_rank_t ranks[COMM_MAX_WORLD];
} shm_hdr_t;

typedef struct {
    comm_t c;
    shm_hdr_t *hdr;   /* the mapped segment */
    size_t map_bytes; /* == hdr->total_bytes */
    char *slots;      /* hdr + s_slots_offset(): world slots of slot_bytes */
    size_t half;      /* bytes of half a slot (the chunk of one phase) */
    uint64_t phase;   /* phases this rank completed (== its seq) */
    bool created;     /* this rank made the segment: unlink at destroy */
    char name[NAME_MAX + 1];
} shm_t;

static size_t s_slots_offset(void) {
    return (sizeof(shm_hdr_t) + 4095) & ~(size_t)4095;
}

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

static inline void s_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void s_futex_wait(atomic_uint *word, unsigned val, int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    /* EAGAIN (value changed), EINTR and ETIMEDOUT all just mean: look again. */
    (void)syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void s_futex_wake_all(atomic_uint *word) {
    (void)syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Rings the bell: every waiter looks again. */
static void s_ring(shm_hdr_t *h) {
    atomic_fetch_add(&h->bell, 1u);
    if (atomic_load(&h->waiters) > 0) s_futex_wake_all(&h->bell);
}

/* Sets the abort word with `reason` (first caller's reason wins) and wakes everyone.
 * Async-signal-safe: atomics, a byte copy and the futex syscall only. */
static void s_set_abort(shm_hdr_t *h, const char *reason) {
    int expect = 0;
    if (atomic_compare_exchange_strong(&h->abort_state, &expect, 1)) {
        size_t i = 0;
        for (; reason[i] && i + 1 < SHM_REASON_MAX; i++)
            h->abort_reason[i] = reason[i];
        h->abort_reason[i] = 0;
        atomic_store(&h->abort_state, 2);
    }
    s_ring(h);
}

/* Fills err with "comm: aborted (reason)" when the abort word is set; returns its code. */
static int s_aborted(shm_hdr_t *h, gerr_t *err) {
    int st = atomic_load(&h->abort_state);
    if (!st) return 0;
    if (st == 2)
        gerr_set(err, "comm: aborted (%.*s)", SHM_REASON_MAX, h->abort_reason);
    else
        gerr_set(err, "comm: aborted");
    return COMM_ERR_ABORTED;
}

/* Records a local failure already described in err as the group's abort reason. */
static void s_fail(shm_t *s, const gerr_t *err) {
    char reason[SHM_REASON_MAX];
    const char *m = err ? err->msg : "a collective failed";
    if (strncmp(m, "comm: ", 6) == 0) m += 6;
    snprintf(reason, sizeof reason, "rank %d: %.*s", s->c.rank, SHM_REASON_MAX - 16, m);
    s_set_abort(s->hdr, reason);
}

/* Process state of pid from /proc ('R', 'S', 'T', 'Z', ...), or 0 if it does not exist. */
static char s_proc_state(pid_t pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return '?';
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may itself hold ')' */
    return p && p[1] == ' ' && p[2] ? p[2] : '?';
}

/* Checks that rank r (not yet arrived) is still there; fills err and returns an error if not. */
static int s_check_peer(shm_t *s, int r, gerr_t *err) {
    int pid = atomic_load(&s->hdr->ranks[r].pid);
    if (pid == SHM_PID_LEFT) {
        gerr_set(err, "comm: peer %d left the group (it destroyed its communicator)", r);
        return COMM_ERR_PEER_DEAD;
    }
    if (pid <= 0) return 0; /* not attached yet: only the deadline applies */
    char st = s_proc_state((pid_t)pid);
    if (st == 0 || st == 'Z' || st == 'X') {
        gerr_set(err, "comm: peer %d (pid %d) died (exited or was killed)", r, pid);
        return COMM_ERR_PEER_DEAD;
    }
    return 0;
}

/* Message for a wait that ran out: names the first missing rank and what it looks like. */
static int s_timeout(shm_t *s, int r, int timeout_ms, const char *what, gerr_t *err) {
    int pid = atomic_load(&s->hdr->ranks[r].pid);
    char st = pid > 0 ? s_proc_state((pid_t)pid) : 0;
    const char *hint = st == 'T' || st == 't' ? "it is stopped: SIGSTOP or a debugger"
                       : pid <= 0             ? "it never attached"
                                              : "dead or stopped?";
    gerr_set(err, "comm: peer %d (pid %d) did not arrive within %d ms in %s (%s)", r, pid,
             timeout_ms, what, hint);
    return COMM_ERR_TIMEOUT;
}

static const char *s_op_name(uint64_t op) {
    switch ((shm_op_t)(op & 0xffffffffu)) {
    case SHM_OP_ATTACH:
        return "attach";
    case SHM_OP_BARRIER:
        return "barrier";
    case SHM_OP_ALL_REDUCE:
        return "all_reduce_sum";
    case SHM_OP_GATHERV:
        return "gatherv";
    case SHM_OP_BROADCAST:
        return "broadcast";
    }
    return "?";
}

/* First rank whose seq is below target, or -1 when all arrived. */
static int s_missing(const shm_t *s, uint64_t target) {
    for (int r = 0; r < s->c.world; r++)
        if (atomic_load_explicit(&s->hdr->ranks[r].seq, memory_order_acquire) < target) return r;
    return -1;
}

/* Waits (bounded, abortable) until every rank's seq >= target. */
static int s_wait(shm_t *s, uint64_t target, int timeout_ms, const char *what, gerr_t *err) {
    gerr_t local;
    if (!err) err = &local; /* s_fail needs the message as the group's abort reason */
    shm_hdr_t *h = s->hdr;
    int miss = s_missing(s, target);
    for (int i = 0; miss >= 0 && i < SHM_SPIN; i++) {
        if (atomic_load_explicit(&h->abort_state, memory_order_relaxed)) break;
        s_cpu_relax();
        if (atomic_load_explicit(&h->ranks[miss].seq, memory_order_acquire) >= target)
            miss = s_missing(s, target);
    }
    /* Then yield a few times: when ranks outnumber free cores, this lets the peer we wait for
     * run on this core at once instead of after a futex sleep. */
    for (int i = 0; miss >= 0 && i < SHM_YIELD; i++) {
        if (atomic_load_explicit(&h->abort_state, memory_order_relaxed)) break;
        sched_yield();
        miss = s_missing(s, target);
    }
    if (miss < 0) return 0;
    double deadline = s_now_ms() + timeout_ms;
    for (;;) {
        atomic_fetch_add(&h->waiters, 1u);
        unsigned bell = atomic_load(&h->bell);
        int rc = s_aborted(h, err);
        if (!rc && (miss = s_missing(s, target)) < 0) {
            atomic_fetch_sub(&h->waiters, 1u);
            return 0;
        }
        double now = s_now_ms();
        if (!rc) rc = s_check_peer(s, miss, err);
        if (!rc && now >= deadline) rc = s_timeout(s, miss, timeout_ms, what, err);
        if (rc) {
            atomic_fetch_sub(&h->waiters, 1u);
            if (rc != COMM_ERR_ABORTED) s_fail(s, err);
            return rc;
        }
        int ms = (int)(deadline - now) + 1;
        s_futex_wait(&h->bell, bell, ms < SHM_SLICE_MS ? ms : SHM_SLICE_MS);
        atomic_fetch_sub(&h->waiters, 1u);
    }
}

/* Pointer to rank r's half-slot of the current phase. */
static char *s_half(shm_t *s, int r) {
    return s->slots + (size_t)r * s->hdr->slot_bytes + (s->phase & 1) * s->half;
}

/* One phase: publish (op, arg), arrive, wait for everyone, compare what they are doing. The
 * caller wrote its data into s_half(s, rank) before and reads the others' halves after (the
 * phase counter moves, so it must take the pointers before calling). */
static int s_phase(shm_t *s, shm_op_t op, uint64_t hash, uint64_t arg, gerr_t *err) {
    gerr_t local;
    if (!err) err = &local;
    shm_hdr_t *h = s->hdr;
    int par = (int)(s->phase & 1);
    shm_rank_t *me = &h->ranks[s->c.rank];
    uint64_t tag = (uint64_t)op | hash << 32;
    me->op[par] = tag;
    me->arg[par] = arg;
    uint64_t target = s->phase + 1;
    atomic_store(&me->seq, target);
    s_ring(h);
    int rc = s_wait(s, target, s->c.timeout_ms, s_op_name(op), err);
    if (rc) return rc;
    s->phase = target;
    for (int r = 0; r < s->c.world; r++) {
        const shm_rank_t *o = &h->ranks[r];
        if (o->op[par] != tag || o->arg[par] != arg) {
            gerr_set(err,
                     "comm: collective mismatch: rank %d is in %s(%llu) but rank %d is in "
                     "%s(%llu) (every rank must call the same collectives with the same sizes)",
                     s->c.rank, s_op_name(tag), (unsigned long long)arg, r, s_op_name(o->op[par]),
                     (unsigned long long)o->arg[par]);
            s_fail(s, err);
            return COMM_ERR_MISMATCH;
        }
    }
    return 0;
}

static uint64_t s_hash(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

/* ---- collectives ------------------------------------------------------------------------ */

static int s_all_reduce_sum(comm_t *c, float *buf, size_t n, gerr_t *err) {
    shm_t *s = c->impl;
    int rc = s_aborted(s->hdr, err);
    if (rc) return rc;
    const size_t chunk = s->half / sizeof(float);
    size_t off = 0;
    do { /* at least one phase, so n = 0 is still a synchronising (and checked) call */
        size_t m = n - off < chunk ? n - off : chunk;
        const float *src[COMM_MAX_WORLD];
        for (int r = 0; r < c->world; r++)
            src[r] = (const float *)s_half(s, r);
        if (m) memcpy((float *)src[c->rank], buf + off, m * sizeof(float));
        if ((rc = s_phase(s, SHM_OP_ALL_REDUCE, 0, n, err))) return rc;
        /* Fixed order ((s0 + s1) + s2) + ...: identical on every rank and in every run. */
        float *dst = buf + off;
        const float *s0 = src[0];
        for (size_t i = 0; i < m; i++)
            dst[i] = s0[i];
        for (int r = 1; r < c->world; r++) {
            const float *sr = src[r];
            for (size_t i = 0; i < m; i++)
                dst[i] += sr[i];
        }
        off += m;
    } while (off < n);
    return 0;
}

static int s_gatherv(comm_t *c, const float *send, const size_t *counts, float *recv, gerr_t *err) {
    shm_t *s = c->impl;
    int rc = s_aborted(s->hdr, err);
    if (rc) return rc;
    size_t total = 0, max = 0;
    for (int r = 0; r < c->world; r++) {
        total += counts[r];
        if (counts[r] > max) max = counts[r];
    }
    assert(c->rank != 0 || recv || total == 0);
    assert(send || counts[c->rank] == 0);
    uint64_t hash = s_hash(counts, (size_t)c->world * sizeof *counts, 0xcbf29ce484222325ULL);
    const size_t chunk = s->half / sizeof(float);
    size_t off = 0;
    do {
        const float *src[COMM_MAX_WORLD];
        for (int r = 0; r < c->world; r++)
            src[r] = (const float *)s_half(s, r);
        size_t mine = counts[c->rank];
        size_t m = off < mine ? (mine - off < chunk ? mine - off : chunk) : 0;
        if (c->rank != 0 && m) memcpy((float *)src[c->rank], send + off, m * sizeof(float));
        if ((rc = s_phase(s, SHM_OP_GATHERV, hash, total, err))) return rc;
        if (c->rank == 0) {
            size_t base = 0;
            for (int r = 0; r < c->world; r++) {
                size_t cr = counts[r];
                size_t mr = off < cr ? (cr - off < chunk ? cr - off : chunk) : 0;
                if (mr) memcpy(recv + base + off, r == 0 ? send + off : src[r], mr * sizeof(float));
                base += cr;
            }
        }
        off += chunk;
    } while (off < max);
    return 0;
}

static int s_broadcast(comm_t *c, void *buf, size_t bytes, int root, gerr_t *err) {
    shm_t *s = c->impl;
    assert(root >= 0 && root < c->world);
    assert(buf || bytes == 0);
    int rc = s_aborted(s->hdr, err);
    if (rc) return rc;
    size_t off = 0;
    do {
        size_t m = bytes - off < s->half ? bytes - off : s->half;
        char *slot = s_half(s, root);
        if (c->rank == root && m) memcpy(slot, (char *)buf + off, m);
        if ((rc = s_phase(s, SHM_OP_BROADCAST, (uint64_t)root, bytes, err))) return rc;
        if (c->rank != root && m) memcpy((char *)buf + off, slot, m);
        off += m;
    } while (off < bytes);
    return 0;
}

static int s_barrier(comm_t *c, gerr_t *err) {
    shm_t *s = c->impl;
    int rc = s_aborted(s->hdr, err);
    if (rc) return rc;
    return s_phase(s, SHM_OP_BARRIER, 0, 0, err);
}

/* Writes "rank N called abort" without stdio (this may run in a signal handler). */
static void s_abort(comm_t *c) {
    shm_t *s = c->impl;
    char reason[48] = "rank ";
    char digits[12];
    int nd = 0, r = c->rank;
    do {
        digits[nd++] = (char)('0' + r % 10);
        r /= 10;
    } while (r && nd < (int)sizeof digits);
    size_t p = 5;
    while (nd)
        reason[p++] = digits[--nd];
    const char *tail = " called abort";
    for (size_t i = 0; tail[i]; i++)
        reason[p++] = tail[i];
    reason[p] = 0;
    s_set_abort(s->hdr, reason);
}

static void s_destroy(comm_t *c) {
    shm_t *s = c->impl;
    if (s->hdr) {
        atomic_store(&s->hdr->ranks[c->rank].pid, SHM_PID_LEFT);
        s_ring(s->hdr);
        munmap(s->hdr, s->map_bytes);
    }
    if (s->created) shm_unlink(s->name);
    free(s);
}

/* ---- segment set-up --------------------------------------------------------------------- */

static int s_check_name(const char *name, gerr_t *err) {
    size_t n = name ? strlen(name) : 0;
    if (n < 2 || name[0] != '/' || strchr(name + 1, '/') || n > NAME_MAX) {
        gerr_set(err,
                 "comm: shared memory name \"%.64s\" is invalid (want \"/name\" without other "
                 "slashes, at most %d bytes, e.g. \"/gptoss-<pid>-<generation>\")",
                 name ? name : "(null)", NAME_MAX);
        return GERR_INVALID;
    }
    return 0;
}

/* Creates, sizes and initialises the segment; returns it mapped in *hdr (map size *bytes). */
static int s_create(const char *name, int world, size_t slot_bytes, shm_hdr_t **hdr, size_t *bytes,
                    gerr_t *err) {
    int rc = s_check_name(name, err);
    if (rc) return rc;
    if (world < 1 || world > COMM_MAX_WORLD) {
        gerr_set(err, "comm: world %d is outside 1..%d", world, COMM_MAX_WORLD);
        return GERR_INVALID;
    }
    if (!slot_bytes) slot_bytes = COMM_SHM_DEFAULT_SLOT_BYTES;
    if (slot_bytes < SHM_SLOT_MIN) slot_bytes = SHM_SLOT_MIN;
    if (slot_bytes > SHM_SLOT_MAX) {
        gerr_set(err, "comm: slot size %zu is above the limit %llu", slot_bytes, SHM_SLOT_MAX);
        return GERR_INVALID;
    }
    slot_bytes = (slot_bytes + 127) & ~(size_t)127;
    size_t total = s_slots_offset() + (size_t)world * slot_bytes;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        gerr_set(err, "comm: cannot create shared memory %s: %s%s", name, strerror(errno),
                 errno == EEXIST ? " (a stale group? use a new generation in the name, or "
                                   "remove it from /dev/shm)"
                                 : "");
        return GERR_IO;
    }
    if (ftruncate(fd, (off_t)total) != 0) {
        gerr_set(err, "comm: cannot size shared memory %s to %zu bytes: %s", name, total,
                 strerror(errno));
        close(fd);
        shm_unlink(name);
        return GERR_IO;
    }
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        gerr_set(err, "comm: cannot map shared memory %s (%zu bytes): %s", name, total,
                 strerror(e));
        shm_unlink(name);
        return GERR_IO;
    }
    shm_hdr_t *h = p; /* ftruncate zero-filled it: counters, pids and abort word start at 0 */
    h->version = SHM_VERSION;
    h->world = world;
    h->slot_bytes = slot_bytes;
    h->total_bytes = total;
    atomic_store_explicit(&h->magic, SHM_MAGIC, memory_order_release);
    *hdr = h;
    *bytes = total;
    return 0;
}

/* Opens an existing segment, waiting (bounded) for it to appear and be initialised. */
static int s_attach(const char *name, int world, int timeout_ms, shm_hdr_t **hdr, size_t *bytes,
                    gerr_t *err) {
    int rc = s_check_name(name, err);
    if (rc) return rc;
    double deadline = s_now_ms() + timeout_ms;
    const char *why = "it does not exist";
    for (;; s_sleep_ms(SHM_ATTACH_POLL)) {
        if (s_now_ms() > deadline) {
            gerr_set(err,
                     "comm: shared memory %s was not ready within %d ms (%s; did rank 0 or the "
                     "gateway create it under this name?)",
                     name, timeout_ms, why);
            return COMM_ERR_TIMEOUT;
        }
        int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        if (fd < 0) {
            if (errno == ENOENT) continue;
            int e = errno;
            gerr_set(err, "comm: cannot open shared memory %s: %s", name, strerror(e));
            return GERR_IO;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || (size_t)st.st_size < s_slots_offset()) {
            close(fd);
            why = "it is still being created";
            continue;
        }
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        int e = errno;
        close(fd);
        if (p == MAP_FAILED) {
            gerr_set(err, "comm: cannot map shared memory %s: %s", name, strerror(e));
            return GERR_IO;
        }
        shm_hdr_t *h = p;
        if (atomic_load_explicit(&h->magic, memory_order_acquire) != SHM_MAGIC) {
            munmap(p, (size_t)st.st_size);
            why = "it is still being initialised";
            continue;
        }
        if (h->version != SHM_VERSION || h->total_bytes != (uint64_t)st.st_size || h->world < 1 ||
            h->world > COMM_MAX_WORLD ||
            h->total_bytes != s_slots_offset() + (uint64_t)h->world * h->slot_bytes) {
            gerr_set(err, "comm: shared memory %s has an unknown layout (version %u)", name,
                     h->version);
            munmap(p, (size_t)st.st_size);
            return GERR_FORMAT;
        }
        if (world > 0 && h->world != world) {
            gerr_set(err,
                     "comm: shared memory %s was made for world %d but this shard has world "
                     "%d (the gateway and shards disagree on the group size)",
                     name, h->world, world);
            munmap(p, (size_t)st.st_size);
            return GERR_INVALID;
        }
        *hdr = h;
        *bytes = (size_t)st.st_size;
        return 0;
    }
}

int comm_shm_create(const char *name, int world, size_t slot_bytes, gerr_t *err) {
    shm_hdr_t *h;
    size_t bytes;
    int rc = s_create(name, world, slot_bytes, &h, &bytes, err);
    if (rc) return rc;
    munmap(h, bytes);
    return 0;
}

int comm_shm_new(const char *name, int rank, int world, const comm_shm_opts_t *opts, comm_t **out,
                 gerr_t *err) {
    *out = NULL;
    comm_shm_opts_t o = opts ? *opts : (comm_shm_opts_t){0};
    if (o.attach_timeout_ms <= 0) o.attach_timeout_ms = COMM_DEFAULT_TIMEOUT_MS;
    if (o.timeout_ms <= 0) o.timeout_ms = COMM_DEFAULT_TIMEOUT_MS;
    if (world < 1 || world > COMM_MAX_WORLD || rank < 0 || rank >= world) {
        gerr_set(err, "comm: rank %d / world %d is invalid (want 0 <= rank < world <= %d)", rank,
                 world, COMM_MAX_WORLD);
        return GERR_INVALID;
    }
    shm_t *s = calloc(1, sizeof *s);
    if (!s) {
        gerr_set(err, "comm: out of memory");
        return GERR_NOMEM;
    }
    int rc = o.create ? s_create(name, world, o.slot_bytes, &s->hdr, &s->map_bytes, err)
                      : s_attach(name, world, o.attach_timeout_ms, &s->hdr, &s->map_bytes, err);
    if (rc) {
        free(s);
        return rc;
    }
    s->created = o.create;
    snprintf(s->name, sizeof s->name, "%s", name);
    shm_hdr_t *h = s->hdr;
    s->slots = (char *)h + s_slots_offset();
    s->half = h->slot_bytes / 2;
    s->c = (comm_t){.rank = rank,
                    .world = world,
                    .timeout_ms = o.timeout_ms,
                    .kind = "shm",
                    .all_reduce_sum = s_all_reduce_sum,
                    .gatherv = s_gatherv,
                    .broadcast = s_broadcast,
                    .barrier = s_barrier,
                    .abort = s_abort,
                    .destroy = s_destroy,
                    .impl = s};

    int expect = 0, mypid = (int)getpid();
    if (!atomic_compare_exchange_strong(&h->ranks[rank].pid, &expect, mypid)) {
        gerr_set(err,
                 "comm: rank %d of %s is already held by pid %d (two shards started with the "
                 "same rank, or a stale segment: use a new generation in the name)",
                 rank, name, expect);
        munmap(h, s->map_bytes);
        s->hdr = NULL;
        if (s->created) shm_unlink(name);
        free(s);
        return GERR_INVALID;
    }
    /* Rendezvous: attach is phase 0 for everyone, bounded by the attach timeout. */
    h->ranks[rank].op[0] = SHM_OP_ATTACH;
    h->ranks[rank].arg[0] = (uint64_t)world;
    atomic_store(&h->ranks[rank].seq, 1);
    s_ring(h);
    if (!(rc = s_aborted(h, err))) rc = s_wait(s, 1, o.attach_timeout_ms, "attach", err);
    if (rc) {
        if (err && strncmp(err->msg, "comm: ", 6) == 0) /* one "comm: " in front */
            memmove(err->msg, err->msg + 6, strlen(err->msg + 6) + 1);
        gerr_prefix(err, "comm: joining %s as rank %d of %d", name, rank, world);
        s_destroy(&s->c);
        return rc;
    }
    s->phase = 1;
    *out = &s->c;
    return 0;
}

int comm_shm_abort_name(const char *name, gerr_t *err) {
    int rc = s_check_name(name, err);
    if (rc) return rc;
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        gerr_set(err, "comm: cannot open shared memory %s to abort it: %s", name, strerror(e));
        return e == ENOENT ? GERR_NOTFOUND : GERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < s_slots_offset()) {
        close(fd);
        gerr_set(err, "comm: shared memory %s is too small to be a comm segment", name);
        return GERR_FORMAT;
    }
    void *p = mmap(NULL, s_slots_offset(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        gerr_set(err, "comm: cannot map shared memory %s: %s", name, strerror(e));
        return GERR_IO;
    }
    shm_hdr_t *h = p;
    if (atomic_load_explicit(&h->magic, memory_order_acquire) != SHM_MAGIC) {
        munmap(p, s_slots_offset());
        gerr_set(err, "comm: shared memory %s is not an initialised comm segment", name);
        return GERR_FORMAT;
    }
    s_set_abort(h, "by the supervisor");
    munmap(p, s_slots_offset());
    return 0;
}

int comm_shm_unlink(const char *name, gerr_t *err) {
    int rc = s_check_name(name, err);
    if (rc) return rc;
    if (shm_unlink(name) != 0) {
        int e = errno;
        gerr_set(err, "comm: cannot remove shared memory %s: %s", name, strerror(e));
        return e == ENOENT ? GERR_NOTFOUND : GERR_IO;
    }
    return 0;
}
