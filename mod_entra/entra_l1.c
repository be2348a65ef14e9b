#include <string.h>
#include <apr_thread_mutex.h>

#include "entra_json.h"
#include "entra_l1.h"

typedef struct {
    unsigned char hash[ENTRA_L1_HASH_LEN];
    const void *ns;
    json_t *claims; /* NULL when empty */
    int alg;
    apr_uint64_t key;
    apr_int64_t expiry;
} slot_t;

struct entra_l1 {
    apr_thread_mutex_t *mu;
    unsigned n;
    slot_t *slots;
};

static apr_status_t l1_cleanup(void *data)
{
    entra_l1 *l1 = data;
    unsigned i;
    for (i = 0; i < l1->n; i++)
        json_decref(l1->slots[i].claims);
    return APR_SUCCESS;
}

apr_status_t entra_l1_create(apr_pool_t *p, unsigned slots, entra_l1 **out)
{
    entra_l1 *l1 = apr_pcalloc(p, sizeof(*l1));
    l1->n = slots ? slots : 1;
    l1->slots = apr_pcalloc(p, l1->n * sizeof(slot_t));
    apr_pool_cleanup_register(p, l1, l1_cleanup, apr_pool_cleanup_null);
    *out = l1;
    return apr_thread_mutex_create(&l1->mu, APR_THREAD_MUTEX_DEFAULT, p);
}

static slot_t *slot_of(entra_l1 *l1, const unsigned char *hash)
{
    apr_uint32_t h;
    memcpy(&h, hash, sizeof(h));
    return &l1->slots[h % l1->n];
}

json_t *entra_l1_get(entra_l1 *l1, apr_pool_t *p, const unsigned char *hash, const void *ns,
                     apr_int64_t now, int *alg, apr_uint64_t *key)
{
    slot_t *s = slot_of(l1, hash);
    json_t *c = NULL;

    apr_thread_mutex_lock(l1->mu);
    if (s->claims && s->ns == ns && now < s->expiry &&
        memcmp(s->hash, hash, ENTRA_L1_HASH_LEN) == 0) {
        c = json_incref(s->claims);
        *alg = s->alg;
        *key = s->key;
    }
    apr_thread_mutex_unlock(l1->mu);
    return c ? entra_json_pool_own(p, c) : NULL;
}

void entra_l1_put(entra_l1 *l1, const unsigned char *hash, const void *ns, json_t *claims,
                  int alg, apr_uint64_t key, apr_int64_t expiry)
{
    slot_t *s = slot_of(l1, hash);
    json_t *old;

    json_incref(claims);
    apr_thread_mutex_lock(l1->mu);
    old = s->claims;
    memcpy(s->hash, hash, ENTRA_L1_HASH_LEN);
    s->ns = ns;
    s->claims = claims;
    s->alg = alg;
    s->key = key;
    s->expiry = expiry;
    apr_thread_mutex_unlock(l1->mu);
    json_decref(old);
}
