/* test_tokenizer: the C tokenizer against tiktoken's ids for gpt-oss.
 *
 * Every line of tests/fixtures/tokenizer/cases.jsonl (ordinary text) and special.jsonl
 * (special-token parsing) must give exactly the expected ids and decode back to its
 * text. Also: the pre-tokenizer rules of the testvectors README on hand-made strings
 * (White_Space, CR/LF runs, case splits), the heap merge against the plain merge, the
 * streaming decoder on split characters, lookalikes, padding ids, invalid UTF-8, a
 * megabyte without spaces, and malformed tokenizer.json files (refused, no crash).
 * The expected ids all come from the fixtures or the README, never from this code. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tcheck.h"
#include "tokenizer.h"

/* ---- a small reader for the fixture lines {"text":"...","ids":[...]} ------------------ */

static int s_hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -1;
        *v = *v * 16 + d;
    }
    return 0;
}

/* Decodes the JSON string at *pp (at '"') into out (capacity >= its raw length). */
static int s_json_string(const char **pp, char *out, size_t *n) {
    const char *p = *pp;
    size_t o = 0;
    if (*p++ != '"') return -1;
    while (*p && *p != '"') {
        if (*p != '\\') {
            out[o++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"':
            out[o++] = '"';
            break;
        case '\\':
            out[o++] = '\\';
            break;
        case '/':
            out[o++] = '/';
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            unsigned cp;
            if (s_hex4(p + 1, &cp) < 0) return -1;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDFFF) return -1; /* the fixtures never use pairs */
            if (cp < 0x80) {
                out[o++] = (char)cp;
            } else if (cp < 0x800) {
                out[o++] = (char)(0xC0 | (cp >> 6));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[o++] = (char)(0xE0 | (cp >> 12));
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return -1;
        }
        p++;
    }
    if (*p != '"') return -1;
    *pp = p + 1;
    *n = o;
    return 0;
}

typedef struct {
    char *text;
    size_t len;
    tok_ids_t ids;
} tcase_t;

/* Reads a fixture file; returns the number of cases (or -1). */
static int s_read_cases(const char *path, tcase_t **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int count = 0, alloc = 0;
    tcase_t *cs = NULL;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (count == alloc) {
            alloc = alloc ? alloc * 2 : 256;
            cs = realloc(cs, (size_t)alloc * sizeof *cs);
            if (!cs) abort();
        }
        tcase_t *c = &cs[count];
        memset(c, 0, sizeof *c);
        c->text = malloc((size_t)n + 1);
        const char *p = line;
        if (strncmp(p, "{\"text\":", 8) != 0) goto bad;
        p += 8;
        if (s_json_string(&p, c->text, &c->len) < 0) goto bad;
        if (strncmp(p, ",\"ids\":[", 8) != 0) goto bad;
        p += 8;
        while (*p != ']') {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) goto bad;
            tok_ids_push(&c->ids, (int32_t)v);
            p = e;
            if (*p == ',') p++;
        }
        count++;
        continue;
    bad:
        fprintf(stderr, "%s: line %d: cannot parse\n", path, count + 1);
        free(c->text);
        tok_ids_free(&c->ids);
        free(line);
        fclose(f);
        *out = cs;
        return -1;
    }
    free(line);
    fclose(f);
    *out = cs;
    return count;
}

static void s_free_cases(tcase_t *cs, int n) {
    for (int i = 0; i < n; i++) {
        free(cs[i].text);
        tok_ids_free(&cs[i].ids);
    }
    free(cs);
}

static void s_print_ids(const char *what, const tok_ids_t *v) {
    fprintf(stderr, "    %s (%zu):", what, v->len);
    for (size_t i = 0; i < v->len && i < 24; i++)
        fprintf(stderr, " %d", (int)v->ids[i]);
    fprintf(stderr, v->len > 24 ? " ...\n" : "\n");
}

static bool s_ids_eq(const tok_ids_t *a, const tok_ids_t *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->ids, b->ids, a->len * 4) == 0);
}

/* Runs one fixture file through the encoder (special or not) and the decoder. */
static void s_run_file(const tokenizer_t *t, const char *name, bool special) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/%s", tcheck_fixtures(), name);
    tcase_t *cs = NULL;
    int n = s_read_cases(path, &cs);
    CHECK_MSG(n > 0, "could not read %s", path);
    if (n <= 0) {
        free(cs);
        return;
    }
    int bad = 0, bad_rt = 0;
    for (int i = 0; i < n; i++) {
        tok_ids_t got = {0};
        int rc = special ? tok_encode_special(t, cs[i].text, cs[i].len, &got)
                         : tok_encode(t, cs[i].text, cs[i].len, &got);
        if (rc < 0 || !s_ids_eq(&got, &cs[i].ids)) {
            if (bad++ < 5) {
                fprintf(stderr, "%s line %d: ids differ (rc %d) for \"%.60s\"\n", name, i + 1, rc,
                        cs[i].text);
                s_print_ids("expected", &cs[i].ids);
                s_print_ids("got     ", &got);
            }
        }
        size_t dl = 0;
        char *dec = tok_decode(t, cs[i].ids.ids, cs[i].ids.len, &dl);
        if (!dec || dl != cs[i].len || memcmp(dec, cs[i].text, dl) != 0) {
            if (bad_rt++ < 5) fprintf(stderr, "%s line %d: decode differs\n", name, i + 1);
        }
        free(dec);
        tok_ids_free(&got);
    }
    CHECK_MSG(bad == 0, "%s: %d of %d cases give other ids", name, bad, n);
    CHECK_MSG(bad_rt == 0, "%s: %d of %d cases do not decode to their text", name, bad_rt, n);
    printf("%s: %d/%d cases match, %d/%d round-trip\n", name, n - bad, n, n - bad_rt, n);
    s_free_cases(cs, n);
}

/* ---- pre-tokenizer rules from the README ------------------------------------------- */

/* Checks that text splits into exactly the pieces listed (NULL-terminated). */
static void s_check_split(const tokenizer_t *t, const char *text, const char *const *pieces) {
    size_t *ends = NULL, n = 0;
    int rc = tok_split(t, text, strlen(text), &ends, &n);
    CHECK(rc == 0);
    size_t start = 0, k = 0;
    bool ok = rc == 0;
    for (; ok && pieces[k]; k++) {
        size_t pl = strlen(pieces[k]);
        if (k >= n || ends[k] - start != pl || memcmp(text + start, pieces[k], pl) != 0)
            ok = false;
        else
            start = ends[k];
    }
    ok = ok && k == n;
    CHECK_MSG(ok, "split of \"%s\" is not as the README says (%zu pieces)", text, n);
    free(ends);
}

static void s_test_split(const tokenizer_t *t) {
    s_check_split(t, "a   b", (const char *const[]){"a", "  ", " b", NULL});
    s_check_split(t, "x  \n  y", (const char *const[]){"x", "  \n", " ", " y", NULL});
    s_check_split(t, "XMLHttpRequest", (const char *const[]){"XMLHttp", "Request", NULL});
    s_check_split(t, "HTTPServer", (const char *const[]){"HTTPServer", NULL});
    s_check_split(t, "12345678", (const char *const[]){"123", "456", "78", NULL});
    s_check_split(t, "HELLO world", (const char *const[]){"HELLO", " world", NULL});
    s_check_split(t, "IT'S it'Ll", (const char *const[]){"IT'S", " it'Ll", NULL});
    s_check_split(t, "it\xE2\x80\x99s", (const char *const[]){"it", "\xE2\x80\x99s", NULL});
    s_check_split(t, "e\xCC\x81", (const char *const[]){"e\xCC\x81", NULL});
    s_check_split(t, "...\n://", (const char *const[]){"...\n", "://", NULL});
    s_check_split(t, "a \r\n\r\n b", (const char *const[]){"a", " \r\n\r\n", " b", NULL});
    s_check_split(t, "end  ", (const char *const[]){"end", "  ", NULL});
    /* White_Space: "x" w w "y" -> x | w | w y */
    static const char *const ws[] = {"\t",           "\v",           "\f",           " ",
                                     "\xC2\x85",     "\xC2\xA0",     "\xE1\x9A\x80", "\xE2\x80\x80",
                                     "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF",
                                     "\xE2\x81\x9F", "\xE3\x80\x80"};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
        char text[32], wy[16];
        snprintf(text, sizeof text, "x%s%sy", ws[i], ws[i]);
        snprintf(wy, sizeof wy, "%sy", ws[i]);
        s_check_split(t, text, (const char *const[]){"x", ws[i], wy, NULL});
    }
    /* Not White_Space (format characters): "x" c c "y" -> x | c c | y */
    static const char *const nws[] = {"\xEF\xBB\xBF", "\xE2\x80\x8B", "\xE1\xA0\x8E",
                                      "\xE2\x81\xA0"};
    for (size_t i = 0; i < sizeof nws / sizeof nws[0]; i++) {
        char text[32], cc[16];
        snprintf(text, sizeof text, "x%s%sy", nws[i], nws[i]);
        snprintf(cc, sizeof cc, "%s%s", nws[i], nws[i]);
        s_check_split(t, text, (const char *const[]){"x", cc, "y", NULL});
    }
}

/* ---- other properties ---------------------------------------------------------------- */

/* Id of the single byte b (found through the decode table). */
static int32_t s_byte_id(const tokenizer_t *t, uint8_t b) {
    for (int32_t id = 0; id < 199998; id++) {
        size_t l;
        const char *p = tok_token_bytes(t, id, &l);
        if (p && l == 1 && (uint8_t)p[0] == b) return id;
    }
    return -1;
}

static void s_test_stream(const tokenizer_t *t) {
    size_t l = 0;
    const char *b = tok_token_bytes(t, 126, &l);
    CHECK(b && l == 1 && (uint8_t)b[0] == 0xC2);
    int32_t id_a9 = s_byte_id(t, 0xA9);
    CHECK(id_a9 >= 0);
    tok_stream_t s;
    tok_stream_init(&s, t);
    char *out = NULL;
    size_t n = 0;
    CHECK(tok_stream_push(&s, 126, &out, &n) == 0 && n == 0);
    free(out);
    CHECK(tok_stream_push(&s, id_a9, &out, &n) == 0 && n == 2 && memcmp(out, "\xC2\xA9", 2) == 0);
    free(out);

    /* A text fed one byte-token at a time comes out whole, never as a partial character. */
    const char *text = "h\xC3\xA9llo \xF0\x9F\x8C\x8D \xE4\xB8\x96\xE7\x95\x8C \xD7\xA9";
    size_t tl = strlen(text), got = 0;
    char acc[64];
    bool ok = true;
    for (size_t i = 0; i < tl; i++) {
        int32_t id = s_byte_id(t, (uint8_t)text[i]);
        if (id < 0 || tok_stream_push(&s, id, &out, &n) != 0) {
            ok = false;
            break;
        }
        if (n > 0 && ((uint8_t)out[0] & 0xC0) == 0x80) ok = false; /* starts mid-character */
        if (got + n < sizeof acc) memcpy(acc + got, out, n);
        got += n;
        free(out);
    }
    CHECK(tok_stream_flush(&s, &out, &n) == 0 && n == 0);
    free(out);
    CHECK(ok && got == tl && memcmp(acc, text, tl) == 0);

    /* Tokens of an encoded text, streamed, give the text back. */
    const char *t2 =
        "Caf\xC3\xA9 \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB \xED\x95\x9C\xEA\xB5\xAD";
    tok_ids_t ids = {0};
    CHECK(tok_encode(t, t2, strlen(t2), &ids) == 0);
    got = 0;
    for (size_t i = 0; i < ids.len; i++) {
        CHECK(tok_stream_push(&s, ids.ids[i], &out, &n) == 0);
        if (got + n < sizeof acc) memcpy(acc + got, out, n);
        got += n;
        free(out);
    }
    CHECK(got == strlen(t2) && memcmp(acc, t2, got) == 0);
    tok_ids_free(&ids);

    /* An unfinished character is replaced by U+FFFD on flush; a broken one at once. */
    CHECK(tok_stream_push(&s, 126, &out, &n) == 0 && n == 0);
    free(out);
    CHECK(tok_stream_flush(&s, &out, &n) == 0 && n == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0);
    free(out);
    CHECK(tok_stream_push(&s, 126, &out, &n) == 0 && n == 0);
    free(out);
    CHECK(tok_stream_push(&s, s_byte_id(t, 'a'), &out, &n) == 0 && n == 4 &&
          memcmp(out,
                 "\xEF\xBF\xBD"
                 "a",
                 4) == 0);
    free(out);
    /* Specials and padding ids in a stream. */
    CHECK(tok_stream_push(&s, TOK_END, &out, &n) == 0 && n == 7 && memcmp(out, "<|end|>", 7) == 0);
    free(out);
    CHECK(tok_stream_push(&s, 201000, &out, &n) == 0 && n == 0);
    free(out);
}

static void s_test_specials(const tokenizer_t *t) {
    CHECK(tok_vocab_size(t) == 200019);
    CHECK(tok_special_id(t, "<|start|>") == TOK_START);
    CHECK(tok_special_id(t, "<|endofprompt|>") == TOK_ENDOFPROMPT);
    CHECK(tok_special_id(t, "<|START|>") == -1);
    CHECK(tok_special_id(t, "<|reserved_200019|>") == -1);
    CHECK(tok_is_special(t, 199998) && tok_is_special(t, 200018) && tok_is_special(t, 201087));
    CHECK(!tok_is_special(t, 199997) && !tok_is_special(t, 0) && !tok_is_special(t, -1));
    size_t l;
    const char *s = tok_token_bytes(t, TOK_CHANNEL, &l);
    CHECK(s && l == 11 && memcmp(s, "<|channel|>", 11) == 0);

    /* README: "<|start|>" as ordinary text is [27, 91, 5236, 91, 29]. */
    tok_ids_t v = {0};
    CHECK(tok_encode(t, "<|start|>", 9, &v) == 0);
    CHECK(v.len == 5 && v.ids[0] == 27 && v.ids[1] == 91 && v.ids[2] == 5236 && v.ids[3] == 91 &&
          v.ids[4] == 29);
    tok_ids_free(&v);
    /* Lookalikes stay text in special mode: same ids as ordinary, nothing >= 199998. */
    static const char *const look[] = {
        "<|START|>", "<|start |>",  "<|im_start|>", "<|start", "<|end|\xE2\x80\x8B>",
        "< |end|>",  "<|endoftext", "|>",           "<|",      "<||>"};
    for (size_t i = 0; i < sizeof look / sizeof look[0]; i++) {
        tok_ids_t a = {0}, b = {0};
        CHECK(tok_encode(t, look[i], strlen(look[i]), &a) == 0);
        CHECK(tok_encode_special(t, look[i], strlen(look[i]), &b) == 0);
        bool ok = s_ids_eq(&a, &b);
        for (size_t k = 0; k < b.len; k++)
            ok = ok && b.ids[k] < 199998;
        CHECK_MSG(ok, "lookalike \"%s\" became a special token", look[i]);
        tok_ids_free(&a);
        tok_ids_free(&b);
    }
    /* Every special alone is its id; glued to text, it splits the text. */
    for (int32_t id = 199998; id <= 200018; id++) {
        const char *str = tok_token_bytes(t, id, &l);
        tok_ids_t a = {0};
        CHECK(str && tok_encode_special(t, str, l, &a) == 0 && a.len == 1 && a.ids[0] == id);
        tok_ids_free(&a);
    }
}

static void s_test_decode_range(const tokenizer_t *t) {
    size_t total = 0;
    int with_bytes = 0;
    for (int32_t id = -5; id <= 201100; id++) {
        size_t l = 99;
        const char *p = tok_token_bytes(t, id, &l);
        if (p) {
            with_bytes++;
            total += l;
        } else {
            CHECK_MSG(l == 0, "id %d", (int)id);
        }
    }
    CHECK(with_bytes == 200019);
    int32_t odd[] = {200019, 201087, 201088, -1, INT32_MAX, INT32_MIN, 72, 200500};
    size_t dl = 0;
    char *d = tok_decode(t, odd, sizeof odd / sizeof odd[0], &dl);
    size_t l72;
    const char *b72 = tok_token_bytes(t, 72, &l72);
    CHECK(d && dl == l72 && memcmp(d, b72, dl) == 0);
    free(d);
    d = tok_decode(t, NULL, 0, &dl);
    CHECK(d && dl == 0 && d[0] == 0);
    free(d);
    (void)total;
}

/* Any bytes (invalid UTF-8 included) encode and decode back unchanged. */
static void s_test_bytes(const tokenizer_t *t) {
    const char raw[] = "\xFF\xFE ok \xC2 \xE0\x80\x80 \xED\xA0\x80 a\xF4\x90\x80\x80z \xF0\x9F\x98";
    tok_ids_t v = {0};
    CHECK(tok_encode(t, raw, sizeof raw - 1, &v) == 0);
    size_t dl;
    char *d = tok_decode(t, v.ids, v.len, &dl);
    CHECK(d && dl == sizeof raw - 1 && memcmp(d, raw, dl) == 0);
    free(d);
    tok_ids_free(&v);
    /* A pseudo-random byte soup as well. */
    uint32_t x = 12345;
    char soup[4096];
    for (size_t i = 0; i < sizeof soup; i++) {
        x = x * 1103515245u + 12345u;
        soup[i] = (char)(x >> 16);
    }
    CHECK(tok_encode_special(t, soup, sizeof soup, &v) == 0);
    d = tok_decode(t, v.ids, v.len, &dl);
    CHECK(d && dl == sizeof soup && memcmp(d, soup, dl) == 0);
    free(d);
    tok_ids_free(&v);
}

/* The heap merge agrees with the plain merge on random pieces. */
static void s_test_merge_methods(const tokenizer_t *t) {
    static const char *const alpha[] = {
        "a", "b", "e",   "t", "h", "in", "er", " ", "x", "\xC3\xA9", "\xE4\xB8\x96",
        "0", "_", "ing", "th"};
    uint32_t x = 777;
    int bad = 0;
    for (int iter = 0; iter < 300; iter++) {
        char piece[2048];
        size_t n = 0;
        x = x * 1664525u + 1013904223u;
        size_t target = 2 + (x >> 8) % 600;
        while (n < target) {
            x = x * 1664525u + 1013904223u;
            const char *a = alpha[(x >> 10) % (sizeof alpha / sizeof alpha[0])];
            size_t al = strlen(a);
            memcpy(piece + n, a, al);
            n += al;
        }
        tok_ids_t a = {0}, b = {0};
        CHECK(tok_bpe_piece(t, piece, n, 1, &a) == 0);
        CHECK(tok_bpe_piece(t, piece, n, 2, &b) == 0);
        if (!s_ids_eq(&a, &b)) bad++;
        tok_ids_free(&a);
        tok_ids_free(&b);
    }
    CHECK_MSG(bad == 0, "%d of 300 random pieces merge differently with the heap", bad);
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Long strings without spaces encode in near-linear time and round-trip. */
static void s_test_long(const tokenizer_t *t) {
    size_t big = 1 << 20, lbig = big / 2, small = lbig / 8; /* letters: 512 KiB vs 64 KiB */
    char *s = malloc(big);
    uint32_t x = 99;
    for (size_t i = 0; i < big; i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (char)('a' + (x >> 16) % 26);
    }
    double best_small = 1e9, best_big = 1e9;
    tok_ids_t v = {0};
    for (int r = 0; r < 2; r++) {
        double t0 = s_now();
        v.len = 0;
        CHECK(tok_encode(t, s, small, &v) == 0);
        double t1 = s_now();
        v.len = 0;
        CHECK(tok_encode(t, s, lbig, &v) == 0);
        double t2 = s_now();
        if (t1 - t0 < best_small) best_small = t1 - t0;
        if (t2 - t1 < best_big) best_big = t2 - t1;
    }
    size_t dl;
    char *d = tok_decode(t, v.ids, v.len, &dl);
    CHECK(d && dl == lbig && memcmp(d, s, lbig) == 0);
    free(d);
    printf("512 KiB of letters: %.1f ms (%zu tokens); 64 KiB: %.1f ms\n", best_big * 1e3, v.len,
           best_small * 1e3);
    /* linear would be 8x, quadratic 64x; cache effects and a shared machine add noise */
    CHECK_MSG(best_big < 40 * best_small + 0.05, "512 KiB took %.3f s, 64 KiB %.3f s", best_big,
              best_small);
    memset(s, 'z', big); /* one repeated character */
    v.len = 0;
    double t0 = s_now();
    CHECK(tok_encode(t, s, big, &v) == 0);
    double t1 = s_now();
    d = tok_decode(t, v.ids, v.len, &dl);
    CHECK(d && dl == big && memcmp(d, s, big) == 0);
    free(d);
    printf("1 MiB of 'z': %.1f ms (%zu tokens)\n", (t1 - t0) * 1e3, v.len);
    CHECK(t1 - t0 < 10.0);
    tok_ids_free(&v);
    free(s);
}

/* ---- malformed files ------------------------------------------------------------------- */

static int s_write(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

/* A minimal valid tokenizer.json: 256 byte tokens (GPT-2 mapping), "ab", 2 specials. */
static char *s_tiny_json(const char *vocab_extra, const char *regex, const char *added) {
    size_t cap = 1 << 16, o = 0;
    char *b = malloc(cap);
    o += (size_t)snprintf(b + o, cap - o, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    int extra = 0;
    for (int c = 0; c < 256; c++) {
        bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
        unsigned cp = printable ? (unsigned)c : 0x100u + (unsigned)extra++;
        char u[8];
        if (cp == '"' || cp == '\\')
            snprintf(u, sizeof u, "\\%c", (char)cp);
        else if (cp < 0x80)
            snprintf(u, sizeof u, "%c", (char)cp);
        else
            snprintf(u, sizeof u, "%c%c", (char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F)));
        o += (size_t)snprintf(b + o, cap - o, "%s\"%s\":%d", c ? "," : "", u, c);
    }
    o += (size_t)snprintf(b + o, cap - o, ",\"ab\":256%s}},", vocab_extra);
    o += (size_t)snprintf(b + o, cap - o,
                          "\"added_tokens\":%s,"
                          "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                          "\"Split\",\"pattern\":{\"Regex\":\"%s\"}}]}}",
                          added, regex);
    return b;
}

static void s_expect_refused(const char *path, const char *data, const char *what) {
    CHECK(s_write(path, data, strlen(data)) == 0);
    tokenizer_t *t = NULL;
    gerr_t err = {{0}};
    int rc = tok_load(path, &t, &err);
    CHECK_MSG(rc < 0 && t == NULL && err.msg[0] != 0, "%s was accepted", what);
    tok_free(&t);
}

static void s_test_malformed(void) {
    char dir[] = "/tmp/test_tokenizer_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    const char *re = "\\\\s+|\\\\S+";
    const char *added = "[{\"id\":257,\"content\":\"<|x|>\"},{\"id\":258,\"content\":\"<|y|>\"}]";

    /* positive control: the tiny file loads (from the folder) and works */
    char *good = s_tiny_json("", re, added);
    CHECK(s_write(path, good, strlen(good)) == 0);
    tokenizer_t *t = NULL;
    gerr_t err = {{0}};
    int rc = tok_load(dir, &t, &err);
    CHECK_MSG(rc == 0, "tiny tokenizer refused: %s", err.msg);
    if (rc == 0) {
        tok_ids_t v = {0};
        CHECK(tok_encode_special(t, "ab<|y|>b a", 10, &v) == 0);
        CHECK(v.len == 5 && v.ids[0] == 256 && v.ids[1] == 258 && v.ids[2] == 'b' &&
              v.ids[3] == ' ' && v.ids[4] == 'a');
        CHECK(tok_vocab_size(t) == 259);
        tok_ids_free(&v);
    }
    tok_free(&t);
    CHECK(t == NULL);
    CHECK(tok_load(path, &t, &err) == 0 && t != NULL); /* the file path works too */
    tok_free(&t);

    /* a merges list (skipped by the loader) with brackets and quotes inside its strings */
    {
        const char *mk = "\"vocab\":{";
        char *at = strstr(good, mk);
        CHECK(at != NULL);
        const char *merges = "\"merges\":[[\"a\",\"]\\\"{\"],[\"b\",\"[\"]],";
        size_t gl0 = strlen(good), ml = strlen(merges), pre = (size_t)(at - good);
        char *wm = malloc(gl0 + ml + 1);
        memcpy(wm, good, pre);
        memcpy(wm + pre, merges, ml);
        memcpy(wm + pre + ml, at, gl0 - pre + 1);
        CHECK(s_write(path, wm, strlen(wm)) == 0);
        err.msg[0] = 0;
        CHECK_MSG(tok_load(path, &t, &err) == 0 && t && tok_vocab_size(t) == 259, "with merges: %s",
                  err.msg);
        tok_free(&t);
        free(wm);
    }

    /* every truncation of it is refused */
    size_t gl = strlen(good);
    int accepted = 0;
    for (size_t cut = 0; cut < gl; cut += (cut < 64 || gl - cut < 64) ? 1 : 37) {
        char *p = strndup(good, cut);
        CHECK(s_write(path, p, cut) == 0);
        tokenizer_t *tt = NULL;
        gerr_t e = {{0}};
        if (tok_load(path, &tt, &e) == 0 || e.msg[0] == 0) accepted++;
        tok_free(&tt);
        free(p);
    }
    CHECK_MSG(accepted == 0, "%d truncated files were accepted", accepted);
    free(good);

    char *bad;
    s_expect_refused(path, "", "an empty file");
    s_expect_refused(path, "[1,2,3]", "a top-level array");
    s_expect_refused(path, "{\"model\":[]}", "model as an array");
    s_expect_refused(path, "{\"model\":{\"vocab\":[]}}", "vocab as an array");
    bad = s_tiny_json(",\"cd\":\"257\"", re, added);
    s_expect_refused(path, bad, "a string id");
    free(bad);
    bad = s_tiny_json(",\"cd\":2.5", re, added);
    s_expect_refused(path, bad, "a fractional id");
    free(bad);
    bad = s_tiny_json(",\"cd\":-3", re, added);
    s_expect_refused(path, bad, "a negative id");
    free(bad);
    bad = s_tiny_json(",\"cd\":256", re, added);
    s_expect_refused(path, bad, "a duplicate id");
    free(bad);
    bad = s_tiny_json(",\"cd\":9999", re, added);
    s_expect_refused(path, bad, "a gap in the ids");
    free(bad);
    bad = s_tiny_json(",\"\xE2\x82\xAC\":257", re, added);
    s_expect_refused(path, bad, "a key outside the GPT-2 byte map");
    free(bad);
    bad = s_tiny_json(",\"\":257", re, added);
    s_expect_refused(path, bad, "an empty key");
    free(bad);
    bad = s_tiny_json(",\"ab\":257", re, added);
    s_expect_refused(path, bad, "a duplicate key");
    free(bad);
    bad = s_tiny_json("", "(unclosed", added);
    s_expect_refused(path, bad, "a regex that does not compile");
    free(bad);
    bad = s_tiny_json("", re, "{}");
    s_expect_refused(path, bad, "added_tokens as an object");
    free(bad);
    bad = s_tiny_json("", re, "[{\"id\":\"x\",\"content\":\"<|x|>\"}]");
    s_expect_refused(path, bad, "a special with a string id");
    free(bad);
    bad = s_tiny_json("", re, "[{\"id\":100,\"content\":\"<|x|>\"}]");
    s_expect_refused(path, bad, "a special reusing an ordinary id");
    free(bad);
    bad = s_tiny_json("", re,
                      "[{\"id\":257,\"content\":\"<|x|>\"},{\"id\":258,\"content\":\"<|x|>\"}]");
    s_expect_refused(path, bad, "a special string twice");
    free(bad);
    s_expect_refused(path, "{\"model\":{\"vocab\":{\"a\":0}},\"pre_tokenizer\":null}",
                     "no regex and a tiny vocab");

    tokenizer_t *tt = NULL;
    err.msg[0] = 0;
    CHECK(tok_load("/nonexistent/tokenizer.json", &tt, &err) == GERR_IO && err.msg[0] && !tt);
    unlink(path);
    err.msg[0] = 0;
    CHECK(tok_load(dir, &tt, &err) < 0 && err.msg[0] && !tt);
    rmdir(dir);
}

int main(void) {
    const char *dir = getenv("GPTOSS_TOKENIZER");
    if (!dir) dir = "build/fixtures/tokenizer";
    tokenizer_t *t = NULL;
    gerr_t err = {{0}};
    int rc = tok_load(dir, &t, &err);
    CHECK_MSG(rc == 0, "cannot load %s: %s", dir, err.msg);
    if (rc != 0) return tcheck_done("test_tokenizer");

    s_run_file(t, "cases.jsonl", false);
    s_run_file(t, "special.jsonl", true);
    s_test_split(t);
    s_test_specials(t);
    s_test_stream(t);
    s_test_decode_range(t);
    s_test_bytes(t);
    s_test_merge_methods(t);
    s_test_long(t);
    tok_free(&t);
    CHECK(t == NULL);
    tok_free(&t); /* safe twice */
    s_test_malformed();
    return tcheck_done("test_tokenizer");
}
