/* A tiny assertion framework for the C unit tests of the mod_entra core.
 *
 *   static void test_something(void) { CHECK(x == 1); CHECK_STR_EQ(s, "a"); }
 *   int main(void) {
 *       unit_begin("test_foo");          apr_initialize() and the global pool `up`
 *       RUN(test_something);
 *       return unit_end();               prints "test_foo: N passed, M failed"
 *   }
 *
 * Checks only count from the main thread (the counters are not atomic). A failing check
 * prints "FAIL <test function> (<file>:<line>): <expression>" and the binary exits 1. */
#ifndef ENTRA_UNIT_H
#define ENTRA_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_pools.h>
#include <apr_strings.h>

static int unit_passed, unit_failed;
static const char *unit_name = "unit";
static const char *unit_test = "(none)";
static apr_pool_t *up; /* lives for the whole binary */

static inline int unit_report(int ok, const char *file, int line, const char *expr,
                              const char *detail)
{
    if (ok) {
        unit_passed++;
        return 1;
    }
    unit_failed++;
    fprintf(stderr, "FAIL %s (%s:%d): %s%s%s\n", unit_test, file, line, expr, detail ? " -- " : "",
            detail ? detail : "");
    return 0;
}

#define CHECK(cond) unit_report(!!(cond), __FILE__, __LINE__, #cond, NULL)

/* Like CHECK, with a printf-style note shown only on failure. */
#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        char unit_note_[512];                                                                      \
        int unit_ok_ = !!(cond);                                                                   \
        if (!unit_ok_)                                                                             \
            snprintf(unit_note_, sizeof(unit_note_), __VA_ARGS__);                                 \
        unit_report(unit_ok_, __FILE__, __LINE__, #cond, unit_ok_ ? NULL : unit_note_);            \
    } while (0)

static inline int unit_str_eq(const char *file, int line, const char *expr, const char *a,
                              const char *b)
{
    char note[512];
    int ok = (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
    if (!ok)
        snprintf(note, sizeof(note), "got \"%.200s\", want \"%.200s\"", a ? a : "(null)",
                 b ? b : "(null)");
    return unit_report(ok, file, line, expr, ok ? NULL : note);
}

static inline int unit_int_eq(const char *file, int line, const char *expr, long long a,
                              long long b)
{
    char note[128];
    int ok = a == b;
    if (!ok)
        snprintf(note, sizeof(note), "got %lld, want %lld", a, b);
    return unit_report(ok, file, line, expr, ok ? NULL : note);
}

/* a is the actual value, b the expected one. NULL equals only NULL. */
#define CHECK_STR_EQ(a, b) unit_str_eq(__FILE__, __LINE__, #a " == " #b, (a), (b))
#define CHECK_INT_EQ(a, b)                                                                         \
    unit_int_eq(__FILE__, __LINE__, #a " == " #b, (long long)(a), (long long)(b))

/* True when `needle` occurs in `hay` (NULL never contains anything). */
static inline int unit_contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        unit_test = #fn;                                                                           \
        fn();                                                                                      \
        unit_test = "(none)";                                                                      \
    } while (0)

static inline void unit_begin(const char *name)
{
    unit_name = name;
    if (apr_initialize() != APR_SUCCESS || apr_pool_create(&up, NULL) != APR_SUCCESS) {
        fprintf(stderr, "%s: APR initialisation failed\n", name);
        exit(2);
    }
}

static inline int unit_end(void)
{
    apr_pool_destroy(up);
    up = NULL;
    apr_terminate();
    printf("%s: %d passed, %d failed\n", unit_name, unit_passed, unit_failed);
    fflush(stdout);
    return unit_failed ? 1 : 0;
}

#endif
