/* The harnesses' HTTP backend: whatever the installed handler answers, never the network. */
#include <string.h>
#include <apr_strings.h>

#include "fuzz.h"

static fuzz_http_handler *handler;
static void *handler_baton;

void fuzz_http_set(fuzz_http_handler *h, void *baton)
{
    handler = h;
    handler_baton = baton;
}

apr_status_t entra_http_request(apr_pool_t *p, const char *url, const char *const *headers,
                                const char *body, apr_size_t body_len,
                                const entra_http_opts *opts, entra_http_resp **resp,
                                const char **why)
{
    entra_http_resp *r = apr_pcalloc(p, sizeof(*r));

    if (!handler) {
        fprintf(stderr, "fuzz: unexpected HTTP request to %s\n", url);
        abort();
    }
    r->status = 200;
    r->body = apr_pstrdup(p, "");
    *resp = r;
    *why = NULL;
    return handler(handler_baton, p, url, headers, r, why);
}

apr_pool_t *fuzz_init(void)
{
    static apr_pool_t *root;
    if (!root) {
        if (apr_initialize() != APR_SUCCESS || apr_pool_create(&root, NULL) != APR_SUCCESS)
            abort();
        /* Pools live in memory LeakSanitizer does not scan (APR maps it): what only a pool
         * holds looks leaked at exit unless the pools are gone by then. LeakSanitizer's
         * own exit check was registered first, so it runs after this. */
        atexit(apr_terminate);
    }
    return root;
}

size_t fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, size_t max)
{
    size_t n = 0;
    while (n + 1 < max) {
        const uint8_t *s = NULL;
        size_t i;
        for (i = 0; i + 4 <= size; i++)
            if (!memcmp(data + i, "\n--\n", 4)) {
                s = data + i;
                break;
            }
        if (!s)
            break;
        part[n] = data;
        len[n++] = (size_t)(s - data);
        size -= (size_t)(s - data) + 4;
        data = s + 4;
    }
    part[n] = data;
    len[n++] = size;
    return n;
}
