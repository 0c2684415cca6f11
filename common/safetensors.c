/* safetensors: strict parsing of safetensors headers and mmapped model folders.
 *
 * File format: 8-byte little-endian header length N, N bytes of UTF-8 JSON (an
 * object: tensor name -> {dtype, shape, data_offsets}, plus optional
 * "__metadata__" of string values), then the data region. Offsets are relative
 * to the start of the data region. Everything that comes from the file is
 * checked before use, so a lying header is refused instead of read past.
 *
 * Not here: writing (tools/gptoss-mkmodel.c has its own streaming writer) and
 * any interpretation of tensor meaning (common/config.c). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is refused rather than allocated (the 120b shards' headers are ~100
 * KB). */
#define ST_HEADER_MAX (256u * 1024u * 1024u)
/* Offsets are JSON numbers; cJSON holds them as doubles, exact up to 2^53. */
#define ST_JSON_INT_MAX 9007199254740992.0

struct st_header {
    st_tensor_t *tensors; /* [n], names owned here */
    size_t n;
    uint64_t data_start; /* 8 + header length */
};

typedef struct {
    char *path;
    const uint8_t *map; /* whole file, PROT_READ */
    uint64_t size;
    st_header_t *header;
} st_file_t;

struct st_model {
    st_file_t *files; /* [nfiles] */
    int nfiles;
    const st_tensor_t **sorted; /* [n] by name, pointing into the files' headers */
    size_t n;
    uint64_t total_bytes;
};

static const struct {
    const char *name;
    size_t size;
} s_dtypes[ST_DTYPE_COUNT] = {
    [ST_DTYPE_BOOL] = {"BOOL", 1},       [ST_DTYPE_U8] = {"U8", 1},
    [ST_DTYPE_I8] = {"I8", 1},           [ST_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [ST_DTYPE_F8_E5M2] = {"F8_E5M2", 1}, [ST_DTYPE_U16] = {"U16", 2},
    [ST_DTYPE_I16] = {"I16", 2},         [ST_DTYPE_F16] = {"F16", 2},
    [ST_DTYPE_BF16] = {"BF16", 2},       [ST_DTYPE_U32] = {"U32", 4},
    [ST_DTYPE_I32] = {"I32", 4},         [ST_DTYPE_F32] = {"F32", 4},
    [ST_DTYPE_U64] = {"U64", 8},         [ST_DTYPE_I64] = {"I64", 8},
    [ST_DTYPE_F64] = {"F64", 8},
};

size_t st_dtype_size(st_dtype_t dtype) {
    if ((unsigned)dtype >= ST_DTYPE_COUNT) return 0;
    return s_dtypes[dtype].size;
}

const char *st_dtype_name(st_dtype_t dtype) {
    if ((unsigned)dtype >= ST_DTYPE_COUNT) return "?";
    return s_dtypes[dtype].name;
}

static int s_dtype_parse(const char *s, st_dtype_t *out) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, s_dtypes[i].name) == 0) {
            *out = (st_dtype_t)i;
            return 0;
        }
    }
    return -1;
}

/* Returns true when buf[0..len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static bool s_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

/* Reads a non-negative integral JSON number into *out. */
static bool s_json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d >= ST_JSON_INT_MAX || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int s_cmp_offset(const void *a, const void *b) {
    const st_tensor_t *x = *(const st_tensor_t *const *)a, *y = *(const st_tensor_t *const *)b;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset ? 1 : 0;
}

static int s_cmp_name(const void *a, const void *b) {
    const st_tensor_t *x = *(const st_tensor_t *const *)a, *y = *(const st_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

void st_header_free(st_header_t **h) {
    if (!h || !*h) return;
    for (size_t i = 0; i < (*h)->n; i++)
        free((char *)(*h)->tensors[i].name);
    free((*h)->tensors);
    free(*h);
    *h = NULL;
}

size_t st_header_count(const st_header_t *h) {
    return h->n;
}

const st_tensor_t *st_header_at(const st_header_t *h, size_t i) {
    return i < h->n ? &h->tensors[i] : NULL;
}

/* Parses one tensor entry `item` (key = its name) into t; offsets relative to the data region. */
static int s_parse_tensor(const cJSON *item, const char *label, uint64_t data_size, st_tensor_t *t,
                          gerr_t *err) {
    const char *name = item->string;
    if (!cJSON_IsObject(item)) {
        gerr_set(err, "%s: tensor '%s': entry is not a JSON object", label, name);
        return GERR_FORMAT;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs)) {
        gerr_set(err,
                 "%s: tensor '%s': needs string 'dtype', array 'shape' and array 'data_offsets'",
                 label, name);
        return GERR_FORMAT;
    }
    if (s_dtype_parse(dt->valuestring, &t->dtype) != 0) {
        gerr_set(err, "%s: tensor '%s': unknown dtype '%s'", label, name, dt->valuestring);
        return GERR_FORMAT;
    }
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS) {
        gerr_set(err, "%s: tensor '%s': %d dimensions (at most %d supported)", label, name, nd,
                 ST_MAX_DIMS);
        return GERR_FORMAT;
    }
    t->ndim = nd;
    uint64_t count = 1;
    bool overflow = false;
    int d = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, shape) {
        uint64_t dim;
        if (!s_json_u64(v, &dim)) {
            gerr_set(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", label, name,
                     d);
            return GERR_FORMAT;
        }
        t->shape[d++] = (int64_t)dim;
        if (dim != 0 && count > UINT64_MAX / dim) overflow = true;
        count *= dim;
    }
    size_t es = st_dtype_size(t->dtype);
    if (overflow || count > UINT64_MAX / es) {
        gerr_set(err, "%s: tensor '%s': the product of its shape overflows 64 bits", label, name);
        return GERR_FORMAT;
    }
    t->nbytes = count * es;
    uint64_t b, e;
    if (cJSON_GetArraySize(offs) != 2 || !s_json_u64(cJSON_GetArrayItem(offs, 0), &b) ||
        !s_json_u64(cJSON_GetArrayItem(offs, 1), &e)) {
        gerr_set(err, "%s: tensor '%s': data_offsets must be two non-negative integers", label,
                 name);
        return GERR_FORMAT;
    }
    if (b > e) {
        gerr_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", label,
                 name, (unsigned long long)b, (unsigned long long)e);
        return GERR_FORMAT;
    }
    if (e > data_size) {
        gerr_set(
            err,
            "%s: tensor '%s': data_offsets [%llu, %llu] run past the data region (%llu bytes); "
            "the file is truncated or the header is wrong",
            label, name, (unsigned long long)b, (unsigned long long)e,
            (unsigned long long)data_size);
        return GERR_FORMAT;
    }
    if (e - b != t->nbytes) {
        gerr_set(err, "%s: tensor '%s': data_offsets span %llu bytes but %s x shape needs %llu",
                 label, name, (unsigned long long)(e - b), st_dtype_name(t->dtype),
                 (unsigned long long)t->nbytes);
        return GERR_FORMAT;
    }
    t->file_offset = b; /* made absolute by the caller */
    return 0;
}

int st_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, const char *file_label,
                    st_header_t **out, gerr_t *err) {
    const char *label = file_label ? file_label : "safetensors";
    *out = NULL;
    if (file_size < 8 || len < 8) {
        gerr_set(err, "%s: file is %llu bytes, too short for the 8-byte header length", label,
                 (unsigned long long)file_size);
        return GERR_FORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > file_size - 8) {
        gerr_set(err, "%s: header length %llu runs past the end of the file (%llu bytes)", label,
                 (unsigned long long)hlen, (unsigned long long)file_size);
        return GERR_FORMAT;
    }
    if (hlen > ST_HEADER_MAX) {
        gerr_set(err, "%s: header length %llu is larger than the %u-byte limit", label,
                 (unsigned long long)hlen, ST_HEADER_MAX);
        return GERR_FORMAT;
    }
    if (hlen > len - 8) {
        gerr_set(err, "%s: header length %llu is larger than the bytes available (%zu)", label,
                 (unsigned long long)hlen, len - 8);
        return GERR_FORMAT;
    }
    const uint8_t *h = buf + 8;
    if (hlen < 2 || h[0] != '{') {
        gerr_set(err, "%s: header does not start with a JSON object ('{')", label);
        return GERR_FORMAT;
    }
    if (!s_utf8_valid(h, hlen)) {
        gerr_set(err, "%s: header is not valid UTF-8", label);
        return GERR_FORMAT;
    }
    if (memchr(h, 0, hlen)) {
        gerr_set(err, "%s: header contains a NUL byte", label);
        return GERR_FORMAT;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)h, hlen, &end, false);
    if (!root) {
        size_t at = cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - (const char *)h) : 0;
        gerr_set(err, "%s: header is not well-formed JSON (error near byte %zu)", label,
                 at < hlen ? at : hlen);
        return GERR_FORMAT;
    }
    int rc = GERR_FORMAT;
    st_header_t *hd = NULL;
    const st_tensor_t **byoff = NULL;
    for (const char *p = end; p && p < (const char *)h + hlen; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            gerr_set(err, "%s: header has trailing bytes after the JSON object", label);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        gerr_set(err, "%s: header is JSON but not an object", label);
        goto done;
    }
    hd = calloc(1, sizeof *hd);
    int count = cJSON_GetArraySize(root);
    if (!hd || !(hd->tensors = calloc((size_t)count + 1, sizeof *hd->tensors))) {
        gerr_set(err, "%s: out of memory for %d header entries", label, count);
        rc = GERR_NOMEM;
        goto done;
    }
    hd->data_start = 8 + hlen;
    uint64_t data_size = file_size - hd->data_start;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (!item->string || !item->string[0]) {
            gerr_set(err, "%s: header has an entry with an empty name", label);
            goto done;
        }
        if (strcmp(item->string, "__metadata__") == 0) {
            const cJSON *mv;
            if (!cJSON_IsObject(item)) {
                gerr_set(err, "%s: __metadata__ is not an object", label);
                goto done;
            }
            cJSON_ArrayForEach(mv, item) {
                if (!cJSON_IsString(mv)) {
                    gerr_set(err, "%s: __metadata__ value '%s' is not a string", label,
                             mv->string ? mv->string : "?");
                    goto done;
                }
            }
            continue;
        }
        st_tensor_t *t = &hd->tensors[hd->n];
        rc = s_parse_tensor(item, label, data_size, t, err);
        if (rc != 0) goto done;
        rc = GERR_FORMAT;
        t->file_offset += hd->data_start;
        t->name = strdup(item->string);
        if (!t->name) {
            rc = GERR_NOMEM;
            gerr_set(err, "%s: out of memory", label);
            goto done;
        }
        hd->n++;
    }
    /* Duplicate names and overlapping data ranges. */
    byoff = malloc((hd->n + 1) * sizeof *byoff);
    if (!byoff) {
        rc = GERR_NOMEM;
        gerr_set(err, "%s: out of memory", label);
        goto done;
    }
    for (size_t i = 0; i < hd->n; i++)
        byoff[i] = &hd->tensors[i];
    qsort(byoff, hd->n, sizeof *byoff, s_cmp_name);
    for (size_t i = 1; i < hd->n; i++) {
        if (strcmp(byoff[i - 1]->name, byoff[i]->name) == 0) {
            gerr_set(err, "%s: tensor '%s' appears twice in the header", label, byoff[i]->name);
            goto done;
        }
    }
    qsort(byoff, hd->n, sizeof *byoff, s_cmp_offset);
    for (size_t i = 1; i < hd->n; i++) {
        const st_tensor_t *a = byoff[i - 1], *b = byoff[i];
        if (b->nbytes && a->nbytes && b->file_offset < a->file_offset + a->nbytes) {
            gerr_set(err, "%s: tensor '%s' overlaps tensor '%s' in the data region", label, b->name,
                     a->name);
            goto done;
        }
    }
    rc = 0;
    *out = hd;
    hd = NULL;
done:
    free(byoff);
    st_header_free(&hd);
    cJSON_Delete(root);
    return rc;
}

/* ---- files and folders --------------------------------------------------- */

static int s_map_file(const char *path, st_file_t *f, gerr_t *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        gerr_set(err, "%s: cannot open: %s", path, strerror(errno));
        return GERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        gerr_set(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return GERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        gerr_set(err, "%s: not a regular file", path);
        close(fd);
        return GERR_IO;
    }
    f->size = (uint64_t)sb.st_size;
    if (f->size < 8) {
        gerr_set(err, "%s: file is %llu bytes, too short to be safetensors (truncated?)", path,
                 (unsigned long long)f->size);
        close(fd);
        return GERR_FORMAT;
    }
    void *p = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    if (close(fd) != 0 && p != MAP_FAILED) {
        /* the mapping stays valid after close; nothing to undo */
    }
    if (p == MAP_FAILED) {
        gerr_set(err, "%s: cannot mmap %llu bytes: %s", path, (unsigned long long)f->size,
                 strerror(saved));
        return GERR_IO;
    }
    f->map = p;
    int rc = st_header_parse(f->map, (size_t)f->size, f->size, path, &f->header, err);
    if (rc != 0) {
        munmap((void *)f->map, (size_t)f->size);
        f->map = NULL;
    }
    return rc;
}

void st_close(st_model_t **mp) {
    if (!mp || !*mp) return;
    st_model_t *m = *mp;
    for (int i = 0; i < m->nfiles; i++) {
        if (m->files[i].map) munmap((void *)m->files[i].map, (size_t)m->files[i].size);
        st_header_free(&m->files[i].header);
        free(m->files[i].path);
    }
    free(m->files);
    free(m->sorted);
    free(m);
    *mp = NULL;
}

/* Builds the sorted name table over every file; refuses a name present in two files. */
static int s_index_tensors(st_model_t *m, gerr_t *err) {
    size_t n = 0;
    for (int i = 0; i < m->nfiles; i++)
        n += m->files[i].header->n;
    m->sorted = malloc((n + 1) * sizeof *m->sorted);
    if (!m->sorted) {
        gerr_set(err, "out of memory indexing %zu tensors", n);
        return GERR_NOMEM;
    }
    m->n = 0;
    m->total_bytes = 0;
    for (int i = 0; i < m->nfiles; i++) {
        st_header_t *h = m->files[i].header;
        for (size_t k = 0; k < h->n; k++) {
            st_tensor_t *t = &h->tensors[k];
            t->file_index = i;
            t->data = m->files[i].map + t->file_offset;
            m->sorted[m->n++] = t;
            m->total_bytes += t->nbytes;
        }
    }
    qsort(m->sorted, m->n, sizeof *m->sorted, s_cmp_name);
    for (size_t k = 1; k < m->n; k++) {
        if (strcmp(m->sorted[k - 1]->name, m->sorted[k]->name) == 0) {
            gerr_set(err, "tensor '%s' appears in both %s and %s", m->sorted[k]->name,
                     m->files[m->sorted[k - 1]->file_index].path,
                     m->files[m->sorted[k]->file_index].path);
            return GERR_FORMAT;
        }
    }
    return 0;
}

int st_open_file(const char *path, st_model_t **out, gerr_t *err) {
    *out = NULL;
    st_model_t *m = calloc(1, sizeof *m);
    if (!m || !(m->files = calloc(1, sizeof *m->files)) || !(m->files[0].path = strdup(path))) {
        free(m ? m->files : NULL);
        free(m);
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    m->nfiles = 1;
    int rc = s_map_file(path, &m->files[0], err);
    if (rc == 0) rc = s_index_tensors(m, err);
    if (rc != 0) {
        st_close(&m);
        return rc;
    }
    *out = m;
    return 0;
}

static char *s_read_text(const char *path, size_t max, size_t *len, gerr_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        gerr_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        gerr_set(err, "%s: cannot read", path);
        free(buf);
        return NULL;
    }
    if (n > max) {
        gerr_set(err, "%s: larger than %zu bytes", path, max);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* A shard file name from an index must be a plain file name inside the folder. */
static bool s_safe_filename(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 &&
           strlen(s) < 256;
}

static int s_open_index(const char *dir, const char *index_path, st_model_t **out, gerr_t *err) {
    size_t len;
    char *text = s_read_text(index_path, 64u << 20, &len, err);
    if (!text) return GERR_IO;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = GERR_FORMAT;
    st_model_t *m = NULL;
    char **names = NULL;
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root) {
        gerr_set(err, "%s: not well-formed JSON", index_path);
        goto done;
    }
    if (!cJSON_IsObject(wm)) {
        gerr_set(err, "%s: no 'weight_map' object", index_path);
        goto done;
    }
    int nw = cJSON_GetArraySize(wm);
    if (nw == 0) {
        gerr_set(err, "%s: 'weight_map' is empty", index_path);
        goto done;
    }
    /* distinct file names, in first-seen order */
    names = calloc((size_t)nw, sizeof *names);
    m = calloc(1, sizeof *m);
    if (!names || !m) {
        rc = GERR_NOMEM;
        gerr_set(err, "out of memory");
        goto done;
    }
    int nf = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !s_safe_filename(e->valuestring)) {
            gerr_set(err, "%s: weight_map entry '%s' does not name a file in the folder",
                     index_path, e->string ? e->string : "?");
            goto done;
        }
        int k = 0;
        while (k < nf && strcmp(names[k], e->valuestring) != 0)
            k++;
        if (k == nf) names[nf++] = e->valuestring;
    }
    m->files = calloc((size_t)nf, sizeof *m->files);
    if (!m->files) {
        rc = GERR_NOMEM;
        gerr_set(err, "out of memory");
        goto done;
    }
    for (int k = 0; k < nf; k++) {
        size_t pl = strlen(dir) + strlen(names[k]) + 2;
        m->files[k].path = malloc(pl);
        if (!m->files[k].path) {
            rc = GERR_NOMEM;
            gerr_set(err, "out of memory");
            goto done;
        }
        snprintf(m->files[k].path, pl, "%s/%s", dir, names[k]);
        m->nfiles = k + 1;
        rc = s_map_file(m->files[k].path, &m->files[k], err);
        if (rc != 0) {
            if (rc == GERR_IO)
                gerr_prefix(err, "%s names a shard file that cannot be read", index_path);
            goto done;
        }
    }
    rc = s_index_tensors(m, err);
    if (rc != 0) goto done;
    rc = GERR_FORMAT;
    /* every tensor named by the index is present in the file it names */
    cJSON_ArrayForEach(e, wm) {
        const st_tensor_t *t = st_find(m, e->string);
        if (!t) {
            gerr_set(err, "%s: tensor '%s' is named by the index but absent from %s", index_path,
                     e->string, e->valuestring);
            goto done;
        }
        if (strcmp(strrchr(m->files[t->file_index].path, '/') + 1, e->valuestring) != 0) {
            gerr_set(err, "%s: tensor '%s' is mapped to %s but found in %s", index_path, e->string,
                     e->valuestring, m->files[t->file_index].path);
            goto done;
        }
    }
    if ((size_t)nw != m->n) {
        gerr_set(err, "%s: the index names %d tensors but the files hold %zu", index_path, nw,
                 m->n);
        goto done;
    }
    rc = 0;
    *out = m;
    m = NULL;
done:
    free(names);
    st_close(&m);
    cJSON_Delete(root);
    return rc;
}

int st_open(const char *dir, st_model_t **out, gerr_t *err) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        gerr_set(err, "%s: %s", dir, strerror(errno));
        return GERR_IO;
    }
    if (S_ISREG(sb.st_mode)) return st_open_file(dir, out, err);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) == 0) return s_open_index(dir, path, out, err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) == 0) return st_open_file(path, out, err);
    gerr_set(err,
             "%s: no model.safetensors or model.safetensors.index.json in this folder (is it a "
             "Hugging Face model folder?)",
             dir);
    return GERR_NOTFOUND;
}

size_t st_count(const st_model_t *m) {
    return m->n;
}

const st_tensor_t *st_at(const st_model_t *m, size_t i) {
    return i < m->n ? m->sorted[i] : NULL;
}

const st_tensor_t *st_find(const st_model_t *m, const char *name) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(m->sorted[mid]->name, name);
        if (c == 0) return m->sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int st_file_count(const st_model_t *m) {
    return m->nfiles;
}

const char *st_file_path(const st_model_t *m, int i) {
    return i >= 0 && i < m->nfiles ? m->files[i].path : NULL;
}

uint64_t st_file_size(const st_model_t *m, int i) {
    return i >= 0 && i < m->nfiles ? m->files[i].size : 0;
}

uint64_t st_total_bytes(const st_model_t *m) {
    return m->total_bytes;
}

int st_slice(const st_tensor_t *t, int dim, int64_t begin, int64_t end, st_slice_t *out,
             gerr_t *err) {
    if (dim < 0 || dim >= t->ndim || begin < 0 || end < begin || end > t->shape[dim]) {
        gerr_set(err, "tensor '%s': slice [%lld, %lld) of dimension %d is out of range", t->name,
                 (long long)begin, (long long)end, dim);
        return GERR_INVALID;
    }
    uint64_t inner = st_dtype_size(t->dtype), outer = 1;
    for (int d = dim + 1; d < t->ndim; d++)
        inner *= (uint64_t)t->shape[d];
    for (int d = 0; d < dim; d++)
        outer *= (uint64_t)t->shape[d];
    out->file_index = t->file_index;
    out->offset = t->file_offset + (uint64_t)begin * inner;
    out->len = (uint64_t)(end - begin) * inner;
    out->count = outer;
    out->stride = (uint64_t)t->shape[dim] * inner;
    return 0;
}

static void s_shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, size - o, "[");
    for (int d = 0; d < ndim && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (o < size) snprintf(buf + o, size - o, "]");
}

int st_expect(const st_tensor_t *t, st_dtype_t dtype, int ndim, const int64_t *shape, gerr_t *err) {
    bool ok = t->dtype == dtype && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == shape[d];
    if (ok) return 0;
    char want[160], got[160];
    s_shape_str(want, sizeof want, ndim, shape);
    s_shape_str(got, sizeof got, t->ndim, t->shape);
    gerr_set(err, "tensor '%s': expected %s %s, found %s %s", t->name, st_dtype_name(dtype), want,
             st_dtype_name(t->dtype), got);
    return GERR_INVALID;
}
