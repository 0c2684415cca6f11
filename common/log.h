/* log: greppable log lines on stderr: "<time> <role> <subsystem> <level> message".
 *
 * The role ("gateway", "shard 2", "run") is set once per process. Not a
 * structured logger; one line per call, written with a single write(2) so lines
 * from several processes sharing a terminal do not interleave. */
#ifndef GPTOSS_LOG_H
#define GPTOSS_LOG_H

typedef enum { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR } log_level_t;

/* Sets this process's role shown on every line (copied). */
void log_set_role(const char *role);
/* Sets the lowest level that is printed (default INFO; GPTOSS_LOG=debug overrides). */
void log_set_level(log_level_t level);
/* Prints one line for subsystem `sys` at `level`. */
void log_msg(log_level_t level, const char *sys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_DEBUG(sys, ...) log_msg(LOG_LEVEL_DEBUG, sys, __VA_ARGS__)
#define LOG_INFO(sys, ...)  log_msg(LOG_LEVEL_INFO, sys, __VA_ARGS__)
#define LOG_WARN(sys, ...)  log_msg(LOG_LEVEL_WARN, sys, __VA_ARGS__)
#define LOG_ERROR(sys, ...) log_msg(LOG_LEVEL_ERROR, sys, __VA_ARGS__)

#endif
