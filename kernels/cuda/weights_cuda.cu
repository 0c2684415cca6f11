/* weights_cuda: copies a bound model to the GPU (see weights_cuda.h).
 *
 * Three phases: collect the byte span of every view (embed, lm_head, norms, each layer's matrices,
 * biases, sinks and the whole expert sets), map each to (file, offset) through the files' mapping
 * bases, sort and merge the overlapping ones; allocate one device buffer and lay the spans out in
 * file order, each at a 256-byte aligned device offset; then stream the files through
 * S_NBUF pinned buffers of S_BUF bytes: pread buffer i, queue its copy on the copy stream, record
 * event i, and wait for event i only before refilling buffer i. Finally every view pointer of a
 * copy of the host weights_t is translated to the device. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_internal.cuh"
#include "weights_cuda.h"

extern "C" {
#include "log.h"
}

#define S_NBUF 4                  /* pinned staging buffers */
#define S_BUF  ((size_t)64 << 20) /* bytes each */

/* One byte span of a file the views reach; after merging, where it lives on the device. */
typedef struct {
    int file;
    uint64_t off, len; /* in the file */
    size_t dev_off;    /* in the device buffer */
} s_span_t;

typedef struct {
    s_span_t *v;
    size_t n, cap;
    int n_files;
    const uint8_t **base; /* [n_files] mapping base of each file */
    uint64_t *size;       /* [n_files] file sizes */
    bool oom;
} s_spans_t;

/* The device weights: the public weights_t first (weights_t * <-> s_dev_t *). */
typedef struct {
    weights_t w;
    void *dev;             /* the one device buffer */
    const s_span_t *spans; /* merged, sorted (owned) */
    size_t n_spans;
} s_dev_t;

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Adds the span [p, p + len) (host pointer into a mapping; NULL or 0 bytes: nothing). */
static void s_add(s_spans_t *s, const void *p, uint64_t len) {
    if (!p || !len || s->oom) return;
    const uint8_t *q = (const uint8_t *)p;
    for (int f = 0; f < s->n_files; f++) {
        if (q < s->base[f] || q >= s->base[f] + s->size[f]) continue;
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 256;
            s_span_t *v = (s_span_t *)realloc(s->v, cap * sizeof *v);
            if (!v) {
                s->oom = true;
                return;
            }
            s->v = v, s->cap = cap;
        }
        s->v[s->n++] = (s_span_t){f, (uint64_t)(q - s->base[f]), len, 0};
        return;
    }
    /* a view outside every mapping is a programmer error (weights not from weights_load) */
    cuda_die(__FILE__, __LINE__, "weights_cuda_upload", "a view points outside the mapped files");
}

static uint64_t s_bf16_span(const ops_bf16_mat_t &m) {
    return m.rows > 0 ? ((uint64_t)(m.rows - 1) * m.stride + (uint64_t)m.cols) * 2 : 0;
}

static void s_add_experts(s_spans_t *s, const ops_experts_t &x, int E) {
    const ops_mxfp4_mat_t &m = x.mat;
    if (m.rows <= 0 || m.cols <= 0) return;
    s_add(s, m.blocks,
          (uint64_t)(E - 1) * x.blocks_estride + (uint64_t)(m.rows - 1) * m.blocks_stride +
              (uint64_t)m.cols / 2);
    s_add(s, m.scales,
          (uint64_t)(E - 1) * x.scales_estride + (uint64_t)(m.rows - 1) * m.scales_stride +
              (uint64_t)m.cols / 32);
    if (x.bias) s_add(s, x.bias, ((uint64_t)(E - 1) * x.bias_estride + (uint64_t)m.rows) * 2);
}

/* Every span the views of w reach. */
static void s_collect(s_spans_t *s, const weights_t *w) {
    const gptoss_config_t *c = &w->cfg;
    const int H = c->hidden_size, E = c->num_local_experts;
    s_add(s, w->embed.w, s_bf16_span(w->embed));
    s_add(s, w->norm, (uint64_t)H * 2);
    s_add(s, w->lm_head.w, s_bf16_span(w->lm_head));
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const weights_layer_t *L = &w->layers[l];
        s_add(s, L->ln_attn, (uint64_t)H * 2);
        s_add(s, L->ln_mlp, (uint64_t)H * 2);
        s_add(s, L->q.w, s_bf16_span(L->q));
        s_add(s, L->k.w, s_bf16_span(L->k));
        s_add(s, L->v.w, s_bf16_span(L->v));
        s_add(s, L->o.w, s_bf16_span(L->o));
        s_add(s, L->q_b, (uint64_t)L->q.rows * 2);
        s_add(s, L->k_b, (uint64_t)L->k.rows * 2);
        s_add(s, L->v_b, (uint64_t)L->v.rows * 2);
        s_add(s, L->o_b, (uint64_t)L->o.rows * 2);
        s_add(s, L->sinks, (uint64_t)w->n_heads * 2);
        s_add(s, L->router.w, s_bf16_span(L->router));
        s_add(s, L->router_b, (uint64_t)L->router.rows * 2);
        s_add_experts(s, L->gate_up, E);
        s_add_experts(s, L->down, E);
    }
}

static int s_span_cmp(const void *a, const void *b) {
    const s_span_t *x = (const s_span_t *)a, *y = (const s_span_t *)b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Sorts and merges overlapping spans (views into one tensor); returns the merged count. Spans
 * that only touch or are close stay apart, so that each starts 256-byte aligned on the device:
 * safetensors aligns its data section to 8 bytes only, and a file whose tensors all sit at 8
 * mod 16 (half of the files, depending on the header's length) would otherwise put every tensor
 * on the device at 8 mod 16, where the GEMV and MMA kernels fall back to their scalar paths
 * (measured on an H200: the k/v GEMVs at ~30 GB/s). */
static size_t s_merge(s_span_t *v, size_t n) {
    if (!n) return 0;
    qsort(v, n, sizeof *v, s_span_cmp);
    size_t m = 0;
    for (size_t i = 1; i < n; i++) {
        s_span_t *last = &v[m];
        const uint64_t end = last->off + last->len;
        if (v[i].file == last->file && v[i].off < end) {
            const uint64_t e2 = v[i].off + v[i].len;
            if (e2 > end) last->len = e2 - last->off;
        } else {
            v[++m] = v[i];
        }
    }
    return m + 1;
}

/* Device address of host pointer p (into a mapping), or NULL for NULL. */
template <typename P> static P *s_tr(const s_dev_t *d, const s_spans_t *s, P *p) {
    if (!p) return NULL;
    const uint8_t *q = (const uint8_t *)p;
    for (int f = 0; f < s->n_files; f++) {
        if (q < s->base[f] || q >= s->base[f] + s->size[f]) continue;
        const uint64_t off = (uint64_t)(q - s->base[f]);
        /* binary search: the last span of file f starting at or before off */
        size_t lo = 0, hi = d->n_spans;
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            const s_span_t &m = d->spans[mid];
            if (m.file < f || (m.file == f && m.off <= off))
                lo = mid;
            else
                hi = mid;
        }
        const s_span_t &sp = d->spans[lo];
        if (sp.file != f || off < sp.off || off >= sp.off + sp.len) break;
        return (P *)((uint8_t *)d->dev + sp.dev_off + (off - sp.off));
    }
    cuda_die(__FILE__, __LINE__, "weights_cuda_upload", "a view was not uploaded");
}

static void s_tr_experts(const s_dev_t *d, const s_spans_t *s, ops_experts_t *x) {
    x->mat.blocks = s_tr(d, s, x->mat.blocks);
    x->mat.scales = s_tr(d, s, x->mat.scales);
    x->bias = s_tr(d, s, x->bias);
}

/* Reads every span into the device buffer through pinned staging buffers (see the file comment). */
static int s_stream(const s_dev_t *d, const weights_t *host, int device, gerr_t *err) {
    void *buf[S_NBUF] = {NULL};
    cudaEvent_t ev[S_NBUF];
    bool used[S_NBUF] = {false};
    cudaStream_t cs;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    int rc = 0;
    for (int i = 0; i < S_NBUF; i++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming));
        if (cudaHostAlloc(&buf[i], S_BUF, cudaHostAllocDefault) != cudaSuccess) {
            (void)cudaGetLastError();
            buf[i] = NULL;
            gerr_set(err, "weights_cuda: cannot allocate %zu MiB of pinned host memory",
                     (S_BUF >> 20) * S_NBUF);
            rc = GERR_NOMEM;
        }
    }
    int fd = -1, fd_file = -1, k = 0;
    for (size_t i = 0; i < d->n_spans && !rc; i++) {
        const s_span_t &sp = d->spans[i];
        if (sp.file != fd_file) {
            if (fd >= 0) close(fd);
            const char *path = st_file_path(host->st, sp.file);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                gerr_set(err, "weights_cuda: cannot open %s: %s", path, strerror(errno));
                rc = GERR_IO;
                break;
            }
            (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
            fd_file = sp.file;
        }
        for (uint64_t done = 0; done < sp.len && !rc;) {
            if (used[k]) CUDA_CHECK(cudaEventSynchronize(ev[k])); /* its last copy is done */
            size_t want = sp.len - done < S_BUF ? (size_t)(sp.len - done) : S_BUF, got = 0;
            while (got < want) {
                ssize_t r =
                    pread(fd, (uint8_t *)buf[k] + got, want - got, (off_t)(sp.off + done + got));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    gerr_set(err, "weights_cuda: reading %s at %llu: %s",
                             st_file_path(host->st, sp.file),
                             (unsigned long long)(sp.off + done + got),
                             r < 0 ? strerror(errno) : "unexpected end of file");
                    rc = GERR_IO;
                    break;
                }
                got += (size_t)r;
            }
            if (rc) break;
            CUDA_CHECK(cudaMemcpyAsync((uint8_t *)d->dev + sp.dev_off + done, buf[k], want,
                                       cudaMemcpyHostToDevice, cs));
            CUDA_CHECK(cudaEventRecord(ev[k], cs));
            used[k] = true;
            done += want;
            k = (k + 1) % S_NBUF;
        }
    }
    if (fd >= 0) close(fd);
    CUDA_CHECK(cudaStreamSynchronize(cs));
    for (int i = 0; i < S_NBUF; i++) {
        if (buf[i]) CUDA_CHECK(cudaFreeHost(buf[i]));
        CUDA_CHECK(cudaEventDestroy(ev[i]));
    }
    CUDA_CHECK(cudaStreamDestroy(cs));
    return rc;
}

int weights_cuda_upload(const ops_t *o, const weights_t *host, weights_t **out,
                        weights_cuda_stats_t *stats, gerr_t *err) {
    *out = NULL;
    const double t0 = s_now();
    const int L = host->cfg.num_hidden_layers;
    s_spans_t s = {};
    s.n_files = st_file_count(host->st);
    s.base = (const uint8_t **)calloc((size_t)s.n_files, sizeof *s.base);
    s.size = (uint64_t *)calloc((size_t)s.n_files, sizeof *s.size);
    s_dev_t *d = (s_dev_t *)calloc(1, sizeof *d);
    weights_layer_t *layers = (weights_layer_t *)malloc((size_t)(L > 0 ? L : 1) * sizeof *layers);
    int rc = 0;
    if (!s.base || !s.size || !d || !layers) goto nomem;
    for (size_t i = 0; i < st_count(host->st); i++) {
        const st_tensor_t *t = st_at(host->st, i);
        s.base[t->file_index] = (const uint8_t *)t->data - t->file_offset;
    }
    for (int f = 0; f < s.n_files; f++)
        s.size[f] = st_file_size(host->st, f);
    s_collect(&s, host);
    if (s.oom) goto nomem;
    {
        uint64_t view_bytes = 0, bytes = 0;
        for (size_t i = 0; i < s.n; i++)
            view_bytes += s.v[i].len;
        d->n_spans = s_merge(s.v, s.n);
        size_t cur = 0;
        for (size_t i = 0; i < d->n_spans; i++) {
            s_span_t *sp = &s.v[i];
            cur = (cur + 255) & ~(size_t)255;
            sp->dev_off = cur;
            cur = sp->dev_off + (size_t)sp->len;
            bytes += sp->len;
        }
        d->spans = s.v;
        s.v = NULL;
        gerr_t aerr = {{0}};
        d->dev = ops_cuda_alloc(o, cur, &aerr);
        if (!d->dev) {
            gerr_set(err, "weights_cuda: the model's %.2f GiB do not fit: %s",
                     (double)cur / (1 << 30), aerr.msg);
            rc = GERR_NOMEM;
            goto fail;
        }
        if ((rc = s_stream(d, host, cuda_state(o)->device, err))) goto fail;
        /* the device weights_t: the host's, views translated */
        d->w = *host;
        d->w.st = NULL;
        memcpy(layers, host->layers, (size_t)L * sizeof *layers);
        d->w.layers = layers;
        layers = NULL;
        weights_t *w = &d->w;
        w->embed.w = s_tr(d, &s, w->embed.w);
        w->norm = s_tr(d, &s, w->norm);
        w->lm_head.w = s_tr(d, &s, w->lm_head.w);
        for (int l = 0; l < L; l++) {
            weights_layer_t *Y = &w->layers[l];
            Y->ln_attn = s_tr(d, &s, Y->ln_attn);
            Y->ln_mlp = s_tr(d, &s, Y->ln_mlp);
            Y->q.w = s_tr(d, &s, Y->q.w);
            Y->k.w = s_tr(d, &s, Y->k.w);
            Y->v.w = s_tr(d, &s, Y->v.w);
            Y->o.w = s_tr(d, &s, Y->o.w);
            Y->q_b = s_tr(d, &s, Y->q_b);
            Y->k_b = s_tr(d, &s, Y->k_b);
            Y->v_b = s_tr(d, &s, Y->v_b);
            Y->o_b = s_tr(d, &s, Y->o_b);
            Y->sinks = s_tr(d, &s, Y->sinks);
            Y->router.w = s_tr(d, &s, Y->router.w);
            Y->router_b = s_tr(d, &s, Y->router_b);
            s_tr_experts(d, &s, &Y->gate_up);
            s_tr_experts(d, &s, &Y->down);
        }
        const double secs = s_now() - t0;
        weights_cuda_stats_t st = {bytes, view_bytes, (int)d->n_spans, secs,
                                   secs > 0 ? (double)bytes / secs / 1e9 : 0.0};
        if (stats) *stats = st;
        log_msg(LOG_LEVEL_INFO, "cuda",
                "weights: %.3f GB in %d spans to %s in %.2f s = %.2f GB/s (pread into %d pinned "
                "%zu MiB buffers, copies overlapped)",
                (double)bytes / 1e9, st.n_spans, o->name, secs, st.gbps, S_NBUF, S_BUF >> 20);
        free(s.base);
        free(s.size);
        *out = w;
        return 0;
    }
nomem:
    gerr_set(err, "weights_cuda: out of host memory");
    rc = GERR_NOMEM;
fail:
    free(s.v);
    free(s.base);
    free(s.size);
    free(layers);
    if (d) {
        ops_cuda_free_mem(o, d->dev);
        free((void *)d->spans);
        free(d);
    }
    return rc;
}

void weights_cuda_free(const ops_t *o, weights_t **pw) {
    if (!pw || !*pw) return;
    s_dev_t *d = (s_dev_t *)*pw;
    ops_cuda_free_mem(o, d->dev);
    free((void *)d->spans);
    free(d->w.layers);
    free(d);
    *pw = NULL;
}
