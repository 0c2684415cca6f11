/* sched: the scheduler thread of the gateway (see sched.h).
 *
 * One thread owns every request, sequence and KV block table. Other threads reach
 * it through a mutex-protected inbox plus an eventfd that the thread polls together
 * with the shards' ROUTER socket (zmq_poll with a short timeout, never forever).
 * A small "live" table under the same mutex maps client-visible ids to request ids
 * for sched_cancel_by_name, and a stats copy refreshed every loop turn answers
 * sched_snapshot.
 *
 * Loop turn: take the inbox (new requests, cancels), read shard messages, heartbeats
 * and exits (shardlink), deadlines, then, when no step is in flight and every shard
 * is up, build one STEP:
 *   1. every running sequence whose next token is known gets it (decode, 1 token);
 *   2. running sequences still in prefill get their next chunk (<= prefill_chunk);
 *   3. waiting sequences are admitted FIFO while a slot is free, the step has token
 *      budget (max_batch_tokens) and the KV pools hold their chunk plus one growth
 *      block per running sequence.
 * A running sequence that cannot get a block preempts the newest running one: its
 * blocks are freed and it goes back to the head of the queue to be recomputed from
 * the tokens the gateway holds (prompt + generated). A dead shard does the same to
 * every running sequence, so after a restart they are re-prefilled (the first chunk
 * carries PROTO_SEQ_NEW, which resets the shard's penalty history) and continue.
 *
 * One step is in flight at a time: STEP to every shard, RESULT from every shard,
 * then the samples (rank 0's RESULT) are applied: TOKEN events, stop ids,
 * max_tokens, context limit; finished choices get FINISH and free their blocks at
 * once. Each choice of a request is its own sequence (seed + choice).
 *
 * States: LOADING (shards starting, then a one-token self-test generation), READY,
 * DEGRADED (load error, or a shard died more than SCHED_MAX_RESTARTS times: every
 * request fails with a message naming the cause), STOPPED. A dead shard is
 * restarted (all shards of the group together) with backoff 1, 2, 4 s. */
#include "sched.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "config.h"
#include "kvalloc.h"
#include "kvcache.h"
#include "log.h"
#include "metrics.h"
#include "profile.h"
#include "proto.h"
#include "sampling.h"
#include "shardlink.h"

/* Copies src into dst[n], truncating. */
static void s_copy(char *dst, size_t n, const char *src) {
    size_t l = strnlen(src, n - 1);
    memcpy(dst, src, l);
    dst[l] = 0;
}

#define SCHED_MAX_RESTARTS 3
#define SCHED_MAX_CHOICES  128
#define SCHED_POLL_MS      50
#define SCHED_RATE_BUCKETS 10

typedef struct rq rq_t;

typedef enum { SEQ_WAITING = 0, SEQ_RUNNING, SEQ_DONE } seq_state_t;

/* One choice of a request: a sequence of tokens with its own KV blocks. */
typedef struct seq {
    rq_t *rq;
    int choice;
    uint64_t uid;  /* unique over the scheduler's life (matches results to sequences) */
    int32_t *toks; /* [n_toks] prompt + generated */
    int n_toks, cap_toks;
    int n_done; /* tokens whose KV is written (sent in a step) */
    int n_gen;  /* generated tokens */
    int slot;   /* shard slot while running, else -1 */
    seq_state_t st;
    kvcache_seq_t kv;
    double last_tok_t;
    struct seq *qprev, *qnext; /* waiting queue links */
} seq_t;

/* A request as the scheduler holds it. */
struct rq {
    gw_request_t *req;
    seq_t *seqs; /* [req->n_choices] */
    int n_left;  /* choices not finished */
    double deadline;
    gw_timings_t t;
    bool pending;  /* counted in n_pending (no choice admitted yet) */
    bool selftest; /* the internal READY check */
    gw_finish_t last_finish;
    char last_message[256];
    rq_t *prev, *next; /* all live requests */
};

typedef enum { IN_SUBMIT = 1, IN_CANCEL } in_kind_t;

typedef struct inmsg {
    in_kind_t kind;
    gw_request_t *req;
    uint64_t id;
    struct inmsg *next;
} inmsg_t;

typedef struct {
    uint64_t id;
    char id_str[64];
} live_t;

/* What one step carries per sequence. */
typedef struct {
    seq_t *seq;
    uint64_t uid;
    int slot; /* the sequence's slot when the step was built */
    int start, n;
    uint32_t flags;
} entry_t;

/* Everything a profile decides: the options with defaults filled in (strings point at the
 * owned copies), the model's config and the KV plan. Replaced whole by a profile switch. */
typedef struct {
    sched_opts_t o;
    char *model_dir, *shardd_path, *run_dir, *kv_dtype; /* owned copies */
    char *profile_name, *profiles_dir, *reasoning;      /* owned copies ("" when none) */
    gptoss_config_t cfg;
    int vocab;
    int max_context;
    kvcache_opts_t kvo;
} s_conf_t;

#define SCHED_DEATH_RING 64

struct sched {
    s_conf_t c;

    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    inmsg_t *in_head, *in_tail;
    live_t *live;
    int n_live, cap_live;
    int n_pending; /* requests accepted and not yet admitted (queue limit) */
    bool stop, draining;
    s_conf_t *switch_to; /* a profile switch handed over by sched_switch (owned) */
    bool switching;      /* from sched_switch until the switch ends (new requests 503) */
    int restart_rank;    /* restart-shard asked for this rank (-1: none) */
    /* what sched_submit checks, copied from c under mu whenever c changes */
    int pub_vocab, pub_vocab_limit, pub_max_context, pub_max_queue;
    sched_stats_t stats;
    uint64_t next_id;
    int efd;
    pthread_t thread;
    bool thread_started;

    /* scheduler thread only */
    sched_state_t state;
    char state_msg[256];
    bool ready_checked;
    shardlink_t *sl;
    kvalloc_t *kv;
    rq_t *rqs;              /* all live requests */
    seq_t *q_head, *q_tail; /* waiting sequences, FIFO */
    int n_waiting_seqs;
    seq_t **running; /* [max_running], admission order */
    int n_running;
    bool *slot_used; /* [max_running] */
    uint64_t next_uid;
    int restarts;                    /* group restarts so far */
    double restart_at;               /* > 0: respawn the shards then */
    double deaths[SCHED_DEATH_RING]; /* gw_now() of recent shard deaths (ring) */
    int n_deaths;                    /* deaths ever (ring index) */
    int deaths_rank[SCHED_MAX_SHARDS];
    double degraded_retry_at; /* > 0: DEGRADED tries the shards again then */
    /* profile switch (thread only): 0 none, 1 draining the old group, 2 the new one loading */
    int switch_phase;
    double switch_deadline;
    s_conf_t *switch_new;  /* phase 1: the settings to apply */
    s_conf_t *switch_prev; /* phase 2: the old settings, put back if the new group fails */
    char switch_error[256];
    bool selftest_started;
    /* the step in flight */
    bool inflight;
    uint64_t step_seq;
    double step_deadline;
    entry_t *entries; /* [max_running] */
    int n_entries;
    int arrived; /* ranks answered */
    bool arrived_rank[SCHED_MAX_SHARDS];
    proto_sample_t *samples; /* rank 0's */
    uint32_t n_samples;
    char step_error[512];
    proto_buf_t buf;
    proto_seq_t *pseqs; /* [max_running] */
    /* counters */
    double started_at;
    uint64_t requests_total, requests_finished, prompt_total, gen_total;
    double rate_t[SCHED_RATE_BUCKETS];
    uint64_t rate_n[SCHED_RATE_BUCKETS];
};

const char *sched_state_name(sched_state_t st) {
    switch (st) {
    case SCHED_STATE_LOADING:
        return "loading";
    case SCHED_STATE_READY:
        return "ready";
    case SCHED_STATE_DRAINING:
        return "draining";
    case SCHED_STATE_DEGRADED:
        return "degraded";
    case SCHED_STATE_STOPPED:
        return "stopped";
    }
    return "?";
}

static const char *s_finish_name(gw_finish_t f) {
    switch (f) {
    case GW_FINISH_STOP:
        return "stop";
    case GW_FINISH_LENGTH:
        return "length";
    case GW_FINISH_CANCELLED:
    case GW_FINISH_TIMEOUT:
        return "abort";
    default:
        return "error";
    }
}

static void s_wake(sched_t *s) {
    uint64_t one = 1;
    ssize_t n = write(s->efd, &one, sizeof one);
    if (n < 0 && errno != EAGAIN) LOG_WARN("sched", "eventfd write: %s", strerror(errno));
}

/* ---------------------------------------------------------------- live table (under mu) */

static int s_live_add(sched_t *s, uint64_t id, const char *id_str) {
    if (s->n_live == s->cap_live) {
        int nc = s->cap_live ? 2 * s->cap_live : 64;
        live_t *n = realloc(s->live, sizeof *n * (size_t)nc);
        if (!n) return GERR_NOMEM;
        s->live = n;
        s->cap_live = nc;
    }
    live_t *l = &s->live[s->n_live++];
    l->id = id;
    s_copy(l->id_str, sizeof l->id_str, id_str);
    return 0;
}

static void s_live_remove(sched_t *s, uint64_t id) {
    for (int i = 0; i < s->n_live; i++)
        if (s->live[i].id == id) {
            s->live[i] = s->live[--s->n_live];
            return;
        }
}

/* ---------------------------------------------------------------- queue and running set */

static void s_q_push(sched_t *s, seq_t *q, bool front) {
    q->qprev = q->qnext = NULL;
    if (!s->q_head) {
        s->q_head = s->q_tail = q;
    } else if (front) {
        q->qnext = s->q_head;
        s->q_head->qprev = q;
        s->q_head = q;
    } else {
        q->qprev = s->q_tail;
        s->q_tail->qnext = q;
        s->q_tail = q;
    }
    s->n_waiting_seqs++;
}

static void s_q_remove(sched_t *s, seq_t *q) {
    if (q->qprev)
        q->qprev->qnext = q->qnext;
    else
        s->q_head = q->qnext;
    if (q->qnext)
        q->qnext->qprev = q->qprev;
    else
        s->q_tail = q->qprev;
    q->qprev = q->qnext = NULL;
    s->n_waiting_seqs--;
}

static void s_running_remove(sched_t *s, seq_t *q) {
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == q) {
            memmove(&s->running[i], &s->running[i + 1],
                    sizeof *s->running * (size_t)(s->n_running - i - 1));
            s->n_running--;
            break;
        }
    if (q->slot >= 0) s->slot_used[q->slot] = false;
    q->slot = -1;
}

/* Drops q's entry from the step being built (if any); returns the tokens it had. */
static int s_entry_drop(sched_t *s, seq_t *q) {
    for (int i = 0; i < s->n_entries; i++)
        if (s->entries[i].seq == q) {
            int n = s->entries[i].n;
            memmove(&s->entries[i], &s->entries[i + 1],
                    sizeof *s->entries * (size_t)(s->n_entries - i - 1));
            s->n_entries--;
            return n;
        }
    return 0;
}

/* Sends a running sequence back to the head of the queue; its KV is recomputed later. */
static void s_preempt(sched_t *s, seq_t *q) {
    kvalloc_release(s->kv, &q->kv);
    s_running_remove(s, q);
    q->n_done = 0;
    q->st = SEQ_WAITING;
    s_q_push(s, q, true);
    LOG_DEBUG("sched", "req %llu choice %d: preempted (%d tokens to recompute)",
              (unsigned long long)q->rq->req->id, q->choice, q->n_toks);
}

/* ---------------------------------------------------------------- finishing */

static void s_rq_free(rq_t *r) {
    if (!r) return;
    if (r->seqs) {
        for (int c = 0; c < r->req->n_choices; c++) {
            free(r->seqs[c].toks);
            free(r->seqs[c].kv.full);
            free(r->seqs[c].kv.window);
        }
        free(r->seqs);
    }
    gw_request_free(&r->req);
    free(r);
}

static void s_rq_done(sched_t *s, rq_t *r) {
    double now = gw_now();
    r->t.finished = now;
    gw_stream_set_timings(r->req->stream, &r->t);
    if (!r->selftest) {
        metrics_observe(METRICS_E2E, now - r->t.submitted);
        if (r->t.first_token > 0) metrics_observe(METRICS_DECODE, now - r->t.first_token);
        s->requests_finished++;
    }
    if (r->selftest) {
        if (r->last_finish == GW_FINISH_STOP || r->last_finish == GW_FINISH_LENGTH) {
            if (s->state == SCHED_STATE_LOADING) {
                s->state = SCHED_STATE_READY;
                s->state_msg[0] = 0;
                s->ready_checked = true;
                LOG_INFO("sched", "self-test generation passed; ready");
            }
        } else if (s->state == SCHED_STATE_LOADING) {
            s->state = SCHED_STATE_DEGRADED;
            snprintf(s->state_msg, sizeof s->state_msg, "self-test generation failed: %.200s",
                     r->last_message[0] ? r->last_message : s_finish_name(r->last_finish));
            LOG_ERROR("sched", "%s", s->state_msg);
        }
        s->selftest_started = false;
    }
    pthread_mutex_lock(&s->mu);
    if (r->pending) s->n_pending--;
    s_live_remove(s, r->req->id);
    pthread_mutex_unlock(&s->mu);
    if (r->prev)
        r->prev->next = r->next;
    else
        s->rqs = r->next;
    if (r->next) r->next->prev = r->prev;
    s_rq_free(r);
}

/* Finishes one choice: FINISH event, blocks freed at once. */
static void s_seq_finish(sched_t *s, seq_t *q, gw_finish_t why, const char *msg) {
    if (q->st == SEQ_DONE) return;
    if (q->st == SEQ_RUNNING) {
        kvalloc_release(s->kv, &q->kv);
        s_running_remove(s, q);
    } else {
        s_q_remove(s, q);
    }
    q->st = SEQ_DONE;
    for (int i = 0; i < s->n_entries; i++) /* the step in flight must not touch q again */
        if (s->entries[i].seq == q) s->entries[i].seq = NULL;
    rq_t *r = q->rq;
    gw_event_t ev = {.kind = GW_EV_FINISH, .choice = q->choice, .finish = why};
    if (msg) s_copy(ev.message, sizeof ev.message, msg);
    if (gw_stream_push(r->req->stream, &ev) != 0)
        LOG_ERROR("sched", "req %llu: out of memory queueing FINISH",
                  (unsigned long long)r->req->id);
    r->last_finish = why;
    if (msg) s_copy(r->last_message, sizeof r->last_message, msg);
    /* finish reasons are counted by the HTTP side, which knows tool_calls and stop strings */
    LOG_DEBUG("sched", "req %llu choice %d: finished (%s, %d tokens)%s%s",
              (unsigned long long)r->req->id, q->choice, s_finish_name(why), q->n_gen,
              msg ? ": " : "", msg ? msg : "");
    if (--r->n_left == 0) s_rq_done(s, r);
}

static void s_rq_finish_all(sched_t *s, rq_t *r, gw_finish_t why, const char *msg) {
    int n = r->req->n_choices;
    for (int c = 0; c < n; c++) {
        bool last = r->n_left == 1 && r->seqs[c].st != SEQ_DONE;
        s_seq_finish(s, &r->seqs[c], why, msg);
        if (last) return; /* r is freed */
    }
}

static void s_fail_all(sched_t *s, gw_finish_t why, const char *msg) {
    while (s->rqs)
        s_rq_finish_all(s, s->rqs, why, msg);
}

/* ---------------------------------------------------------------- requests in */

static void s_accept(sched_t *s, gw_request_t *req) {
    rq_t *r = calloc(1, sizeof *r);
    seq_t *seqs = r ? calloc((size_t)req->n_choices, sizeof *seqs) : NULL;
    bool ok = seqs != NULL;
    for (int c = 0; ok && c < req->n_choices; c++) {
        seq_t *q = &seqs[c];
        q->cap_toks = req->n_prompt + req->max_tokens;
        q->toks = malloc(sizeof(int32_t) * (size_t)q->cap_toks);
        if (!q->toks) ok = false;
    }
    if (!ok) {
        gw_event_t ev = {.kind = GW_EV_FINISH, .finish = GW_FINISH_ERROR};
        snprintf(ev.message, sizeof ev.message, "out of memory in the scheduler");
        for (int c = 0; c < req->n_choices; c++) {
            ev.choice = c;
            (void)gw_stream_push(req->stream, &ev);
        }
        if (seqs)
            for (int c = 0; c < req->n_choices; c++)
                free(seqs[c].toks);
        free(seqs);
        free(r);
        pthread_mutex_lock(&s->mu);
        s->n_pending--;
        s_live_remove(s, req->id);
        pthread_mutex_unlock(&s->mu);
        gw_request_free(&req);
        return;
    }
    r->req = req;
    r->seqs = seqs;
    r->n_left = req->n_choices;
    r->pending = true;
    r->t.submitted = gw_now();
    r->t.prompt_tokens = req->n_prompt;
    r->deadline = r->t.submitted + (req->max_time_s > 0 ? req->max_time_s : s->c.o.max_time_s);
    r->selftest = req->id == 0;
    for (int c = 0; c < req->n_choices; c++) {
        seq_t *q = &seqs[c];
        q->rq = r;
        q->choice = c;
        q->uid = ++s->next_uid;
        q->slot = -1;
        memcpy(q->toks, req->prompt, sizeof(int32_t) * (size_t)req->n_prompt);
        q->n_toks = req->n_prompt;
        s_q_push(s, q, r->selftest);
    }
    r->next = s->rqs;
    if (s->rqs) s->rqs->prev = r;
    s->rqs = r;
    if (!r->selftest) s->requests_total++;
}

static void s_cancel(sched_t *s, uint64_t id) {
    for (rq_t *r = s->rqs; r; r = r->next)
        if (r->req->id == id) {
            s_rq_finish_all(s, r, GW_FINISH_CANCELLED, "cancelled");
            return;
        }
}

static void s_take_inbox(sched_t *s) {
    pthread_mutex_lock(&s->mu);
    inmsg_t *m = s->in_head;
    s->in_head = s->in_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (m) {
        inmsg_t *next = m->next;
        if (m->kind == IN_SUBMIT)
            s_accept(s, m->req);
        else
            s_cancel(s, m->id);
        free(m);
        m = next;
    }
}

static void s_check_deadlines(sched_t *s) {
    double now = gw_now();
    for (rq_t *r = s->rqs, *next; r; r = next) {
        next = r->next;
        if (now > r->deadline) {
            char msg[128];
            snprintf(msg, sizeof msg, "the request exceeded its max time of %.0f s",
                     r->deadline - r->t.submitted);
            s_rq_finish_all(s, r, GW_FINISH_TIMEOUT, msg);
        }
    }
}

/* ---------------------------------------------------------------- shards */

static void s_switch_failed(sched_t *s, const char *why);
static void s_conf_free(s_conf_t *c);
static int s_conf_apply(sched_t *s, s_conf_t *c, gerr_t *err);

/* Gives up on the shards: every request fails with a message naming the cause, new ones get
 * 503 at once. An automatic retry (degraded_retry_s), restart-shard or a profile switch
 * leaves this state. */
static void s_degrade(sched_t *s, const char *why) {
    if (s->switch_phase == 2 && s->switch_prev) { /* the new profile failed: go back */
        s_switch_failed(s, why);
        return;
    }
    s->state = SCHED_STATE_DEGRADED;
    s_copy(s->state_msg, sizeof s->state_msg, why);
    s->ready_checked = false;
    s->inflight = false;
    s->restart_at = 0;
    s->degraded_retry_at = s->c.o.degraded_retry_s > 0 ? gw_now() + s->c.o.degraded_retry_s : 0;
    LOG_ERROR("sched", "degraded: %s%s", why,
              s->degraded_retry_at > 0 ? "; will retry the shards later" : "");
    if (s->sl) shardlink_kill_all(s->sl);
    char msg[300];
    snprintf(msg, sizeof msg, "inference unavailable: %s", why);
    s_fail_all(s, GW_FINISH_ERROR, msg);
}

/* Every running sequence goes back to the queue (in admission order) to be re-prefilled. */
static void s_requeue_running(sched_t *s) {
    while (s->n_running > 0)
        s_preempt(s, s->running[s->n_running - 1]);
    s->n_entries = 0;
    s->inflight = false;
}

/* Deaths within the crash-loop window, counting one at `now`. */
static int s_recent_deaths(const sched_t *s, double now) {
    int n = 0;
    int have = s->n_deaths < SCHED_DEATH_RING ? s->n_deaths : SCHED_DEATH_RING;
    for (int i = 0; i < have; i++)
        if (now - s->deaths[i] <= s->c.o.crash_loop_window_s) n++;
    return n;
}

/* Kills the whole group (survivors' collectives aborted first) and puts every running
 * sequence back in the queue; the caller schedules the new start. */
static void s_stop_group(sched_t *s) {
    shardlink_kill_all(s->sl);
    s_requeue_running(s);
    s->ready_checked = false;
}

/* A shard died (rank -1: unknown which): restart the group after a backoff, or DEGRADED
 * when the deaths come too fast (crash loop). */
static void s_on_shard_dead(sched_t *s, int rank, const char *why) {
    if (s->state == SCHED_STATE_DEGRADED || s->state == SCHED_STATE_STOPPED) return;
    s_stop_group(s);
    double now = gw_now();
    s->deaths[s->n_deaths % SCHED_DEATH_RING] = now;
    s->n_deaths++;
    if (rank >= 0 && rank < SCHED_MAX_SHARDS) s->deaths_rank[rank]++;
    int recent = s_recent_deaths(s, now);
    if (s->switch_phase == 2 && s->switch_prev) {
        s_switch_failed(s, why);
        return;
    }
    if (recent >= s->c.o.crash_loop_deaths) {
        char msg[300];
        snprintf(msg, sizeof msg, "crash loop: %d shard deaths within %.0f s; last: %.200s", recent,
                 s->c.o.crash_loop_window_s, why);
        s_degrade(s, msg);
        return;
    }
    double backoff = 0.25 * (double)(1 << (recent - 1 < 6 ? recent - 1 : 6));
    s->restarts++;
    s->restart_at = now + backoff;
    s->state = SCHED_STATE_LOADING;
    snprintf(s->state_msg, sizeof s->state_msg, "%.200s; restarting the shards in %.2f s", why,
             backoff);
    LOG_WARN("sched", "%s (%d running and waiting sequences will be re-prefilled)", s->state_msg,
             s->n_waiting_seqs);
}

/* Leaves DEGRADED or restarts a healthy group now (operator restart-shard, automatic retry):
 * not counted as a death, no backoff. */
static void s_restart_now(sched_t *s, const char *why) {
    if (s->state == SCHED_STATE_STOPPED) return;
    LOG_WARN("sched", "restarting the shard group: %s", why);
    s_stop_group(s);
    s->n_deaths = 0; /* a fresh crash-loop window */
    s->restarts++;
    s->restart_at = gw_now();
    s->degraded_retry_at = 0;
    s->state = SCHED_STATE_LOADING;
    s_copy(s->state_msg, sizeof s->state_msg, why);
}

/* Queues the internal one-token generation that gates READY. */
static void s_start_selftest(sched_t *s) {
    gw_request_t *req = calloc(1, sizeof *req);
    if (req) {
        req->prompt = malloc(2 * sizeof(int32_t));
        req->stream = gw_stream_new();
    }
    if (!req || !req->prompt || !req->stream) {
        gw_request_free(&req);
        s_degrade(s, "out of memory starting the self-test");
        return;
    }
    req->prompt[0] = 1 % s->c.vocab;
    req->prompt[1] = 2 % s->c.vocab;
    req->n_prompt = 2;
    req->n_choices = 1;
    req->max_tokens = 1;
    req->top_p = 1;
    req->repetition_penalty = 1;
    req->id = 0;
    snprintf(req->id_str, sizeof req->id_str, "selftest");
    pthread_mutex_lock(&s->mu);
    s->n_pending++;
    pthread_mutex_unlock(&s->mu);
    s_accept(s, req);
    s->selftest_started = true;
}

static void s_apply_step(sched_t *s);

static void s_on_event(sched_t *s, shardlink_event_t *ev) {
    char msg[700];
    switch (ev->kind) {
    case SHARDLINK_EV_READY:
        if (shardlink_all_up(s->sl)) {
            LOG_INFO("sched", "all %d shards ready", s->c.o.n_shards);
            if (!s->selftest_started && s->state == SCHED_STATE_LOADING) s_start_selftest(s);
        }
        break;
    case SHARDLINK_EV_LOAD_ERROR:
        snprintf(msg, sizeof msg, "shard %d cannot load the model: %s", ev->rank, ev->message);
        s_degrade(s, msg);
        break;
    case SHARDLINK_EV_DEAD:
        s_on_shard_dead(s, ev->rank, ev->message);
        break;
    case SHARDLINK_EV_RESULT:
    case SHARDLINK_EV_STEP_ERROR:
        if (!s->inflight || ev->seq != s->step_seq || s->arrived_rank[ev->rank]) {
            LOG_WARN("sched", "dropped a stale %s for step %llu from shard %d",
                     ev->kind == SHARDLINK_EV_RESULT ? "RESULT" : "STEP_ERROR",
                     (unsigned long long)ev->seq, ev->rank);
            break;
        }
        if (ev->kind == SHARDLINK_EV_STEP_ERROR &&
            (strstr(ev->message, "comm") || strstr(ev->message, "collective") ||
             strstr(ev->message, "tensor-parallel group"))) {
            /* a collective failed (a peer died or was aborted): the shard exits; this is a
             * group failure, not a bad step, so the sequences are re-prefilled */
            snprintf(msg, sizeof msg, "shard %d: collective failed in step %llu: %.400s", ev->rank,
                     (unsigned long long)ev->seq, ev->message);
            s_on_shard_dead(s, ev->rank, msg);
            break;
        }
        s->arrived_rank[ev->rank] = true;
        s->arrived++;
        if (ev->kind == SHARDLINK_EV_STEP_ERROR) {
            snprintf(s->step_error, sizeof s->step_error, "shard %d refused step %llu: %.400s",
                     ev->rank, (unsigned long long)ev->seq, ev->message);
            LOG_ERROR("sched", "%s", s->step_error);
        } else if (ev->rank == 0) {
            free(s->samples);
            s->samples = ev->samples;
            s->n_samples = ev->n_samples;
            ev->samples = NULL;
        }
        if (s->arrived == s->c.o.n_shards) s_apply_step(s);
        break;
    default:
        break;
    }
}

/* ---------------------------------------------------------------- steps */

/* Handles one sampled token of sequence q. */
static void s_on_token(sched_t *s, seq_t *q, const proto_sample_t *sm, double now) {
    rq_t *r = q->rq;
    gw_request_t *req = r->req;
    if (q->n_toks >= q->cap_toks) { /* cannot happen: finish checks come first */
        s_seq_finish(s, q, GW_FINISH_LENGTH, NULL);
        return;
    }
    q->toks[q->n_toks++] = sm->token;
    q->n_gen++;
    r->t.generated_tokens++;
    if (!r->selftest) {
        s->gen_total++;
        int b = (int)((long long)now % SCHED_RATE_BUCKETS);
        if ((long long)s->rate_t[b] != (long long)now) {
            s->rate_t[b] = (double)(long long)now;
            s->rate_n[b] = 0;
        }
        s->rate_n[b]++;
        metrics_add_tokens(0, 1);
        if (q->last_tok_t > 0) metrics_observe(METRICS_ITL, now - q->last_tok_t);
    }
    if (r->t.first_token <= 0) {
        r->t.first_token = now;
        if (!r->selftest) {
            metrics_observe(METRICS_TTFT, now - r->t.submitted);
            metrics_observe(METRICS_PREFILL, now - r->t.scheduled);
        }
        gw_stream_set_timings(req->stream, &r->t);
    }
    q->last_tok_t = now;
    s->ready_checked = true;
    gw_event_t ev = {
        .kind = GW_EV_TOKEN, .choice = q->choice, .token = sm->token, .logprob = sm->logprob};
    int n_top = (int)sm->n_top;
    if (n_top > req->n_logprobs) n_top = req->n_logprobs;
    if (n_top > GW_MAX_LOGPROBS) n_top = GW_MAX_LOGPROBS;
    ev.n_top = n_top;
    for (int i = 0; i < n_top; i++) {
        ev.top_ids[i] = sm->top_ids[i];
        ev.top_logprobs[i] = sm->top_logprobs[i];
    }
    if (gw_stream_push(req->stream, &ev) != 0) {
        s_seq_finish(s, q, GW_FINISH_ERROR, "out of memory queueing a token");
        return;
    }
    for (int i = 0; i < req->n_stop_ids; i++)
        if (req->stop_ids[i] == sm->token) {
            s_seq_finish(s, q, GW_FINISH_STOP, NULL);
            return;
        }
    if (q->n_gen >= req->max_tokens || q->n_toks >= s->c.max_context)
        s_seq_finish(s, q, GW_FINISH_LENGTH, NULL);
}

static void s_apply_step(sched_t *s) {
    s->inflight = false;
    double now = gw_now();
    if (s->step_error[0]) {
        /* a refused step: every sequence in it fails (inputs are validated at submit, so
         * this is a bug or a mismatched shard; never a made-up answer) */
        for (int i = 0; i < s->n_entries; i++) {
            entry_t *e = &s->entries[i];
            if (e->seq && e->seq->uid == e->uid && e->seq->st == SEQ_RUNNING)
                s_seq_finish(s, e->seq, GW_FINISH_ERROR, s->step_error);
        }
        s->n_entries = 0;
        s->step_error[0] = 0;
        return;
    }
    uint32_t k = 0; /* samples come in step order, one per entry with PROTO_SEQ_SAMPLE */
    for (int i = 0; i < s->n_entries; i++) {
        entry_t *e = &s->entries[i];
        if (!(e->flags & PROTO_SEQ_SAMPLE)) continue;
        const proto_sample_t *sm = NULL;
        if (k < s->n_samples && s->samples[k].slot == (uint32_t)e->slot) sm = &s->samples[k++];
        seq_t *q = e->seq;
        if (!q || q->uid != e->uid || q->st != SEQ_RUNNING) continue; /* finished meanwhile */
        if (!sm) {
            s_seq_finish(s, q, GW_FINISH_ERROR, "the shard returned no token for this sequence");
            continue;
        }
        if (sm->token < 0 || sm->token >= s->c.vocab) {
            s_seq_finish(s, q, GW_FINISH_ERROR, "the shard returned an out-of-range token id");
            continue;
        }
        s_on_token(s, q, sm, now);
    }
    s->n_entries = 0;
    free(s->samples);
    s->samples = NULL;
    s->n_samples = 0;
}

/* Adds q's next chunk (at most n tokens) to the step, reserving blocks; preempts the newest
 * running sequences when the pools are short. Returns tokens added (0: q was preempted). */
static int s_plan_running(sched_t *s, seq_t *q, int n) {
    for (;;) {
        gerr_t err;
        int rc = kvalloc_reserve(s->kv, &q->kv, q->n_done, q->n_done + n, &err);
        if (rc == 0) break;
        if (rc != GERR_LIMIT) {
            s_seq_finish(s, q, GW_FINISH_ERROR, err.msg);
            return 0;
        }
        seq_t *victim = s->running[s->n_running - 1];
        s_entry_drop(s, victim);
        s_preempt(s, victim);
        if (victim == q) return 0;
    }
    entry_t *e = &s->entries[s->n_entries++];
    e->seq = q;
    e->uid = q->uid;
    e->slot = q->slot;
    e->start = q->n_done;
    e->n = n;
    e->flags =
        (q->n_done + n == q->n_toks ? PROTO_SEQ_SAMPLE : 0) | (q->n_done == 0 ? PROTO_SEQ_NEW : 0);
    return n;
}

static int s_min(int a, int b) {
    return a < b ? a : b;
}

static void s_build_and_send(sched_t *s) {
    int budget = s->c.o.max_batch_tokens;
    s->n_entries = 0;
    /* 1. decode tokens of running sequences */
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        seq_t *q = s->running[i];
        if (q->n_toks - q->n_done != 1) continue;
        budget -= s_plan_running(s, q, 1);
        if (i >= s->n_running || s->running[i] != q) i--; /* q was preempted */
    }
    /* 2. prefill chunks of running sequences */
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        seq_t *q = s->running[i];
        int left = q->n_toks - q->n_done;
        if (left <= 1) continue;
        bool planned = false;
        for (int j = 0; j < s->n_entries; j++)
            if (s->entries[j].seq == q) planned = true;
        if (planned) continue;
        budget -= s_plan_running(s, q, s_min(s_min(left, s->c.o.prefill_chunk), budget));
        if (i >= s->n_running || s->running[i] != q) i--;
    }
    /* 3. admission, FIFO */
    bool admit = s->state == SCHED_STATE_READY || s->state == SCHED_STATE_DRAINING ||
                 (s->q_head && s->q_head->rq->selftest);
    while (admit && s->q_head && s->n_running < s->c.o.max_running && budget > 0) {
        seq_t *q = s->q_head;
        if (!q->rq->selftest && s->state == SCHED_STATE_LOADING) break;
        int n = s_min(s_min(q->n_toks - q->n_done, s->c.o.prefill_chunk), budget);
        int nf, nw;
        kvalloc_need(s->kv, &q->kv, q->n_done, q->n_done + n, &nf, &nw);
        int reserve = s->n_running; /* one growth block per running sequence */
        if (nf + reserve > kvalloc_free_full(s->kv) && nf > 0) break;
        if (nw > kvalloc_free_window(s->kv)) break;
        gerr_t err;
        if (kvalloc_reserve(s->kv, &q->kv, q->n_done, q->n_done + n, &err) != 0) break;
        s_q_remove(s, q);
        int slot = 0;
        while (s->slot_used[slot])
            slot++;
        s->slot_used[slot] = true;
        q->slot = slot;
        q->st = SEQ_RUNNING;
        s->running[s->n_running++] = q;
        entry_t *e = &s->entries[s->n_entries++];
        e->seq = q;
        e->uid = q->uid;
        e->slot = q->slot;
        e->start = q->n_done;
        e->n = n;
        e->flags = (q->n_done + n == q->n_toks ? PROTO_SEQ_SAMPLE : 0) |
                   (q->n_done == 0 ? PROTO_SEQ_NEW : 0);
        budget -= n;
        rq_t *r = q->rq;
        if (r->pending) {
            r->pending = false;
            pthread_mutex_lock(&s->mu);
            s->n_pending--;
            pthread_mutex_unlock(&s->mu);
        }
    }
    if (s->n_entries == 0) return;
    /* encode */
    int tokens = 0;
    for (int i = 0; i < s->n_entries; i++) {
        entry_t *e = &s->entries[i];
        seq_t *q = e->seq;
        const gw_request_t *req = q->rq->req;
        s->pseqs[i] = (proto_seq_t){
            .slot = (uint32_t)q->slot,
            .n_tokens = (uint32_t)e->n,
            .start_pos = (uint32_t)e->start,
            .prompt_len = (uint32_t)req->n_prompt,
            .n_full = (uint32_t)q->kv.n_full,
            .n_window = (uint32_t)q->kv.n_window,
            .flags = e->flags,
            .temperature = req->temperature,
            .top_p = req->top_p,
            .min_p = req->min_p,
            .top_k = req->top_k,
            .frequency_penalty = req->frequency_penalty,
            .presence_penalty = req->presence_penalty,
            .repetition_penalty = req->repetition_penalty,
            .seed = req->seed + (uint64_t)q->choice,
            .n_logprobs = req->n_logprobs,
            .tokens = q->toks + e->start,
            .full = q->kv.full,
            .window = q->kv.window,
        };
        tokens += e->n;
    }
    gerr_t err = {{0}};
    if (proto_step_encode(s->pseqs, (uint32_t)s->n_entries, &s->buf) != 0) {
        for (int i = s->n_entries - 1; i >= 0; i--)
            if (s->entries[i].seq)
                s_seq_finish(s, s->entries[i].seq, GW_FINISH_ERROR,
                             "out of memory encoding a step");
        s->n_entries = 0;
        return;
    }
    s->step_seq++;
    if (shardlink_send_all(s->sl, PROTO_STEP, s->step_seq, s->buf.data, s->buf.len, &err) != 0) {
        s_on_shard_dead(s, -1, err.msg);
        return;
    }
    double now = gw_now();
    s->inflight = true;
    s->step_deadline = now + 60.0 + 0.01 * tokens;
    s->arrived = 0;
    memset(s->arrived_rank, 0, sizeof s->arrived_rank);
    s->step_error[0] = 0;
    for (int i = 0; i < s->n_entries; i++) {
        entry_t *e = &s->entries[i];
        e->seq->n_done += e->n;
        rq_t *r = e->seq->rq;
        if (r->t.scheduled <= 0) {
            r->t.scheduled = now;
            gw_stream_set_timings(r->req->stream, &r->t);
            if (!r->selftest) {
                metrics_observe(METRICS_QUEUE, now - r->t.submitted);
                metrics_add_tokens((uint64_t)r->req->n_prompt, 0);
                s->prompt_total += (uint64_t)r->req->n_prompt;
            }
        }
    }
}

/* ---------------------------------------------------------------- stats */

static void s_publish(sched_t *s) {
    double now = gw_now();
    uint64_t recent = 0;
    for (int b = 0; b < SCHED_RATE_BUCKETS; b++)
        if (now - s->rate_t[b] < SCHED_RATE_BUCKETS) recent += s->rate_n[b];
    pthread_mutex_lock(&s->mu);
    sched_stats_t *st = &s->stats;
    bool sw_drain = s->switch_phase == 1;
    st->state = s->state == SCHED_STATE_READY && (s->draining || sw_drain) ? SCHED_STATE_DRAINING
                                                                           : s->state;
    if (sw_drain && s->switch_new)
        snprintf(st->state_message, sizeof st->state_message,
                 "switching to profile '%.60s': finishing %d running request(s) first",
                 s->switch_new->profile_name, s->n_running + s->n_waiting_seqs);
    else if (st->state == SCHED_STATE_DRAINING)
        snprintf(st->state_message, sizeof st->state_message,
                 "draining: running requests finish, new ones are refused");
    else if (s->state == SCHED_STATE_READY && s->switch_error[0])
        snprintf(st->state_message, sizeof st->state_message, "%.255s", s->switch_error);
    else
        snprintf(st->state_message, sizeof st->state_message, "%s", s->state_msg);
    s_copy(st->profile, sizeof st->profile, s->c.profile_name ? s->c.profile_name : "");
    s_copy(st->model_dir, sizeof st->model_dir, s->c.model_dir ? s->c.model_dir : "");
    const s_conf_t *target = s->switch_new          ? s->switch_new
                             : s->switch_phase == 2 ? &s->c
                                                    : s->switch_to; /* under mu */
    s_copy(st->switching_to, sizeof st->switching_to, target ? target->profile_name : "");
    st->generation = s->sl ? shardlink_generation(s->sl) : 0;
    st->deaths_recent = s_recent_deaths(s, now);
    st->default_max_tokens = s->c.o.default_max_tokens;
    st->default_temperature = s->c.o.default_temperature;
    s_copy(st->default_reasoning, sizeof st->default_reasoning,
           s->c.reasoning ? s->c.reasoning : "");
    st->ready_checked = s->ready_checked && s->state == SCHED_STATE_READY;
    st->uptime_s = now - s->started_at;
    st->requests_total = s->requests_total;
    st->requests_finished = s->requests_finished;
    st->prompt_tokens_total = s->prompt_total;
    st->generated_tokens_total = s->gen_total;
    st->tokens_per_s = (double)recent / SCHED_RATE_BUCKETS;
    st->running = s->n_running;
    st->waiting = s->n_pending;
    st->kv_blocks_total = kvalloc_total(s->kv);
    st->kv_blocks_used = kvalloc_used(s->kv);
    st->n_shards = s->c.o.n_shards;
    memset(st->shards, 0, sizeof st->shards);
    for (int r = 0; r < s->c.o.n_shards && s->sl; r++) {
        const shardlink_shard_t *sh = shardlink_shard(s->sl, r);
        sched_shard_stats_t *o = &st->shards[r];
        o->rank = r;
        o->pid = sh->pid;
        o->up = sh->state == SHARDLINK_UP;
        o->heartbeat_age_s = sh->pid > 0 ? now - sh->last_heard : 0;
        o->restarts = s->deaths_rank[r];
        s_copy(o->backend, sizeof o->backend, sh->backend);
        s_copy(o->last_error, sizeof o->last_error, sh->last_error);
    }
    st->vocab_size = s->c.vocab;
    st->max_context = s->c.max_context;
    pthread_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------- the thread */

static void s_drain_inbox_failing(sched_t *s, const char *msg) {
    pthread_mutex_lock(&s->mu);
    inmsg_t *m = s->in_head;
    s->in_head = s->in_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (m) {
        inmsg_t *next = m->next;
        if (m->kind == IN_SUBMIT) {
            gw_event_t ev = {.kind = GW_EV_FINISH, .finish = GW_FINISH_ERROR};
            s_copy(ev.message, sizeof ev.message, msg);
            for (int c = 0; c < m->req->n_choices; c++) {
                ev.choice = c;
                (void)gw_stream_push(m->req->stream, &ev);
            }
            pthread_mutex_lock(&s->mu);
            s->n_pending--;
            s_live_remove(s, m->req->id);
            pthread_mutex_unlock(&s->mu);
            gw_request_free(&m->req);
        }
        free(m);
        m = next;
    }
}

/* ---------------------------------------------------------------- profile switch */

/* Phase 1 -> 2: the old group is stopped and the new settings applied and started. */
static void s_switch_apply(sched_t *s) {
    gerr_t err = {{0}};
    if (s->rqs)
        s_fail_all(s, GW_FINISH_ERROR,
                   "the server switched profiles before this "
                   "request finished; retry it");
    s_requeue_running(s);
    shardlink_free(&s->sl, 5.0); /* SHUTDOWN, then SIGKILL after the grace */
    s_conf_t *prev = malloc(sizeof *prev);
    if (!prev) {
        s_conf_free(s->switch_new);
        free(s->switch_new);
        s->switch_new = NULL;
        s_switch_failed(s, "out of memory");
        return;
    }
    *prev = s->c;
    memset(&s->c, 0, sizeof s->c);
    s->switch_prev = prev;
    s_conf_t *nc = s->switch_new;
    s->switch_new = NULL;
    s->switch_phase = 2;
    int rc = s_conf_apply(s, nc, &err);
    s_conf_free(nc);
    free(nc);
    if (rc) {
        s_switch_failed(s, err.msg);
        return;
    }
    s->n_deaths = 0;
    memset(s->deaths_rank, 0, sizeof s->deaths_rank);
    s->selftest_started = false;
    s->restart_at = 0;
    s->degraded_retry_at = 0;
    s->ready_checked = false;
    s->state = SCHED_STATE_LOADING;
    snprintf(s->state_msg, sizeof s->state_msg,
             "switching to profile '%.60s': starting %d shard(s)", s->c.profile_name,
             s->c.o.n_shards);
    LOG_INFO("sched", "%s", s->state_msg);
    if (shardlink_start(s->sl, &err) != 0) s_switch_failed(s, err.msg);
}

/* The new profile's group failed to come up: put the old settings back and start them. */
static void s_switch_failed(sched_t *s, const char *why) {
    char name[72];
    s_copy(name, sizeof name, s->c.profile_name ? s->c.profile_name : "?");
    s_conf_t *prev = s->switch_prev;
    s->switch_prev = NULL;
    s->switch_phase = 0;
    if (s->rqs) s_fail_all(s, GW_FINISH_ERROR, "the profile switch failed");
    s_requeue_running(s);
    shardlink_free(&s->sl, 0);
    gerr_t err = {{0}};
    int rc = prev ? s_conf_apply(s, prev, &err) : GERR_INVALID;
    if (prev) {
        s_conf_free(prev);
        free(prev);
    }
    snprintf(s->switch_error, sizeof s->switch_error, "profile '%.40s' failed: %.140s; %s", name,
             why, rc == 0 ? "back on the previous profile" : "no profile is running");
    LOG_ERROR("sched", "%s", s->switch_error);
    pthread_mutex_lock(&s->mu);
    s->switching = false;
    pthread_mutex_unlock(&s->mu);
    s->selftest_started = false;
    s->n_deaths = 0;
    s->ready_checked = false;
    if (rc) {
        s->state = SCHED_STATE_DEGRADED;
        snprintf(s->state_msg, sizeof s->state_msg, "%.200s (%.50s)", s->switch_error, err.msg);
        s->restart_at = 0;
        return;
    }
    s->state = SCHED_STATE_LOADING;
    s_copy(s->state_msg, sizeof s->state_msg, s->switch_error);
    s->restart_at = gw_now();
}

/* Takes what other threads asked for (restart-shard, switch-profile) and moves a switch on. */
static void s_control(sched_t *s) {
    pthread_mutex_lock(&s->mu);
    int rank = s->restart_rank;
    s->restart_rank = -1;
    s_conf_t *sw = s->switch_to;
    s->switch_to = NULL;
    pthread_mutex_unlock(&s->mu);
    double now = gw_now();
    if (rank >= 0 && s->switch_phase == 0) {
        char why[128];
        snprintf(why, sizeof why, "operator restart of shard %d (its group restarts)", rank);
        s_restart_now(s, why);
    }
    if (sw) {
        s->switch_new = sw;
        s->switch_phase = 1;
        s->switch_deadline = now + s->c.o.switch_grace_s;
        s->switch_error[0] = 0;
        LOG_INFO("sched", "switching to profile '%s' (model %s, %d shard(s)): draining",
                 sw->profile_name, sw->model_dir, sw->o.n_shards);
    }
    if (s->switch_phase == 1) {
        bool idle = !s->rqs || s->state == SCHED_STATE_DEGRADED;
        if (idle || now >= s->switch_deadline) {
            if (!idle)
                LOG_WARN("sched", "switch: %d requests still running after %.0f s; failing them",
                         s->n_running + s->n_waiting_seqs, s->c.o.switch_grace_s);
            s_switch_apply(s);
        }
    } else if (s->switch_phase == 2 && s->state == SCHED_STATE_READY) {
        LOG_INFO("sched", "switched to profile '%s'", s->c.profile_name);
        s->switch_phase = 0;
        if (s->switch_prev) s_conf_free(s->switch_prev);
        free(s->switch_prev);
        s->switch_prev = NULL;
        pthread_mutex_lock(&s->mu);
        s->switching = false;
        pthread_mutex_unlock(&s->mu);
    }
    if (s->state == SCHED_STATE_DEGRADED && s->switch_phase == 0 && s->degraded_retry_at > 0 &&
        now >= s->degraded_retry_at) {
        char why[300];
        snprintf(why, sizeof why, "retrying the shards after: %.200s", s->state_msg);
        s_restart_now(s, why);
    }
}

static void *s_main(void *arg) {
    sched_t *s = arg;
    gerr_t err = {{0}};
    if (shardlink_start(s->sl, &err) != 0) s_degrade(s, err.msg);
    s_publish(s);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        zmq_pollitem_t it[2] = {
            {.socket = s->sl ? shardlink_socket(s->sl) : NULL, .events = ZMQ_POLLIN},
            {.fd = s->efd, .events = ZMQ_POLLIN}};
        int rc = s->sl ? zmq_poll(it, 2, SCHED_POLL_MS) : zmq_poll(&it[1], 1, SCHED_POLL_MS);
        if (rc < 0 && errno != EINTR) {
            LOG_ERROR("sched", "zmq_poll: %s", zmq_strerror(errno));
            struct timespec ts = {0, SCHED_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (rc > 0 && (it[1].revents & ZMQ_POLLIN)) {
            uint64_t v;
            if (read(s->efd, &v, sizeof v) < 0 && errno != EAGAIN)
                LOG_WARN("sched", "eventfd read: %s", strerror(errno));
        }
        s_take_inbox(s);
        s_control(s);
        if (s->state == SCHED_STATE_DEGRADED) s_fail_all(s, GW_FINISH_ERROR, s->state_msg);
        if (!s->sl) { /* only after a failed rollback: nothing to drive */
            s_publish(s);
            continue;
        }
        for (int i = 0; i < 1024; i++) { /* bounded: heartbeats and deadlines run too */
            shardlink_event_t ev;
            int r = shardlink_recv(s->sl, &ev);
            if (r == 1) s_on_event(s, &ev);
            shardlink_event_clear(&ev);
            if (r <= 0 || !s->sl) break;
        }
        shardlink_event_t ev;
        if (s->sl && s->state != SCHED_STATE_DEGRADED && shardlink_tick(s->sl, &ev) == 1)
            s_on_event(s, &ev);
        shardlink_event_clear(&ev);
        if (s->inflight && gw_now() > s->step_deadline) {
            char msg[200];
            int late = -1;
            for (int r = 0; r < s->c.o.n_shards && late < 0; r++)
                if (!s->arrived_rank[r]) late = r;
            snprintf(msg, sizeof msg, "shard %d missed the deadline of step %llu", late,
                     (unsigned long long)s->step_seq);
            s_on_shard_dead(s, late, msg);
        }
        if (s->sl && s->restart_at > 0 && gw_now() >= s->restart_at) {
            s->restart_at = 0;
            LOG_INFO("sched", "starting the shards (restart %d)", s->restarts);
            if (shardlink_start(s->sl, &err) != 0) s_on_shard_dead(s, -1, err.msg);
        }
        s_check_deadlines(s);
        if (s->sl && !s->inflight && s->restart_at == 0 && s->state != SCHED_STATE_DEGRADED &&
            shardlink_all_up(s->sl))
            s_build_and_send(s);
        s_publish(s);
    }
    LOG_INFO("sched", "stopping: %d requests left", s->n_running + s->n_waiting_seqs);
    s->state = SCHED_STATE_STOPPED;
    s_fail_all(s, GW_FINISH_ERROR, "server shutting down");
    s_drain_inbox_failing(s, "server shutting down");
    shardlink_free(&s->sl, 5.0);
    s_publish(s);
    pthread_mutex_lock(&s->mu);
    for (int r = 0; r < SCHED_MAX_SHARDS; r++) {
        s->stats.shards[r].pid = 0;
        s->stats.shards[r].up = false;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------------- public API */

static char *s_default_shardd(void) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return strdup("gptoss-shardd");
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    size_t len = strlen(exe) + sizeof "/gptoss-shardd";
    char *p = malloc(len);
    if (p) snprintf(p, len, "%s/gptoss-shardd", exe);
    return p;
}

static void s_conf_free(s_conf_t *c) {
    if (!c) return;
    free(c->model_dir);
    free(c->shardd_path);
    free(c->run_dir);
    free(c->kv_dtype);
    free(c->profile_name);
    free(c->profiles_dir);
    free(c->reasoning);
    memset(c, 0, sizeof *c);
}

static char *s_dup0(const char *s) {
    return strdup(s ? s : "");
}

/* Fills *c from opts: defaults, owned string copies, the model's config (tp must divide
 * its heads), the KV plan and the context cap. On failure c is freed and err says why. */
static int s_conf_prepare(const sched_opts_t *opts, s_conf_t *c, gerr_t *err) {
    memset(c, 0, sizeof *c);
    if (!opts->model_dir || !opts->run_dir) {
        gerr_set(err, "scheduler: model_dir and run_dir are required");
        return GERR_INVALID;
    }
    c->o = *opts;
    sched_opts_t *o = &c->o;
    if (o->n_shards <= 0) o->n_shards = 1;
    if (o->block_size <= 0) o->block_size = 16;
    if (o->max_running <= 0) o->max_running = 16;
    if (o->max_queue <= 0) o->max_queue = 256;
    if (o->max_batch_tokens <= 0) o->max_batch_tokens = 512;
    if (o->prefill_chunk <= 0) o->prefill_chunk = 256;
    if (o->max_time_s <= 0) o->max_time_s = 600;
    if (o->heartbeat_s <= 0) o->heartbeat_s = 1;
    if (o->kv_budget_gib <= 0) o->kv_budget_gib = 1;
    if (o->crash_loop_deaths <= 0) o->crash_loop_deaths = 5;
    if (o->crash_loop_window_s <= 0) o->crash_loop_window_s = 60;
    if (o->degraded_retry_s == 0) o->degraded_retry_s = 30;
    if (o->switch_grace_s <= 0) o->switch_grace_s = 60;
    if (o->n_shards > SCHED_MAX_SHARDS) {
        gerr_set(err, "scheduler: %d shards requested; at most %d", o->n_shards, SCHED_MAX_SHARDS);
        return GERR_INVALID;
    }
    if (o->threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o->threads = n > 0 ? (int)(n / o->n_shards) : 1;
        if (o->threads < 1) o->threads = 1;
    }
    const char *dtype = o->kv_dtype ? o->kv_dtype : "f32";
    if (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0) {
        gerr_set(err, "scheduler: kv dtype '%s' is not supported (use f32 or bf16)", dtype);
        return GERR_INVALID;
    }
    /* backend: one of two static names (nothing to own) */
    bool cuda = o->backend && strcmp(o->backend, "cuda") == 0;
    if (o->backend && !cuda && strcmp(o->backend, "cpu") != 0) {
        gerr_set(err, "scheduler: backend '%.32s' is not supported (use cpu or cuda)", o->backend);
        return GERR_INVALID;
    }
    if (cuda && o->n_shards > 1) {
        gerr_set(err,
                 "scheduler: backend cuda with tp %d: tensor parallelism on GPUs (NCCL) is not "
                 "wired into gptoss-shardd yet; a cuda profile must have tp 1",
                 o->n_shards);
        return GERR_INVALID;
    }
    if (o->device < 0) {
        gerr_set(err, "scheduler: GPU index %d is negative", o->device);
        return GERR_INVALID;
    }
    o->backend = cuda ? "cuda" : "cpu";
    c->model_dir = strdup(o->model_dir);
    c->run_dir = strdup(o->run_dir);
    c->kv_dtype = strdup(dtype);
    c->shardd_path = o->shardd_path ? strdup(o->shardd_path) : s_default_shardd();
    c->profile_name = s_dup0(o->profile_name);
    c->profiles_dir = o->profiles_dir ? strdup(o->profiles_dir) : NULL;
    c->reasoning = s_dup0(o->default_reasoning);
    if (!c->model_dir || !c->run_dir || !c->kv_dtype || !c->shardd_path || !c->profile_name ||
        (o->profiles_dir && !c->profiles_dir) || !c->reasoning) {
        gerr_set(err, "scheduler: out of memory");
        s_conf_free(c);
        return GERR_NOMEM;
    }
    o->model_dir = c->model_dir;
    o->run_dir = c->run_dir;
    o->kv_dtype = c->kv_dtype;
    o->shardd_path = c->shardd_path;
    o->profile_name = c->profile_name;
    o->profiles_dir = c->profiles_dir;
    o->default_reasoning = c->reasoning;
    int rc = config_load(c->model_dir, &c->cfg, err);
    if (rc) {
        gerr_prefix(err, "scheduler: model %s", c->model_dir);
        s_conf_free(c);
        return rc;
    }
    /* the same check (and message) as a profile's: tp must divide the heads and experts */
    profile_t chk = {.name = c->profile_name[0] ? c->profile_name : "(command line)",
                     .tp = o->n_shards};
    rc = profile_check_model(&chk, &c->cfg, err);
    if (rc) {
        gerr_prefix(err, "scheduler: model %s", c->model_dir);
        s_conf_free(c);
        return rc;
    }
    c->vocab = c->cfg.vocab_size;
    if (o->vocab_limit <= 0 || o->vocab_limit > c->vocab) o->vocab_limit = c->vocab;
    size_t budget = (size_t)(o->kv_budget_gib * (double)(1ull << 30));
    rc = kvcache_plan(&c->cfg, c->cfg.num_key_value_heads / o->n_shards,
                      strcmp(dtype, "bf16") == 0 ? OPS_KV_BF16 : OPS_KV_F32, o->block_size, budget,
                      o->max_running, o->prefill_chunk, &c->kvo, err);
    if (rc) {
        gerr_prefix(err, "scheduler");
        s_conf_free(c);
        return rc;
    }
    long long cap = c->cfg.max_position_embeddings;
    if (c->kvo.n_full_blocks > 0 && (long long)c->kvo.n_full_blocks * o->block_size < cap)
        cap = (long long)c->kvo.n_full_blocks * o->block_size;
    if (o->max_context > 0 && o->max_context < cap) cap = o->max_context;
    c->max_context = (int)cap;
    o->max_context = c->max_context;
    return 0;
}

/* Makes *c the scheduler's settings (c is moved: zeroed on return; the old settings are
 * freed) and builds what depends on them: block allocator, per-slot arrays, the ROUTER
 * socket. No request may hold blocks and the old shardlink must be gone (s->sl NULL). */
static int s_conf_apply(sched_t *s, s_conf_t *c, gerr_t *err) {
    assert(!s->sl && s->n_running == 0);
    s_conf_free(&s->c);
    s->c = *c;
    memset(c, 0, sizeof *c);
    const sched_opts_t *o = &s->c.o;
    kvalloc_free(&s->kv);
    free(s->running);
    free(s->slot_used);
    free(s->entries);
    free(s->pseqs);
    s->running = calloc((size_t)o->max_running, sizeof *s->running);
    s->slot_used = calloc((size_t)o->max_running, sizeof *s->slot_used);
    s->entries = calloc((size_t)o->max_running, sizeof *s->entries);
    s->pseqs = calloc((size_t)o->max_running, sizeof *s->pseqs);
    s->n_entries = 0;
    s->inflight = false;
    if (!s->running || !s->slot_used || !s->entries || !s->pseqs) {
        gerr_set(err, "scheduler: out of memory");
        return GERR_NOMEM;
    }
    int rc = kvalloc_new(o->block_size, s->c.kvo.n_full_blocks, s->c.kvo.n_window_blocks,
                         s->c.cfg.sliding_window, &s->kv, err);
    if (rc) return rc;
    shardlink_opts_t so = {
        .shardd_path = s->c.shardd_path,
        .run_dir = s->c.run_dir,
        .n_shards = o->n_shards,
        .threads = o->threads,
        .heartbeat_s = o->heartbeat_s,
        .model_dir = s->c.model_dir,
        .kv_dtype = s->c.kv_dtype,
        .backend = o->backend,
        .device = o->device,
        .block_size = o->block_size,
        .kv_full_blocks = s->c.kvo.n_full_blocks,
        .kv_window_blocks = s->c.kvo.n_window_blocks,
        .max_seqs = o->max_running,
        .max_chunk = o->prefill_chunk,
        .vocab_limit = o->vocab_limit,
        .comm_by_gateway = true, /* PROTOCOL.md: the gateway creates the shm segment */
    };
    rc = shardlink_new(&so, &s->sl, err);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    s->pub_vocab = s->c.vocab;
    s->pub_vocab_limit = o->vocab_limit;
    s->pub_max_context = s->c.max_context;
    s->pub_max_queue = o->max_queue;
    pthread_mutex_unlock(&s->mu);
    LOG_INFO("sched",
             "profile '%s': model %s, %d shard(s); KV plan: %d full + %d window blocks of %d "
             "tokens; max context %d; max running %d, batch %d tokens, chunk %d",
             s->c.profile_name[0] ? s->c.profile_name : "(command line)", s->c.model_dir,
             o->n_shards, s->c.kvo.n_full_blocks, s->c.kvo.n_window_blocks, o->block_size,
             s->c.max_context, o->max_running, o->max_batch_tokens, o->prefill_chunk);
    return 0;
}

static void s_destroy(sched_t *s) {
    if (!s) return;
    shardlink_free(&s->sl, 0);
    kvalloc_free(&s->kv);
    if (s->efd >= 0) close(s->efd);
    free(s->running);
    free(s->slot_used);
    free(s->entries);
    free(s->pseqs);
    free(s->samples);
    proto_buf_free(&s->buf);
    free(s->live);
    s_conf_free(&s->c);
    if (s->switch_to) s_conf_free(s->switch_to);
    free(s->switch_to);
    if (s->switch_new) s_conf_free(s->switch_new);
    free(s->switch_new);
    if (s->switch_prev) s_conf_free(s->switch_prev);
    free(s->switch_prev);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int sched_new(const sched_opts_t *opts, sched_t **out, gerr_t *err) {
    *out = NULL;
    sched_t *s = calloc(1, sizeof *s);
    if (!s) {
        gerr_set(err, "scheduler: out of memory");
        return GERR_NOMEM;
    }
    s->efd = -1;
    s->restart_rank = -1;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        gerr_set(err, "scheduler: pthread_mutex_init failed");
        return GERR_IO;
    }
    s_conf_t c;
    int rc = s_conf_prepare(opts, &c, err);
    if (rc) {
        s_destroy(s);
        return rc;
    }
    rc = s_conf_apply(s, &c, err);
    if (rc) {
        s_destroy(s);
        return rc;
    }
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        gerr_set(err, "scheduler: eventfd failed: %s", strerror(errno));
        s_destroy(s);
        return GERR_IO;
    }
    s->started_at = gw_now();
    s->next_id = 1;
    s->state = SCHED_STATE_LOADING;
    snprintf(s->state_msg, sizeof s->state_msg, "starting %d shard(s)", s->c.o.n_shards);
    s_publish(s);
    int prc = pthread_create(&s->thread, NULL, s_main, s);
    if (prc != 0) {
        gerr_set(err, "scheduler: cannot start its thread: %s", strerror(prc));
        s_destroy(s);
        return GERR_IO;
    }
    s->thread_started = true;
    *out = s;
    return 0;
}

void sched_free(sched_t **ps) {
    if (!ps || !*ps) return;
    sched_t *s = *ps;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_mutex_unlock(&s->mu);
        s_wake(s);
        int rc = pthread_join(s->thread, NULL);
        if (rc != 0) LOG_ERROR("sched", "pthread_join: %s", strerror(rc));
    }
    /* requests that never reached the thread's inbox turn are failed there; anything
     * still live here belongs to the thread and was failed before it returned */
    s_destroy(s);
    *ps = NULL;
}

/* Checks a request against the model and limits; called under mu (the pub_ fields change
 * with a profile switch). */
static int s_validate(const sched_t *s, const gw_request_t *req, gerr_t *err) {
    if (!req->stream) {
        gerr_set(err, "request has no stream");
        return GERR_INVALID;
    }
    if (req->n_prompt < 1 || !req->prompt) {
        gerr_set(err, "the prompt is empty; give at least one token");
        return GERR_INVALID;
    }
    if (req->n_choices < 1 || req->n_choices > SCHED_MAX_CHOICES) {
        gerr_set(err, "n = %d is out of range (1..%d)", req->n_choices, SCHED_MAX_CHOICES);
        return GERR_INVALID;
    }
    if (req->max_tokens < 1) {
        gerr_set(err, "max_tokens = %d; it must be at least 1", req->max_tokens);
        return GERR_INVALID;
    }
    if ((long long)req->n_prompt + req->max_tokens > s->pub_max_context) {
        gerr_set(err,
                 "the prompt (%d tokens) plus max_tokens (%d) is %lld tokens, more than the "
                 "maximum context of %d tokens; shorten the prompt or lower max_tokens",
                 req->n_prompt, req->max_tokens, (long long)req->n_prompt + req->max_tokens,
                 s->pub_max_context);
        return GERR_INVALID;
    }
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= s->pub_vocab) {
            gerr_set(err, "prompt token %d has id %d, outside the vocabulary [0, %d)", i,
                     req->prompt[i], s->pub_vocab);
            return GERR_INVALID;
        }
    if (req->n_stop_ids < 0 || req->n_stop_ids > GW_MAX_STOP_IDS) {
        gerr_set(err, "%d stop ids; at most %d", req->n_stop_ids, GW_MAX_STOP_IDS);
        return GERR_INVALID;
    }
    sampling_params_t p;
    sampling_params_init(&p);
    p.temperature = req->temperature;
    p.top_k = req->top_k;
    p.top_p = req->top_p;
    p.min_p = req->min_p;
    p.seed = req->seed;
    p.frequency_penalty = req->frequency_penalty;
    p.presence_penalty = req->presence_penalty;
    p.repetition_penalty = req->repetition_penalty;
    p.n_logprobs = req->n_logprobs;
    p.vocab_limit = s->pub_vocab_limit;
    p.stop_ids = req->stop_ids;
    p.n_stop = req->n_stop_ids;
    return sampling_params_validate(&p, s->pub_vocab, err);
}

int sched_submit(sched_t *s, gw_request_t *req, gerr_t *err) {
    inmsg_t *m = calloc(1, sizeof *m);
    if (!m) {
        gerr_set(err, "out of memory queueing the request");
        return GERR_NOMEM;
    }
    pthread_mutex_lock(&s->mu);
    sched_state_t st = s->stats.state;
    int rc = s_validate(s, req, err); /* 400 first: a bad request stays bad */
    if (rc) {
        /* err says what is wrong with the request */
    } else if (s->stop || st == SCHED_STATE_STOPPED) {
        gerr_set(err, "the server is shutting down");
        rc = GERR_IO;
    } else if (s->draining) {
        gerr_set(err, "the server is draining (not admitting requests); retry later");
        rc = GERR_IO;
    } else if (s->switching) {
        gerr_set(err, "the server is switching profiles (%.200s); retry shortly",
                 s->stats.state_message);
        rc = GERR_IO;
    } else if (st != SCHED_STATE_READY) {
        gerr_set(err, "the server is %s%s%s", sched_state_name(st),
                 s->stats.state_message[0] ? ": " : "", s->stats.state_message);
        rc = GERR_IO;
    } else if (s->n_pending >= s->pub_max_queue) {
        gerr_set(err, "the queue is full (%d requests waiting); retry later", s->n_pending);
        rc = GERR_LIMIT;
    } else if (s_live_add(s, s->next_id, req->id_str) != 0) {
        gerr_set(err, "out of memory queueing the request");
        rc = GERR_NOMEM;
    }
    if (rc) {
        pthread_mutex_unlock(&s->mu);
        free(m);
        return rc;
    }
    req->id = s->next_id++;
    s->n_pending++;
    m->kind = IN_SUBMIT;
    m->req = req;
    if (s->in_tail)
        s->in_tail->next = m;
    else
        s->in_head = m;
    s->in_tail = m;
    pthread_mutex_unlock(&s->mu);
    s_wake(s);
    return 0;
}

void sched_cancel(sched_t *s, uint64_t id) {
    inmsg_t *m = calloc(1, sizeof *m);
    if (!m) {
        LOG_ERROR("sched", "out of memory queueing a cancel of request %llu",
                  (unsigned long long)id);
        return;
    }
    m->kind = IN_CANCEL;
    m->id = id;
    pthread_mutex_lock(&s->mu);
    if (s->in_tail)
        s->in_tail->next = m;
    else
        s->in_head = m;
    s->in_tail = m;
    pthread_mutex_unlock(&s->mu);
    s_wake(s);
}

int sched_cancel_by_name(sched_t *s, const char *id_str) {
    uint64_t id = 0;
    if (!id_str || !*id_str) return -1;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_live; i++)
        if (strcmp(s->live[i].id_str, id_str) == 0) {
            id = s->live[i].id;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    if (!id) return -1;
    sched_cancel(s, id);
    return 0;
}

void sched_snapshot(sched_t *s, sched_stats_t *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->stats;
    pthread_mutex_unlock(&s->mu);
}

void sched_drain(sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    if (s->stats.state == SCHED_STATE_READY) s->stats.state = SCHED_STATE_DRAINING;
    pthread_mutex_unlock(&s->mu);
    s_wake(s);
}

void sched_resume(sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = false;
    pthread_mutex_unlock(&s->mu);
    s_wake(s);
}

int sched_restart_shard(sched_t *s, int rank, gerr_t *err) {
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (rank < 0 || rank >= s->stats.n_shards) {
        gerr_set(err, "no shard %d: this gateway runs shards 0..%d", rank, s->stats.n_shards - 1);
        rc = GERR_INVALID;
    } else if (s->stop || s->stats.state == SCHED_STATE_STOPPED) {
        gerr_set(err, "the gateway is stopping");
        rc = GERR_IO;
    } else if (s->switching) {
        gerr_set(err, "a profile switch is in progress; restart-shard is refused until it ends");
        rc = GERR_IO;
    } else {
        s->restart_rank = rank;
    }
    pthread_mutex_unlock(&s->mu);
    if (!rc) s_wake(s);
    return rc;
}

int sched_switch(sched_t *s, const sched_opts_t *opts, gerr_t *err) {
    s_conf_t *c = malloc(sizeof *c);
    if (!c) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    int rc = s_conf_prepare(opts, c, err);
    if (rc) {
        free(c);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    if (s->stop || s->stats.state == SCHED_STATE_STOPPED) {
        gerr_set(err, "the gateway is stopping");
        rc = GERR_IO;
    } else if (s->switching) {
        gerr_set(err, "a profile switch is already in progress (see status)");
        rc = GERR_IO;
    } else {
        s->switch_to = c;
        s->switching = true;
        /* seen by the next snapshot, before the scheduler thread takes it over */
        s_copy(s->stats.switching_to, sizeof s->stats.switching_to, c->profile_name);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        s_conf_free(c);
        free(c);
        return rc;
    }
    s_wake(s);
    return 0;
}

const char *sched_profiles_dir(const sched_t *s) {
    return s->c.o.profiles_dir; /* fixed: sched_switch keeps the first one (see main.c) */
}
