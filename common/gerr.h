/* gerr: the error channel for outside input (files, requests, peers).
 *
 * Functions that can fail because of what they were given take a `gerr_t *`
 * (may be NULL) and return a negative code; the message says what was wrong
 * and, where it can, how to fix it. Programmer errors use assert instead. */
#ifndef GPTOSS_GERR_H
#define GPTOSS_GERR_H

#include <stddef.h>

#define GERR_MSG_MAX 1024

typedef struct {
    char msg[GERR_MSG_MAX]; /* NUL-terminated, empty when no error */
} gerr_t;

/* Error codes shared by every module (negative return values). */
enum {
    GERR_OK = 0,
    GERR_IO = -1,       /* open/read/mmap failed */
    GERR_FORMAT = -2,   /* malformed file or message */
    GERR_INVALID = -3,  /* well-formed but inconsistent or unsupported */
    GERR_NOMEM = -4,    /* allocation failed */
    GERR_NOTFOUND = -5, /* named thing absent */
    GERR_LIMIT = -6,    /* a configured limit exceeded */
};

/* Formats a message into e (if non-NULL), replacing any previous one. */
void gerr_set(gerr_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to the message already in e (if non-NULL). */
void gerr_prefix(gerr_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
