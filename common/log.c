/* log: one formatted line per call to stderr, with role and subsystem. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static char s_role[32] = "gptoss";
static int s_level = -1;

void log_set_role(const char *role) {
    snprintf(s_role, sizeof s_role, "%s", role);
}

void log_set_level(log_level_t level) {
    s_level = (int)level;
}

static int s_effective_level(void) {
    if (s_level < 0) {
        const char *env = getenv("GPTOSS_LOG");
        s_level = LOG_LEVEL_INFO;
        if (env && strcasecmp(env, "debug") == 0) s_level = LOG_LEVEL_DEBUG;
        if (env && strcasecmp(env, "warn") == 0) s_level = LOG_LEVEL_WARN;
        if (env && strcasecmp(env, "error") == 0) s_level = LOG_LEVEL_ERROR;
    }
    return s_level;
}

void log_msg(log_level_t level, const char *sys, const char *fmt, ...) {
    if ((int)level < s_effective_level()) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s %s %s ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, s_role, sys, names[level]);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    size_t len = strlen(line);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nothing sensible to do if stderr is gone */
}
