/* Shared state of the machine and, with a networked EntraCache, of the fleet.
 *
 * - The LOCAL store: shmcb in shared memory guarded by one global mutex (keys, leases,
 *   backoff, outbound tokens). It is made once from the process pool and handed from one
 *   generation to the next (ap_retained_data), so a graceful restart keeps what the server
 *   knew: keys in their stale window, tokens, backoff.
 * - The SHARED store: the same object when EntraCache is shmcb; otherwise a layer that
 *   keeps every record worth sharing (logical names ending in "|rec": key sets and
 *   client-credential tokens) in the networked cache too, sealed (entra_seal) under an
 *   opaque name, and everything else (leases, backoff, throttles) on this machine. Reads
 *   try the network first, so one machine's fetch serves the fleet, and fall back to the
 *   local copy, so an outage or a forged record degrades to this machine's own state.
 * - The lock-free verdict table (per generation: a pure cache). */
#include <string.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <ap_provider.h>
#include <ap_socache.h>
#include <util_mutex.h>
#include <apr_global_mutex.h>
#include <apr_shm.h>
#include <apr_strings.h>

#include "entra_seal.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define MUTEX_TYPE "entra-cache"
#define DEFAULT_SHMCB_SIZE (4 * 1024 * 1024)
#define RETAINED_KEY "mod_entra local store"
#define SHARED_SUFFIX "|rec"
#define NET_RETRY_SECONDS 5  /* after a network failure, the cache is skipped this long */
#define WARN_SECONDS 60      /* at most one warning per record (or outage) per minute */

/* What outlives a generation; allocated from the process pool. Holds no pointer into this
 * module or a provider module: both are unloaded and loaded again at each restart. */
typedef struct {
    const char *args;                 /* shmcb arguments it was made with */
    ap_socache_instance_t *instance;
    apr_global_mutex_t *mutex;
    /* The instance's pool. shmcb registers its cleanup (code in mod_socache_shmcb.so) on
     * it. On the process pool, the parent ran that cleanup at exit after mod_so had
     * unloaded the module with pconf: SIGSEGV at every stop. Unmanaged, no pool the parent
     * destroys holds it, so a registration left by an earlier mapping of the module (mod_so
     * reloads modules at each restart) is never called; cache_cleanup releases the store
     * at exit while the module is still there. */
    apr_pool_t *pool;
} retained_t;

static const ap_socache_provider_t *local_provider;
static retained_t *local;
static apr_global_mutex_t *mutex;     /* this process's handle (child_init) */
static server_rec *main_server;
static entra_store local_store;

static const ap_socache_provider_t *net_provider; /* NULL unless networked */
static ap_socache_instance_t *net_instance;
static const char *net_spec;
static entra_seal *seal;
static entra_store shared_store;
static volatile apr_time_t net_down_until;

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

/* ------------------------------------------------------------------ the local store */

static apr_status_t retrieve_locked(const char *key, apr_pool_t *p, apr_size_t max, char **val,
                                    apr_size_t *len)
{
    unsigned char *buf = apr_palloc(p, max + 1);
    unsigned int n = (unsigned int)max;
    apr_status_t rv = local_provider->retrieve(local->instance, main_server,
                                               (const unsigned char *)key,
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
    return local_provider->store(local->instance, main_server, (const unsigned char *)key,
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
    rv = local_provider->remove(local->instance, main_server, (const unsigned char *)key,
                                (unsigned int)strlen(key), p);
    unlock();
    apr_pool_destroy(p);
    return rv;
}

/* ------------------------------------------------------------------ the networked layer */

static int shared_name(const char *key)
{
    apr_size_t n = strlen(key), sn = sizeof(SHARED_SUFFIX) - 1;
    return n > sn && memcmp(key + n - sn, SHARED_SUFFIX, sn) == 0;
}

/* True for the first caller on this machine per `what` and minute: warnings about the
 * cache stay readable when every process meets the same problem. */
static int warn_once(apr_pool_t *p, const char *what)
{
    return sc_add(NULL, apr_pstrcat(p, "warn|", what, NULL), "1", 1,
                  apr_time_now() + apr_time_from_sec(WARN_SECONDS)) == APR_SUCCESS;
}

static void net_failed(apr_pool_t *p, apr_status_t rv, const char *op)
{
    char err[128];
    net_down_until = apr_time_now() + apr_time_from_sec(NET_RETRY_SECONDS);
    if (warn_once(p, "net"))
        ap_log_error(APLOG_MARK, APLOG_WARNING, rv, main_server,
                     "ENTRA0501: EntraCache %s: %s failed (%s): this machine uses its own state "
                     "and fetches directly; retrying the cache in %d s",
                     net_spec, op, apr_strerror(rv, err, sizeof(err)), NET_RETRY_SECONDS);
}

static int net_usable(void)
{
    return net_provider && apr_time_now() >= net_down_until;
}

/* A network call; the global mutex only for providers that need it (none of the
 * networked ones: a lock is never held across a network call otherwise). */
#define NET_CALL(expr)                                                                            \
    do {                                                                                           \
        int locked_ = (net_provider->flags & AP_SOCACHE_FLAG_NOTMPSAFE) != 0;                      \
        if (locked_)                                                                               \
            lock();                                                                                \
        rv = (expr);                                                                               \
        if (locked_)                                                                               \
            unlock();                                                                              \
    } while (0)

static apr_status_t net_get(const char *key, apr_pool_t *p, apr_size_t max, char **val,
                            apr_size_t *len)
{
    unsigned char name[ENTRA_SEAL_NAME_LEN], *buf;
    unsigned int n = (unsigned int)(max + ENTRA_SEAL_OVERHEAD);
    apr_status_t rv;

    if (!net_usable())
        return APR_NOTFOUND;
    entra_seal_name(seal, key, name);
    buf = apr_palloc(p, n);
    NET_CALL(net_provider->retrieve(net_instance, main_server, name, sizeof(name), buf, &n, p));
    if (rv != APR_SUCCESS) {
        if (rv != APR_NOTFOUND && rv != APR_ENOMEM && rv != APR_EINVAL)
            net_failed(p, rv, "reading");
        return APR_NOTFOUND;
    }
    rv = entra_seal_open(seal, p, key, apr_time_sec(apr_time_now()), buf, n, val, len);
    if (rv != APR_SUCCESS) {
        /* Forged, swapped, sealed with another key file, damaged, or kept beyond the
         * expiry it was sealed with: as if absent. */
        if (warn_once(p, key))
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, main_server,
                         "ENTRA0500: EntraCache %s: the record %s does not open with "
                         "EntraCacheKeyFile (%s): ignored",
                         net_spec, key,
                         rv == APR_TIMEUP ? "kept beyond its sealed expiry"
                                          : "tampered, swapped, damaged or sealed with another key");
        *val = NULL;
        *len = 0;
        return APR_NOTFOUND;
    }
    return APR_SUCCESS;
}

static void net_put(const char *key, const char *val, apr_size_t len, apr_time_t expiry,
                    apr_pool_t *p)
{
    unsigned char name[ENTRA_SEAL_NAME_LEN], *sealed;
    apr_size_t slen;
    apr_time_t min = apr_time_now() + apr_time_from_sec(2);
    apr_status_t rv;

    if (!net_usable())
        return;
    /* memcache and redis take whole seconds from now and refuse zero. */
    if (expiry < min)
        expiry = min;
    entra_seal_name(seal, key, name);
    if (entra_seal_seal(seal, p, key, apr_time_sec(expiry) + 1, val, len, &sealed, &slen) !=
        APR_SUCCESS)
        return;
    NET_CALL(net_provider->store(net_instance, main_server, name, sizeof(name), expiry, sealed,
                                 (unsigned int)slen, p));
    if (rv != APR_SUCCESS)
        net_failed(p, rv, "writing");
}

static apr_status_t tier_get(entra_store *s, const char *key, apr_pool_t *p, apr_size_t max,
                             char **val, apr_size_t *len)
{
    if (shared_name(key) && net_get(key, p, max, val, len) == APR_SUCCESS)
        return APR_SUCCESS;
    return sc_get(s, key, p, max, val, len);
}

static apr_status_t tier_put(entra_store *s, const char *key, const char *val, apr_size_t len,
                             apr_time_t expiry)
{
    if (shared_name(key)) {
        apr_pool_t *p;
        apr_pool_create(&p, NULL);
        net_put(key, val, len, expiry, p);
        apr_pool_destroy(p);
    }
    /* The local copy serves this machine through outages and forgeries. */
    return sc_put(s, key, val, len, expiry);
}

static apr_status_t tier_remove(entra_store *s, const char *key)
{
    if (shared_name(key) && net_usable()) {
        unsigned char name[ENTRA_SEAL_NAME_LEN];
        apr_pool_t *p;
        apr_status_t rv;
        apr_pool_create(&p, NULL);
        entra_seal_name(seal, key, name);
        NET_CALL(net_provider->remove(net_instance, main_server, name, sizeof(name), p));
        (void)rv; /* absent is fine; an outage shows on the next read or write */
        apr_pool_destroy(p);
    }
    return sc_remove(s, key);
}

/* ------------------------------------------------------------------ startup */

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

/* Splits "provider[:args]". */
static void split_spec(apr_pool_t *p, const char *spec, const char **name, const char **args)
{
    const char *colon = strchr(spec, ':');
    *name = colon ? apr_pstrndup(p, spec, (apr_size_t)(colon - spec)) : spec;
    *args = colon ? colon + 1 : NULL;
}

static const char *spec_of(const entra_srv_conf *sc)
{
    return sc->cache_spec ? sc->cache_spec : "shmcb";
}

int entra_cache_check_config(server_rec *s, apr_pool_t *ptemp)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    const char *name, *args, *why;
    entra_seal *tmp;

    split_spec(ptemp, spec_of(sc), &name, &args);
    if (strcmp(name, "shmcb") != 0 && !sc->cache_key_file) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                     "ENTRA0502: EntraCache %s keeps state outside this machine: set "
                     "EntraCacheKeyFile <file> (at least 32 random bytes, e.g. head -c 32 "
                     "/dev/urandom, readable only by root and httpd's group), the same file on "
                     "every server sharing the cache",
                     spec_of(sc));
        return !OK;
    }
    if (sc->cache_key_file &&
        entra_seal_load(ptemp, sc->cache_key_file, &tmp, &why) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                     "ENTRA0503: EntraCacheKeyFile: %s", why);
        return !OK;
    }
    return OK;
}

/* The local store of the previous generation when it was made alike, else a new one. */
static apr_status_t local_post_config(apr_pool_t *ptemp, server_rec *s, const char *args)
{
    apr_pool_t *pproc = s->process->pool;
    struct ap_socache_hints hints = {64, 2048, apr_time_from_sec(30)};
    const char *err;
    apr_status_t rv;

    local_provider = ap_lookup_provider(AP_SOCACHE_PROVIDER_GROUP, "shmcb",
                                        AP_SOCACHE_PROVIDER_VERSION);
    if (!local_provider) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s,
                     "ENTRA0002: EntraCache: socache provider 'shmcb' is not loaded (LoadModule "
                     "socache_shmcb_module, e.g. 'a2enmod socache_shmcb'): mod_entra keeps this "
                     "machine's state in it");
        return APR_EGENERAL;
    }
    local = ap_retained_data_get(RETAINED_KEY);
    if (!local)
        local = ap_retained_data_create(RETAINED_KEY, sizeof(*local));
    if (local->instance && strcmp(local->args, args) == 0) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "ENTRA0505: keeping the keys, tokens and backoff state of the previous "
                     "generation");
        return APR_SUCCESS;
    }
    if (local->instance) {
        /* Its size changed: children of the old generation keep their mapping. */
        local_provider->destroy(local->instance, s);
        local->instance = NULL;
    }
    if (!local->pool && apr_pool_create_unmanaged_ex(&local->pool, NULL, NULL) != APR_SUCCESS) {
        local->pool = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0016: no memory for the local store");
        return APR_ENOMEM;
    }
    if (!local->mutex) {
        rv = ap_global_mutex_create(&local->mutex, NULL, MUTEX_TYPE, NULL, s, pproc, 0);
        if (rv != APR_SUCCESS) {
            local->mutex = NULL;
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0004: cannot create the cache mutex");
            return rv;
        }
    }
    err = local_provider->create(&local->instance, args, ptemp, local->pool);
    if (err) {
        local->instance = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0003: EntraCache shmcb:%s: %s", args, err);
        return APR_EGENERAL;
    }
    rv = local_provider->init(local->instance, "mod_entra", &hints, s, local->pool);
    if (rv != APR_SUCCESS) {
        local->instance = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0005: EntraCache shmcb:%s: init failed",
                     args);
        return rv;
    }
    local->args = apr_pstrdup(pproc, args);
    return APR_SUCCESS;
}

static apr_status_t net_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s,
                                    entra_srv_conf *sc, const char *name, const char *args)
{
    struct ap_socache_hints hints = {64, 2048, apr_time_from_sec(30)};
    const char *err, *why;
    apr_status_t rv;

    if ((rv = entra_seal_load(pconf, sc->cache_key_file, &seal, &why)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0503: EntraCacheKeyFile: %s", why);
        return rv;
    }
    net_provider = ap_lookup_provider(AP_SOCACHE_PROVIDER_GROUP, name, AP_SOCACHE_PROVIDER_VERSION);
    if (!net_provider) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s,
                     "ENTRA0002: EntraCache: socache provider '%s' is not loaded (LoadModule "
                     "socache_%s_module, e.g. 'a2enmod socache_%s')",
                     name, name, name);
        return APR_EGENERAL;
    }
    err = net_provider->create(&net_instance, args, ptemp, pconf);
    if (err) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0003: EntraCache %s: %s", net_spec, err);
        return APR_EGENERAL;
    }
    rv = net_provider->init(net_instance, "mod_entra", &hints, s, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0005: EntraCache %s: init failed",
                     net_spec);
        return rv;
    }
    return APR_SUCCESS;
}

static apr_status_t cache_cleanup(void *data)
{
    (void)data;
    /* The local store outlives generations; the networked instance belongs to pconf. */
    if (net_provider && net_instance)
        net_provider->destroy(net_instance, main_server);
    /* The parent exits: release the local store now, while pconf still has the socache
     * module loaded (this cleanup was registered after LoadModule, so it runs first). */
    if (local && local->instance && local_provider &&
        ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_EXITING) {
        local_provider->destroy(local->instance, main_server);
        local->instance = NULL;
    }
    net_provider = NULL;
    net_instance = NULL;
    local_provider = NULL;
    local = NULL;
    mutex = NULL;
    return APR_SUCCESS;
}

apr_status_t entra_cache_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    const char *name, *args, *local_args;
    apr_status_t rv;

    net_spec = apr_pstrdup(pconf, spec_of(sc));
    split_spec(ptemp, net_spec, &name, &args);
    local_args = strcmp(name, "shmcb") == 0 && args ? args
                 : apr_psprintf(ptemp, "%s(%d)", ap_runtime_dir_relative(ptemp, "mod_entra_cache"),
                                DEFAULT_SHMCB_SIZE);
    main_server = s;
    apr_pool_cleanup_register(pconf, NULL, cache_cleanup, apr_pool_cleanup_null);
    if ((rv = local_post_config(ptemp, s, local_args)) != APR_SUCCESS)
        return rv;
    mutex = local->mutex;
    local_store.get = sc_get;
    local_store.put = sc_put;
    local_store.add = sc_add;
    local_store.remove = sc_remove;
    shared_store = local_store;
    net_provider = NULL;
    net_down_until = 0;
    if (strcmp(name, "shmcb") != 0) {
        if ((rv = net_post_config(pconf, ptemp, s, sc, name, args)) != APR_SUCCESS)
            return rv;
        shared_store.get = tier_get;
        shared_store.put = tier_put;
        shared_store.remove = tier_remove;
        /* add (leases, throttles) stays on this machine: socache has no atomic add. */
    }
    return create_vtab(pconf, s, sc);
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
    return local_provider ? &shared_store : NULL;
}

entra_store *entra_cache_local_store(void)
{
    return local_provider ? &local_store : NULL;
}
