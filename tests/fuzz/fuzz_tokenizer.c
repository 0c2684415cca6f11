/* fuzz_tokenizer: libFuzzer target for the tokenizer's entry points that see outside bytes.
 *
 * The first input byte picks the mode; the rest is the payload:
 *   0: ordinary encode, which must decode back to the same bytes (any bytes, bad UTF-8 too);
 *   1: the same with special-token parsing;
 *   2: the heap merge and the plain merge of one piece must agree;
 *   3: payload as int32 ids through the streaming decoder: every delta is valid UTF-8, and
 *      when tok_decode's bytes are valid UTF-8 the deltas add up to them exactly;
 *   4: payload as a tokenizer.json file: loads or is refused with a message, never crashes.
 * The real tokenizer comes from $GPTOSS_TOKENIZER (a dir with tokenizer.json) or
 * build/fixtures/tokenizer; without it only mode 4 runs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tokenizer.h"

static tokenizer_t *s_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("GPTOSS_TOKENIZER");
    gerr_t err;
    if (tok_load(dir ? dir : "build/fixtures/tokenizer", &s_tok, &err) < 0) s_tok = NULL;
    return 0;
}

/* Length of the valid UTF-8 prefix of s[0..n). */
static size_t s_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t need = c < 0x80                 ? 0
                      : c >= 0xC2 && c <= 0xDF ? 1
                      : c >= 0xE0 && c <= 0xEF ? 2
                      : c >= 0xF0 && c <= 0xF4 ? 3
                                               : 9;
        if (need == 9 || i + need >= n) break;
        uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        uint8_t hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        bool ok = true;
        for (size_t k = 1; k <= need && ok; k++) {
            uint8_t b = s[i + k];
            ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        }
        if (!ok) break;
        i += need + 1;
    }
    return i;
}

static void s_roundtrip(const uint8_t *p, size_t n, bool special) {
    tok_ids_t v = {0};
    int rc = special ? tok_encode_special(s_tok, (const char *)p, n, &v)
                     : tok_encode(s_tok, (const char *)p, n, &v);
    if (rc < 0) abort();
    size_t dl = 0;
    char *d = tok_decode(s_tok, v.ids, v.len, &dl);
    if (!d || dl != n || (n && memcmp(d, p, n) != 0)) abort();
    for (size_t i = 0; !special && i < v.len; i++)
        if (tok_is_special(s_tok, v.ids[i])) abort();
    free(d);
    tok_ids_free(&v);
}

static void s_merge(const uint8_t *p, size_t n) {
    if (n == 0 || n > 4096) return;
    tok_ids_t a = {0}, b = {0};
    if (tok_bpe_piece(s_tok, (const char *)p, n, 1, &a) < 0) abort();
    if (tok_bpe_piece(s_tok, (const char *)p, n, 2, &b) < 0) abort();
    if (a.len != b.len || memcmp(a.ids, b.ids, a.len * sizeof *a.ids) != 0) abort();
    tok_ids_free(&a);
    tok_ids_free(&b);
}

static void s_stream(const uint8_t *p, size_t n) {
    size_t k = n / 4;
    int32_t *ids = malloc((k ? k : 1) * sizeof *ids);
    for (size_t i = 0; i < k; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        /* mostly single bytes and ordinary ids, some specials and out-of-range values */
        switch (x & 3) {
        case 0:
            ids[i] = (int32_t)((x >> 2) % 256);
            break;
        case 1:
            ids[i] = (int32_t)((x >> 2) % 201100);
            break;
        case 2:
            ids[i] = (int32_t)(199990 + (x >> 2) % 1200);
            break;
        default:
            ids[i] = (int32_t)x;
            break;
        }
    }
    size_t dl = 0;
    char *d = tok_decode(s_tok, ids, k, &dl);
    if (!d) abort();
    char *acc = malloc(dl * 3 + 16);
    size_t an = 0;
    tok_stream_t s;
    tok_stream_init(&s, s_tok);
    for (size_t i = 0; i <= k; i++) {
        char *out = NULL;
        size_t on = 0;
        int rc = i < k ? tok_stream_push(&s, ids[i], &out, &on) : tok_stream_flush(&s, &out, &on);
        if (rc < 0 || !out) abort();
        if (s_valid_prefix((const uint8_t *)out, on) != on) abort();
        if (an + on > dl * 3 + 16) abort();
        memcpy(acc + an, out, on);
        an += on;
        free(out);
    }
    if (s_valid_prefix((const uint8_t *)d, dl) == dl && (an != dl || memcmp(acc, d, dl) != 0))
        abort();
    free(acc);
    free(d);
    free(ids);
}

static void s_load(const uint8_t *p, size_t n) {
    int fd = memfd_create("fuzz_tokenizer", 0);
    if (fd < 0) return;
    if (write(fd, p, n) != (ssize_t)n) {
        close(fd);
        return;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tokenizer_t *t = NULL;
    gerr_t err = {{0}};
    int rc = tok_load(path, &t, &err);
    if (rc < 0 && (t || err.msg[0] == 0)) abort();
    if (rc == 0) {
        tok_ids_t v = {0};
        if (tok_encode_special(t, "a <|x|> b", 9, &v) < 0) abort();
        tok_ids_free(&v);
    }
    tok_free(&t);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    int mode = data[0] % 5;
    if (mode == 4) {
        s_load(p, n);
        return 0;
    }
    if (!s_tok) return 0;
    if (mode == 0)
        s_roundtrip(p, n, false);
    else if (mode == 1)
        s_roundtrip(p, n, true);
    else if (mode == 2)
        s_merge(p, n);
    else
        s_stream(p, n);
    return 0;
}
