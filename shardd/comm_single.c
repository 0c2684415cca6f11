/* comm_single: the world-1 communicator (one shard holds the whole model).
 *
 * All-reduce and broadcast leave the buffer as it is, gather copies send to recv, barrier
 * returns at once. It keeps the abort contract: after abort every collective fails, so code
 * paths that handle a broken group can be tested without a second process. */
#include "comm.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    comm_t c;
    atomic_int aborted; /* set by s_abort, from any thread */
} single_t;

static int s_check(comm_t *c, gerr_t *err) {
    single_t *s = c->impl;
    if (atomic_load(&s->aborted)) {
        gerr_set(err, "comm: aborted (single)");
        return COMM_ERR_ABORTED;
    }
    return 0;
}

static int s_all_reduce_sum(comm_t *c, float *buf, size_t n, gerr_t *err) {
    (void)buf;
    (void)n;
    return s_check(c, err);
}

static int s_gatherv(comm_t *c, const float *send, const size_t *counts, float *recv, gerr_t *err) {
    int rc = s_check(c, err);
    if (rc) return rc;
    if (counts[0] && recv != send) memmove(recv, send, counts[0] * sizeof *send);
    return 0;
}

static int s_broadcast(comm_t *c, void *buf, size_t bytes, int root, gerr_t *err) {
    (void)buf;
    (void)bytes;
    if (root != 0) {
        gerr_set(err, "comm: broadcast root %d is outside world 1", root);
        return GERR_INVALID;
    }
    return s_check(c, err);
}

static int s_barrier(comm_t *c, gerr_t *err) {
    return s_check(c, err);
}

static void s_abort(comm_t *c) {
    single_t *s = c->impl;
    atomic_store(&s->aborted, 1);
}

static void s_destroy(comm_t *c) {
    free(c->impl);
}

int comm_single_new(comm_t **out, gerr_t *err) {
    *out = NULL;
    single_t *s = calloc(1, sizeof *s);
    if (!s) {
        gerr_set(err, "comm: out of memory creating the single communicator");
        return GERR_NOMEM;
    }
    s->c = (comm_t){.rank = 0,
                    .world = 1,
                    .timeout_ms = COMM_DEFAULT_TIMEOUT_MS,
                    .kind = "single",
                    .all_reduce_sum = s_all_reduce_sum,
                    .gatherv = s_gatherv,
                    .broadcast = s_broadcast,
                    .barrier = s_barrier,
                    .abort = s_abort,
                    .destroy = s_destroy,
                    .impl = s};
    atomic_init(&s->aborted, 0);
    *out = &s->c;
    return 0;
}
