#include <string.h>
#include <apr_hash.h>
#include <apr_strings.h>
#include <apr_thread_mutex.h>

#include "entra_store.h"

typedef struct {
    apr_pool_t *pool; /* one per entry, so replacing and expiring frees memory */
    char *val;
    apr_size_t len;
    apr_time_t expiry;
} mem_entry;

typedef struct {
    apr_pool_t *pool;
    apr_thread_mutex_t *mu;
    apr_hash_t *h;
    int max_entries;
} memstore;

static void drop(memstore *m, const char *key, mem_entry *e)
{
    apr_hash_set(m->h, key, APR_HASH_KEY_STRING, NULL);
    apr_pool_destroy(e->pool);
}

/* Removes expired entries, then the soonest-expiring ones while over the bound. */
static void evict(memstore *m, apr_time_t now)
{
    apr_hash_index_t *hi;
    while (1) {
        const char *victim = NULL;
        mem_entry *ve = NULL;
        for (hi = apr_hash_first(NULL, m->h); hi; hi = apr_hash_next(hi)) {
            const void *k;
            void *v;
            apr_hash_this(hi, &k, NULL, &v);
            if (((mem_entry *)v)->expiry <= now) {
                victim = k;
                ve = v;
                break;
            }
            if (!ve || ((mem_entry *)v)->expiry < ve->expiry) {
                victim = k;
                ve = v;
            }
        }
        if (!ve || (ve->expiry > now && (int)apr_hash_count(m->h) < m->max_entries))
            return;
        drop(m, victim, ve);
    }
}

static mem_entry *live(memstore *m, const char *key, apr_time_t now)
{
    mem_entry *e = apr_hash_get(m->h, key, APR_HASH_KEY_STRING);
    if (e && e->expiry <= now) {
        drop(m, key, e);
        e = NULL;
    }
    return e;
}

static apr_status_t mem_get(entra_store *s, const char *key, apr_pool_t *p, apr_size_t max,
                            char **val, apr_size_t *len)
{
    memstore *m = s->baton;
    mem_entry *e;
    apr_status_t rv = APR_NOTFOUND;

    *val = NULL;
    *len = 0;
    apr_thread_mutex_lock(m->mu);
    e = live(m, key, apr_time_now());
    if (e && e->len <= max) {
        *val = apr_pstrmemdup(p, e->val, e->len);
        *len = e->len;
        rv = APR_SUCCESS;
    }
    apr_thread_mutex_unlock(m->mu);
    return rv;
}

static void set_locked(memstore *m, const char *key, const char *val, apr_size_t len,
                       apr_time_t expiry)
{
    mem_entry *old = apr_hash_get(m->h, key, APR_HASH_KEY_STRING), *e;
    apr_pool_t *ep;

    if (old)
        drop(m, key, old);
    evict(m, apr_time_now());
    apr_pool_create(&ep, m->pool);
    e = apr_palloc(ep, sizeof(*e));
    e->pool = ep;
    e->val = apr_pstrmemdup(ep, val, len);
    e->len = len;
    e->expiry = expiry;
    apr_hash_set(m->h, apr_pstrdup(ep, key), APR_HASH_KEY_STRING, e);
}

static apr_status_t mem_put(entra_store *s, const char *key, const char *val, apr_size_t len,
                            apr_time_t expiry)
{
    memstore *m = s->baton;
    apr_thread_mutex_lock(m->mu);
    set_locked(m, key, val, len, expiry);
    apr_thread_mutex_unlock(m->mu);
    return APR_SUCCESS;
}

static apr_status_t mem_add(entra_store *s, const char *key, const char *val, apr_size_t len,
                            apr_time_t expiry)
{
    memstore *m = s->baton;
    apr_status_t rv = APR_EEXIST;
    apr_thread_mutex_lock(m->mu);
    if (!live(m, key, apr_time_now())) {
        set_locked(m, key, val, len, expiry);
        rv = APR_SUCCESS;
    }
    apr_thread_mutex_unlock(m->mu);
    return rv;
}

static apr_status_t mem_remove(entra_store *s, const char *key)
{
    memstore *m = s->baton;
    mem_entry *e;
    apr_thread_mutex_lock(m->mu);
    e = apr_hash_get(m->h, key, APR_HASH_KEY_STRING);
    if (e)
        drop(m, key, e);
    apr_thread_mutex_unlock(m->mu);
    return APR_SUCCESS;
}

apr_status_t entra_memstore_create(apr_pool_t *p, int max_entries, entra_store **out)
{
    memstore *m = apr_pcalloc(p, sizeof(*m));
    entra_store *s = apr_pcalloc(p, sizeof(*s));
    apr_status_t rv;

    *out = NULL;
    apr_pool_create(&m->pool, p);
    rv = apr_thread_mutex_create(&m->mu, APR_THREAD_MUTEX_DEFAULT, p);
    if (rv != APR_SUCCESS)
        return rv;
    m->h = apr_hash_make(m->pool);
    m->max_entries = max_entries > 0 ? max_entries : 1;
    s->baton = m;
    s->get = mem_get;
    s->put = mem_put;
    s->add = mem_add;
    s->remove = mem_remove;
    *out = s;
    return APR_SUCCESS;
}
