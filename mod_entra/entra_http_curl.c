#include <string.h>
#include <strings.h>
#include <apr_strings.h>
#include <curl/curl.h>

#include "entra_http.h"

apr_status_t entra_http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? APR_SUCCESS : APR_EGENERAL;
}

static int host_is_loopback(const char *host)
{
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
        strcmp(host, "::1") == 0)
        return 1;
    if (strncmp(host, "127.", 4) == 0) {
        const char *c;
        for (c = host + 4; *c; c++)
            if (!((*c >= '0' && *c <= '9') || *c == '.'))
                return 0;
        return 1;
    }
    return 0;
}

static int url_allowed(const char *url, int imds)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    int ok = 0;

    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        ok = strcmp(scheme, "https") == 0 ||
             (strcmp(scheme, "http") == 0 &&
              (host_is_loopback(host) || (imds && strcmp(host, "169.254.169.254") == 0)));
    }
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

int entra_http_url_allowed(const char *url)
{
    return url_allowed(url, 0);
}

/* How often a transfer with a cancel flag looks at it. */
#define CANCEL_POLL_MS 50

static int on_progress(void *baton, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const volatile int *cancel = baton;
    (void)dt, (void)dn, (void)ut, (void)un;
    return __atomic_load_n(cancel, __ATOMIC_ACQUIRE) ? 1 : 0;
}

typedef struct {
    apr_pool_t *p;
    char *buf;
    apr_size_t len, cap, max;
    int too_large;
    entra_http_resp *resp;
} sink_t;

static size_t on_body(char *data, size_t size, size_t nmemb, void *baton)
{
    sink_t *s = baton;
    apr_size_t n = size * nmemb;

    if (s->len + n > s->max) {
        s->too_large = 1;
        return 0;
    }
    if (s->len + n + 1 > s->cap) {
        apr_size_t cap = s->cap ? s->cap * 2 : 4096;
        char *nb;
        while (cap < s->len + n + 1)
            cap *= 2;
        nb = apr_palloc(s->p, cap);
        if (s->len)
            memcpy(nb, s->buf, s->len);
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    return n;
}

static const char *header_value(apr_pool_t *p, const char *line, apr_size_t len,
                                const char *name)
{
    apr_size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return NULL;
    line += nl + 1;
    len -= nl + 1;
    while (len && (*line == ' ' || *line == '\t')) {
        line++;
        len--;
    }
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n' || line[len - 1] == ' '))
        len--;
    return apr_pstrndup(p, line, len);
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *baton)
{
    sink_t *s = baton;
    apr_size_t n = size * nmemb;
    const char *v;

    if ((v = header_value(s->p, data, n, "Retry-After")))
        s->resp->retry_after = v;
    else if ((v = header_value(s->p, data, n, "WWW-Authenticate")))
        s->resp->www_authenticate = v;
    return n;
}

/* curl_easy_perform, except that with a cancel flag the transfer runs on a multi handle
 * polled every CANCEL_POLL_MS: libcurl calls the progress callback only about once a second
 * while a peer is silent, too late for a process that is exiting. */
static CURLcode perform(CURL *c, const volatile int *cancel)
{
    CURLM *m;
    CURLcode rc = CURLE_OK;
    int running = 1;

    if (!cancel)
        return curl_easy_perform(c);
    if (!(m = curl_multi_init()))
        return CURLE_OUT_OF_MEMORY;
    if (curl_multi_add_handle(m, c) != CURLM_OK) {
        curl_multi_cleanup(m);
        return CURLE_FAILED_INIT;
    }
    for (;;) {
        CURLMsg *msg;
        int left;
        if (curl_multi_perform(m, &running) != CURLM_OK) {
            rc = CURLE_FAILED_INIT;
            break;
        }
        if (!running) {
            while ((msg = curl_multi_info_read(m, &left)))
                if (msg->msg == CURLMSG_DONE)
                    rc = msg->data.result;
            break;
        }
        if (__atomic_load_n(cancel, __ATOMIC_ACQUIRE)) {
            rc = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        if (curl_multi_poll(m, NULL, 0, CANCEL_POLL_MS, NULL) != CURLM_OK) {
            rc = CURLE_FAILED_INIT;
            break;
        }
    }
    curl_multi_remove_handle(m, c);
    curl_multi_cleanup(m);
    return rc;
}

apr_status_t entra_http_request(apr_pool_t *p, const char *url, const char *const *headers,
                                const char *body, apr_size_t body_len,
                                const entra_http_opts *opts, entra_http_resp **out,
                                const char **why)
{
    CURL *c;
    CURLcode rc;
    struct curl_slist *hl = NULL;
    sink_t sink;
    long status = 0;
    apr_status_t rv = APR_SUCCESS;

    *out = NULL;
    if (!url_allowed(url, opts->direct)) {
        *why = "URL refused (https required, or http to a loopback address)";
        return APR_EINVAL;
    }
    c = curl_easy_init();
    if (!c) {
        *why = "curl_easy_init failed";
        return APR_ENOMEM;
    }
    memset(&sink, 0, sizeof(sink));
    sink.p = p;
    sink.max = opts->max_body;
    sink.resp = apr_pcalloc(p, sizeof(entra_http_resp));
    for (; headers && *headers; headers++)
        hl = curl_slist_append(hl, *headers);

    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, opts->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, opts->timeout_ms);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (opts->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, opts->ca_file);
    if (opts->direct)
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)opts->max_body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &sink);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "mod_entra/0.1");
    if (opts->cancel) {
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)opts->cancel);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    if (hl)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }

    rc = perform(c, opts->cancel);
    if (rc != CURLE_OK) {
        if (sink.too_large || rc == CURLE_FILESIZE_EXCEEDED)
            *why = "response too large";
        else if (rc == CURLE_OPERATION_TIMEDOUT)
            *why = "timed out";
        else if (rc == CURLE_ABORTED_BY_CALLBACK)
            *why = "cancelled (process exiting)";
        else
            *why = apr_pstrdup(p, curl_easy_strerror(rc));
        rv = rc == CURLE_OPERATION_TIMEDOUT      ? APR_TIMEUP
             : rc == CURLE_ABORTED_BY_CALLBACK ? APR_EINTR
                                               : APR_EGENERAL;
    }
    else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        sink.resp->status = (int)status;
        sink.resp->body = sink.buf ? sink.buf : apr_pstrdup(p, "");
        sink.resp->body[sink.len] = '\0';
        sink.resp->len = sink.len;
        *out = sink.resp;
    }
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return rv;
}
