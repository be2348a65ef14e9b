/* Shared key/value state behind one interface: httpd backs it with socache plus a global
 * mutex (mod_entra_cache.c), scripts with an in-process table (entra_memstore.c).
 *
 * Names ending in "|rec" are records worth sharing beyond the machine (a key set, a
 * token); every other name (leases, backoff, throttles) is machine state. A networked
 * store seals and shares only the former, and keeps `add` on the machine. */
#ifndef ENTRA_STORE_H
#define ENTRA_STORE_H

#include <apr_pools.h>
#include <apr_time.h>

typedef struct entra_store entra_store;

struct entra_store {
    void *baton;
    /* Copies a live value of at most `max` bytes into `p` (NUL-terminated); APR_NOTFOUND
     * when absent or expired. */
    apr_status_t (*get)(entra_store *s, const char *key, apr_pool_t *p, apr_size_t max,
                        char **val, apr_size_t *len);
    /* Stores or replaces until `expiry`. */
    apr_status_t (*put)(entra_store *s, const char *key, const char *val, apr_size_t len,
                        apr_time_t expiry);
    apr_status_t (*remove)(entra_store *s, const char *key);
    /* Stores only when no live value exists, atomically with respect to every other user
     * of the store on this machine: APR_SUCCESS for the one caller that added it,
     * APR_EEXIST for the others. The basis of leases and fetch throttles. */
    apr_status_t (*add)(entra_store *s, const char *key, const char *val, apr_size_t len,
                        apr_time_t expiry);
};

/* An in-process store (thread-safe, at most `max_entries` live entries). */
apr_status_t entra_memstore_create(apr_pool_t *p, int max_entries, entra_store **out);

#endif
