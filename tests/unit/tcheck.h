/* tcheck: a minimal test harness. Each test binary is one ctest case; CHECK
 * records a failure with file/line and goes on; tcheck_done prints the closing
 * line "N passed, M failed" and returns the exit status. */
#ifndef GPTOSS_TCHECK_H
#define GPTOSS_TCHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int tcheck_pass, tcheck_fail;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            tcheck_pass++;                                                                         \
        } else {                                                                                   \
            tcheck_fail++;                                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (cond) {                                                                                \
            tcheck_pass++;                                                                         \
        } else {                                                                                   \
            tcheck_fail++;                                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a),      \
              (double)(b), (double)(tol))

/* Prints the summary line and returns the process exit status. */
static inline int tcheck_done(const char *name) {
    printf("%s: %d passed, %d failed\n", name, tcheck_pass, tcheck_fail);
    return tcheck_fail ? 1 : 0;
}

/* Directory of test fixtures (GPTOSS_FIXTURES, set by ctest). */
static inline const char *tcheck_fixtures(void) {
    const char *d = getenv("GPTOSS_FIXTURES");
    return d ? d : "tests/fixtures";
}

/* Directory holding the built executables (GPTOSS_BIN, set by ctest). */
static inline const char *tcheck_bindir(void) {
    const char *d = getenv("GPTOSS_BIN");
    return d ? d : "build";
}

#endif
