/* entra_source (entra_keys.c) without a network: the single flight of a key fetch and the
 * per-process snapshots under threads. Another "process" holds the fetch lease in the
 * store, so threads needing keys wait for its record instead of fetching (the metadata
 * URLs point at a closed loopback port: a fetch would fail, and the checks see it); then
 * threads share and swap refcounted snapshots while new records arrive.
 * Run under ThreadSanitizer by `make test-unit TSAN=1`. */
#include "unit.h"

#include <apr_atomic.h>
#include <apr_thread_proc.h>

#include "entra_json.h"
#include "entra_keys.h"

#define THREADS 6
#define ROUNDS 300
#define META "http://127.0.0.1:9/v2.0/.well-known/openid-configuration"

/* A public P-256 key (from t/fuzz/verify_jwks.json). */
static const char *const jwk =
    "{\"kty\":\"EC\",\"use\":\"sig\",\"kid\":\"k1\",\"crv\":\"P-256\","
    "\"x\":\"PArXQf5K23y8FxDJfpGdvQi3uYlf3jDV2qfwoLS5pyI\","
    "\"y\":\"tlFoJ7wQXxnWIBTA17v-yybqlWkiagHXQeeP621_qcw\"}";

static entra_source *src;
static entra_store *store;
static volatile apr_uint32_t got_keys, failed, wrong, go;

/* The record a fetch stores (see fetch_now), with version `v`. */
static void put_record(long v)
{
    const char *rec = apr_psprintf(up,
                                   "{\"keys\":[%s],\"iss2\":\"https://issuer.test/v2.0\","
                                   "\"fetched\":%" APR_INT64_T_FMT ",\"v1try\":true,\"v\":%ld}",
                                   jwk, (apr_int64_t)apr_time_sec(apr_time_now()), v);
    store->put(store, "t|rec", rec, strlen(rec), apr_time_now() + apr_time_from_sec(3600));
}

static void setup(void)
{
    CHECK(entra_memstore_create(up, 64, &store) == APR_SUCCESS);
    CHECK(entra_source_create(up, "t", META, NULL, 0, &src) == APR_SUCCESS);
    src->store = store;
    src->http.timeout_ms = 2000; /* waiters give up after 3 x this + 2 s */
}

static void *APR_THREAD_FUNC waiter(apr_thread_t *t, void *arg)
{
    apr_pool_t *p;
    entra_keys_snapshot *snap = NULL;
    const char *why = NULL;
    int spin;

    apr_pool_create_unmanaged_ex(&p, NULL, NULL);
    for (spin = 0; spin < 2000 && !apr_atomic_read32(&go); spin++)
        apr_sleep(1000);
    if (entra_source_acquire(src, p, &snap, &why) == APR_SUCCESS) {
        if (entra_keyset_find(snap->ks, "k1"))
            apr_atomic_inc32(&got_keys);
        else
            apr_atomic_inc32(&wrong);
        entra_snapshot_release(snap);
    }
    else
        apr_atomic_inc32(&failed);
    apr_pool_destroy(p);
    return NULL;
}

/* While another holder has the lease, every thread waits and gets its record; none fetches
 * (a fetch from port 9 would fail and be remembered as a failure). */
static void test_waiters_share_one_fetch(void)
{
    apr_thread_t *th[THREADS];
    apr_threadattr_t *attr;
    apr_status_t rv;
    char *v;
    apr_size_t len;
    int i, started = 0;

    setup();
    CHECK(store->add(store, "t|lease", "1", 1, apr_time_now() + apr_time_from_sec(30)) ==
          APR_SUCCESS);
    apr_threadattr_create(&attr, up);
    for (i = 0; i < THREADS; i++)
        if (apr_thread_create(&th[i], attr, waiter, NULL, up) == APR_SUCCESS)
            started++;
    CHECK_INT_EQ(started, THREADS);
    apr_atomic_set32(&go, 1);
    apr_sleep(apr_time_from_msec(200)); /* they are waiting now */
    put_record(1);
    store->remove(store, "t|lease");
    for (i = 0; i < started; i++)
        apr_thread_join(&rv, th[i]);
    CHECK_INT_EQ(got_keys, THREADS);
    CHECK_INT_EQ(failed, 0);
    CHECK_INT_EQ(wrong, 0);
    CHECK(store->get(store, "t|fail", up, 256, &v, &len) == APR_NOTFOUND);
    entra_snapshot_release(src->cur);
    src->cur = NULL;
}

static void *APR_THREAD_FUNC user(apr_thread_t *t, void *arg)
{
    apr_pool_t *p;
    int i, spin;

    apr_pool_create_unmanaged_ex(&p, NULL, NULL);
    for (spin = 0; spin < 2000 && !apr_atomic_read32(&go); spin++)
        apr_sleep(1000);
    for (i = 0; i < ROUNDS; i++) {
        entra_keys_snapshot *snap = NULL, *other;
        const char *why = NULL;
        if (entra_source_acquire(src, p, &snap, &why) != APR_SUCCESS) {
            apr_atomic_inc32(&failed);
            continue;
        }
        /* An unknown kid makes the process look at the store (the refetch throttle is
         * taken, so nothing is fetched) and may swap in a newer snapshot. */
        other = entra_source_refetch_for_kid(src, p, snap, "unknown");
        if (!entra_keyset_find(snap->ks, "k1") || !other || !entra_keyset_find(other->ks, "k1"))
            apr_atomic_inc32(&wrong);
        entra_snapshot_release(other);
        entra_snapshot_release(snap);
        apr_pool_clear(p);
    }
    apr_pool_destroy(p);
    return NULL;
}

/* Threads hold, swap and release snapshots while new records keep arriving. */
static void test_snapshots_under_threads(void)
{
    apr_thread_t *th[THREADS];
    apr_threadattr_t *attr;
    apr_status_t rv;
    int i, started = 0;

    setup();
    failed = wrong = go = 0;
    put_record(1);
    store->put(store, "t|kid", "1", 1, apr_time_now() + apr_time_from_sec(600));
    apr_threadattr_create(&attr, up);
    for (i = 0; i < THREADS; i++)
        if (apr_thread_create(&th[i], attr, user, NULL, up) == APR_SUCCESS)
            started++;
    CHECK_INT_EQ(started, THREADS);
    apr_atomic_set32(&go, 1);
    for (i = 2; i < 40; i++) {
        put_record(i);
        apr_sleep(apr_time_from_msec(5));
    }
    for (i = 0; i < started; i++)
        apr_thread_join(&rv, th[i]);
    CHECK_INT_EQ(failed, 0);
    CHECK_INT_EQ(wrong, 0);
    CHECK(src->cur && src->cur->refs == 1); /* only the source's own reference is left */
    entra_snapshot_release(src->cur);
    src->cur = NULL;
}

int main(void)
{
    unit_begin("test_keys");
    RUN(test_waiters_share_one_fetch);
    RUN(test_snapshots_under_threads);
    return unit_end();
}
