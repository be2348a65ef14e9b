/* entra_memstore_create: the in-process entra_store (get/put/remove/add, expiry, bound,
 * and the atomicity of add across threads). */
#include "unit.h"

#include <apr_atomic.h>
#include <apr_thread_proc.h>
#include <apr_time.h>

#include "entra_store.h"

#define FAR (apr_time_now() + apr_time_from_sec(3600))

static entra_store *mk(int max)
{
    entra_store *s = NULL;
    CHECK_INT_EQ(entra_memstore_create(up, max, &s), APR_SUCCESS);
    if (!s) {
        fprintf(stderr, "test_memstore: no store\n");
        exit(2);
    }
    return s;
}

static apr_status_t put(entra_store *s, const char *k, const char *v, apr_time_t exp)
{
    return s->put(s, k, v, strlen(v), exp);
}

static apr_status_t add(entra_store *s, const char *k, const char *v, apr_time_t exp)
{
    return s->add(s, k, v, strlen(v), exp);
}

/* The live value of `k`, or NULL. */
static const char *get(entra_store *s, const char *k)
{
    char *v = (char *)"unset";
    apr_size_t n = 12345;
    apr_status_t rv = s->get(s, k, up, 1 << 20, &v, &n);
    if (rv != APR_SUCCESS)
        return NULL;
    return v && strlen(v) == n ? v : "(length mismatch)";
}

static void test_get_put_remove(void)
{
    entra_store *s = mk(100);
    char *v;
    apr_size_t n;

    CHECK(get(s, "a") == NULL);
    CHECK_INT_EQ(s->get(s, "a", up, 100, &v, &n), APR_NOTFOUND);
    CHECK_INT_EQ(put(s, "a", "one", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "a"), "one");
    CHECK(get(s, "b") == NULL);
    CHECK(get(s, "A") == NULL);
    CHECK(get(s, "a ") == NULL);
    /* put replaces */
    CHECK_INT_EQ(put(s, "a", "two", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "a"), "two");
    CHECK_INT_EQ(put(s, "a", "", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "a"), "");
    CHECK_INT_EQ(put(s, "b", "bee", FAR), APR_SUCCESS);
    /* remove drops one key only */
    CHECK_INT_EQ(s->remove(s, "a"), APR_SUCCESS);
    CHECK(get(s, "a") == NULL);
    CHECK_STR_EQ(get(s, "b"), "bee");
    s->remove(s, "never-there");
    CHECK_STR_EQ(get(s, "b"), "bee");
    /* the value is a copy: changing the caller's buffer later changes nothing */
    {
        char buf[8] = "mutable";
        CHECK_INT_EQ(s->put(s, "c", buf, 7, FAR), APR_SUCCESS);
        memcpy(buf, "XXXXXXX", 7);
        CHECK_STR_EQ(get(s, "c"), "mutable");
    }
    /* keys are copied too */
    {
        char key[8] = "key-1";
        CHECK_INT_EQ(put(s, key, "v", FAR), APR_SUCCESS);
        key[4] = '2';
        CHECK_STR_EQ(get(s, "key-1"), "v");
        CHECK(get(s, "key-2") == NULL);
    }
}

static void test_binary_values_and_max(void)
{
    entra_store *s = mk(10);
    static const char bin[] = {'a', 0, 'b', 0, (char)0xff};
    char *v = NULL;
    apr_size_t n = 0;

    CHECK_INT_EQ(s->put(s, "bin", bin, sizeof(bin), FAR), APR_SUCCESS);
    CHECK_INT_EQ(s->get(s, "bin", up, 100, &v, &n), APR_SUCCESS);
    CHECK_INT_EQ(n, sizeof(bin));
    CHECK(v && memcmp(v, bin, sizeof(bin)) == 0 && v[n] == '\0');
    /* `max` bounds what is copied: a larger value is not handed out */
    CHECK_INT_EQ(s->get(s, "bin", up, sizeof(bin), &v, &n), APR_SUCCESS);
    CHECK_INT_EQ(s->get(s, "bin", up, sizeof(bin) - 1, &v, &n), APR_NOTFOUND);
    CHECK_INT_EQ(s->get(s, "bin", up, 0, &v, &n), APR_NOTFOUND);
    CHECK_INT_EQ(s->put(s, "empty", "", 0, FAR), APR_SUCCESS);
    CHECK_INT_EQ(s->get(s, "empty", up, 0, &v, &n), APR_SUCCESS);
    CHECK(n == 0 && v && v[0] == '\0');
    /* only `len` bytes of the value are stored */
    CHECK_INT_EQ(s->put(s, "part", "abcdef", 3, FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "part"), "abc");
}

static void test_add(void)
{
    entra_store *s = mk(100);

    CHECK_INT_EQ(add(s, "lease", "first", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "lease"), "first");
    CHECK_INT_EQ(add(s, "lease", "second", FAR), APR_EEXIST);
    CHECK_STR_EQ(get(s, "lease"), "first");
    /* put over it, then add still refuses */
    CHECK_INT_EQ(put(s, "lease", "third", FAR), APR_SUCCESS);
    CHECK_INT_EQ(add(s, "lease", "fourth", FAR), APR_EEXIST);
    CHECK_STR_EQ(get(s, "lease"), "third");
    /* after remove, add wins again */
    CHECK_INT_EQ(s->remove(s, "lease"), APR_SUCCESS);
    CHECK_INT_EQ(add(s, "lease", "fifth", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "lease"), "fifth");
    /* an expired value does not block add */
    CHECK_INT_EQ(put(s, "old", "stale", apr_time_now() - apr_time_from_sec(1)), APR_SUCCESS);
    CHECK_INT_EQ(add(s, "old", "fresh", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "old"), "fresh");
    /* add of an already expired value stores nothing live */
    CHECK_INT_EQ(add(s, "past", "p", apr_time_now() - 1), APR_SUCCESS);
    CHECK(get(s, "past") == NULL);
    CHECK_INT_EQ(add(s, "past", "q", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "past"), "q");
}

static void test_expiry(void)
{
    entra_store *s = mk(100);
    apr_time_t soon = apr_time_now() + apr_time_from_msec(200);

    CHECK_INT_EQ(put(s, "short", "s", soon), APR_SUCCESS);
    CHECK_INT_EQ(add(s, "lease", "l", soon), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "long", "L", FAR), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "past", "p", apr_time_now() - 1), APR_SUCCESS);
    CHECK(get(s, "past") == NULL);
    if (apr_time_now() < soon - apr_time_from_msec(50)) { /* not too slow a machine */
        CHECK_STR_EQ(get(s, "short"), "s");
        CHECK_INT_EQ(add(s, "lease", "other", FAR), APR_EEXIST);
    }
    apr_sleep(apr_time_from_msec(300));
    CHECK(get(s, "short") == NULL);
    CHECK_STR_EQ(get(s, "long"), "L");
    CHECK_INT_EQ(add(s, "lease", "other", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "lease"), "other");
    /* put refreshes the expiry */
    soon = apr_time_now() + apr_time_from_msec(150);
    CHECK_INT_EQ(put(s, "r", "1", soon), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "r", "2", FAR), APR_SUCCESS);
    apr_sleep(apr_time_from_msec(250));
    CHECK_STR_EQ(get(s, "r"), "2");
}

/* Live keys among <prefix>0..<prefix>(n-1). */
static int count_live_p(entra_store *s, const char *prefix, int n)
{
    int i, live = 0;
    for (i = 0; i < n; i++)
        if (get(s, apr_psprintf(up, "%s%d", prefix, i)))
            live++;
    return live;
}
#define count_live(s, n) count_live_p((s), "k", (n))

static void test_bound(void)
{
    entra_store *s = mk(10);
    int i, newest_missing = 0, over = 0;

    for (i = 0; i < 50; i++) {
        CHECK_INT_EQ(put(s, apr_psprintf(up, "k%d", i), "v", FAR + i), APR_SUCCESS);
        if (!get(s, apr_psprintf(up, "k%d", i)))
            newest_missing++;
        if (count_live(s, i + 1) > 10)
            over++;
    }
    CHECK_INT_EQ(newest_missing, 0);
    CHECK_INT_EQ(over, 0);
    CHECK_INT_EQ(count_live(s, 50), 10);
    /* add under the bound: always stores its value */
    CHECK_INT_EQ(add(s, "fresh", "f", FAR + 100), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "fresh"), "f");
    CHECK(count_live(s, 50) + 1 <= 10);

    /* A bound of one keeps exactly the newest entry. */
    s = mk(1);
    CHECK_INT_EQ(put(s, "x", "1", FAR), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "y", "2", FAR), APR_SUCCESS);
    CHECK(get(s, "x") == NULL);
    CHECK_STR_EQ(get(s, "y"), "2");
    /* replacing the one entry is not an eviction of something else */
    CHECK_INT_EQ(put(s, "y", "3", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "y"), "3");

    /* Expired entries make room before live ones are evicted. */
    s = mk(3);
    CHECK_INT_EQ(put(s, "live1", "a", FAR), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "dead1", "b", apr_time_now() + apr_time_from_msec(50)), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "dead2", "c", apr_time_now() + apr_time_from_msec(50)), APR_SUCCESS);
    apr_sleep(apr_time_from_msec(120));
    CHECK_INT_EQ(put(s, "live2", "d", FAR), APR_SUCCESS);
    CHECK_INT_EQ(put(s, "live3", "e", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(s, "live1"), "a");
    CHECK_STR_EQ(get(s, "live2"), "d");
    CHECK_STR_EQ(get(s, "live3"), "e");
}

/* ---- concurrency ---- */

#define THREADS 8
#define KEYS 1000

/* Thread functions return instead of calling apr_thread_exit(): pthread_exit's forced unwind
 * trips a known ASan false positive (stack-buffer-overflow in sigaltstack at thread exit). */
static entra_store *cs;
static volatile apr_uint32_t wins[KEYS], winner[KEYS], total_wins, errors, go;

static void *APR_THREAD_FUNC adder(apr_thread_t *t, void *arg)
{
    apr_uint32_t id = (apr_uint32_t)(apr_uintptr_t)arg;
    char key[32], val[32];
    int i, spin;

    /* Start together (bounded wait). */
    for (spin = 0; spin < 2000 && !apr_atomic_read32(&go); spin++)
        apr_sleep(1000);
    for (i = 0; i < KEYS; i++) {
        apr_status_t rv;
        snprintf(key, sizeof(key), "lease:%d", i);
        snprintf(val, sizeof(val), "%u", id);
        rv = cs->add(cs, key, val, strlen(val), apr_time_now() + apr_time_from_sec(600));
        if (rv == APR_SUCCESS) {
            apr_atomic_inc32(&wins[i]);
            apr_atomic_inc32(&total_wins);
            apr_atomic_set32(&winner[i], id);
        } else if (rv != APR_EEXIST) {
            apr_atomic_inc32(&errors);
        }
    }
    return NULL;
}

static void test_concurrent_add(void)
{
    apr_thread_t *th[THREADS];
    apr_threadattr_t *attr;
    apr_status_t rv;
    int i, not_one = 0, wrong_value = 0, started = 0;

    cs = mk(2 * KEYS);
    apr_threadattr_create(&attr, up);
    for (i = 0; i < THREADS; i++)
        if (apr_thread_create(&th[i], attr, adder, (void *)(apr_uintptr_t)(i + 1), up) ==
            APR_SUCCESS)
            started++;
    CHECK_INT_EQ(started, THREADS);
    apr_atomic_set32(&go, 1);
    for (i = 0; i < started; i++)
        apr_thread_join(&rv, th[i]);

    for (i = 0; i < KEYS; i++) {
        const char *v;
        if (wins[i] != 1)
            not_one++;
        v = get(cs, apr_psprintf(up, "lease:%d", i));
        if (!v || (apr_uint32_t)atoi(v) != winner[i])
            wrong_value++;
    }
    CHECK_INT_EQ(errors, 0);
    CHECK_INT_EQ(not_one, 0);
    CHECK_INT_EQ(total_wins, KEYS);
    CHECK_INT_EQ(wrong_value, 0);
}

/* Mixed put/get/remove/add from several threads: no crash, values always whole. */
static volatile apr_uint32_t torn;

static void *APR_THREAD_FUNC mixer(apr_thread_t *t, void *arg)
{
    apr_uint32_t id = (apr_uint32_t)(apr_uintptr_t)arg;
    apr_pool_t *p;
    char key[32], val[64];
    int i;

    apr_pool_create(&p, NULL);
    for (i = 0; i < 4000; i++) {
        char *v;
        apr_size_t n;
        snprintf(key, sizeof(key), "m%d", i % 37);
        snprintf(val, sizeof(val), "value-%u-%d-%s", id, i, "padding-padding");
        switch ((i + (int)id) % 4) {
        case 0:
            cs->put(cs, key, val, strlen(val),
                    apr_time_now() + apr_time_from_msec(i % 3 ? 500 : 1));
            break;
        case 1:
            if (cs->get(cs, key, p, 64, &v, &n) == APR_SUCCESS &&
                (n != strlen(v) || strncmp(v, "value-", 6) != 0 ||
                 strcmp(v + n - 15, "padding-padding") != 0))
                apr_atomic_inc32(&torn);
            break;
        case 2:
            cs->add(cs, key, val, strlen(val), apr_time_now() + apr_time_from_msec(200));
            break;
        default:
            cs->remove(cs, key);
        }
        if (i % 500 == 0)
            apr_pool_clear(p);
    }
    apr_pool_destroy(p);
    return NULL;
}

static void test_concurrent_mixed(void)
{
    apr_thread_t *th[THREADS];
    apr_threadattr_t *attr;
    apr_status_t rv;
    int i, started = 0;

    cs = mk(16); /* smaller than the key space: eviction under contention */
    apr_threadattr_create(&attr, up);
    for (i = 0; i < THREADS; i++)
        if (apr_thread_create(&th[i], attr, mixer, (void *)(apr_uintptr_t)(i + 1), up) ==
            APR_SUCCESS)
            started++;
    for (i = 0; i < started; i++)
        apr_thread_join(&rv, th[i]);
    CHECK_INT_EQ(started, THREADS);
    CHECK_INT_EQ(torn, 0);
    CHECK(count_live_p(cs, "m", 37) <= 16);
    CHECK_INT_EQ(put(cs, "after", "ok", FAR), APR_SUCCESS);
    CHECK_STR_EQ(get(cs, "after"), "ok");
}

int main(void)
{
    unit_begin("test_memstore");
    RUN(test_get_put_remove);
    RUN(test_binary_values_and_max);
    RUN(test_add);
    RUN(test_expiry);
    RUN(test_bound);
    RUN(test_concurrent_add);
    RUN(test_concurrent_mixed);
    return unit_end();
}
