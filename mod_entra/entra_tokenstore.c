#include <stdlib.h>
#include <string.h>
#include <apr_strings.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "entra_json.h"
#include "entra_log.h"
#include "entra_metrics.h"
#include "entra_tokenstore.h"

#define RECORD_MAX (32 * 1024)
#define BACKGROUND_BUDGET_MS 90000
#define WAIT_STEP (25 * 1000)
#define STORE_CHECK_SECONDS 2
#define MI_CONCURRENCY 5
#define MI_PER_SECOND 20

static apr_int64_t now_sec(void)
{
    return (apr_int64_t)apr_time_sec(apr_time_now());
}

static const char *skey(apr_pool_t *p, const entra_tokensrc *ts, const char *what)
{
    return apr_pstrcat(p, ts->id, "|", what, NULL);
}

static int managed(const entra_cred *c)
{
    return c->kind == ENTRA_CRED_IMDS || c->kind == ENTRA_CRED_APPSERVICE ||
           c->kind == ENTRA_CRED_ARC;
}

static apr_status_t tokensrc_cleanup(void *data)
{
    entra_tokensrc *ts = data;
    free(ts->tok);
    ts->tok = NULL;
    return APR_SUCCESS;
}

apr_status_t entra_tokensrc_create(apr_pool_t *p, const entra_cred *cred, const char *resource,
                                   entra_store *store, long wait_ms, entra_tokensrc **out)
{
    entra_tokensrc *ts = apr_pcalloc(p, sizeof(*ts));
    unsigned char md[SHA256_DIGEST_LENGTH];
    const char *k = apr_pstrcat(p, cred->name, "\n", resource, NULL);
    int i;
    char id[2 + 16 + 1] = "tk";

    SHA256((const unsigned char *)k, strlen(k), md);
    for (i = 0; i < 8; i++)
        apr_snprintf(id + 2 + 2 * i, 3, "%02x", md[i]);
    ts->cred = cred;
    ts->resource = apr_pstrdup(p, resource);
    ts->id = apr_pstrdup(p, id);
    ts->store = store;
    ts->wait_ms = wait_ms;
    apr_pool_cleanup_register(p, ts, tokensrc_cleanup, apr_pool_cleanup_null);
    *out = ts;
    return apr_thread_mutex_create(&ts->mu, APR_THREAD_MUTEX_DEFAULT, p);
}

/* Serve a token only while it has a reasonable time left for the backend. */
static int usable(apr_int64_t exp, apr_int64_t obtained, apr_int64_t now)
{
    apr_int64_t margin = (exp - obtained) / 4;
    if (margin > 60)
        margin = 60;
    return exp - now > margin;
}

/* When to refresh: at half-life for tokens living 2 h or more, else 5 minutes before
 * expiry (but not before half-life), minus jitter so machines spread out. */
static apr_int64_t refresh_time(apr_int64_t obtained, apr_int64_t exp)
{
    apr_int64_t life = exp - obtained, at, span;
    unsigned int r = 0;

    at = life >= 7200 ? obtained + life / 2 : exp - 300;
    if (at < obtained + life / 2)
        at = obtained + life / 2;
    span = life / 10 < 120 ? life / 10 : 120;
    if (span > 0 && RAND_bytes((unsigned char *)&r, sizeof(r)) == 1)
        at -= (apr_int64_t)(r % (unsigned int)(span + 1));
    return at;
}

/* Updates this process's copy from the store; returns whether one is held. */
static void sync_from_store(entra_tokensrc *ts, apr_pool_t *p)
{
    char *val;
    apr_size_t len;
    json_t *j;
    const char *why, *t;

    if (ts->store->get(ts->store, skey(p, ts, "rec"), p, RECORD_MAX, &val, &len) != APR_SUCCESS ||
        entra_json_parse_object(p, val, len, RECORD_MAX, &j, &why) != APR_SUCCESS ||
        !(t = entra_json_str(j, "t"))) {
        apr_thread_mutex_lock(ts->mu);
        ts->checked_at = now_sec();
        apr_thread_mutex_unlock(ts->mu);
        return;
    }
    apr_thread_mutex_lock(ts->mu);
    if ((apr_int64_t)json_integer_value(json_object_get(j, "v")) != ts->version) {
        free(ts->tok);
        ts->tok = strdup(t);
        ts->exp = (apr_int64_t)json_integer_value(json_object_get(j, "exp"));
        ts->obtained = (apr_int64_t)json_integer_value(json_object_get(j, "obt"));
        ts->refresh_at = (apr_int64_t)json_integer_value(json_object_get(j, "ref"));
        ts->version = (apr_int64_t)json_integer_value(json_object_get(j, "v"));
    }
    ts->checked_at = now_sec();
    apr_thread_mutex_unlock(ts->mu);
}

/* This process's token if usable now, copied into p. `fresh_only` also requires that
 * no refresh is due (otherwise the store may hold a newer one). */
static const char *local_token(entra_tokensrc *ts, apr_pool_t *p, apr_int64_t now, int fresh_only)
{
    const char *t = NULL;
    apr_thread_mutex_lock(ts->mu);
    if (ts->tok && usable(ts->exp, ts->obtained, now) &&
        (!fresh_only || now < ts->refresh_at || now - ts->checked_at < STORE_CHECK_SECONDS))
        t = apr_pstrdup(p, ts->tok);
    apr_thread_mutex_unlock(ts->mu);
    return t;
}

typedef struct {
    int n;
    apr_int64_t next;
    const char *err;
} fail_info;

static int get_fail(entra_tokensrc *ts, apr_pool_t *p, fail_info *fi)
{
    char *val;
    apr_size_t len;
    json_t *j;
    const char *why;
    memset(fi, 0, sizeof(*fi));
    if (ts->store->get(ts->store, skey(p, ts, "fail"), p, 1024, &val, &len) != APR_SUCCESS ||
        entra_json_parse_object(p, val, len, 1024, &j, &why) != APR_SUCCESS)
        return 0;
    fi->n = (int)json_integer_value(json_object_get(j, "n"));
    fi->next = (apr_int64_t)json_integer_value(json_object_get(j, "next"));
    fi->err = entra_json_str(j, "err") ? apr_pstrdup(p, entra_json_str(j, "err")) : "fetch failed";
    return 1;
}

/* Machine-wide IMDS limits: a slot of 20 per second, then one of 5 concurrent. */
static const char *mi_slot_acquire(entra_tokensrc *ts, apr_pool_t *p, apr_time_t deadline)
{
    while (apr_time_now() < deadline) {
        apr_int64_t sec = now_sec();
        int n, got = 0;
        for (n = 0; n < MI_PER_SECOND && !got; n++)
            got = ts->store->add(ts->store, apr_psprintf(p, "mi|r|%" APR_INT64_T_FMT "|%d", sec, n),
                                 "1", 1, apr_time_from_sec(sec + 2)) == APR_SUCCESS;
        if (!got) {
            apr_sleep(apr_time_from_sec(sec + 1) - apr_time_now() + 1000);
            continue;
        }
        for (n = 0; n < MI_CONCURRENCY; n++) {
            const char *k = apr_psprintf(p, "mi|c|%d", n);
            if (ts->store->add(ts->store, k, "1", 1, deadline + apr_time_from_sec(1)) ==
                APR_SUCCESS)
                return k;
        }
        apr_sleep(50 * 1000);
    }
    return NULL;
}

/* Attempts with the source's retry rules until success, a final answer or the deadline. */
static apr_status_t fetch_with_retries(entra_tokensrc *ts, apr_pool_t *p, apr_time_t deadline,
                                       entra_token *tok, entra_fetch_result *fr, int *retries)
{
    static const long mi_delays[] = {2, 4, 8, 16, 30};
    static const long entra_delays[] = {1, 2, 4};
    int mi = managed(ts->cred), max = mi ? 5 : 3;
    apr_time_t first_410 = 0;
    apr_status_t rv;

    for (*retries = 0;; (*retries)++) {
        const char *slot = NULL;
        if (ts->cred->http.cancel && *ts->cred->http.cancel) {
            fr->error = "cancelled";
            return APR_EINTR;
        }
        long delay, remaining = (long)apr_time_as_msec(deadline - apr_time_now());
        if (remaining <= 0) {
            fr->error = "timed out";
            return APR_TIMEUP;
        }
        if (mi && !(slot = mi_slot_acquire(ts, p, deadline))) {
            memset(fr, 0, sizeof(*fr));
            fr->retry_after = 1;
            fr->error = "managed identity request limit reached";
            return APR_TIMEUP;
        }
        rv = entra_cred_fetch(p, ts->cred, ts->resource,
                              (long)apr_time_as_msec(deadline - apr_time_now()), tok, fr);
        if (slot)
            ts->store->remove(ts->store, slot);
        if (rv == APR_SUCCESS)
            return rv;
        entra_log(ENTRA_LOG_DEBUG, "ENTRA0301: %s %s: attempt %d failed: %s", ts->cred->name,
                  ts->resource, *retries + 1, fr->error ? fr->error : "?");
        if (fr->status == 410 && !first_410)
            first_410 = apr_time_now();
        /* IMDS answers 410 while it updates: keep trying for at least 70 s. */
        if (!fr->retryable ||
            (*retries >= max && !(first_410 && apr_time_now() - first_410 < apr_time_from_sec(75))))
            return rv;
        delay = fr->retry_after >= 0 ? fr->retry_after
                                     : (mi ? mi_delays[*retries < 5 ? *retries : 4]
                                           : entra_delays[*retries < 3 ? *retries : 2]);
        if (apr_time_now() + apr_time_from_sec(delay) >= deadline) {
            fr->retry_after = delay;
            return rv;
        }
        /* Sleep in steps so that a cancel (child exiting) is seen promptly. */
        for (remaining = delay * 10; remaining > 0; remaining--) {
            if (ts->cred->http.cancel && *ts->cred->http.cancel) {
                fr->error = "cancelled";
                return APR_EINTR;
            }
            apr_sleep(100 * 1000);
        }
    }
}

/* One fetch machine-wide; the others wait for its outcome (bounded by `budget_ms`). */
static apr_status_t fetch_single_flight(entra_tokensrc *ts, apr_pool_t *p, long budget_ms,
                                        const char **why, long *retry_after)
{
    const char *lease = skey(p, ts, "lease");
    apr_time_t start = apr_time_now(), deadline = start + apr_time_from_msec(budget_ms);
    apr_int64_t v0;
    fail_info fi;
    char *v;
    apr_size_t len;

    *retry_after = 1;
    apr_thread_mutex_lock(ts->mu);
    v0 = ts->version;
    apr_thread_mutex_unlock(ts->mu);
    if (ts->store->add(ts->store, lease, "1", 1, deadline + apr_time_from_sec(5)) == APR_SUCCESS) {
        entra_token tok;
        entra_fetch_result fr;
        int retries, newer;
        apr_status_t rv;
        apr_int64_t now;
        const char *src = entra_cred_kind_name(ts->cred->kind);

        /* Another process may have stored a token between our look and our lease. */
        sync_from_store(ts, p);
        apr_thread_mutex_lock(ts->mu);
        newer = ts->version != v0;
        apr_thread_mutex_unlock(ts->mu);
        if (newer) {
            ts->store->remove(ts->store, lease);
            return APR_SUCCESS;
        }
        rv = fetch_with_retries(ts, p, deadline, &tok, &fr, &retries);
        entra_metrics_token_fetch(ts->cred->name, rv == APR_SUCCESS);
        now = now_sec();

        if (rv == APR_SUCCESS) {
            json_t *rec = json_pack("{s:s, s:I, s:I, s:I, s:I}", "t", tok.access_token, "exp",
                                    (json_int_t)tok.expires_on, "obt", (json_int_t)tok.obtained,
                                    "ref", (json_int_t)refresh_time(tok.obtained, tok.expires_on),
                                    "v", (json_int_t)apr_time_now());
            char *text = entra_json_dump(p, entra_json_pool_own(p, rec));
            ts->store->put(ts->store, skey(p, ts, "rec"), text, strlen(text),
                           apr_time_from_sec(tok.expires_on));
            ts->store->remove(ts->store, skey(p, ts, "fail"));
            entra_log(ENTRA_LOG_INFO,
                      "ENTRA0302: token for identity %s, resource %s from %s: status 200 in %"
                      APR_TIME_T_FMT " ms, %d retries, expires in %" APR_INT64_T_FMT " s",
                      ts->cred->name, ts->resource, src,
                      apr_time_as_msec(apr_time_now() - start), retries, tok.expires_on - now);
        }
        else {
            int n = get_fail(ts, p, &fi) ? fi.n + 1 : 1;
            long backoff = fr.retry_after >= 0 ? fr.retry_after : (n >= 4 ? 300 : 30L << (n - 1));
            const char *err = apr_psprintf(p, "%s%s%s", fr.error ? fr.error : "failed",
                                           fr.description ? ": " : "",
                                           fr.description ? fr.description : "");
            json_t *f;
            char *text;
            /* Cold fetches should be retried soon; refreshes of a live token can wait. */
            if (fr.retry_after < 0 && backoff > 5 && !local_token(ts, p, now, 0))
                backoff = 5;
            f = json_pack("{s:i, s:I, s:s}", "n", n, "next", (json_int_t)(now + backoff), "err", err);
            text = entra_json_dump(p, entra_json_pool_own(p, f));
            ts->store->put(ts->store, skey(p, ts, "fail"), text, strlen(text),
                           apr_time_now() + apr_time_from_sec(3600));
            entra_log(ENTRA_LOG_ERR,
                      "ENTRA0303: token for identity %s, resource %s from %s failed: status %d in %"
                      APR_TIME_T_FMT " ms, %d retries: %s (next attempt in %ld s)",
                      ts->cred->name, ts->resource, src, fr.status,
                      apr_time_as_msec(apr_time_now() - start), retries, err, backoff);
            *why = err;
            *retry_after = backoff;
        }
        ts->store->remove(ts->store, lease);
        return rv;
    }
    /* Another thread or process is fetching: wait for its record or its failure. */
    while (apr_time_now() < deadline) {
        apr_sleep(WAIT_STEP);
        sync_from_store(ts, p);
        apr_thread_mutex_lock(ts->mu);
        if (ts->version != v0) {
            apr_thread_mutex_unlock(ts->mu);
            return APR_SUCCESS;
        }
        apr_thread_mutex_unlock(ts->mu);
        if (ts->store->get(ts->store, lease, p, 8, &v, &len) != APR_SUCCESS) {
            if (get_fail(ts, p, &fi) && fi.next > now_sec()) {
                *why = fi.err;
                *retry_after = (long)(fi.next - now_sec());
                return APR_EGENERAL;
            }
            return APR_SUCCESS;
        }
    }
    *why = "timed out waiting for the token fetch";
    return APR_TIMEUP;
}

apr_status_t entra_tokensrc_get(entra_tokensrc *ts, apr_pool_t *p, const char **token,
                                long *retry_after, const char **why)
{
    apr_int64_t now = now_sec();
    fail_info fi;

    *token = NULL;
    *retry_after = 1;
    if ((*token = local_token(ts, p, now, 1)))
        return APR_SUCCESS;
    sync_from_store(ts, p);
    if ((*token = local_token(ts, p, now, 0)))
        return APR_SUCCESS;
    if (get_fail(ts, p, &fi) && fi.next > now) {
        *why = fi.err;
        *retry_after = (long)(fi.next - now);
        return APR_EAGAIN;
    }
    fetch_single_flight(ts, p, ts->wait_ms, why, retry_after);
    sync_from_store(ts, p);
    if ((*token = local_token(ts, p, now_sec(), 0)))
        return APR_SUCCESS;
    if (!*why)
        *why = "no token";
    return APR_EAGAIN;
}

void entra_tokensrc_maintain(entra_tokensrc *ts, apr_pool_t *p)
{
    apr_int64_t now = now_sec();
    fail_info fi;
    const char *why = NULL;
    long ra;
    int have, due;

    sync_from_store(ts, p);
    apr_thread_mutex_lock(ts->mu);
    have = ts->tok != NULL && ts->exp > now;
    due = !have || now >= ts->refresh_at;
    apr_thread_mutex_unlock(ts->mu);
    if (!due || (get_fail(ts, p, &fi) && fi.next > now))
        return;
    fetch_single_flight(ts, p, BACKGROUND_BUDGET_MS, &why, &ra);
}

apr_int64_t entra_tokensrc_expiry(entra_tokensrc *ts)
{
    apr_int64_t e;
    apr_thread_mutex_lock(ts->mu);
    e = ts->tok ? ts->exp : 0;
    apr_thread_mutex_unlock(ts->mu);
    return e;
}

void entra_tokensrc_status_get(entra_tokensrc *ts, apr_pool_t *p, entra_tokensrc_status *st)
{
    fail_info fi;

    memset(st, 0, sizeof(*st));
    st->identity = ts->cred->name;
    st->resource = ts->resource;
    st->source = entra_cred_kind_name(ts->cred->kind);
    sync_from_store(ts, p);
    apr_thread_mutex_lock(ts->mu);
    if (ts->tok) {
        st->expires = ts->exp;
        st->obtained = ts->obtained;
        st->refresh_at = ts->refresh_at;
    }
    apr_thread_mutex_unlock(ts->mu);
    if (get_fail(ts, p, &fi)) {
        st->failures = fi.n;
        st->last_error = fi.err;
        st->next_attempt = fi.next;
    }
}
