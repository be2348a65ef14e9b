#include <stdlib.h>
#include <string.h>
#include <apr_strings.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "entra_flight.h"
#include "entra_json.h"
#include "entra_log.h"
#include "entra_metrics.h"
#include "entra_tokenstore.h"

#define RECORD_MAX (32 * 1024)
#define BACKGROUND_BUDGET_MS 90000 /* the upkeep's bound for one fetch, retries included */
#define WAIT_STEP (25 * 1000)
#define FAIL_BACKOFF_BASE 30 /* seconds after a failed refresh, doubling... */
#define FAIL_BACKOFF_COLD 5  /* ...but a cold fetch is tried again soon */
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
    /* Everything that makes the token what it is: servers sharing a networked cache share
     * a token only when they ask for it with the same credential. */
    const char *k = apr_psprintf(p, "%s\n%s\n%d\n%s\n%s\n%s", cred->name, resource,
                                 (int)cred->kind, cred->tenant ? cred->tenant : "",
                                 cred->client_id ? cred->client_id : "",
                                 cred->authority ? cred->authority : "");
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

/* Machine-wide IMDS limits: a slot of 20 per second, then one of 5 concurrent. Gives up at
 * the deadline or on cancel. A concurrency slot expires 1 s after the deadline of the fetch
 * that took it, so a process that died holding one frees it then. */
static const char *mi_slot_acquire(entra_tokensrc *ts, apr_pool_t *p, apr_time_t deadline)
{
    const volatile int *cancel = ts->cred->http.cancel;
    while (apr_time_now() < deadline && !entra_cancelled(cancel)) {
        apr_int64_t sec = now_sec();
        apr_time_t until;
        int n, got = 0;
        for (n = 0; n < MI_PER_SECOND && !got; n++)
            got = ts->store->add(ts->store, apr_psprintf(p, "mi|r|%" APR_INT64_T_FMT "|%d", sec, n),
                                 "1", 1, apr_time_from_sec(sec + 2)) == APR_SUCCESS;
        if (!got) {
            until = apr_time_from_sec(sec + 1) + 1000;
            entra_sleep_until(until < deadline ? until : deadline, cancel);
            continue;
        }
        for (n = 0; n < MI_CONCURRENCY; n++) {
            const char *k = apr_psprintf(p, "mi|c|%d", n);
            if (ts->store->add(ts->store, k, "1", 1, deadline + apr_time_from_sec(1)) ==
                APR_SUCCESS)
                return k;
        }
        until = apr_time_now() + apr_time_from_msec(50);
        entra_sleep_until(until < deadline ? until : deadline, cancel);
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

    /* Cancelled or out of time before the first attempt: nothing else fills it in. */
    memset(fr, 0, sizeof(*fr));
    fr->retry_after = -1;
    for (*retries = 0;; (*retries)++) {
        const char *slot = NULL;
        long delay;
        if (entra_cancelled(ts->cred->http.cancel)) {
            memset(fr, 0, sizeof(*fr));
            fr->error = "cancelled (process exiting)";
            return APR_EINTR;
        }
        if (apr_time_now() >= deadline) {
            memset(fr, 0, sizeof(*fr));
            fr->retry_after = -1;
            fr->error = "timed out";
            return APR_TIMEUP;
        }
        if (mi && !(slot = mi_slot_acquire(ts, p, deadline))) {
            memset(fr, 0, sizeof(*fr));
            if (entra_cancelled(ts->cred->http.cancel)) {
                fr->retry_after = -1;
                fr->error = "cancelled (process exiting)";
                return APR_EINTR;
            }
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
        /* retry_after is clamped to ENTRA_BACKOFF_MAX where it is parsed. */
        delay = fr->retry_after >= 0 ? fr->retry_after
                                     : (mi ? mi_delays[*retries < 5 ? *retries : 4]
                                           : entra_delays[*retries < 3 ? *retries : 2]);
        if (apr_time_now() + apr_time_from_sec(delay) >= deadline) {
            fr->retry_after = delay;
            return rv;
        }
        if (entra_sleep_until(apr_time_now() + apr_time_from_sec(delay),
                              ts->cred->http.cancel) != APR_SUCCESS) {
            fr->error = "cancelled (process exiting)";
            return APR_EINTR;
        }
    }
}

/* The flight of one token fetch (see entra_flight.h). */
typedef struct {
    entra_tokensrc *ts;
    apr_int64_t v0;        /* the version the caller had */
    long retry_after;      /* out: seconds until the next attempt after a failure */
    apr_time_t start;
} token_flight;

static int tf_newer(void *baton, apr_pool_t *p)
{
    token_flight *tf = baton;
    int newer;
    sync_from_store(tf->ts, p);
    apr_thread_mutex_lock(tf->ts->mu);
    newer = tf->ts->version != tf->v0;
    apr_thread_mutex_unlock(tf->ts->mu);
    return newer;
}

static int tf_failed(void *baton, apr_pool_t *p, const char **why)
{
    token_flight *tf = baton;
    return entra_backoff_active(tf->ts->store, p, skey(p, tf->ts, "fail"), why, &tf->retry_after);
}

static apr_status_t tf_fetch(void *baton, apr_pool_t *p, apr_time_t deadline, const char **why)
{
    token_flight *tf = baton;
    entra_tokensrc *ts = tf->ts;
    entra_token tok;
    entra_fetch_result fr;
    entra_backoff b;
    int retries;
    apr_status_t rv;
    apr_int64_t now;
    const char *src = entra_cred_kind_name(ts->cred->kind), *fail = skey(p, ts, "fail"), *err;
    long backoff;

    rv = fetch_with_retries(ts, p, deadline, &tok, &fr, &retries);
    if (rv == APR_SUCCESS || !entra_cancelled(ts->cred->http.cancel))
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
        entra_backoff_clear(ts->store, fail);
        entra_log(ENTRA_LOG_INFO,
                  "ENTRA0302: token for identity %s, resource %s from %s: status 200 in %"
                  APR_TIME_T_FMT " ms, %d retries, expires in %" APR_INT64_T_FMT " s",
                  ts->cred->name, ts->resource, src,
                  apr_time_as_msec(apr_time_now() - tf->start), retries, tok.expires_on - now);
        return rv;
    }
    err = apr_psprintf(p, "%s%s%s", fr.error ? fr.error : "failed", fr.description ? ": " : "",
                       fr.description ? fr.description : "");
    *why = err;
    if (rv == APR_EINTR)
        return rv; /* the process is exiting: not the endpoint's fault, nothing to back off */
    entra_backoff_get(ts->store, p, fail, &b);
    backoff = fr.retry_after >= 0
                  ? fr.retry_after
                  : entra_backoff_delay(b.n + 1, FAIL_BACKOFF_BASE, ENTRA_BACKOFF_MAX);
    /* Cold fetches should be retried soon; refreshes of a live token can wait. */
    if (fr.retry_after < 0 && backoff > FAIL_BACKOFF_COLD && !local_token(ts, p, now, 0))
        backoff = FAIL_BACKOFF_COLD;
    if (backoff > ENTRA_BACKOFF_MAX)
        backoff = ENTRA_BACKOFF_MAX;
    b.n = entra_backoff_fail(ts->store, p, fail, backoff, err);
    entra_log(ENTRA_LOG_ERR,
              "ENTRA0303: token for identity %s, resource %s from %s failed: status %d in %"
              APR_TIME_T_FMT " ms, %d retries: %s (next attempt in %ld s)",
              ts->cred->name, ts->resource, src, fr.status,
              apr_time_as_msec(apr_time_now() - tf->start), retries, err, backoff);
    tf->retry_after = backoff;
    return rv;
}

/* One fetch machine-wide; the others wait for its outcome, none past `budget_ms` nor past
 * the moment the process starts to exit. */
static apr_status_t fetch_single_flight(entra_tokensrc *ts, apr_pool_t *p, long budget_ms,
                                        const char **why, long *retry_after)
{
    token_flight tf;
    entra_flight f;
    apr_status_t rv;

    memset(&tf, 0, sizeof(tf));
    tf.ts = ts;
    tf.retry_after = 1;
    tf.start = apr_time_now();
    apr_thread_mutex_lock(ts->mu);
    tf.v0 = ts->version;
    apr_thread_mutex_unlock(ts->mu);
    memset(&f, 0, sizeof(f));
    f.store = ts->store;
    f.lease = skey(p, ts, "lease");
    f.deadline = tf.start + apr_time_from_msec(budget_ms);
    f.lease_ttl = apr_time_from_sec(5);
    f.step = WAIT_STEP;
    f.cancel = ts->cred->http.cancel;
    f.baton = &tf;
    f.newer = tf_newer;
    f.fetch = tf_fetch;
    f.failed = tf_failed;
    rv = entra_flight_run(&f, p, why);
    *retry_after = tf.retry_after > 0 ? tf.retry_after : 1;
    return rv;
}

apr_status_t entra_tokensrc_get(entra_tokensrc *ts, apr_pool_t *p, const char **token,
                                long *retry_after, const char **why)
{
    apr_int64_t now = now_sec();

    *token = NULL;
    *retry_after = 1;
    if ((*token = local_token(ts, p, now, 1)))
        return APR_SUCCESS;
    sync_from_store(ts, p);
    if ((*token = local_token(ts, p, now, 0)))
        return APR_SUCCESS;
    if (entra_backoff_active(ts->store, p, skey(p, ts, "fail"), why, retry_after))
        return APR_EAGAIN;
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
    const char *why = NULL;
    char *v;
    apr_size_t len;
    long ra;
    int have, due;

    sync_from_store(ts, p);
    apr_thread_mutex_lock(ts->mu);
    have = ts->tok != NULL && ts->exp > now;
    due = !have || now >= ts->refresh_at;
    apr_thread_mutex_unlock(ts->mu);
    if (!due || entra_backoff_active(ts->store, p, skey(p, ts, "fail"), &why, NULL))
        return;
    /* Another process (or a request) is fetching this token: its result reaches the store,
     * and the next round syncs it. Waiting for it here would hold this thread, and with it
     * the refresh of every other token, for as long as that fetch retries (up to 90 s). */
    if (ts->store->get(ts->store, skey(p, ts, "lease"), p, 8, &v, &len) == APR_SUCCESS)
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
    entra_backoff fi;

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
    if (entra_backoff_get(ts->store, p, skey(p, ts, "fail"), &fi)) {
        st->failures = fi.n;
        st->last_error = fi.err;
        st->next_attempt = fi.next;
    }
}
