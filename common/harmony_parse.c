/* harmony_parse: a streaming parser of what gpt-oss generates after `<|start|>assistant`.
 *
 * A state machine over token ids: HEADER (collecting `<|channel|>final`, ` to=functions.x`,
 * ` <|constrain|>json` ... up to `<|message|>`), CONTENT (text of one message, decoded through
 * a UTF-8 hold-back so a character split over tokens is never emitted broken, and invalid
 * bytes become U+FFFD), EXPECT_START (after `<|end|>`) and DONE (after `<|return|>`,
 * `<|call|>` or `<|endoftext|>`). Each id produces zero or more events; the same ids give the
 * same events and result however they are fed. The parser never fails on model output: it
 * keeps what it can, flags `malformed`, and never lets special tokens or header markup reach
 * content. What counts as malformed: a header without or with an unknown channel, a message
 * to a recipient with empty arguments (they become "{}"), plain text with no header (it
 * becomes final content), a header cut off by a terminator or by the end of input, special
 * tokens where they do not belong (dropped), a message by another author than the assistant
 * (e.g. a hallucinated tool result: dropped), `<|call|>` after a message that was not a call,
 * ids with no bytes, anything after the end of generation.
 * Rendering prompts is in harmony_render.c. */
#include "harmony.h"

#include <string.h>

#include "harmony_buf.h"

#define S_HEADER_MAX 1024 /* header bytes kept; longer headers are cut and flagged */

typedef enum { S_HEADER, S_CONTENT, S_EXPECT_START, S_DONE } s_state_t;

typedef struct {
    char *name;
    hbuf_t args;
} s_call_t;

struct harmony_parser {
    const tokenizer_t *tok;
    harmony_event_fn fn;
    void *user;
    s_state_t state;
    /* header being collected */
    hbuf_t header;    /* header bytes, specials written as their strings */
    bool after_start; /* the header followed <|start|>, so it begins with a role */
    bool hdr_special; /* it holds <|channel|> or <|constrain|> */
    /* the open message */
    harmony_channel_t channel;
    harmony_dest_t dest;
    char *recipient;
    char *content_type;
    size_t tool_index;
    unsigned char pend[4]; /* incomplete UTF-8 tail held back */
    size_t npend;
    /* accumulated result */
    hbuf_t reasoning, content;
    s_call_t *calls;
    size_t ncalls;
    harmony_finish_t finish;
    bool malformed;
    bool finished;
    bool oom;
    bool discard; /* the open message is not by the assistant (a hallucinated tool result) */
};

/* ---- UTF-8 -------------------------------------------------------------------------------- */

static const char S_FFFD[] = "\xEF\xBF\xBD";

/* Length of the sequence lead byte c starts (0: never a valid lead), and the valid range of
 * the second byte. */
static size_t s_utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Decodes s[0..n) into out as valid UTF-8 without NUL (maximal invalid subparts and NUL ->
 * U+FFFD). Returns the
 * number of bytes consumed; the rest (< 4 bytes) is a valid but incomplete sequence. With
 * flush, an incomplete tail becomes one U+FFFD and everything is consumed. */
static size_t s_utf8_decode(const unsigned char *s, size_t n, bool flush, hbuf_t *out) {
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char lo, hi;
        size_t len = s_utf8_lead(s[i], &lo, &hi);
        if (len == 1 && s[i] != 0) {
            i++;
            continue;
        }
        if (len == 1) { /* NUL: results are C strings */
            hbuf_add(out, (const char *)s + run, i - run);
            hbuf_add(out, S_FFFD, 3);
            run = ++i;
            continue;
        }
        size_t k = 1; /* bytes of the sequence that are valid so far */
        if (len > 0) {
            while (k < len && i + k < n) {
                unsigned char c = s[i + k];
                unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
                if (c < l || c > h) break;
                k++;
            }
            if (k == len) {
                i += len;
                continue;
            }
            if (i + k == n && !flush) {
                hbuf_add(out, (const char *)s + run, i - run);
                return i;
            }
        }
        hbuf_add(out, (const char *)s + run, i - run);
        hbuf_add(out, S_FFFD, 3);
        i += len > 0 ? k : 1;
        run = i;
    }
    hbuf_add(out, (const char *)s + run, n - run);
    return n;
}

/* A valid UTF-8 copy of s[0..n) (caller frees), NULL when out of memory. */
static char *s_utf8_clean(const char *s, size_t n) {
    hbuf_t b = {0};
    s_utf8_decode((const unsigned char *)s, n, true, &b);
    return hbuf_take(&b);
}

/* ---- events ------------------------------------------------------------------------------- */

static void s_emit(harmony_parser_t *p, harmony_event_kind_t kind, const char *text, size_t len) {
    if (!p->fn) return;
    harmony_event_t ev = {
        .kind = kind,
        .channel = p->channel,
        .dest = p->dest,
        .recipient = p->recipient,
        .content_type = p->content_type,
        .tool_name = p->dest == HARMONY_DEST_TOOL_ARGS ? p->calls[p->tool_index].name : NULL,
        .tool_index = p->tool_index,
        .text = text,
        .len = len,
        .finish = p->finish,
    };
    p->fn(&ev, p->user);
}

/* Sends decoded text of the open message to its destination and as a DELTA event. */
static void s_deliver(harmony_parser_t *p, const char *text, size_t len) {
    if (len == 0 || p->discard) return;
    hbuf_t *dst = p->dest == HARMONY_DEST_REASONING ? &p->reasoning
                  : p->dest == HARMONY_DEST_CONTENT ? &p->content
                                                    : &p->calls[p->tool_index].args;
    hbuf_add(dst, text, len);
    if (dst->oom) p->oom = true;
    s_emit(p, HARMONY_EV_DELTA, text, len);
}

/* Feeds raw content bytes of the open message through the UTF-8 hold-back. */
static void s_content_bytes(harmony_parser_t *p, const char *bytes, size_t n, bool flush) {
    unsigned char small[64];
    unsigned char *w = n + p->npend <= sizeof small ? small : malloc(n + p->npend);
    if (!w) {
        p->oom = true;
        return;
    }
    memcpy(w, p->pend, p->npend);
    if (n) memcpy(w + p->npend, bytes, n);
    size_t total = p->npend + n;
    hbuf_t out = {0};
    size_t used = s_utf8_decode(w, total, flush, &out);
    p->npend = total - used;
    memcpy(p->pend, w + used, p->npend);
    if (w != small) free(w);
    if (out.oom)
        p->oom = true;
    else
        s_deliver(p, out.data, out.len);
    hbuf_free(&out);
}

/* ---- messages ----------------------------------------------------------------------------- */

static void s_clear_msg(harmony_parser_t *p) {
    free(p->recipient);
    free(p->content_type);
    p->recipient = p->content_type = NULL;
    p->channel = HARMONY_CHANNEL_NONE;
    p->dest = HARMONY_DEST_CONTENT;
    p->npend = 0;
}

/* Opens a message: routes it and emits MSG_START. recipient/ctype are taken over. */
static void s_open(harmony_parser_t *p, harmony_channel_t ch, char *recipient, char *ctype) {
    s_clear_msg(p);
    p->channel = ch;
    p->recipient = recipient;
    p->content_type = ctype;
    if (recipient) {
        const char *name = recipient;
        if (strncmp(name, "functions.", 10) == 0)
            name += 10;
        else
            p->malformed = true; /* a recipient that is not a function tool */
        if (!name[0]) p->malformed = true;
        s_call_t *c = realloc(p->calls, (p->ncalls + 1) * sizeof *c);
        char *nm = strdup(name);
        if (!c || !nm) {
            free(nm);
            if (c) p->calls = c;
            p->oom = true;
            p->dest = HARMONY_DEST_CONTENT;
        } else {
            p->calls = c;
            p->calls[p->ncalls] = (s_call_t){.name = nm};
            p->tool_index = p->ncalls++;
            p->dest = HARMONY_DEST_TOOL_ARGS;
        }
    } else if (ch == HARMONY_CHANNEL_ANALYSIS) {
        p->dest = HARMONY_DEST_REASONING;
    } else {
        p->dest = HARMONY_DEST_CONTENT;
        if (ch != HARMONY_CHANNEL_FINAL && ch != HARMONY_CHANNEL_COMMENTARY) p->malformed = true;
    }
    p->state = S_CONTENT;
    if (!p->discard) s_emit(p, HARMONY_EV_MSG_START, NULL, 0);
}

/* Closes the open message: flushes held-back bytes and emits MSG_END. */
static void s_close(harmony_parser_t *p) {
    if (p->state != S_CONTENT) return;
    if (p->npend) s_content_bytes(p, NULL, 0, true);
    if (p->dest == HARMONY_DEST_TOOL_ARGS && p->calls[p->tool_index].args.len == 0) {
        p->malformed = true; /* a call with no arguments */
        hbuf_puts(&p->calls[p->tool_index].args, "{}");
        if (p->calls[p->tool_index].args.oom) p->oom = true;
    }
    if (!p->discard) s_emit(p, HARMONY_EV_MSG_END, NULL, 0);
    s_clear_msg(p);
    p->discard = false;
    p->state = S_EXPECT_START;
}

/* Ends the generation: tool_calls whenever a call was made (whatever the stop token), else
 * stop. */
static void s_done(harmony_parser_t *p) {
    p->finish = p->ncalls > 0 ? HARMONY_FINISH_TOOL_CALLS : HARMONY_FINISH_STOP;
    p->state = S_DONE;
    s_emit(p, HARMONY_EV_DONE, NULL, 0);
}

/* ---- headers ------------------------------------------------------------------------------ */

static void s_begin_header(harmony_parser_t *p, bool after_start) {
    hbuf_free(&p->header);
    p->after_start = after_start;
    p->hdr_special = false;
    p->state = S_HEADER;
}

static void s_header_add(harmony_parser_t *p, const char *s, size_t n) {
    if (p->header.len + n > S_HEADER_MAX) {
        p->malformed = true;
        return;
    }
    hbuf_add(&p->header, s, n);
    if (p->header.oom) p->oom = true;
}

/* Whether a header-less run of text can no longer be a header (so it is plain content):
 * a header before <|channel|> is at most "assistant to=functions.NAME json". */
static bool s_header_is_text(const harmony_parser_t *p) {
    if (p->after_start || p->hdr_special) return false;
    const char *h = p->header.data ? p->header.data : "";
    if (p->header.len > 128 || memchr(h, '\n', p->header.len)) return true;
    int words = 0;
    bool in = false;
    for (size_t i = 0; i < p->header.len; i++) {
        bool sp = h[i] == ' ' || h[i] == '\t' || h[i] == '\r';
        if (!sp && !in) words++;
        in = !sp;
    }
    return words > 3;
}

/* Turns the collected header text into a final-channel content message. */
static void s_header_as_text(harmony_parser_t *p) {
    p->malformed = true;
    hbuf_t h = p->header;
    p->header = (hbuf_t){0};
    s_open(p, HARMONY_CHANNEL_NONE, NULL, NULL);
    s_content_bytes(p, h.data, h.len, false);
    hbuf_free(&h);
}

/* The header ended without <|message|> (terminator, new <|start|>, end of input). */
static void s_header_abort(harmony_parser_t *p) {
    if (p->header.len > 0 && !p->after_start && !p->hdr_special) {
        s_header_as_text(p);
        s_close(p);
    } else if (p->header.len > 0 || p->after_start) {
        p->malformed = true;
    }
    hbuf_free(&p->header);
    p->state = S_EXPECT_START;
}

static bool s_is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Parses the header at <|message|> and opens the message. */
static void s_header_done(harmony_parser_t *p) {
    hbuf_touch(&p->header);
    if (p->header.oom) {
        p->oom = true;
        return;
    }
    char *h = p->header.data;
    size_t n = p->header.len;
    harmony_channel_t ch = HARMONY_CHANNEL_NONE;
    /* The channel: the word after <|channel|>, cut out of the header. */
    char *cm = strstr(h, "<|channel|>");
    if (cm) {
        char *v = cm + 11, *e = v;
        while (*e && !s_is_space(*e) && *e != '<')
            e++;
        size_t vl = (size_t)(e - v);
        if (vl == 8 && !memcmp(v, "analysis", 8))
            ch = HARMONY_CHANNEL_ANALYSIS;
        else if (vl == 10 && !memcmp(v, "commentary", 10))
            ch = HARMONY_CHANNEL_COMMENTARY;
        else if (vl == 5 && !memcmp(v, "final", 5))
            ch = HARMONY_CHANNEL_FINAL;
        else
            ch = HARMONY_CHANNEL_UNKNOWN;
        memmove(cm, e, (size_t)(h + n - e) + 1);
        n -= (size_t)(e - cm);
    }
    if (ch == HARMONY_CHANNEL_NONE || ch == HARMONY_CHANNEL_UNKNOWN) p->malformed = true;
    /* The rest: whitespace-separated parts; <|constrain|> starts a part of its own. */
    char *recipient = NULL, *ctype = NULL;
    bool first = true, discard = false;
    size_t i = 0;
    while (i < n) {
        while (i < n && s_is_space(h[i]))
            i++;
        if (i >= n) break;
        size_t s = i;
        if (!strncmp(h + i, "<|constrain|>", 13)) i += 13;
        while (i < n && !s_is_space(h[i]) && strncmp(h + i, "<|constrain|>", 13) != 0)
            i++;
        const char *part = h + s;
        size_t pl = i - s;
        bool was_first = first;
        first = false;
        if (was_first && pl == 9 && !memcmp(part, "assistant", 9))
            continue; /* the role (expected after <|start|>, tolerated before) */
        if (pl > 3 && !memcmp(part, "to=", 3)) {
            if (!recipient)
                recipient = s_utf8_clean(part + 3, pl - 3);
            else
                p->malformed = true;
            continue;
        }
        if (was_first && p->after_start) {
            p->malformed = true; /* another author: its message is dropped */
            discard = true;
            continue;
        }
        if (pl >= 13 && !memcmp(part, "<|constrain|>", 13)) {
            part += 13;
            pl -= 13;
        }
        if (pl == 0) {
            p->malformed = true;
        } else if (!recipient && pl > 10 && !memcmp(part, "functions.", 10)) {
            recipient = s_utf8_clean(part, pl); /* a bare recipient */
        } else if (!ctype && !memmem(part, pl, "<|", 2)) {
            ctype = s_utf8_clean(part, pl);
        } else {
            p->malformed = true;
        }
    }
    if (recipient && (!strcmp(recipient, "all") || !strcmp(recipient, "assistant") ||
                      !strcmp(recipient, "user"))) {
        free(recipient);
        recipient = NULL;
    }
    hbuf_free(&p->header);
    if (discard) {
        free(recipient); /* not a call the assistant made */
        recipient = NULL;
    }
    p->discard = discard;
    s_open(p, ch, recipient, ctype);
}

/* ---- the state machine -------------------------------------------------------------------- */

int harmony_parser_new(const tokenizer_t *tok, harmony_event_fn fn, void *user,
                       harmony_parser_t **out) {
    harmony_parser_t *p = calloc(1, sizeof *p);
    if (!p) return GERR_NOMEM;
    p->tok = tok;
    p->fn = fn;
    p->user = user;
    s_clear_msg(p);
    s_begin_header(p, false); /* the prompt ended with <|start|>assistant */
    *out = p;
    return 0;
}

void harmony_parser_free(harmony_parser_t **pp) {
    if (!pp || !*pp) return;
    harmony_parser_t *p = *pp;
    hbuf_free(&p->header);
    s_clear_msg(p);
    hbuf_free(&p->reasoning);
    hbuf_free(&p->content);
    for (size_t i = 0; i < p->ncalls; i++) {
        free(p->calls[i].name);
        hbuf_free(&p->calls[i].args);
    }
    free(p->calls);
    free(p);
    *pp = NULL;
}

bool harmony_parser_done(const harmony_parser_t *p) {
    return p->state == S_DONE;
}

static bool s_is_stop(int32_t id) {
    return id == TOK_RETURN || id == TOK_CALL || id == TOK_ENDOFTEXT;
}

/* A stop token: ends the generation (the open message, if any, was closed). */
static void s_stop(harmony_parser_t *p, int32_t id, bool was_call) {
    if (id == TOK_CALL && !was_call)
        p->malformed = true; /* <|call|> after something that was not a tool call */
    s_done(p);
}

int harmony_parser_push(harmony_parser_t *p, int32_t id) {
    if (p->oom) return GERR_NOMEM;
    if (p->finished || p->state == S_DONE) {
        p->malformed = true; /* output after the end */
        return 0;
    }
    size_t blen = 0;
    const char *bytes = id >= 0 ? tok_token_bytes(p->tok, id, &blen) : NULL;
    bool special = id < 0 || tok_is_special(p->tok, id);
    switch (p->state) {
    case S_HEADER:
        if (id == TOK_MESSAGE) {
            s_header_done(p);
        } else if (id == TOK_CHANNEL || id == TOK_CONSTRAIN) {
            s_header_add(p, bytes ? bytes : "", bytes ? blen : 0);
            p->hdr_special = true;
        } else if (id == TOK_START) {
            s_header_abort(p);
            s_begin_header(p, true);
        } else if (id == TOK_END) {
            s_header_abort(p);
        } else if (s_is_stop(id)) {
            s_header_abort(p);
            s_stop(p, id, false);
        } else if (special || !bytes) {
            p->malformed = true;
        } else {
            s_header_add(p, bytes, blen);
            if (s_header_is_text(p)) s_header_as_text(p);
        }
        break;
    case S_CONTENT:
        if (id == TOK_END) {
            s_close(p);
        } else if (s_is_stop(id)) {
            bool was_call = p->dest == HARMONY_DEST_TOOL_ARGS;
            s_close(p);
            s_stop(p, id, was_call);
        } else if (id == TOK_START) {
            p->malformed = true; /* a message without <|end|> */
            s_close(p);
            s_begin_header(p, true);
        } else if (id == TOK_CHANNEL) {
            p->malformed = true; /* a new header without <|end|><|start|> */
            s_close(p);
            s_begin_header(p, false);
            s_header_add(p, bytes ? bytes : "", bytes ? blen : 0);
            p->hdr_special = true;
        } else if (special || !bytes) {
            p->malformed = true;
        } else {
            s_content_bytes(p, bytes, blen, false);
        }
        break;
    case S_EXPECT_START:
        if (id == TOK_START) {
            s_begin_header(p, true);
        } else if (s_is_stop(id)) {
            s_stop(p, id, false);
        } else if (id == TOK_CHANNEL) {
            p->malformed = true;
            s_begin_header(p, false);
            s_header_add(p, bytes ? bytes : "", bytes ? blen : 0);
            p->hdr_special = true;
        } else if (special || !bytes) {
            p->malformed = true;
        } else {
            p->malformed = true; /* text without <|start|> */
            s_begin_header(p, false);
            s_header_add(p, bytes, blen);
            if (s_header_is_text(p)) s_header_as_text(p);
        }
        break;
    case S_DONE:
        break;
    }
    return p->oom ? GERR_NOMEM : 0;
}

int harmony_parser_push_ids(harmony_parser_t *p, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int rc = harmony_parser_push(p, ids[i]);
        if (rc < 0) return rc;
    }
    return 0;
}

int harmony_parser_finish(harmony_parser_t *p, harmony_result_t *out) {
    memset(out, 0, sizeof *out);
    if (!p->finished) {
        if (p->state == S_HEADER)
            s_header_abort(p);
        else if (p->state == S_CONTENT)
            s_close(p);
        p->finished = true;
    }
    if (p->oom) return GERR_NOMEM;
    out->reasoning = strdup(p->reasoning.data ? p->reasoning.data : "");
    out->content = strdup(p->content.data ? p->content.data : "");
    if (p->ncalls) out->tool_calls = calloc(p->ncalls, sizeof *out->tool_calls);
    bool ok = out->reasoning && out->content && (!p->ncalls || out->tool_calls);
    for (size_t i = 0; ok && i < p->ncalls; i++) {
        out->tool_calls[i].name = strdup(p->calls[i].name);
        out->tool_calls[i].arguments = strdup(p->calls[i].args.data ? p->calls[i].args.data : "");
        out->n_tool_calls = i + 1;
        ok = out->tool_calls[i].name && out->tool_calls[i].arguments;
    }
    if (!ok) {
        harmony_result_free(out);
        return GERR_NOMEM;
    }
    out->finish = p->finish;
    out->malformed = p->malformed;
    return 0;
}

void harmony_result_free(harmony_result_t *r) {
    if (!r) return;
    free(r->reasoning);
    free(r->content);
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        free(r->tool_calls[i].id);
        free(r->tool_calls[i].name);
        free(r->tool_calls[i].arguments);
    }
    free(r->tool_calls);
    memset(r, 0, sizeof *r);
}
