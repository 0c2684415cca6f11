/* gerr: formatting of error messages for outside-input failures. */
#include "gerr.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void gerr_set(gerr_t *e, const char *fmt, ...) {
    if (!e) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

void gerr_prefix(gerr_t *e, const char *fmt, ...) {
    if (!e) return;
    char pre[GERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    size_t pl = strlen(pre), ol = strnlen(e->msg, sizeof e->msg - 1);
    if (pl + 2 >= sizeof e->msg) pl = sizeof e->msg - 3;
    if (pl + 2 + ol >= sizeof e->msg) ol = sizeof e->msg - 3 - pl;
    memmove(e->msg + pl + 2, e->msg, ol);
    memcpy(e->msg, pre, pl);
    e->msg[pl] = ':';
    e->msg[pl + 1] = ' ';
    e->msg[pl + 2 + ol] = 0;
}
