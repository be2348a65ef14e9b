/* The only HTTP client interface of the core; entra_http_curl.c is its libcurl backend. */
#ifndef ENTRA_HTTP_H
#define ENTRA_HTTP_H

#include <apr_pools.h>

typedef struct entra_http_opts {
    long connect_timeout_ms;
    long timeout_ms;      /* whole request */
    apr_size_t max_body;  /* larger responses fail */
    const char *ca_file;  /* extra trust anchors, or NULL */
    int direct;           /* never through a proxy (IMDS, Arc, loopback); also allows
                             http:// to the IMDS link-local address 169.254.169.254 */
    const volatile int *cancel; /* when it becomes non-zero the request is abandoned */
} entra_http_opts;

typedef struct entra_http_resp {
    int status;
    char *body; /* NUL-terminated */
    apr_size_t len;
    const char *retry_after;      /* header value or NULL */
    const char *www_authenticate; /* header value or NULL */
} entra_http_resp;

/* Process-wide setup; call once before threads start. */
apr_status_t entra_http_global_init(void);

/* True for https:// URLs, and http:// ones whose host is a loopback address. */
int entra_http_url_allowed(const char *url);

/* Performs one request (`body` NULL for GET). `headers` is a NULL-terminated list of
 * "Name: value" lines or NULL. Any HTTP status is a success of this call; transport
 * failures, timeouts, oversized bodies and refused URLs return an error with *why set. */
apr_status_t entra_http_request(apr_pool_t *p, const char *url, const char *const *headers,
                                const char *body, apr_size_t body_len,
                                const entra_http_opts *opts, entra_http_resp **resp,
                                const char **why);

#endif
