/* tokenizer: loading tokenizer.json and encoding/decoding with o200k_harmony.
 *
 * Load: cJSON parses the file once (model.merges, unused here, is blanked before
 * parsing); model.vocab keys (GPT-2 byte-to-unicode strings) are turned back into raw
 * bytes and stored in one slab, indexed by id (= rank) and by an open-addressing hash
 * table (bytes -> rank). added_tokens give the specials. The pre-tokenizer regex is
 * read from the file and compiled with PCRE2 (UTF, UCP, JIT) after rewriting \s and
 * \S into explicit classes of the Unicode White_Space property, as tiktoken's regex
 * engine has it: PCRE2's own \s depends on its version (10.42 matches U+180E, which
 * is not White_Space). The rest of the pattern is used as written.
 *
 * Encode: the text is cut into maximal valid UTF-8 runs (a stray invalid byte
 * becomes its own piece, so any byte string encodes and round-trips); each run is
 * split into regex pieces; each piece is looked up whole, else BPE-merged by lowest
 * rank (leftmost on ties): a plain scan for short pieces, a heap over a linked list
 * for long ones, so a megabyte without spaces costs O(n log n), not O(n^2).
 *
 * This is not a general Hugging Face tokenizer: only a byte-level BPE whose ids equal
 * their merge ranks (tiktoken style) is supported; merges, normalizers and
 * post-processors of the file are not read. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOK_MAX_FILE    (1u << 30) /* refuse tokenizer files over 1 GiB */
#define TOK_MAX_ID      (1 << 22)  /* ids above this are refused as implausible */
#define TOK_MAX_TOKLEN  4096       /* longest token byte string accepted */
#define TOK_PAD_END     201088     /* ids below this (and >= the table) are padding */
#define TOK_SMALL_PIECE 96         /* pieces up to this many bytes use the plain merge scan */

/* A hash-table slot. Tokens of up to 8 bytes keep their bytes in the slot, so a
 * lookup of a short string touches one cache line and never the slab. */
typedef struct {
    uint64_t key; /* the bytes, zero-padded (len <= 8), else the slab offset */
    uint32_t id1; /* id + 1; 0 = empty slot */
    uint32_t len; /* bytes */
} tok_slot_t;

typedef struct {
    char *str; /* NUL-terminated special-token string (owned) */
    size_t len;
    int32_t id;
} tok_special_t;

struct tokenizer {
    uint8_t *slab;     /* bytes of every id, back to back */
    uint32_t *off;     /* [n_ids] offset of id's bytes in slab */
    uint32_t *len;     /* [n_ids] length; 0 = id has no bytes */
    int32_t n_ids;     /* table size: max defined id + 1 */
    int32_t n_ranks;   /* ids 0..n_ranks-1 are ordinary BPE ranks */
    size_t max_toklen; /* longest ordinary token, bytes */
    tok_slot_t *slots; /* hash table of ordinary tokens */
    uint32_t mask;     /* slots count - 1 (power of two) */
    tok_special_t *specials;
    int n_specials;
    bool special_first[256]; /* first bytes of special strings */
    int32_t byte_id[256];    /* id of each single byte */
    pcre2_code *re;
};

/* ---- id vectors ---------------------------------------------------------------------- */

int tok_ids_push(tok_ids_t *v, int32_t id) {
    if (v->len == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, ncap * sizeof *p);
        if (!p) return GERR_NOMEM;
        v->ids = p;
        v->cap = ncap;
    }
    v->ids[v->len++] = id;
    return GERR_OK;
}

void tok_ids_free(tok_ids_t *v) {
    if (!v) return;
    free(v->ids);
    v->ids = NULL;
    v->len = v->cap = 0;
}

/* ---- hashing ------------------------------------------------------------------------- */

static inline uint64_t s_mix(uint64_t h) {
    h ^= h >> 32;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

/* Loads up to 8 bytes, zero-padded. */
static inline uint64_t s_load_short(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    memcpy(&v, p, n);
    return v;
}

static inline uint64_t s_hash(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n > 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    h = (h ^ s_load_short(p, n)) * 0x94d049bb133111ebull;
    return s_mix(h);
}

/* Rank of the ordinary token with bytes p[0..n), or -1. */
static inline int32_t s_lookup(const tokenizer_t *t, const uint8_t *p, size_t n) {
    if (n == 0 || n > t->max_toklen) return -1;
    uint32_t i = (uint32_t)s_hash(p, n) & t->mask;
    if (n <= 8) {
        uint64_t v = s_load_short(p, n);
        for (;; i = (i + 1) & t->mask) {
            const tok_slot_t *s = &t->slots[i];
            if (s->id1 == 0) return -1;
            if (s->len == n && s->key == v) return (int32_t)s->id1 - 1;
        }
    }
    for (;; i = (i + 1) & t->mask) {
        const tok_slot_t *s = &t->slots[i];
        if (s->id1 == 0) return -1;
        if (s->len == n && memcmp(t->slab + s->key, p, n) == 0) return (int32_t)s->id1 - 1;
    }
}

/* Inserts ordinary id; returns false if the same bytes are already present. */
static bool s_insert(tokenizer_t *t, int32_t id) {
    const uint8_t *p = t->slab + t->off[id];
    size_t n = t->len[id];
    if (s_lookup(t, p, n) >= 0) return false;
    uint32_t i = (uint32_t)s_hash(p, n) & t->mask;
    while (t->slots[i].id1 != 0)
        i = (i + 1) & t->mask;
    t->slots[i].key = n <= 8 ? s_load_short(p, n) : t->off[id];
    t->slots[i].id1 = (uint32_t)id + 1;
    t->slots[i].len = (uint32_t)n;
    return true;
}

/* ---- UTF-8 helpers ------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p[0..n): >0 complete, 0 = valid but
 * truncated by the end of the buffer, <0 = -(bytes of the maximal invalid subpart). */
static int s_utf8_seq(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t b = p[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -k;
    }
    return need + 1;
}

/* Length of the longest valid UTF-8 prefix of p[0..n). */
static size_t s_utf8_valid_prefix(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int k = s_utf8_seq(p + i, n - i);
        if (k <= 0) break;
        i += (size_t)k;
    }
    return i;
}

/* ---- loading ------------------------------------------------------------------------- */

/* GPT-2 bytes_to_unicode inverse: code point -> byte, or -1. */
static int s_cp_to_byte(uint32_t cp, const int16_t *extra) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 68) return extra[cp - 0x100];
    return -1;
}

/* Decodes one vocab key into raw bytes at out (capacity: strlen(key)); returns length or -1. */
static long s_decode_key(const char *key, uint8_t *out, const int16_t *extra) {
    const uint8_t *p = (const uint8_t *)key;
    size_t n = strlen(key), i = 0;
    long o = 0;
    while (i < n) {
        int k = s_utf8_seq(p + i, n - i);
        if (k <= 0) return -1;
        uint32_t cp;
        if (k == 1)
            cp = p[i];
        else if (k == 2)
            cp = ((uint32_t)(p[i] & 0x1F) << 6) | (p[i + 1] & 0x3F);
        else
            return -1; /* every mapped code point is below U+0800 */
        int b = s_cp_to_byte(cp, extra);
        if (b < 0) return -1;
        out[o++] = (uint8_t)b;
        i += (size_t)k;
    }
    return o;
}

/* ---- skipping model.merges ------------------------------------------------------------
 * model.merges (446k pairs) is most of tokenizer.json and is not needed by a rank-based
 * encoder; turning it into a cJSON tree takes over half of the load time. So before
 * parsing, a light scan finds the value of "merges" inside "model" and blanks it to []
 * (this scan only tracks strings and brackets; cJSON still checks the rest of the
 * file). If anything looks unexpected the buffer is left as it is. */

static const char *s_scan_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* End of the JSON string starting at p (at '"'), or NULL. */
static const char *s_scan_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* End of the JSON value starting at p, or NULL (brackets balanced, strings skipped). */
static const char *s_scan_value(const char *p, const char *e) {
    if (p >= e) return NULL;
    if (*p == '"') return s_scan_string(p, e);
    if (*p == '[' || *p == '{') {
        size_t depth = 0;
        for (; p < e; p++) {
            if (*p == '"') {
                p = s_scan_string(p, e);
                if (!p) return NULL;
                p--;
            } else if (*p == '[' || *p == '{') {
                depth++;
            } else if (*p == ']' || *p == '}') {
                if (--depth == 0) return p + 1;
            }
        }
        return NULL;
    }
    while (p < e && !strchr(",]} \t\r\n", *p))
        p++;
    return p;
}

/* Finds key (raw, unescaped spelling) in the object at p; returns its value's start. */
static char *s_scan_member(char *p, const char *e, const char *key) {
    size_t kl = strlen(key);
    p = (char *)s_scan_ws(p, e);
    if (p >= e || *p != '{') return NULL;
    p++;
    for (;;) {
        p = (char *)s_scan_ws(p, e);
        if (p >= e || *p != '"') return NULL;
        const char *ke = s_scan_string(p, e);
        if (!ke) return NULL;
        bool match = (size_t)(ke - p) == kl + 2 && memcmp(p + 1, key, kl) == 0;
        p = (char *)s_scan_ws(ke, e);
        if (p >= e || *p != ':') return NULL;
        p = (char *)s_scan_ws(p + 1, e);
        if (match) return p;
        p = (char *)s_scan_value(p, e);
        if (!p) return NULL;
        p = (char *)s_scan_ws(p, e);
        if (p >= e || *p != ',') return NULL;
        p++;
    }
}

static void s_blank_merges(char *buf, size_t n) {
    const char *e = buf + n;
    char *model = s_scan_member(buf, e, "model");
    char *m = model ? s_scan_member(model, e, "merges") : NULL;
    if (!m || *m != '[') return;
    const char *me = s_scan_value(m, e);
    if (!me) return;
    m[1] = ']';
    memset(m + 2, ' ', (size_t)(me - m - 2));
}

static int s_read_file(const char *path, char **buf, size_t *n, gerr_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        gerr_set(err, "cannot open %s: %s", path, strerror(errno));
        return GERR_IO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        gerr_set(err, "%s is not a regular file", path);
        fclose(f);
        return GERR_IO;
    }
    if ((unsigned long long)st.st_size > TOK_MAX_FILE) {
        gerr_set(err, "%s is too large (%lld bytes) to be a tokenizer.json", path,
                 (long long)st.st_size);
        fclose(f);
        return GERR_LIMIT;
    }
    size_t sz = (size_t)st.st_size;
    char *b = malloc(sz + 1);
    if (!b) {
        fclose(f);
        gerr_set(err, "out of memory reading %s", path);
        return GERR_NOMEM;
    }
    size_t got = fread(b, 1, sz, f);
    fclose(f);
    if (got != sz) {
        free(b);
        gerr_set(err, "short read on %s", path);
        return GERR_IO;
    }
    b[sz] = 0;
    *buf = b;
    *n = sz;
    return GERR_OK;
}

/* The Unicode White_Space property as class contents (Rust regex's \s, tiktoken's). */
static const char s_ws_class[] = "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}"
                                 "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

/* Rewrites \s and \S of pattern into explicit White_Space classes. Caller frees *out. */
static int s_rewrite_ws(const char *pat, char **out, gerr_t *err) {
    size_t n = strlen(pat), o = 0;
    /* each \s/\S (2 bytes) grows by at most sizeof s_ws_class + 3 */
    size_t cap = n + (n / 2 + 1) * (sizeof s_ws_class + 4) + 1;
    char *b = malloc(cap);
    if (!b) return GERR_NOMEM;
    bool in_class = false;
    size_t class_start = 0; /* index just after '[' or '[^' */
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            if (d == 's' || d == 'S') {
                if (in_class && d == 'S') {
                    free(b);
                    gerr_set(err, "pre-tokenizer regex: \\S inside a class is not supported");
                    return GERR_INVALID;
                }
                const char *pre = in_class ? "" : (d == 'S' ? "[^" : "[");
                const char *post = in_class ? "" : "]";
                o += (size_t)sprintf(b + o, "%s%s%s", pre, s_ws_class, post);
            } else {
                b[o++] = c;
                b[o++] = d;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            b[o++] = c;
            if (i + 1 < n && pat[i + 1] == '^') b[o++] = pat[++i];
            class_start = i + 1;
            continue;
        }
        if (in_class && c == ']' && i != class_start) in_class = false;
        b[o++] = c;
    }
    b[o] = 0;
    *out = b;
    return GERR_OK;
}

static int s_compile_regex(tokenizer_t *t, const char *pat, gerr_t *err) {
    char *rw = NULL;
    int rc = s_rewrite_ws(pat, &rw, err);
    if (rc < 0) return rc == GERR_NOMEM ? (gerr_set(err, "out of memory"), rc) : rc;
    int ecode = 0;
    PCRE2_SIZE eoff = 0;
    t->re = pcre2_compile((PCRE2_SPTR)rw, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ecode,
                          &eoff, NULL);
    free(rw);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        gerr_set(err, "pre-tokenizer regex does not compile at offset %zu: %s", (size_t)eoff,
                 (const char *)msg);
        return GERR_FORMAT;
    }
    /* JIT is an optimisation: without it (unsupported CPU) the interpreter is used. */
    (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
    return GERR_OK;
}

/* Finds pre_tokenizer...pattern.Regex (a Split, possibly inside a Sequence). */
static const char *s_find_regex(const cJSON *pt) {
    if (!cJSON_IsObject(pt)) return NULL;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        return cJSON_IsString(re) ? re->valuestring : NULL;
    }
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    const cJSON *it;
    cJSON_ArrayForEach(it, seq) {
        const char *r = s_find_regex(it);
        if (r) return r;
    }
    return NULL;
}

static int s_build(tokenizer_t *t, const cJSON *root, gerr_t *err) {
    if (!cJSON_IsObject(root)) {
        gerr_set(err, "top level is not a JSON object");
        return GERR_FORMAT;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        gerr_set(err, "missing object \"model\"");
        return GERR_FORMAT;
    }
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (cJSON_IsString(mtype) && strcmp(mtype->valuestring, "BPE") != 0) {
        gerr_set(err, "model.type is \"%s\"; only byte-level \"BPE\" is supported",
                 mtype->valuestring);
        return GERR_INVALID;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) {
        gerr_set(err, "missing object \"model.vocab\"");
        return GERR_FORMAT;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsArray(added)) {
        gerr_set(err, "\"added_tokens\" is not an array");
        return GERR_FORMAT;
    }
    const char *pat = s_find_regex(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    if (!pat) {
        gerr_set(err, "no pre_tokenizer Split regex (pre_tokenizer.pretokenizers[].pattern.Regex)");
        return GERR_FORMAT;
    }

    /* GPT-2 byte table: the 68 bytes that are not printable map to U+0100.. in order. */
    int16_t extra[68];
    int ne = 0;
    for (int b = 0; b < 256; b++)
        if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)))
            extra[ne++] = (int16_t)b;

    /* Pass 1: sizes and id range. */
    int n_vocab = cJSON_GetArraySize(vocab);
    size_t slab_sz = 0;
    int32_t max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int32_t)it->valuedouble ||
            it->valuedouble < 0 || it->valuedouble >= TOK_MAX_ID) {
            gerr_set(err, "model.vocab[\"%.40s\"] is not an id in 0..%d",
                     it->string ? it->string : "", TOK_MAX_ID - 1);
            return GERR_FORMAT;
        }
        if (it->valueint > max_id) max_id = it->valueint;
        slab_sz += strlen(it->string);
    }
    if (n_vocab < 256 || max_id != n_vocab - 1) {
        gerr_set(err, "model.vocab has %d entries with ids up to %d; expected ids 0..%d, each once",
                 n_vocab, (int)max_id, n_vocab - 1);
        return GERR_INVALID;
    }
    t->n_ranks = n_vocab;
    int n_added = added ? cJSON_GetArraySize(added) : 0;
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || id->valuedouble < n_vocab ||
            id->valuedouble >= TOK_MAX_ID || id->valuedouble != (double)id->valueint ||
            content->valuestring[0] == 0) {
            gerr_set(err, "added_tokens entry is not {\"id\": N >= %d, \"content\": \"...\"}",
                     n_vocab);
            return GERR_FORMAT;
        }
        if (id->valueint > max_id) max_id = id->valueint;
        slab_sz += strlen(content->valuestring);
    }
    if (slab_sz >= UINT32_MAX) {
        gerr_set(err, "vocabulary too large");
        return GERR_LIMIT;
    }
    t->n_ids = max_id + 1;
    t->slab = malloc(slab_sz + 1);
    t->off = calloc((size_t)t->n_ids, sizeof *t->off);
    t->len = calloc((size_t)t->n_ids, sizeof *t->len);
    t->specials = calloc((size_t)(n_added ? n_added : 1), sizeof *t->specials);
    uint32_t nslots = 1024;
    while (nslots < (uint32_t)n_vocab * 2u)
        nslots *= 2;
    t->slots = calloc(nslots, sizeof *t->slots);
    t->mask = nslots - 1;
    if (!t->slab || !t->off || !t->len || !t->specials || !t->slots) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }

    /* Pass 2: decode keys into the slab. */
    size_t o = 0;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = it->valueint;
        long k = s_decode_key(it->string, t->slab + o, extra);
        if (k <= 0 || k > TOK_MAX_TOKLEN) {
            gerr_set(err, "model.vocab key for id %d is not a GPT-2 byte-level string", (int)id);
            return GERR_FORMAT;
        }
        if (t->len[id] != 0) {
            gerr_set(err, "model.vocab: id %d appears twice", (int)id);
            return GERR_INVALID;
        }
        t->off[id] = (uint32_t)o;
        t->len[id] = (uint32_t)k;
        if ((size_t)k > t->max_toklen) t->max_toklen = (size_t)k;
        o += (size_t)k;
    }
    for (int32_t id = 0; id < n_vocab; id++) {
        if (!s_insert(t, id)) {
            gerr_set(err, "model.vocab: id %d has the same bytes as another id", (int)id);
            return GERR_INVALID;
        }
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = s_lookup(t, &c, 1);
        if (t->byte_id[b] < 0) {
            gerr_set(err, "model.vocab lacks the single byte 0x%02x (byte-level BPE needs all 256)",
                     b);
            return GERR_INVALID;
        }
    }

    /* Specials. */
    cJSON_ArrayForEach(it, added) {
        int32_t id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        const char *s = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        size_t n = strlen(s);
        if (t->len[id] != 0) {
            gerr_set(err, "added_tokens: id %d appears twice", (int)id);
            return GERR_INVALID;
        }
        for (int k = 0; k < t->n_specials; k++) {
            if (strcmp(t->specials[k].str, s) == 0) {
                gerr_set(err, "added_tokens: \"%.60s\" appears twice", s);
                return GERR_INVALID;
            }
        }
        memcpy(t->slab + o, s, n);
        t->off[id] = (uint32_t)o;
        t->len[id] = (uint32_t)n;
        o += n;
        tok_special_t *sp = &t->specials[t->n_specials++];
        sp->str = strdup(s);
        if (!sp->str) {
            gerr_set(err, "out of memory");
            return GERR_NOMEM;
        }
        sp->len = n;
        sp->id = id;
        t->special_first[(uint8_t)s[0]] = true;
    }
    /* Longest first, so that a scan picks the longest special at a position. */
    for (int a = 1; a < t->n_specials; a++) {
        tok_special_t x = t->specials[a];
        int b = a - 1;
        while (b >= 0 && t->specials[b].len < x.len) {
            t->specials[b + 1] = t->specials[b];
            b--;
        }
        t->specials[b + 1] = x;
    }
    return s_compile_regex(t, pat, err);
}

int tok_load(const char *path, tokenizer_t **out, gerr_t *err) {
    *out = NULL;
    char fpath[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (snprintf(fpath, sizeof fpath, "%s/tokenizer.json", path) >= (int)sizeof fpath) {
            gerr_set(err, "tokenizer path too long");
            return GERR_INVALID;
        }
    } else {
        if (snprintf(fpath, sizeof fpath, "%s", path) >= (int)sizeof fpath) {
            gerr_set(err, "tokenizer path too long");
            return GERR_INVALID;
        }
    }
    char *buf = NULL;
    size_t n = 0;
    int rc = s_read_file(fpath, &buf, &n, err);
    if (rc < 0) return rc;
    s_blank_merges(buf, n);
    cJSON *root = cJSON_ParseWithLength(buf, n);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long at = (ep && ep >= buf && ep <= buf + n) ? (long)(ep - buf) : -1;
        free(buf);
        gerr_set(err, "%s: malformed JSON near byte %ld", fpath, at);
        return GERR_FORMAT;
    }
    free(buf);
    tokenizer_t *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    rc = s_build(t, root, err);
    cJSON_Delete(root);
    if (rc < 0) {
        gerr_prefix(err, "%s", fpath);
        tok_free(&t);
        return rc;
    }
    *out = t;
    return GERR_OK;
}

void tok_free(tokenizer_t **tp) {
    if (!tp || !*tp) return;
    tokenizer_t *t = *tp;
    for (int k = 0; k < t->n_specials; k++)
        free(t->specials[k].str);
    free(t->specials);
    free(t->slab);
    free(t->off);
    free(t->len);
    free(t->slots);
    if (t->re) pcre2_code_free(t->re);
    free(t);
    *tp = NULL;
}

/* ---- BPE ----------------------------------------------------------------------------- */

/* Per-call scratch for merging (grown as needed, freed at the end of the call). */
typedef struct {
    uint32_t *a, *b, *c, *d, *e; /* plain scan: starts, pair ranks; heap: next, prev, ranks */
    uint64_t *heap;              /* heap merge: (rank << 32 | position) of candidate pairs */
    size_t cap, hcap;
    /* tok_split only: record piece end offsets (from base) instead of merging */
    bool split_only;
    const uint8_t *base;
    size_t *ends;
    size_t nends, ends_cap;
} tok_scratch_t;

static void s_scratch_free(tok_scratch_t *s) {
    free(s->a);
    free(s->b);
    free(s->c);
    free(s->d);
    free(s->e);
    free(s->heap);
    free(s->ends);
    memset(s, 0, sizeof *s);
}

static int s_scratch_need(tok_scratch_t *s, size_t n) {
    if (n + 1 <= s->cap) return GERR_OK;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < n + 1)
        cap *= 2;
    uint32_t **arr[5] = {&s->a, &s->b, &s->c, &s->d, &s->e};
    for (int k = 0; k < 5; k++) {
        uint32_t *q = realloc(*arr[k], cap * sizeof *q);
        if (!q) return GERR_NOMEM; /* the arrays already grown stay valid */
        *arr[k] = q;
    }
    s->cap = cap;
    return GERR_OK;
}

#define TOK_NORANK UINT32_MAX

/* Plain merge (tiktoken's): parts start[0..m], pair ranks rank[i] for parts i,i+1. */
static int s_bpe_small(const tokenizer_t *t, const uint8_t *p, size_t n, tok_scratch_t *s,
                       tok_ids_t *out) {
    if (s_scratch_need(s, n) < 0) return GERR_NOMEM;
    uint32_t *start = s->a, *rank = s->b;
    size_t m = n; /* number of parts */
    for (size_t i = 0; i <= n; i++)
        start[i] = (uint32_t)i;
    for (size_t i = 0; i + 1 < m; i++) {
        int32_t r = s_lookup(t, p + i, 2);
        rank[i] = r < 0 ? TOK_NORANK : (uint32_t)r;
    }
    while (m > 1) {
        uint32_t best = TOK_NORANK;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        }
        if (best == TOK_NORANK) break;
        /* merge parts bi and bi+1 */
        memmove(start + bi + 1, start + bi + 2, (m - bi - 1) * sizeof *start);
        memmove(rank + bi + 1, rank + bi + 2, (m > bi + 2 ? m - bi - 2 : 0) * sizeof *rank);
        m--;
        if (bi + 1 < m) {
            int32_t r = s_lookup(t, p + start[bi], start[bi + 2] - start[bi]);
            rank[bi] = r < 0 ? TOK_NORANK : (uint32_t)r;
        }
        if (bi > 0) {
            int32_t r = s_lookup(t, p + start[bi - 1], start[bi + 1] - start[bi - 1]);
            rank[bi - 1] = r < 0 ? TOK_NORANK : (uint32_t)r;
        }
    }
    for (size_t i = 0; i < m; i++) {
        int32_t id = s_lookup(t, p + start[i], start[i + 1] - start[i]);
        if (id < 0) return GERR_INVALID; /* cannot happen: every part is a token */
        if (tok_ids_push(out, id) < 0) return GERR_NOMEM;
    }
    return GERR_OK;
}

/* Min-heap of uint64 keys (rank << 32 | position): lowest rank first, then leftmost.
 * 4-ary: half the depth of a binary heap, and the 4 children share a cache line. */
static void s_heap_down(uint64_t *h, size_t n, size_t i) {
    uint64_t x = h[i];
    for (;;) {
        size_t c = 4 * i + 1;
        if (c >= n) break;
        size_t m = c;
        size_t e = c + 4 < n ? c + 4 : n;
        for (size_t k = c + 1; k < e; k++)
            if (h[k] < h[m]) m = k;
        if (h[m] >= x) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = x;
}

static int s_heap_push(tok_scratch_t *s, size_t *hn, uint64_t x) {
    if (*hn == s->hcap) {
        size_t cap = s->hcap ? s->hcap * 2 : 1024;
        uint64_t *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return GERR_NOMEM;
        s->heap = h;
        s->hcap = cap;
    }
    uint64_t *h = s->heap;
    size_t i = (*hn)++;
    while (i > 0) {
        size_t par = (i - 1) / 4;
        if (h[par] <= x) break;
        h[i] = h[par];
        i = par;
    }
    h[i] = x;
    return GERR_OK;
}

/* Whether pair i (part i joined with the next part) could be the next merge: it has a
 * rank, lower than its left neighbour pair's and not above its right neighbour pair's
 * (on equal ranks the leftmost pair goes first). The lowest (rank, position) of all
 * pairs always passes this test, so the heap needs only these "local minima". */
static inline bool s_pair_eligible(const uint32_t *next, const uint32_t *prev,
                                   const uint32_t *pair_rank, uint32_t end, uint32_t i) {
    uint32_t r = pair_rank[i];
    if (r == TOK_NORANK) return false;
    if (prev[i] != UINT32_MAX && pair_rank[prev[i]] <= r) return false;
    return next[i] == end || pair_rank[next[i]] >= r;
}

/* Heap merge: parts form a linked list over byte positions; pair_rank[i] is the rank
 * of part i joined with its right neighbour (TOK_NORANK if none). Eligible pairs wait
 * in a min-heap keyed (rank << 32 | position); queued[i] is the rank last pushed for
 * position i, to avoid pushing the same entry twice. An entry whose pair has changed
 * since (pair_rank differs: bytes only grow, so a changed pair has another rank) is
 * skipped when popped. A merge changes the pairs at prev and at the merged part, so
 * only those and their two outer neighbours can become eligible. */
static int s_bpe_heap(const tokenizer_t *t, const uint8_t *p, size_t n, tok_scratch_t *s,
                      tok_ids_t *out) {
    if (n >= UINT32_MAX - 1) return GERR_LIMIT;
    if (s_scratch_need(s, n) < 0) return GERR_NOMEM;
    uint32_t *next = s->a, *prev = s->b, *rank = s->c, *pair_rank = s->d, *queued = s->e;
    const uint32_t end = (uint32_t)n;
    if (s->hcap < n) {
        uint64_t *h = realloc(s->heap, n * sizeof *h);
        if (!h) return GERR_NOMEM;
        s->heap = h;
        s->hcap = n;
    }
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        next[i] = (uint32_t)i + 1;
        prev[i] = i ? (uint32_t)i - 1 : UINT32_MAX;
        rank[i] = (uint32_t)t->byte_id[p[i]];
        queued[i] = TOK_NORANK;
        int32_t r = i + 1 < n ? s_lookup(t, p + i, 2) : -1;
        pair_rank[i] = r < 0 ? TOK_NORANK : (uint32_t)r;
    }
    for (uint32_t i = 0; i < end; i++) {
        if (s_pair_eligible(next, prev, pair_rank, end, i)) {
            queued[i] = pair_rank[i];
            s->heap[hn++] = (uint64_t)pair_rank[i] << 32 | i;
        }
    }
    for (size_t i = hn / 4 + 1; i-- > 0;) /* heapify: every parent, bottom up */
        if (i < hn) s_heap_down(s->heap, hn, i);
    while (hn > 0) {
        uint64_t top = s->heap[0];
        s->heap[0] = s->heap[--hn];
        if (hn > 0) s_heap_down(s->heap, hn, 0);
        uint32_t i = (uint32_t)top, r = (uint32_t)(top >> 32);
        if (pair_rank[i] != r) continue; /* stale */
        /* merge the right neighbour j into i */
        uint32_t j = next[i];
        rank[i] = r;
        pair_rank[j] = TOK_NORANK;
        next[i] = next[j];
        if (next[j] != end) prev[next[j]] = i;
        uint32_t h = prev[i];
        if (h != UINT32_MAX) {
            int32_t q = s_lookup(t, p + h, next[i] - h);
            pair_rank[h] = q < 0 ? TOK_NORANK : (uint32_t)q;
        }
        pair_rank[i] = TOK_NORANK;
        if (next[i] != end) {
            int32_t q = s_lookup(t, p + i, next[next[i]] - i);
            pair_rank[i] = q < 0 ? TOK_NORANK : (uint32_t)q;
        }
        uint32_t cand[4] = {h != UINT32_MAX ? prev[h] : UINT32_MAX, h, i, next[i]};
        for (int k = 0; k < 4; k++) {
            uint32_t c = cand[k];
            if (c == UINT32_MAX || c == end || queued[c] == pair_rank[c]) continue;
            if (!s_pair_eligible(next, prev, pair_rank, end, c)) continue;
            queued[c] = pair_rank[c];
            if (s_heap_push(s, &hn, (uint64_t)pair_rank[c] << 32 | c) < 0) return GERR_NOMEM;
        }
    }
    for (uint32_t i = 0; i != end; i = next[i])
        if (tok_ids_push(out, (int32_t)rank[i]) < 0) return GERR_NOMEM;
    return GERR_OK;
}

static int s_bpe_piece(const tokenizer_t *t, const uint8_t *p, size_t n, tok_scratch_t *s,
                       tok_ids_t *out, int method) {
    if (n == 0) return GERR_OK;
    int32_t whole = s_lookup(t, p, n);
    if (whole >= 0 && method == 0) return tok_ids_push(out, whole);
    if (n == 1) return tok_ids_push(out, whole);
    if (method == 1 || (method == 0 && n <= TOK_SMALL_PIECE)) return s_bpe_small(t, p, n, s, out);
    return s_bpe_heap(t, p, n, s, out);
}

int tok_bpe_piece(const tokenizer_t *t, const char *piece, size_t len, int method, tok_ids_t *out) {
    tok_scratch_t s = {0};
    int rc = s_bpe_piece(t, (const uint8_t *)piece, len, &s, out, method);
    s_scratch_free(&s);
    return rc;
}

/* ---- encoding ------------------------------------------------------------------------ */

/* Hands one piece to BPE (or, for tok_split, records where it ends). */
static int s_emit_piece(const tokenizer_t *t, const uint8_t *p, size_t n, tok_scratch_t *s,
                        tok_ids_t *out) {
    if (!s->split_only) return s_bpe_piece(t, p, n, s, out, 0);
    if (s->nends == s->ends_cap) {
        size_t cap = s->ends_cap ? s->ends_cap * 2 : 64;
        size_t *e = realloc(s->ends, cap * sizeof *e);
        if (!e) return GERR_NOMEM;
        s->ends = e;
        s->ends_cap = cap;
    }
    s->ends[s->nends++] = (size_t)(p + n - s->base);
    return GERR_OK;
}

/* Encodes one valid-UTF-8 run with the regex. */
static int s_encode_valid(const tokenizer_t *t, const uint8_t *p, size_t n, pcre2_match_data *md,
                          tok_scratch_t *s, tok_ids_t *out) {
    size_t pos = 0;
    while (pos < n) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)p, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        size_t ms, me;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            ms = ov[0];
            me = ov[1];
        } else if (rc == PCRE2_ERROR_NOMATCH) {
            ms = me = n;
        } else {
            return GERR_LIMIT; /* match/JIT-stack limit: a pathological input */
        }
        if (ms > pos) { /* a gap the regex did not cover (not possible with o200k's) */
            int r = s_emit_piece(t, p + pos, ms - pos, s, out);
            if (r < 0) return r;
        }
        if (me <= ms) { /* empty match: step over one character */
            if (ms >= n) break;
            int k = s_utf8_seq(p + ms, n - ms);
            me = ms + (size_t)(k > 0 ? k : 1); /* the character becomes its own piece */
        }
        int r = s_emit_piece(t, p + ms, me - ms, s, out);
        if (r < 0) return r;
        pos = me;
    }
    return GERR_OK;
}

/* Encodes ordinary text (any bytes) into out. */
static int s_encode_text(const tokenizer_t *t, const uint8_t *p, size_t n, pcre2_match_data *md,
                         tok_scratch_t *s, tok_ids_t *out) {
    size_t i = 0;
    while (i < n) {
        size_t v = s_utf8_valid_prefix(p + i, n - i);
        if (v > 0) {
            int r = s_encode_valid(t, p + i, v, md, s, out);
            if (r < 0) return r;
            i += v;
        }
        if (i < n) { /* one invalid byte: its own piece */
            int r = s_emit_piece(t, p + i, 1, s, out);
            if (r < 0) return r;
            i++;
        }
    }
    return GERR_OK;
}

static int s_encode(const tokenizer_t *t, const char *text, size_t len, tok_ids_t *out,
                    bool special) {
    if (len == 0) return GERR_OK;
    if (!text) return GERR_INVALID;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return GERR_NOMEM;
    tok_scratch_t s = {0};
    const uint8_t *p = (const uint8_t *)text;
    int rc = GERR_OK;
    if (!special) {
        rc = s_encode_text(t, p, len, md, &s, out);
    } else {
        size_t seg = 0;
        for (size_t i = 0; i < len && rc >= 0; i++) {
            if (!t->special_first[p[i]]) continue;
            for (int k = 0; k < t->n_specials; k++) {
                const tok_special_t *sp = &t->specials[k];
                if (sp->len <= len - i && memcmp(p + i, sp->str, sp->len) == 0) {
                    rc = s_encode_text(t, p + seg, i - seg, md, &s, out);
                    if (rc >= 0) rc = tok_ids_push(out, sp->id);
                    i += sp->len - 1;
                    seg = i + 1;
                    break;
                }
            }
        }
        if (rc >= 0 && seg < len) rc = s_encode_text(t, p + seg, len - seg, md, &s, out);
    }
    s_scratch_free(&s);
    pcre2_match_data_free(md);
    return rc;
}

int tok_encode(const tokenizer_t *t, const char *text, size_t len, tok_ids_t *out) {
    return s_encode(t, text, len, out, false);
}

int tok_encode_special(const tokenizer_t *t, const char *text, size_t len, tok_ids_t *out) {
    return s_encode(t, text, len, out, true);
}

int tok_split(const tokenizer_t *t, const char *text, size_t len, size_t **ends, size_t *n) {
    *ends = NULL;
    *n = 0;
    if (len == 0) return GERR_OK;
    if (!text) return GERR_INVALID;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return GERR_NOMEM;
    tok_scratch_t s = {0};
    s.split_only = true;
    s.base = (const uint8_t *)text;
    int rc = s_encode_text(t, s.base, len, md, &s, NULL);
    if (rc >= 0) {
        *ends = s.ends;
        *n = s.nends;
        s.ends = NULL;
    }
    s_scratch_free(&s);
    pcre2_match_data_free(md);
    return rc;
}

/* ---- decoding ------------------------------------------------------------------------ */

const char *tok_token_bytes(const tokenizer_t *t, int32_t id, size_t *len) {
    if (len) *len = 0;
    if (id < 0 || id >= t->n_ids || t->len[id] == 0) return NULL;
    if (len) *len = t->len[id];
    return (const char *)t->slab + t->off[id];
}

char *tok_decode(const tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (tok_token_bytes(t, ids[i], &l)) total += l;
    }
    char *b = malloc(total + 1);
    if (!b) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = tok_token_bytes(t, ids[i], &l);
        if (p) {
            memcpy(b + o, p, l);
            o += l;
        }
    }
    b[o] = 0;
    if (out_len) *out_len = o;
    return b;
}

int32_t tok_special_id(const tokenizer_t *t, const char *s) {
    if (!s) return -1;
    for (int k = 0; k < t->n_specials; k++)
        if (strcmp(t->specials[k].str, s) == 0) return t->specials[k].id;
    return -1;
}

bool tok_is_special(const tokenizer_t *t, int32_t id) {
    return id >= t->n_ranks && id < (t->n_ids > TOK_PAD_END ? t->n_ids : TOK_PAD_END);
}

int32_t tok_vocab_size(const tokenizer_t *t) {
    return t->n_ids;
}

/* ---- streaming decoder --------------------------------------------------------------- */

void tok_stream_init(tok_stream_t *s, const tokenizer_t *t) {
    memset(s, 0, sizeof *s);
    s->tok = t;
}

/* Copies the well-formed UTF-8 of in[0..n) to out, an invalid subpart becoming U+FFFD;
 * a valid but unfinished tail is kept back (returned count) unless flushing. */
static size_t s_utf8_emit(const uint8_t *in, size_t n, char *out, size_t *o, bool flush) {
    size_t i = 0;
    while (i < n) {
        int k = s_utf8_seq(in + i, n - i);
        if (k > 0) {
            memcpy(out + *o, in + i, (size_t)k);
            *o += (size_t)k;
            i += (size_t)k;
        } else if (k == 0 && !flush) {
            return n - i;
        } else {
            memcpy(out + *o, "\xEF\xBF\xBD", 3);
            *o += 3;
            i += k == 0 ? n - i : (size_t)-k;
        }
    }
    return 0;
}

int tok_stream_push(tok_stream_t *s, int32_t id, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    size_t l = 0;
    const char *p = tok_token_bytes(s->tok, id, &l);
    size_t n = s->npending + l;
    uint8_t *in = malloc(n + 1);
    char *o = malloc(n * 3 + 1); /* worst case: every byte becomes U+FFFD */
    if (!in || !o) {
        free(in);
        free(o);
        return GERR_NOMEM;
    }
    memcpy(in, s->pending, s->npending);
    if (l) memcpy(in + s->npending, p, l);
    size_t on = 0;
    size_t keep = s_utf8_emit(in, n, o, &on, false);
    /* keep <= 3: an unfinished sequence is at most 3 bytes */
    memcpy(s->pending, in + n - keep, keep);
    s->npending = keep;
    free(in);
    o[on] = 0;
    *out = o;
    *out_len = on;
    return GERR_OK;
}

int tok_stream_flush(tok_stream_t *s, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    char *o = malloc(s->npending * 3 + 1);
    if (!o) return GERR_NOMEM;
    size_t on = 0;
    (void)s_utf8_emit((const uint8_t *)s->pending, s->npending, o, &on, true);
    s->npending = 0;
    o[on] = 0;
    *out = o;
    *out_len = on;
    return GERR_OK;
}
