/* fuzz_harmony: libFuzzer target for the two harmony entry points that see outside bytes.
 *
 * The first input byte picks the mode. Mode even: the rest is read as little-endian int32
 * token ids (mapped mostly into the interesting range: specials, ordinary tokens, and a few
 * out-of-range values) and fed to the output parser, token by token, checking that the
 * deltas add up to the result and are valid UTF-8. Mode odd: the rest is parsed as JSON and
 * given to harmony_conv_from_openai_json; whatever converts is rendered as text (and as ids).
 * The tokenizer comes from $GPTOSS_TOKENIZER (a dir with tokenizer.json, as in the unit tests)
 * or build/fixtures/tokenizer; without it the parser half is skipped. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harmony.h"

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

typedef struct {
    size_t content, reasoning;
} s_sums_t;

static void s_valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (c >= 0x80 && c < 0xC2) abort();
        if (i + len > n) abort();
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80) abort();
        i += len;
    }
}

static void s_on_event(const harmony_event_t *ev, void *user) {
    s_sums_t *s = user;
    if (ev->kind != HARMONY_EV_DELTA) return;
    s_valid_utf8(ev->text, ev->len);
    if (ev->dest == HARMONY_DEST_CONTENT)
        s->content += ev->len;
    else if (ev->dest == HARMONY_DEST_REASONING)
        s->reasoning += ev->len;
}

static void s_fuzz_parser(const uint8_t *data, size_t size) {
    if (!s_tok) return;
    harmony_parser_t *p = NULL;
    s_sums_t sums = {0, 0};
    if (harmony_parser_new(s_tok, s_on_event, &sums, &p) < 0) return;
    for (size_t i = 0; i + 4 <= size; i += 4) {
        uint32_t v = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                     (uint32_t)data[i + 3] << 24;
        int32_t id;
        switch (v >> 30) {
        case 0:
            id = 199998 + (int32_t)(v % 24); /* specials and a few past them */
            break;
        case 1:
            id = (int32_t)((v & 0x3FFFFFFFu) % 200000); /* ordinary tokens */
            break;
        case 2:
            id = (int32_t)(v % 512); /* bytes and short pieces */
            break;
        default:
            id = (int32_t)v; /* anything, negative included */
        }
        if (harmony_parser_push(p, id) < 0) abort();
    }
    harmony_result_t r;
    if (harmony_parser_finish(p, &r) < 0) abort();
    if (strlen(r.content) != sums.content || strlen(r.reasoning) != sums.reasoning) abort();
    harmony_result_free(&r);
    harmony_parser_free(&p);
}

static void s_fuzz_request(const uint8_t *data, size_t size) {
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    if (!j) return;
    harmony_conv_t *c = NULL;
    gerr_t err;
    if (harmony_conv_from_openai_json(j, &c, &err) == 0) {
        char *text = NULL;
        if (harmony_render_text(c, &text, NULL, &err) == 0) free(text);
        if (s_tok && size < 4096) {
            tok_ids_t ids = {0};
            (void)harmony_render_ids(c, s_tok, &ids, &err);
            tok_ids_free(&ids);
        }
        harmony_conv_free(&c);
    }
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (data[0] & 1)
        s_fuzz_request(data + 1, size - 1);
    else
        s_fuzz_parser(data + 1, size - 1);
    return 0;
}
