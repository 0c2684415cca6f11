/* gptoss-tokenize: the tokenizer as a JSON-lines filter, for tests and scripts.
 *
 *   gptoss-tokenize --tokenizer PATH [--special]   {"text": "..."} lines in, {"ids": [...]} out
 *   gptoss-tokenize --tokenizer PATH --decode      {"ids": [...]} lines in, {"text": "..."} out
 *
 * One output line per input line, in order. A line that cannot be read gives
 * {"error": "..."} in its place (and exit status 1), so the lines stay aligned.
 * The text may hold U+0000, so strings are decoded here with their lengths (cJSON
 * stops a string at NUL). Decoded text that is not valid UTF-8 is written with
 * U+FFFD in place of the bad bytes. Not a server: no batching, no threads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *p, *end;
} jcur_t;

typedef struct {
    char *b;
    size_t n, cap;
} buf_t;

static int s_buf_put(buf_t *b, const void *p, size_t n) {
    if (!b) return 0; /* validating only */
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->b, cap);
        if (!q) return -1;
        b->b = q;
        b->cap = cap;
    }
    memcpy(b->b + b->n, p, n);
    b->n += n;
    b->b[b->n] = 0;
    return 0;
}

static void s_ws(jcur_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
        c->p++;
}

static int s_hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            d = (unsigned)(ch - 'A' + 10);
        else
            return -1;
        *v = *v * 16 + d;
    }
    return 0;
}

static int s_put_utf8(buf_t *b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return s_buf_put(b, u, n);
}

/* Parses a JSON string at c (which must point at '"'); decoded bytes go to out if non-NULL. */
static const char *s_string(jcur_t *c, buf_t *out) {
    if (c->p >= c->end || *c->p != '"') return "expected a string";
    c->p++;
    buf_t *b = out;
    while (c->p < c->end && *c->p != '"') {
        const char *run = c->p;
        while (c->p < c->end && *c->p != '"' && *c->p != '\\' && (unsigned char)*c->p >= 0x20)
            c->p++;
        if (c->p > run && s_buf_put(b, run, (size_t)(c->p - run)) < 0) return "out of memory";
        if (c->p >= c->end || *c->p == '"') break;
        if ((unsigned char)*c->p < 0x20) return "raw control character in a string";
        if (c->end - c->p < 2) return "unterminated escape";
        char e = c->p[1];
        c->p += 2;
        char ch;
        switch (e) {
        case '"':
            ch = '"';
            break;
        case '\\':
            ch = '\\';
            break;
        case '/':
            ch = '/';
            break;
        case 'b':
            ch = '\b';
            break;
        case 'f':
            ch = '\f';
            break;
        case 'n':
            ch = '\n';
            break;
        case 'r':
            ch = '\r';
            break;
        case 't':
            ch = '\t';
            break;
        case 'u': {
            unsigned cp;
            if (c->end - c->p < 4 || s_hex4(c->p, &cp) < 0) return "bad \\u escape";
            c->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' ||
                    s_hex4(c->p + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return "unpaired surrogate in \\u escape";
                c->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return "unpaired surrogate in \\u escape";
            }
            if (s_put_utf8(b, cp) < 0) return "out of memory";
            continue;
        }
        default:
            return "bad escape in a string";
        }
        if (s_buf_put(b, &ch, 1) < 0) return "out of memory";
    }
    if (c->p >= c->end) return "unterminated string";
    c->p++;
    return NULL;
}

/* Skips any JSON value. */
static const char *s_skip(jcur_t *c, int depth) {
    if (depth > JSON_MAX_DEPTH) return "nesting too deep";
    s_ws(c);
    if (c->p >= c->end) return "expected a value";
    char ch = *c->p;
    if (ch == '"') return s_string(c, NULL);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        s_ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return NULL;
        }
        for (;;) {
            const char *e;
            if (ch == '{') {
                s_ws(c);
                if ((e = s_string(c, NULL))) return e;
                s_ws(c);
                if (c->p >= c->end || *c->p != ':') return "expected ':'";
                c->p++;
            }
            if ((e = s_skip(c, depth + 1))) return e;
            s_ws(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                continue;
            }
            if (c->p < c->end && *c->p == close) {
                c->p++;
                return NULL;
            }
            return "expected ',' or a closing bracket";
        }
    }
    const char *start = c->p;
    while (c->p < c->end && strchr("+-0123456789.eEtrufalsn", *c->p))
        c->p++;
    return c->p > start ? NULL : "unexpected character";
}

/* Parses an array of integers. */
static const char *s_ids(jcur_t *c, tok_ids_t *ids) {
    s_ws(c);
    if (c->p >= c->end || *c->p != '[') return "\"ids\" is not an array";
    c->p++;
    s_ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return NULL;
    }
    for (;;) {
        s_ws(c);
        char *endp;
        errno = 0;
        long v = strtol(c->p, &endp, 10);
        if (endp == c->p || endp > c->end || errno || v < INT32_MIN || v > INT32_MAX)
            return "\"ids\" holds something that is not an integer";
        c->p = endp;
        if (tok_ids_push(ids, (int32_t)v) < 0) return "out of memory";
        s_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == ']') {
            c->p++;
            return NULL;
        }
        return "expected ',' or ']' in \"ids\"";
    }
}

/* Parses one line: an object with "text" (string) or "ids" (integer array). */
static const char *s_line(const char *line, size_t n, buf_t *text, bool *has_text, tok_ids_t *ids,
                          bool *has_ids) {
    jcur_t c = {line, line + n};
    buf_t key = {0};
    const char *e = NULL;
    s_ws(&c);
    if (c.p >= c.end || *c.p != '{') return "line is not a JSON object";
    c.p++;
    s_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
        goto done;
    }
    for (;;) {
        s_ws(&c);
        key.n = 0;
        if ((e = s_string(&c, &key))) goto out;
        s_ws(&c);
        if (c.p >= c.end || *c.p != ':') {
            e = "expected ':'";
            goto out;
        }
        c.p++;
        s_ws(&c);
        if (key.n == 4 && memcmp(key.b, "text", 4) == 0) {
            text->n = 0;
            if ((e = s_string(&c, text))) goto out;
            *has_text = true;
        } else if (key.n == 3 && memcmp(key.b, "ids", 3) == 0) {
            ids->len = 0;
            if ((e = s_ids(&c, ids))) goto out;
            *has_ids = true;
        } else if ((e = s_skip(&c, 0))) {
            goto out;
        }
        s_ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        if (c.p < c.end && *c.p == '}') {
            c.p++;
            break;
        }
        e = "expected ',' or '}'";
        goto out;
    }
done:
    s_ws(&c);
    if (c.p != c.end) e = "trailing characters after the object";
out:
    free(key.b);
    return e;
}

/* Writes bytes as a JSON string body: valid UTF-8 raw, controls escaped, bad bytes U+FFFD. */
static void s_put_json_text(FILE *f, const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char ch = p[i];
        if (ch == '"' || ch == '\\') {
            fputc('\\', f);
            fputc(ch, f);
            i++;
        } else if (ch < 0x20) {
            switch (ch) {
            case '\n':
                fputs("\\n", f);
                break;
            case '\r':
                fputs("\\r", f);
                break;
            case '\t':
                fputs("\\t", f);
                break;
            case '\b':
                fputs("\\b", f);
                break;
            case '\f':
                fputs("\\f", f);
                break;
            default:
                fprintf(f, "\\u%04x", ch);
            }
            i++;
        } else if (ch < 0x80) {
            fputc(ch, f);
            i++;
        } else {
            /* validate one multi-byte sequence */
            int need = ch >= 0xF0 && ch <= 0xF4   ? 3
                       : ch >= 0xE0 && ch <= 0xEF ? 2
                       : ch >= 0xC2 && ch <= 0xDF ? 1
                                                  : -1;
            unsigned char lo = 0x80, hi = 0xBF;
            if (ch == 0xE0) lo = 0xA0;
            if (ch == 0xED) hi = 0x9F;
            if (ch == 0xF0) lo = 0x90;
            if (ch == 0xF4) hi = 0x8F;
            int k = 1;
            if (need > 0) {
                for (; k <= need && i + (size_t)k < n; k++) {
                    unsigned char b = p[i + (size_t)k];
                    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
                }
            }
            if (need > 0 && k == need + 1) {
                fwrite(p + i, 1, (size_t)k, f);
            } else {
                fputs("\xEF\xBF\xBD", f);
            }
            i += (size_t)k;
        }
    }
}

static void s_put_error(FILE *f, const char *msg) {
    fputs("{\"error\":\"", f);
    s_put_json_text(f, (const unsigned char *)msg, strlen(msg));
    fputs("\"}\n", f);
}

static int s_usage(FILE *f) {
    fprintf(f, "usage: gptoss-tokenize --tokenizer PATH [--special | --decode]\n"
               "  reads JSON lines {\"text\": \"...\"} on stdin, writes {\"ids\": [...]} lines\n"
               "  --special  turn exact special-token strings such as <|start|> into their ids\n"
               "  --decode   read {\"ids\": [...]} lines, write {\"text\": \"...\"} lines\n"
               "  PATH is a tokenizer.json or a model folder holding one\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    bool special = false, decode = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--special") == 0)
            special = true;
        else if (strcmp(argv[i], "--decode") == 0)
            decode = true;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return s_usage(stdout) - 2;
        else
            return s_usage(stderr);
    }
    if (!path || (special && decode)) return s_usage(stderr);
    gerr_t err = {{0}};
    tokenizer_t *tok = NULL;
    if (tok_load(path, &tok, &err) < 0) {
        fprintf(stderr, "gptoss-tokenize: %s\n", err.msg);
        return 1;
    }
    int status = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    long lineno = 0;
    buf_t text = {0};
    tok_ids_t ids = {0};
    while ((n = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        bool has_text = false, has_ids = false;
        const char *e = s_line(line, (size_t)n, &text, &has_text, &ids, &has_ids);
        if (!e && !decode && !has_text) e = "no \"text\" string in the line";
        if (!e && decode && !has_ids) e = "no \"ids\" array in the line";
        if (e) {
            fprintf(stderr, "gptoss-tokenize: stdin line %ld: %s\n", lineno, e);
            s_put_error(stdout, e);
            status = 1;
            continue;
        }
        if (decode) {
            size_t len = 0;
            char *s = tok_decode(tok, ids.ids, ids.len, &len);
            if (!s) {
                s_put_error(stdout, "out of memory");
                status = 1;
                continue;
            }
            fputs("{\"text\":\"", stdout);
            s_put_json_text(stdout, (const unsigned char *)s, len);
            fputs("\"}\n", stdout);
            free(s);
        } else {
            ids.len = 0;
            int rc = special ? tok_encode_special(tok, text.b ? text.b : "", text.n, &ids)
                             : tok_encode(tok, text.b ? text.b : "", text.n, &ids);
            if (rc < 0) {
                fprintf(stderr, "gptoss-tokenize: stdin line %ld: encode failed (%d)\n", lineno,
                        rc);
                s_put_error(stdout, "encode failed");
                status = 1;
                continue;
            }
            fputs("{\"ids\":[", stdout);
            for (size_t i = 0; i < ids.len; i++)
                printf(i ? ",%d" : "%d", (int)ids.ids[i]);
            fputs("]}\n", stdout);
        }
    }
    free(line);
    free(text.b);
    tok_ids_free(&ids);
    tok_free(&tok);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "gptoss-tokenize: write error: %s\n", strerror(errno));
        return 1;
    }
    return status;
}
