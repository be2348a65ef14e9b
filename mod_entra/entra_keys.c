#include <stdlib.h>
#include <string.h>
#include <apr_atomic.h>
#include <apr_strings.h>

#include "entra_flight.h"
#include "entra_json.h"
#include "entra_keys.h"
#include "entra_vtab.h"
#include "entra_log.h"
#include "entra_metrics.h"

#define RECORD_MAX (64 * 1024)    /* compact key record in the store */
#define DOC_MAX (256 * 1024)      /* discovery or JWKS response */
#define STORE_CHECK_SECONDS 2     /* how stale a process's view of the store may be */
#define FAIL_BACKOFF_BASE 5      /* seconds after the first failed fetch, doubling... */
#define FAIL_BACKOFF_MAX 60       /* ...up to this while fetches fail */
#define WAIT_STEP (20 * 1000)     /* microseconds between looks at a fetch in progress */
#define WAIT_SLACK 1000           /* ms a waiter allows beyond the fetch budget for storing */

static apr_int64_t now_sec(void)
{
    return (apr_int64_t)apr_time_sec(apr_time_now());
}

static const char *skey(apr_pool_t *p, const entra_source *src, const char *what)
{
    return apr_pstrcat(p, src->id, "|", what, NULL);
}

apr_status_t entra_source_create(apr_pool_t *p, const char *id, const char *meta_v2,
                                 const char *meta_v1, int entra, entra_source **out)
{
    entra_source *src = apr_pcalloc(p, sizeof(*src));
    src->id = apr_pstrdup(p, id);
    src->tag = entra_vtab_tag(src->id);
    src->meta_v2 = apr_pstrdup(p, meta_v2);
    src->meta_v1 = meta_v1 ? apr_pstrdup(p, meta_v1) : NULL;
    src->entra = entra;
    src->http.connect_timeout_ms = 3000;
    src->http.timeout_ms = 10000;
    src->http.max_body = DOC_MAX;
    src->refresh_interval = 86400;
    src->refetch_interval = 60;
    src->max_stale = 72 * 3600;
    *out = src;
    return apr_thread_mutex_create(&src->mu, APR_THREAD_MUTEX_DEFAULT, p);
}

void entra_snapshot_release(entra_keys_snapshot *snap)
{
    if (snap && apr_atomic_dec32(&snap->refs) == 0)
        apr_pool_destroy(snap->pool);
}

static entra_keys_snapshot *ref(entra_keys_snapshot *snap)
{
    if (snap)
        apr_atomic_inc32(&snap->refs);
    return snap;
}

/* Builds a snapshot from a stored record. */
static entra_keys_snapshot *snapshot_from_record(const entra_source *src, const char *rec,
                                                 apr_size_t len)
{
    entra_keys_snapshot *snap;
    apr_pool_t *sp;
    json_t *j;
    const char *why;

    if (apr_pool_create_unmanaged_ex(&sp, NULL, NULL) != APR_SUCCESS)
        return NULL;
    snap = apr_pcalloc(sp, sizeof(*snap));
    snap->pool = sp;
    snap->refs = 1;
    if (entra_json_parse_object(sp, rec, len, RECORD_MAX, &j, &why) ||
        entra_keyset_from_jwks(sp, j, src->meta_v2, &snap->ks, &why) ||
        !entra_json_str(j, "iss2")) {
        entra_log(ENTRA_LOG_ERR, "ENTRA0102: %s: unreadable key record in the cache",
                  src->meta_v2);
        apr_pool_destroy(sp);
        return NULL;
    }
    snap->iss.v2 = apr_pstrdup(sp, entra_json_str(j, "iss2"));
    snap->iss.v1 = entra_json_str(j, "iss1") ? apr_pstrdup(sp, entra_json_str(j, "iss1")) : NULL;
    snap->iss.entra = src->entra;
    snap->fetched = (apr_int64_t)json_integer_value(json_object_get(j, "fetched"));
    snap->version = (apr_int64_t)json_integer_value(json_object_get(j, "v"));
    snap->v2_at = (apr_time_t)json_integer_value(json_object_get(j, "v2t"));
    snap->v1_tried = json_is_true(json_object_get(j, "v1try"));
    return snap;
}

/* A key set was stored (rv APR_SUCCESS): every process of the machine rereads it. */
static apr_status_t published(entra_source *src, apr_status_t rv)
{
    if (rv == APR_SUCCESS && src->epoch)
        __atomic_add_fetch(src->epoch, 1, __ATOMIC_RELEASE);
    return rv;
}

/* Brings this process's view up to date with the store; returns the current version. */
static apr_int64_t sync_from_store(entra_source *src, apr_pool_t *p)
{
    char *rec;
    apr_size_t len;
    apr_int64_t have;
    entra_keys_snapshot *snap = NULL, *old = NULL;
    apr_uint64_t epoch = src->epoch ? __atomic_load_n(src->epoch, __ATOMIC_ACQUIRE) : 0;

    apr_thread_mutex_lock(src->mu);
    have = src->cur ? src->cur->version : 0;
    apr_thread_mutex_unlock(src->mu);

    if (src->store->get(src->store, skey(p, src, "rec"), p, RECORD_MAX, &rec, &len) ==
        APR_SUCCESS) {
        /* Peek at the version before paying for key imports. */
        const char *vp = strstr(rec, "\"v\":");
        apr_int64_t ver = vp ? apr_atoi64(vp + 4) : 0;
        if (ver != have)
            snap = snapshot_from_record(src, rec, len);
    }
    apr_thread_mutex_lock(src->mu);
    if (snap && (!src->cur || snap->version != src->cur->version)) {
        old = src->cur;
        src->cur = snap;
        snap = NULL;
    }
    src->checked_at = now_sec();
    src->seen_epoch = epoch;
    have = src->cur ? src->cur->version : 0;
    apr_thread_mutex_unlock(src->mu);
    entra_snapshot_release(old);
    entra_snapshot_release(snap);
    return have;
}

/* GETs a JSON object document; the request ends by `deadline`. */
static apr_status_t get_json(entra_source *src, apr_pool_t *p, const char *url,
                             apr_time_t deadline, json_t **out, const char **why)
{
    entra_http_resp *resp;
    entra_http_opts o = src->http;
    apr_interval_time_t left = deadline - apr_time_now();
    apr_status_t rv;

    *out = NULL;
    if (left < apr_time_from_msec(50)) {
        *why = "timed out (fetch budget spent)";
        return APR_TIMEUP;
    }
    if (apr_time_as_msec(left) < o.timeout_ms)
        o.timeout_ms = (long)apr_time_as_msec(left);
    if (o.connect_timeout_ms > o.timeout_ms)
        o.connect_timeout_ms = o.timeout_ms;
    rv = entra_http_request(p, url, NULL, NULL, 0, &o, &resp, why);
    if (rv != APR_SUCCESS)
        return rv;
    if (resp->status != 200) {
        *why = apr_psprintf(p, "HTTP %d", resp->status);
        return APR_EGENERAL;
    }
    if (entra_json_parse_object(p, resp->body, resp->len, DOC_MAX, out, why) != APR_SUCCESS)
        return APR_EGENERAL;
    return APR_SUCCESS;
}

/* Fetches one discovery document and its JWKS; *iss and *jwks_uri from the document. */
static apr_status_t fetch_doc_keys(entra_source *src, apr_pool_t *p, const char *meta,
                                   apr_time_t deadline, const char **iss, const char **jwks_uri, entra_keyset **ks,
                                   const char **why)
{
    json_t *doc, *jwks;
    apr_status_t rv;

    if ((rv = get_json(src, p, meta, deadline, &doc, why)) != APR_SUCCESS) {
        *why = apr_pstrcat(p, "discovery ", meta, ": ", *why, NULL);
        return rv;
    }
    *iss = entra_json_str(doc, "issuer");
    *jwks_uri = entra_json_str(doc, "jwks_uri");
    if (!*iss || !*jwks_uri) {
        *why = apr_pstrcat(p, "discovery ", meta, ": no issuer or jwks_uri", NULL);
        return APR_EGENERAL;
    }
    if (!entra_http_url_allowed(*jwks_uri)) {
        *why = apr_pstrcat(p, "discovery ", meta, ": jwks_uri is not https", NULL);
        return APR_EGENERAL;
    }
    /* Apps with a claims-mapping policy sign with their own keys, which Entra lists only
     * at jwks_uri?appid=<the app's client id>. */
    if (src->jwks_query)
        *jwks_uri = apr_pstrcat(p, *jwks_uri, strchr(*jwks_uri, '?') ? "&" : "?",
                                src->jwks_query, NULL);
    if (get_json(src, p, *jwks_uri, deadline, &jwks, why) != APR_SUCCESS ||
        entra_keyset_from_jwks(p, jwks, *jwks_uri, ks, why) != APR_SUCCESS) {
        *why = apr_pstrcat(p, "JWKS ", *jwks_uri, ": ", *why, NULL);
        return APR_EGENERAL;
    }
    return APR_SUCCESS;
}

/* Adds what the v1 document knows (its issuer, keys only it lists) to the stored record,
 * leaving the v2 keys as fetched: the upkeep's follow-up to a cold v2-only fetch. */
static apr_status_t fetch_v1_part(entra_source *src, apr_pool_t *p, apr_time_t deadline,
                                  const char **why)
{
    char *old, *text;
    apr_size_t olen;
    json_t *rec, *keys, *k;
    const char *iss1, *uri1, *why1;
    entra_keyset *ks1;
    apr_int64_t fetched;
    size_t i;
    int j;

    /* The caller logs and stores *why: every failure sets it. */
    *why = "no key record in the cache to add the v1 keys to";
    if (src->store->get(src->store, skey(p, src, "rec"), p, RECORD_MAX, &old, &olen) !=
            APR_SUCCESS ||
        entra_json_parse_object(p, old, olen, RECORD_MAX, &rec, why) != APR_SUCCESS ||
        !json_is_array(keys = json_object_get(rec, "keys")))
        return APR_EGENERAL;
    if (fetch_doc_keys(src, p, src->meta_v1, deadline, &iss1, &uri1, &ks1, &why1) == APR_SUCCESS) {
        for (j = 0; j < ks1->keys->nelts; j++) {
            const char *kid = APR_ARRAY_IDX(ks1->keys, j, entra_key).kid;
            int present = 0;
            json_array_foreach(keys, i, k)
            {
                if (entra_json_str(k, "kid") && !strcmp(entra_json_str(k, "kid"), kid))
                    present = 1;
            }
            if (!present)
                json_array_append(keys,
                                  json_array_get(json_object_get(ks1->compact, "keys"), (size_t)j));
        }
        json_object_set_new(rec, "iss1", json_string(iss1));
    }
    else
        entra_log(ENTRA_LOG_INFO, "ENTRA0103: v1 keys unavailable (v2 keys serve v1 tokens): %s",
                  why1);
    json_object_set_new(rec, "v1try", json_true());
    json_object_set_new(rec, "v", json_integer((json_int_t)apr_time_now()));
    fetched = (apr_int64_t)json_integer_value(json_object_get(rec, "fetched"));
    text = entra_json_dump(p, rec);
    if (!text || strlen(text) > RECORD_MAX) {
        *why = "key record too large for the cache";
        return APR_EGENERAL;
    }
    return published(src, src->store->put(src->store, skey(p, src, "rec"), text, strlen(text),
                                          apr_time_from_sec(fetched + src->max_stale)));
}

/* One fetch; on success the new record is in the store. Requests only wait for the v2
 * document and keys (which verify v1 tokens too); `with_v1` 1 adds the v1 document (a full
 * refresh), 2 fetches only the v1 part and merges it (see fetch_v1_part). */
static apr_status_t fetch_now(entra_source *src, apr_pool_t *p, int with_v1, apr_time_t deadline,
                              const char **why)
{
    const char *iss2, *uri2, *iss1 = NULL, *uri1, *why1;
    entra_keyset *ks2, *ks1;
    json_t *rec, *keys;
    apr_time_t t0 = apr_time_now();
    apr_int64_t now = (apr_int64_t)apr_time_sec(t0);
    char *text;
    int i;
    apr_status_t rv;

    if (with_v1 == 2)
        return fetch_v1_part(src, p, deadline, why);
    if ((rv = fetch_doc_keys(src, p, src->meta_v2, deadline, &iss2, &uri2, &ks2, why)) != APR_SUCCESS)
        return rv;
    rec = entra_json_pool_own(p, json_deep_copy(ks2->compact));
    keys = json_object_get(rec, "keys");
    if (src->meta_v1 && with_v1) {
        /* v1 tokens are optional: the v2 keys still verify them when this fails. */
        if (fetch_doc_keys(src, p, src->meta_v1, deadline, &iss1, &uri1, &ks1, &why1) == APR_SUCCESS) {
            for (i = 0; i < ks1->keys->nelts; i++) {
                const entra_key *k = &APR_ARRAY_IDX(ks1->keys, i, entra_key);
                if (!entra_keyset_find(ks2, k->kid))
                    json_array_append(keys, json_array_get(json_object_get(ks1->compact, "keys"),
                                                           (size_t)i));
            }
        }
        else {
            iss1 = NULL;
            entra_log(ENTRA_LOG_INFO, "ENTRA0103: v1 keys unavailable (v2 keys serve v1 tokens): %s",
                      why1);
        }
    }
    else if (src->meta_v1) {
        /* A v2-only refetch keeps what the last full fetch learnt of v1. */
        char *old;
        apr_size_t olen;
        json_t *prev;
        if (src->store->get(src->store, skey(p, src, "rec"), p, RECORD_MAX, &old, &olen) ==
                APR_SUCCESS &&
            entra_json_parse_object(p, old, olen, RECORD_MAX, &prev, &why1) == APR_SUCCESS &&
            json_is_true(json_object_get(prev, "v1try"))) {
            iss1 = entra_json_str(prev, "iss1");
            with_v1 = 1;
        }
    }
    if (json_array_size(keys) == 0) {
        *why = apr_pstrcat(p, "JWKS ", uri2, ": no usable signing keys", NULL);
        return APR_EGENERAL;
    }
    json_object_set_new(rec, "iss2", json_string(iss2));
    if (iss1)
        json_object_set_new(rec, "iss1", json_string(iss1));
    json_object_set_new(rec, "fetched", json_integer((json_int_t)now));
    json_object_set_new(rec, "v1try", json_boolean(with_v1 || !src->meta_v1));
    json_object_set_new(rec, "v", json_integer((json_int_t)t0));
    json_object_set_new(rec, "v2t", json_integer((json_int_t)t0));
    text = entra_json_dump(p, rec);
    if (!text || strlen(text) > RECORD_MAX) {
        *why = "key record too large for the cache";
        return APR_EGENERAL;
    }
    rv = published(src, src->store->put(src->store, skey(p, src, "rec"), text, strlen(text),
                                        t0 + apr_time_from_sec(src->max_stale)));
    if (rv != APR_SUCCESS) {
        *why = "could not store keys in the cache";
        return rv;
    }
    entra_log(ENTRA_LOG_INFO, "ENTRA0104: %s: %d signing keys fetched in %" APR_TIME_T_FMT " ms",
              src->meta_v2, (int)json_array_size(keys), apr_time_as_msec(apr_time_now() - t0));
    return APR_SUCCESS;
}

/* Counts a fetch of this process and remembers its failure for the status page. */
static void note_fetch(entra_source *src, apr_status_t rv, const char *why)
{
    entra_metrics_add(rv == APR_SUCCESS ? ENTRA_M_KEYS_OK : ENTRA_M_KEYS_ERROR, 1);
    if (rv == APR_SUCCESS)
        return;
    apr_thread_mutex_lock(src->mu);
    apr_cpystrn(src->last_error, why ? why : "fetch failed", sizeof(src->last_error));
    src->last_error_at = now_sec();
    apr_thread_mutex_unlock(src->mu);
}

/* The flight of one key fetch (see entra_flight.h). */
typedef struct {
    entra_source *src;
    int with_v1;
    apr_int64_t before; /* the version the caller had */
    apr_time_t v2_after; /* 0, or: only a v2 part fetched from this moment on will do */
} key_flight;

/* The v2 part of the current record was fetched before `t` (or there is none). */
static int v2_before(entra_source *src, apr_time_t t)
{
    int older;
    apr_thread_mutex_lock(src->mu);
    older = !src->cur || src->cur->v2_at < t;
    apr_thread_mutex_unlock(src->mu);
    return older;
}

static int kf_newer(void *baton, apr_pool_t *p)
{
    key_flight *kf = baton;
    return sync_from_store(kf->src, p) != kf->before &&
           (!kf->v2_after || !v2_before(kf->src, kf->v2_after));
}

static int kf_failed(void *baton, apr_pool_t *p, const char **why)
{
    key_flight *kf = baton;
    return entra_backoff_active(kf->src->store, p, skey(p, kf->src, "fail"), why, NULL);
}

static apr_status_t kf_fetch(void *baton, apr_pool_t *p, apr_time_t deadline, const char **why)
{
    key_flight *kf = baton;
    entra_source *src = kf->src;
    const char *fail = skey(p, src, "fail");
    apr_status_t rv = fetch_now(src, p, kf->with_v1, deadline, why);
    entra_backoff b;

    if (rv == APR_SUCCESS) {
        note_fetch(src, rv, NULL);
        entra_backoff_clear(src->store, fail);
        return rv;
    }
    if (entra_cancelled(src->http.cancel))
        return rv; /* the process is exiting: not the authority's fault */
    note_fetch(src, rv, *why);
    /* Back off: 5 s doubling to 60 s while failures continue. */
    entra_backoff_get(src->store, p, fail, &b);
    b.n = entra_backoff_fail(src->store, p, fail,
                             entra_backoff_delay(b.n + 1, FAIL_BACKOFF_BASE, FAIL_BACKOFF_MAX),
                             *why);
    entra_log(ENTRA_LOG_ERR, "ENTRA0105: key fetch failed (attempt %d): %s", b.n, *why);
    return rv;
}

static apr_time_t fetch_deadline(const entra_source *src)
{
    return apr_time_now() + apr_time_from_msec(src->http.timeout_ms + WAIT_SLACK);
}

/* Fetches unless another process on the machine already is; either way returns once new
 * keys are stored, the fetch failed, the fetch budget (the fetch timeout, for all the
 * documents together) passed, or the process began to exit. `v2_after` (0: any) is the
 * moment from which a v2 fetch counts as new; `deadline` (0: the budget from now) ends
 * the wait. */
static apr_status_t fetch_single_flight(entra_source *src, apr_pool_t *p, int with_v1,
                                        apr_time_t v2_after, apr_time_t deadline,
                                        const char **why)
{
    key_flight kf;
    entra_flight f;
    const char *fwhy;

    if (entra_backoff_active(src->store, p, skey(p, src, "fail"), &fwhy, NULL)) {
        *why = apr_pstrcat(p, "recent fetch failed: ", fwhy, NULL);
        return APR_EAGAIN;
    }
    apr_thread_mutex_lock(src->mu);
    kf.before = src->cur ? src->cur->version : 0;
    apr_thread_mutex_unlock(src->mu);
    kf.src = src;
    kf.with_v1 = with_v1;
    kf.v2_after = v2_after;
    memset(&f, 0, sizeof(f));
    f.store = src->store;
    f.lease = skey(p, src, "lease");
    /* A waiter's bound is the holder's budget plus the time to store what it fetched. */
    f.deadline = deadline ? deadline : fetch_deadline(src);
    f.lease_ttl = apr_time_from_sec(1);
    f.step = WAIT_STEP;
    f.cancel = src->http.cancel;
    f.roomed = 1; /* requests wait here: a hanging authority must not take every worker */
    f.baton = &kf;
    f.newer = kf_newer;
    f.fetch = kf_fetch;
    f.failed = kf_failed;
    return entra_flight_run(&f, p, why);
}

/* The current snapshot when it is usable (not older than max_stale), referenced. */
static entra_keys_snapshot *usable(entra_source *src, apr_int64_t now, int *recent)
{
    entra_keys_snapshot *snap = NULL;
    apr_thread_mutex_lock(src->mu);
    if (src->cur && now - src->cur->fetched <= src->max_stale)
        snap = ref(src->cur);
    *recent = now - src->checked_at < STORE_CHECK_SECONDS &&
              (!src->epoch || __atomic_load_n(src->epoch, __ATOMIC_ACQUIRE) == src->seen_epoch);
    apr_thread_mutex_unlock(src->mu);
    return snap;
}

apr_status_t entra_source_acquire(entra_source *src, apr_pool_t *p, entra_keys_snapshot **out,
                                  const char **why)
{
    apr_int64_t now = now_sec();
    int recent;
    entra_keys_snapshot *snap = usable(src, now, &recent);
    apr_status_t rv;

    *out = NULL;
    if (snap && recent) {
        *out = snap;
        return APR_SUCCESS;
    }
    entra_snapshot_release(snap);
    sync_from_store(src, p);
    if ((snap = usable(src, now, &recent))) {
        *out = snap;
        return APR_SUCCESS;
    }
    rv = fetch_single_flight(src, p, 0, 0, 0, why);
    sync_from_store(src, p);
    if ((snap = usable(src, now_sec(), &recent))) {
        *out = snap;
        return APR_SUCCESS;
    }
    if (rv == APR_SUCCESS)
        *why = "no usable keys";
    return APR_EAGAIN;
}

entra_keys_snapshot *entra_source_refetch_for_kid(entra_source *src, apr_pool_t *p,
                                                  entra_keys_snapshot *have, const char *kid)
{
    const char *why;
    char *v;
    apr_size_t len;
    int recent;
    entra_keys_snapshot *snap;
    apr_time_t asked = apr_time_now(), deadline = fetch_deadline(src);
    apr_status_t rv;

    sync_from_store(src, p);
    snap = usable(src, now_sec(), &recent);
    if (snap && snap->version != have->version && entra_keyset_find(snap->ks, kid))
        return snap;
    entra_snapshot_release(snap);
    if (src->store->add(src->store, skey(p, src, "kid"), "1", 1,
                        apr_time_now() + apr_time_from_sec(src->refetch_interval)) ==
        APR_SUCCESS) {
        entra_log(ENTRA_LOG_INFO, "ENTRA0106: %s: unknown kid, refetching keys", src->meta_v2);
        /* Only a v2 document fetched after this moment answers: a flight already under way
         * (the upkeep adding v1 keys to the stored v2 set, a refresh begun before the
         * rotation) ends with the old v2 set, keys dropped since still in it. Then fetch
         * again, within the same bound. */
        rv = fetch_single_flight(src, p, 0, asked, deadline, &why);
        if (rv == APR_EAGAIN && v2_before(src, asked))
            rv = fetch_single_flight(src, p, 0, asked, deadline, &why);
        if (rv == APR_EBUSY)
            /* It never asked: the next request with an unknown kid may. */
            src->store->remove(src->store, skey(p, src, "kid"));
        if (rv != APR_SUCCESS)
            entra_log(ENTRA_LOG_WARN, "ENTRA0107: refetch for an unknown kid failed: %s", why);
    }
    else if (src->store->get(src->store, skey(p, src, "lease"), p, 8, &v, &len) == APR_SUCCESS) {
        /* A fetch is under way (perhaps for this very kid): its answer serves us too. */
        fetch_single_flight(src, p, 0, 0, deadline, &why);
    }
    sync_from_store(src, p);
    snap = usable(src, now_sec(), &recent);
    return snap ? snap : ref(have);
}

void entra_source_maintain(entra_source *src, apr_pool_t *p)
{
    const char *why = "key fetch failed";
    int recent;
    apr_int64_t now = now_sec();
    entra_keys_snapshot *snap;

    sync_from_store(src, p);
    snap = usable(src, now, &recent);
    /* While failures back off, the failing attempt has been logged already. */
    if ((!snap || now - snap->fetched >= src->refresh_interval || !snap->v1_tried) &&
        !entra_backoff_active(src->store, p, skey(p, src, "fail"), &why, NULL)) {
        /* Cold: v2 first, so requests waiting on this fetch get keys soonest; then only the
         * v1 part, unless a full refresh is due anyway. */
        int mode = !snap ? 0 : now - snap->fetched >= src->refresh_interval ? 1 : 2;
        if (fetch_single_flight(src, p, mode, 0, 0, &why) == APR_SUCCESS)
            sync_from_store(src, p);
        else if (snap && !entra_cancelled(src->http.cancel))
            entra_log(ENTRA_LOG_WARN,
                      "ENTRA0108: %s: refresh failed, still using keys fetched %ld s ago: %s",
                      src->meta_v2, (long)(now - snap->fetched), why);
    }
    entra_snapshot_release(snap);
}

void entra_source_status_get(entra_source *src, apr_pool_t *p, entra_source_status *st)
{
    const char *why;
    int i;

    memset(st, 0, sizeof(*st));
    st->meta = src->meta_v2;
    st->kids = apr_array_make(p, 4, sizeof(const char *));
    sync_from_store(src, p);
    apr_thread_mutex_lock(src->mu);
    if (src->cur) {
        st->issuer = apr_pstrdup(p, src->cur->iss.v2);
        st->issuer_v1 = src->cur->iss.v1 ? apr_pstrdup(p, src->cur->iss.v1) : NULL;
        st->fetched = src->cur->fetched;
        st->next_refresh = src->cur->fetched + src->refresh_interval;
        for (i = 0; i < src->cur->ks->keys->nelts; i++)
            APR_ARRAY_PUSH(st->kids, const char *) =
                apr_pstrdup(p, APR_ARRAY_IDX(src->cur->ks->keys, i, entra_key).kid);
    }
    if (src->last_error_at) {
        st->last_error = apr_pstrdup(p, src->last_error);
        st->last_error_at = src->last_error_at;
    }
    apr_thread_mutex_unlock(src->mu);
    /* The machine's current failure, while its backoff lasts. */
    if (entra_backoff_active(src->store, p, skey(p, src, "fail"), &why, NULL)) {
        st->last_error = why;
        st->last_error_at = 0;
    }
}
