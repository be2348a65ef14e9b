/* Shared by the libFuzzer harnesses (t/fuzz/fuzz_*.c, built by `make fuzz`).
 *
 * The harnesses link the real core, except that entra_http_curl.c is compiled with its
 * request function renamed: entra_http_request is http_stub.c's, which answers from the
 * fuzzer's input through a handler the harness installs (and aborts when none is set), so
 * no harness can reach the network. */
#ifndef ENTRA_FUZZ_H
#define ENTRA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <apr_general.h>
#include <apr_pools.h>
#include <apr_strings.h>

#include "entra_http.h"

/* Answers one request; `resp` is pre-filled with status 200 and an empty body. */
typedef apr_status_t fuzz_http_handler(void *baton, apr_pool_t *p, const char *url,
                                       const char *const *headers, entra_http_resp *resp,
                                       const char **why);

void fuzz_http_set(fuzz_http_handler *h, void *baton);

/* apr_initialize once per process; returns a pool that lives as long. */
apr_pool_t *fuzz_init(void);

/* A property the harness checks failed: report and abort, so libFuzzer keeps the input. */
#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FUZZ_ASSERT failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Splits `data` at the first occurrence of the 4-byte separator "\n--\n": the harnesses
 * that need several documents take them from one input this way. Returns the number of
 * parts stored (at most `max`); the last part holds the rest. */
size_t fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, size_t max);

#endif
