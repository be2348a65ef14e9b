/* A small per-process cache of verified claims in front of the shared store: bounded
 * (direct-mapped slots), honours expiry, thread-safe; claims are shared read-only. */
#ifndef ENTRA_L1_H
#define ENTRA_L1_H

#include <apr_pools.h>
#include <jansson.h>

#define ENTRA_L1_HASH_LEN 32

typedef struct entra_l1 entra_l1;

apr_status_t entra_l1_create(apr_pool_t *p, unsigned slots, entra_l1 **out);

/* Claims cached for (hash, ns) and live at `now`, with a new reference owned by pool `p`,
 * the token's signature algorithm in *alg and the tag of the key that verified it in *key;
 * NULL otherwise. */
json_t *entra_l1_get(entra_l1 *l1, apr_pool_t *p, const unsigned char *hash, const void *ns,
                     apr_int64_t now, int *alg, apr_uint64_t *key);

/* Caches `claims` (takes its own reference), the token's `alg` and the verifying key's tag
 * until `expiry` (s). */
void entra_l1_put(entra_l1 *l1, const unsigned char *hash, const void *ns, json_t *claims,
                  int alg, apr_uint64_t key, apr_int64_t expiry);

#endif
