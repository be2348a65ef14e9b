/* Shared state of the machine: the store on httpd's socache (shmcb by default) guarded by
 * one global mutex (keys, leases, outbound tokens), and the lock-free verdict table. */
#include <string.h>

#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <ap_provider.h>
#include <ap_socache.h>
#include <util_mutex.h>
#include <apr_global_mutex.h>
#include <apr_shm.h>
#include <apr_strings.h>

#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define MUTEX_TYPE "entra-cache"
#define DEFAULT_SHMCB_SIZE (4 * 1024 * 1024)

static const ap_socache_provider_t *provider;
static ap_socache_instance_t *instance;
static apr_global_mutex_t *mutex;
static server_rec *main_server;
static entra_store store;
static entra_vtab *vtab;

void entra_cache_register_mutex(apr_pool_t *pconf)
{
    ap_mutex_register(pconf, MUTEX_TYPE, NULL, APR_LOCK_DEFAULT, 0);
}

static void lock(void)
{
    if (mutex)
        apr_global_mutex_lock(mutex);
}

static void unlock(void)
{
    if (mutex)
        apr_global_mutex_unlock(mutex);
}

static apr_status_t retrieve_locked(const char *key, apr_pool_t *p, apr_size_t max, char **val,
                                    apr_size_t *len)
{
    unsigned char *buf = apr_palloc(p, max + 1);
    unsigned int n = (unsigned int)max;
    apr_status_t rv = provider->retrieve(instance, main_server, (const unsigned char *)key,
                                         (unsigned int)strlen(key), buf, &n, p);
    if (rv != APR_SUCCESS)
        return APR_NOTFOUND;
    buf[n] = '\0';
    *val = (char *)buf;
    *len = n;
    return APR_SUCCESS;
}

static apr_status_t sc_get(entra_store *s, const char *key, apr_pool_t *p, apr_size_t max,
                           char **val, apr_size_t *len)
{
    apr_status_t rv;
    (void)s;
    *val = NULL;
    *len = 0;
    lock();
    rv = retrieve_locked(key, p, max, val, len);
    unlock();
    return rv;
}

static apr_status_t store_locked(const char *key, const char *val, apr_size_t len,
                                 apr_time_t expiry, apr_pool_t *p)
{
    return provider->store(instance, main_server, (const unsigned char *)key,
                           (unsigned int)strlen(key), expiry, (unsigned char *)val,
                           (unsigned int)len, p);
}

static apr_status_t sc_put(entra_store *s, const char *key, const char *val, apr_size_t len,
                           apr_time_t expiry)
{
    apr_pool_t *p;
    apr_status_t rv;
    (void)s;
    apr_pool_create(&p, NULL);
    lock();
    rv = store_locked(key, val, len, expiry, p);
    unlock();
    apr_pool_destroy(p);
    return rv;
}

static apr_status_t sc_add(entra_store *s, const char *key, const char *val, apr_size_t len,
                           apr_time_t expiry)
{
    apr_pool_t *p;
    apr_status_t rv;
    char *old;
    apr_size_t olen;
    (void)s;
    apr_pool_create(&p, NULL);
    lock();
    if (retrieve_locked(key, p, 64, &old, &olen) == APR_SUCCESS)
        rv = APR_EEXIST;
    else
        rv = store_locked(key, val, len, expiry, p);
    unlock();
    apr_pool_destroy(p);
    return rv;
}

static apr_status_t sc_remove(entra_store *s, const char *key)
{
    apr_pool_t *p;
    apr_status_t rv;
    (void)s;
    apr_pool_create(&p, NULL);
    lock();
    rv = provider->remove(instance, main_server, (const unsigned char *)key,
                          (unsigned int)strlen(key), p);
    unlock();
    apr_pool_destroy(p);
    return rv;
}

static apr_status_t cache_cleanup(void *data)
{
    (void)data;
    if (provider && instance)
        provider->destroy(instance, main_server);
    provider = NULL;
    instance = NULL;
    mutex = NULL;
    return APR_SUCCESS;
}

/* Anonymous shared memory made before the fork: every child of this generation maps it,
 * and it goes with pconf at a restart. */
static apr_status_t create_vtab(apr_pool_t *pconf, server_rec *s, entra_srv_conf *sc)
{
    long entries = sc->token_cache_entries != ENTRA_UNSET ? sc->token_cache_entries
                                                          : ENTRA_TOKEN_CACHE_DEFAULT;
    apr_size_t bytes;
    apr_shm_t *shm;
    apr_uint64_t seed;
    apr_status_t rv;

    vtab = NULL;
    if (entries == 0)
        return APR_SUCCESS;
    bytes = entra_vtab_bytes((unsigned)entries);
    rv = apr_shm_create(&shm, bytes, NULL, pconf);
    if (rv == APR_SUCCESS)
        rv = apr_generate_random_bytes((unsigned char *)&seed, sizeof(seed));
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s,
                     "ENTRA0014: cannot create the token cache (%" APR_SIZE_T_FMT " bytes)", bytes);
        return rv;
    }
    memset(apr_shm_baseaddr_get(shm), 0, bytes);
    vtab = entra_vtab_attach(pconf, apr_shm_baseaddr_get(shm), bytes, seed);
    return vtab ? APR_SUCCESS : APR_EGENERAL;
}

apr_status_t entra_cache_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    const char *spec = sc->cache_spec ? sc->cache_spec : "shmcb", *name = spec, *args = NULL;
    const char *colon = strchr(spec, ':'), *err;
    struct ap_socache_hints hints = {64, 2048, apr_time_from_sec(30)};
    apr_status_t rv;

    if (colon) {
        name = apr_pstrndup(ptemp, spec, (apr_size_t)(colon - spec));
        args = colon + 1;
    }
    else if (strcmp(name, "shmcb") == 0) {
        args = apr_psprintf(ptemp, "%s(%d)", ap_runtime_dir_relative(ptemp, "mod_entra_cache"),
                            DEFAULT_SHMCB_SIZE);
    }
    provider = ap_lookup_provider(AP_SOCACHE_PROVIDER_GROUP, name, AP_SOCACHE_PROVIDER_VERSION);
    if (!provider) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s,
                     "ENTRA0002: EntraCache: socache provider '%s' is not loaded (LoadModule "
                     "socache_%s_module, e.g. 'a2enmod socache_%s')",
                     name, name, name);
        return APR_EGENERAL;
    }
    err = provider->create(&instance, args, ptemp, pconf);
    if (err) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0003: EntraCache %s: %s", spec, err);
        return APR_EGENERAL;
    }
    rv = ap_global_mutex_create(&mutex, NULL, MUTEX_TYPE, NULL, s, pconf, 0);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0004: cannot create the cache mutex");
        return rv;
    }
    rv = provider->init(instance, "mod_entra", &hints, s, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0005: EntraCache %s: init failed",
                     spec);
        return rv;
    }
    main_server = s;
    apr_pool_cleanup_register(pconf, NULL, cache_cleanup, apr_pool_cleanup_null);
    if ((rv = create_vtab(pconf, s, sc)) != APR_SUCCESS)
        return rv;
    store.get = sc_get;
    store.put = sc_put;
    store.add = sc_add;
    store.remove = sc_remove;
    return APR_SUCCESS;
}

void entra_cache_child_init(apr_pool_t *p, server_rec *s)
{
    if (mutex) {
        apr_status_t rv = apr_global_mutex_child_init(
            &mutex, apr_global_mutex_lockfile(mutex), p);
        if (rv != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s,
                         "ENTRA0006: cannot attach to the cache mutex");
    }
}

entra_vtab *entra_cache_vtab(void)
{
    return vtab;
}

entra_store *entra_cache_store(void)
{
    return provider ? &store : NULL;
}
