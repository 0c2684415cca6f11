/* harmony_buf: a growable byte buffer shared by the harmony_*.c files (internal, not API).
 *
 * Appends never fail silently: the first allocation failure sets `oom` and later appends are
 * no-ops, so a caller can build a whole string and check once at the end. The data is kept
 * NUL-terminated whenever it is non-NULL. */
#ifndef GPTOSS_HARMONY_BUF_H
#define GPTOSS_HARMONY_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data; /* NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    bool oom;
} hbuf_t;

static inline void hbuf_add(hbuf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static inline void hbuf_puts(hbuf_t *b, const char *s) {
    hbuf_add(b, s, strlen(s));
}

static inline void hbuf_printf(hbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void hbuf_printf(hbuf_t *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        hbuf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    hbuf_add(b, big, (size_t)n);
    free(big);
}

/* Ensures data is non-NULL (an empty string) unless out of memory. */
static inline void hbuf_touch(hbuf_t *b) {
    hbuf_add(b, "", 0);
}

/* Hands the data to the caller (NULL if out of memory) and resets the buffer. */
static inline char *hbuf_take(hbuf_t *b) {
    hbuf_touch(b);
    char *d = b->oom ? NULL : b->data;
    if (b->oom) free(b->data);
    *b = (hbuf_t){0};
    return d;
}

static inline void hbuf_free(hbuf_t *b) {
    free(b->data);
    *b = (hbuf_t){0};
}

#endif
