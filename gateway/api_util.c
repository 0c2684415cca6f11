/* api_util: small pieces shared by the API modules — a byte buffer, OpenAI error bodies, a
 * constant-time compare for the API key, UTF-8 repair for token text that is not valid on its
 * own, stop-string search and hold-back, typed reads of request fields, random ids.
 * Everything here is pure (but the random functions) and is unit-tested in test_api.c. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "api.h"

int api_buf_put(api_buf_t *b, const void *data, size_t n) {
    if (b->oom) return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int api_buf_puts(api_buf_t *b, const char *s) {
    return api_buf_put(b, s, strlen(s));
}

void api_buf_free(api_buf_t *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static const char *s_error_type(int status) {
    switch (status) {
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 500:
        return "server_error";
    case 503:
        return "service_unavailable";
    default:
        return "invalid_request_error";
    }
}

void api_error_set(api_error_t *e, int status, const char *param, const char *code, const char *fmt,
                   ...) {
    if (!e) return;
    memset(e, 0, sizeof *e);
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", s_error_type(status));
    if (param) snprintf(e->param, sizeof e->param, "%s", param);
    if (code) snprintf(e->code, sizeof e->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error_t *e) {
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    char *msg = api_utf8_repair(e->message, strlen(e->message), NULL);
    char *out = NULL;
    if (err && msg && cJSON_AddStringToObject(err, "message", msg) &&
        cJSON_AddStringToObject(err, "type", e->type[0] ? e->type : s_error_type(e->status)) &&
        (e->param[0] ? cJSON_AddStringToObject(err, "param", e->param)
                     : cJSON_AddNullToObject(err, "param")) &&
        (e->code[0] ? cJSON_AddStringToObject(err, "code", e->code)
                    : cJSON_AddNullToObject(err, "code")))
        out = cJSON_PrintUnformatted(root);
    free(msg);
    cJSON_Delete(root);
    return out;
}

bool api_ct_equal(const char *a, size_t na, const char *b, size_t nb) {
    /* Every byte of the longer input is visited; the result depends on all of them. */
    size_t n = na > nb ? na : nb;
    unsigned diff = na != nb;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = na ? (unsigned char)a[i % na] : 0;
        unsigned char y = nb ? (unsigned char)b[i % nb] : 0;
        diff |= (unsigned)(x ^ y);
    }
    return diff == 0 && na == nb;
}

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 when ill-formed. */
static size_t s_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return c ? 1 : 0;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0)
        len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC)
        len = 3;
    else if (c == 0xED)
        len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF)
        len = 3;
    else if (c == 0xF0)
        len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4)
        len = 4, hi = 0x8F;
    else
        return 0;
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

char *api_utf8_repair(const char *s, size_t n, size_t *out_len) {
    api_buf_t b = {0};
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    if (api_buf_put(&b, "", 0) < 0) return NULL;
    while (i < n) {
        size_t k = s_utf8_len(u + i, n - i);
        if (k) {
            api_buf_put(&b, s + i, k);
            i += k;
        } else {
            api_buf_put(&b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    if (b.oom) {
        api_buf_free(&b);
        return NULL;
    }
    if (out_len) *out_len = b.len;
    return b.p;
}

void api_random_hex(char *out, size_t nbytes) {
    static const char hex[] = "0123456789abcdef";
    unsigned char buf[64];
    if (nbytes > sizeof buf) nbytes = sizeof buf;
    size_t got = 0;
    while (got < nbytes) {
        ssize_t r = getrandom(buf + got, nbytes - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        got += (size_t)r;
    }
    if (got < nbytes) { /* no entropy source: fall back to the clock (ids stay unique enough) */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30);
        for (size_t i = got; i < nbytes; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[i] = (unsigned char)(x >> 56);
        }
    }
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[buf[i] >> 4];
        out[2 * i + 1] = hex[buf[i] & 15];
    }
    out[2 * nbytes] = '\0';
}

uint64_t api_random_u64(void) {
    char h[17];
    api_random_hex(h, 8);
    return strtoull(h, NULL, 16);
}

long api_stop_find(const char *text, size_t n, size_t from, char *const *stops, int n_stops) {
    long best = -1;
    if (from > n) return -1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > n - from) continue;
        const char *p = memmem(text + from, n - from, stops[i], sl);
        if (p && (best < 0 || p - text < best)) best = (long)(p - text);
    }
    return best;
}

size_t api_stop_holdback(const char *text, size_t n, char *const *stops, int n_stops) {
    size_t hold = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = (sl - 1 < n ? sl - 1 : n); k > hold; k--) {
            if (memcmp(text + n - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    /* never split a UTF-8 character between what is sent and what is held */
    while (hold < n && ((unsigned char)text[n - hold] & 0xC0) == 0x80)
        hold++;
    return hold;
}

/* JSON null or absent: the caller treats both as "not given". */
static const cJSON *s_field(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

int api_get_number(const cJSON *obj, const char *key, double lo, double hi, double *out,
                   api_error_t *e) {
    const cJSON *v = s_field(obj, key);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        api_error_set(e, 400, key, "invalid_type", "%s: must be a number", key);
        return -1;
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        api_error_set(e, 400, key, "invalid_value", "%s: %g is out of range [%g, %g]", key,
                      v->valuedouble, lo, hi);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

int api_get_int(const cJSON *obj, const char *key, long long lo, long long hi, long long *out,
                api_error_t *e) {
    const cJSON *v = s_field(obj, key);
    if (!v) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9.007199254740992e15) {
        api_error_set(e, 400, key, "invalid_type", "%s: must be an integer", key);
        return -1;
    }
    if (d < (double)lo || d > (double)hi) {
        api_error_set(e, 400, key, "invalid_value", "%s: %.0f is out of range [%lld, %lld]", key, d,
                      lo, hi);
        return -1;
    }
    *out = (long long)d;
    return 0;
}

int api_get_bool(const cJSON *obj, const char *key, bool *out, api_error_t *e) {
    const cJSON *v = s_field(obj, key);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) {
        api_error_set(e, 400, key, "invalid_type", "%s: must be true or false", key);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

int api_get_string(const cJSON *obj, const char *key, const char **out, api_error_t *e) {
    const cJSON *v = s_field(obj, key);
    if (!v) return 0;
    if (!cJSON_IsString(v)) {
        api_error_set(e, 400, key, "invalid_type", "%s: must be a string", key);
        return -1;
    }
    *out = v->valuestring;
    return 0;
}
