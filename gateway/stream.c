/* stream: the thread-safe, reference-counted event queue between the scheduler
 * thread (producer) and an HTTP connection (consumer). A mutex and a condition
 * variable; events are stored in a growable ring. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw.h"

struct gw_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    gw_event_t *ev; /* ring of cap events */
    size_t head, len, cap;
    void (*notify)(void *);
    void *notify_arg;
    gw_timings_t timings;
};

double gw_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

gw_stream_t *gw_stream_new(void) {
    gw_stream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return NULL;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&s->cv, &ca) != 0) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NULL;
    }
    pthread_condattr_destroy(&ca);
    s->refs = 1;
    return s;
}

gw_stream_t *gw_stream_ref(gw_stream_t *s) {
    pthread_mutex_lock(&s->mu);
    s->refs++;
    pthread_mutex_unlock(&s->mu);
    return s;
}

void gw_stream_unref(gw_stream_t **sp) {
    if (!sp || !*sp) return;
    gw_stream_t *s = *sp;
    *sp = NULL;
    pthread_mutex_lock(&s->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left > 0) return;
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->ev);
    free(s);
}

int gw_stream_push(gw_stream_t *s, const gw_event_t *ev) {
    pthread_mutex_lock(&s->mu);
    if (s->len == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        gw_event_t *n = malloc(cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        for (size_t i = 0; i < s->len; i++)
            n[i] = s->ev[(s->head + i) % s->cap];
        free(s->ev);
        s->ev = n;
        s->cap = cap;
        s->head = 0;
    }
    s->ev[(s->head + s->len) % s->cap] = *ev;
    s->len++;
    void (*fn)(void *) = s->notify;
    void *arg = s->notify_arg;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (fn) fn(arg);
    return 0;
}

size_t gw_stream_pop(gw_stream_t *s, gw_event_t *out, size_t max) {
    pthread_mutex_lock(&s->mu);
    size_t n = s->len < max ? s->len : max;
    for (size_t i = 0; i < n; i++)
        out[i] = s->ev[(s->head + i) % s->cap];
    if (n) {
        s->head = (s->head + n) % s->cap;
        s->len -= n;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

int gw_stream_wait(gw_stream_t *s, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (s->len == 0) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    }
    int r = s->len > 0;
    pthread_mutex_unlock(&s->mu);
    return r;
}

void gw_stream_set_notify(gw_stream_t *s, void (*fn)(void *), void *arg) {
    pthread_mutex_lock(&s->mu);
    s->notify = fn;
    s->notify_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

void gw_stream_get_timings(gw_stream_t *s, gw_timings_t *t) {
    pthread_mutex_lock(&s->mu);
    *t = s->timings;
    pthread_mutex_unlock(&s->mu);
}

void gw_stream_set_timings(gw_stream_t *s, const gw_timings_t *t) {
    pthread_mutex_lock(&s->mu);
    if (t->submitted > 0) s->timings.submitted = t->submitted;
    if (t->scheduled > 0) s->timings.scheduled = t->scheduled;
    if (t->first_token > 0) s->timings.first_token = t->first_token;
    if (t->finished > 0) s->timings.finished = t->finished;
    if (t->prompt_tokens > 0) s->timings.prompt_tokens = t->prompt_tokens;
    if (t->generated_tokens > 0) s->timings.generated_tokens = t->generated_tokens;
    pthread_mutex_unlock(&s->mu);
}

void gw_request_free(gw_request_t **rp) {
    if (!rp || !*rp) return;
    gw_request_t *r = *rp;
    free(r->prompt);
    gw_stream_unref(&r->stream);
    free(r);
    *rp = NULL;
}
