/* mod_entra: module record, startup, per-process key sources and background upkeep. */
#include <string.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_request.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <mod_auth.h>
#include <ap_provider.h>
#include <apr_hash.h>
#include <apr_shm.h>
#include <apr_strings.h>
#include <apr_thread_proc.h>
#include <openssl/sha.h>

#include "entra_flight.h"
#include "entra_http.h"
#include "entra_log.h"
#include "mod_entra.h"



#define UPKEEP_SECONDS 5
#define MAX_WAITING 4096 /* places in the waiting room, whatever the MPM allows */

static server_rec *log_server;
static apr_pool_t *sources_pool;
static apr_thread_mutex_t *sources_mu;
static apr_hash_t *sources;
static volatile int upkeep_stop;
static entra_l1 *process_l1;
static apr_uint64_t *keys_epoch; /* see entra_source.epoch; one per generation */

/* Recently used configurations by identity of their (merged, never copied) strings, so
 * the common request finds its source without building strings. */
#define RECENT 16
typedef struct {
    const char *tenant, *authority, *metadata_url, *ca_file;
    long refetch, refresh;
    int cloud, app_keys;
    const apr_array_header_t *audiences; /* names the app id when app_keys */
    entra_source *src;
} recent_t;
static recent_t recent[RECENT];
static unsigned recent_next;

entra_l1 *entra_process_l1(void)
{
    return process_l1;
}

static void log_sink(void *baton, entra_log_level level, const char *msg)
{
    (void)baton;
    ap_log_error(APLOG_MARK, (int)level, 0, log_server, "%s", msg);
}

/* One source per distinct discovery configuration, shared by all routes using it. */
entra_source *entra_source_for(apr_pool_t *tmp, const entra_dir_conf *d)
{
    const char *authority = entra_conf_authority(d), *v2, *v1 = NULL, *key, *appid = NULL;
    unsigned char md[SHA256_DIGEST_LENGTH];
    entra_source *src;
    long refetch = d->refetch_interval, refresh = d->refresh_interval;
    int app_keys = d->app_signing_keys == 1 && !d->metadata_url;
    char id[20];
    int i;

    if (!sources_mu)
        return NULL;
    apr_thread_mutex_lock(sources_mu);
    for (i = 0; i < RECENT; i++) {
        recent_t *e = &recent[i];
        if (e->src && e->tenant == d->tenant && e->authority == d->authority &&
            e->metadata_url == d->metadata_url && e->ca_file == d->ca_file &&
            e->refetch == refetch && e->refresh == refresh && e->cloud == d->cloud &&
            e->app_keys == app_keys && (!app_keys || e->audiences == d->audiences)) {
            src = e->src;
            apr_thread_mutex_unlock(sources_mu);
            return src;
        }
    }
    apr_thread_mutex_unlock(sources_mu);
    v2 = d->metadata_url;
    if (!v2) {
        v2 = apr_pstrcat(tmp, authority, d->tenant, "/v2.0/.well-known/openid-configuration", NULL);
        v1 = apr_pstrcat(tmp, authority, d->tenant, "/.well-known/openid-configuration", NULL);
    }
    if (app_keys)
        appid = apr_pstrcat(tmp, "appid=", entra_conf_app_id(d), NULL);
    /* Entra rules or not is part of the identity: a metadata URL may equal a tenant's. So
     * are an app's own signing keys: they are another key set at the same discovery URL. */
    key = apr_psprintf(tmp, "%c|%s|%s|%ld|%ld|%s", d->metadata_url ? 'm' : 'e', v2,
                       d->ca_file ? d->ca_file : "", refetch, refresh, appid ? appid : "");
    apr_thread_mutex_lock(sources_mu);
    src = apr_hash_get(sources, key, APR_HASH_KEY_STRING);
    if (!src) {
        key = apr_pstrdup(sources_pool, key);
        SHA256((const unsigned char *)key, strlen(key), md);
        for (i = 0; i < 8; i++)
            apr_snprintf(id + 2 * i, 3, "%02x", md[i]);
        if (entra_source_create(sources_pool, id, v2, v1, !d->metadata_url, &src) ==
            APR_SUCCESS) {
            src->http.ca_file = d->ca_file ? apr_pstrdup(sources_pool, d->ca_file) : NULL;
            src->jwks_query = appid ? apr_pstrdup(sources_pool, appid) : NULL;
            ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, log_server,
                         "ENTRA0700: key source %s: discovery %s%s%s", src->id, v2,
                         appid ? ", JWKS with " : "", appid ? appid : "");
            src->http.cancel = &upkeep_stop;
            if (refetch != ENTRA_UNSET)
                src->refetch_interval = refetch;
            if (refresh != ENTRA_UNSET)
                src->refresh_interval = refresh;
            src->store = entra_cache_store();
            src->epoch = keys_epoch;
            apr_hash_set(sources, key, APR_HASH_KEY_STRING, src);
        }
        else
            src = NULL;
    }
    if (src) {
        recent_t *e = &recent[recent_next++ % RECENT];
        e->tenant = d->tenant;
        e->authority = d->authority;
        e->metadata_url = d->metadata_url;
        e->ca_file = d->ca_file;
        e->refetch = refetch;
        e->refresh = refresh;
        e->cloud = d->cloud;
        e->app_keys = app_keys;
        e->audiences = d->audiences;
        e->src = src;
    }
    apr_thread_mutex_unlock(sources_mu);
    return src;
}

apr_array_header_t *entra_sources_list(apr_pool_t *p)
{
    apr_array_header_t *list = apr_array_make(p, 4, sizeof(entra_source *));
    apr_hash_index_t *hi;
    if (!sources_mu)
        return list;
    apr_thread_mutex_lock(sources_mu);
    for (hi = apr_hash_first(p, sources); hi; hi = apr_hash_next(hi)) {
        void *v;
        apr_hash_this(hi, NULL, NULL, &v);
        APR_ARRAY_PUSH(list, entra_source *) = v;
    }
    apr_thread_mutex_unlock(sources_mu);
    return list;
}

/* Registers the source of every AuthType Entra section, of whatever kind, so upkeep can
 * warm it up before the first request. */
static int register_source(server_rec *s, const char *where, const entra_dir_conf *d,
                           void *baton)
{
    (void)s;
    (void)where;
    if (d->auth_entra == 1 && (d->tenant || d->metadata_url))
        entra_source_for((apr_pool_t *)baton, d);
    return OK;
}

static void *APR_THREAD_FUNC upkeep(apr_thread_t *thd, void *data)
{
    apr_pool_t *p;
    int tick = 0, second = 0;
    (void)data;
    apr_pool_create(&p, NULL);
    while (!__atomic_load_n(&upkeep_stop, __ATOMIC_ACQUIRE)) {
        if (second-- <= 0) {
            entra_proxy_maintain(p);
            apr_pool_clear(p);
            second = 10;
        }
        if (tick-- <= 0) {
            apr_array_header_t *list = entra_sources_list(p);
            int i;
            for (i = 0; i < list->nelts && !__atomic_load_n(&upkeep_stop, __ATOMIC_ACQUIRE); i++)
                entra_source_maintain(APR_ARRAY_IDX(list, i, entra_source *), p);
            apr_pool_clear(p);
            tick = UPKEEP_SECONDS * 10;
        }
        apr_sleep(apr_time_from_msec(100));
    }
    apr_pool_destroy(p);
    /* Returning (not apr_thread_exit) lets sanitizers unwind the thread cleanly. */
    (void)thd;
    return NULL;
}

static apr_status_t upkeep_join(void *data)
{
    apr_status_t rv;
    __atomic_store_n(&upkeep_stop, 1, __ATOMIC_RELEASE);
    apr_thread_join(&rv, (apr_thread_t *)data);
    return APR_SUCCESS;
}

/* The MPM tells us the child stops before it waits for its workers: every wait and transfer
 * of the module (upkeep, and requests waiting on a fetch) ends now, within ENTRA_WAIT_STEP,
 * so the workers and then the upkeep thread can be joined at once. Requests that were waiting
 * get 503 with Retry-After. */
static void child_stopping(apr_pool_t *pchild, int graceful)
{
    (void)pchild;
    __atomic_store_n(&upkeep_stop, 1, __ATOMIC_RELEASE);
    ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, ap_server_conf,
                 "ENTRA0600: child stopping (%s): ending the module's waits and fetches",
                 graceful ? "graceful" : "stop");
}

static authz_status valid_user_check(request_rec *r, const char *line, const void *parsed)
{
    (void)line;
    (void)parsed;
    return r->user ? AUTHZ_GRANTED : AUTHZ_DENIED_NO_USER;
}

static const authz_provider valid_user_provider = {valid_user_check, NULL};

static int pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp)
{
    (void)plog;
    (void)ptemp;
    entra_cache_register_mutex(pconf);
    /* Require valid-user lives in mod_authz_user; stand in when it is not loaded. */
    if (!ap_lookup_provider(AUTHZ_PROVIDER_GROUP, "valid-user", AUTHZ_PROVIDER_VERSION))
        ap_register_auth_provider(pconf, AUTHZ_PROVIDER_GROUP, "valid-user",
                                  AUTHZ_PROVIDER_VERSION, &valid_user_provider,
                                  AP_AUTH_INTERNAL_PER_CONF);
    return OK;
}

static int post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)plog;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    log_server = s;
    entra_log_set(log_sink, NULL, ENTRA_LOG_DEBUG);
    if (entra_http_global_init() != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0007: libcurl initialisation failed");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (entra_cache_post_config(pconf, ptemp, s) != APR_SUCCESS)
        return HTTP_INTERNAL_SERVER_ERROR;
    {
        /* Anonymous shared memory made before the fork: this generation's children share it. */
        apr_shm_t *shm;
        int threads = 1, daemons = 1, places, per_process;
        /* The waiting room (entra_flight_room_init): at most half the server's workers
         * wait on a fetch another holds, and at most half of each child's threads. */
        if (ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads) != APR_SUCCESS || threads < 1)
            threads = 1;
        if (ap_mpm_query(AP_MPMQ_MAX_DAEMONS, &daemons) != APR_SUCCESS || daemons < 1)
            daemons = 1;
        places = threads * daemons / 2 > 1 ? threads * daemons / 2 : 1;
        if (places > MAX_WAITING)
            places = MAX_WAITING;
        per_process = threads > 1 ? threads / 2 : 0;
        keys_epoch = NULL;
        entra_flight_room_init(NULL, 0, per_process);
        if (apr_shm_create(&shm, 64 + ENTRA_ROOM_BYTES(places), NULL, pconf) == APR_SUCCESS) {
            char *base = apr_shm_baseaddr_get(shm);
            memset(base, 0, 64 + ENTRA_ROOM_BYTES(places));
            keys_epoch = (apr_uint64_t *)base;
            entra_flight_room_init((apr_uint64_t *)(base + 64), places, per_process);
        }
        else
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "ENTRA0015: no shared memory for the key-set counter and the waiting "
                         "room: processes notice new key sets within 2 s instead of at once, "
                         "and only each child's waiters are limited");
    }
    sources_pool = pconf;
    sources = apr_hash_make(pconf);
    if (apr_thread_mutex_create(&sources_mu, APR_THREAD_MUTEX_DEFAULT, pconf) != APR_SUCCESS)
        return HTTP_INTERNAL_SERVER_ERROR;
    entra_walk_sections(s, ptemp, register_source, ptemp);
    return entra_proxy_post_config(pconf, ptemp, s) == OK ? OK : HTTP_INTERNAL_SERVER_ERROR;
}

static void child_init(apr_pool_t *p, server_rec *s)
{
    apr_thread_t *thd;
    entra_cache_child_init(p, s);
    /* Sources found at request time belong to this process: never allocate from pconf,
     * which the parent owns, while threads run. */
    apr_pool_create(&sources_pool, p);
    sources = apr_hash_copy(sources_pool, sources); /* its new entries must not come from pconf */
    if (entra_l1_create(p, 256, &process_l1) != APR_SUCCESS)
        process_l1 = NULL;
    __atomic_store_n(&upkeep_stop, 0, __ATOMIC_RELEASE);
    entra_proxy_child_init(p, s, &upkeep_stop);
    if (apr_thread_create(&thd, NULL, upkeep, NULL, p) == APR_SUCCESS)
        apr_pool_pre_cleanup_register(p, thd, upkeep_join);
    else
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "ENTRA0008: cannot start key upkeep thread");
}

static void register_hooks(apr_pool_t *p)
{
    ap_hook_pre_config(pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(entra_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
    entra_authn_register_hooks(p);
    entra_expr_register_hooks(p);
    entra_proxy_register_hooks(p);
    entra_authz_register_providers(p);
    entra_lua_register_providers(p);
    entra_status_register_hooks(p);
}

AP_DECLARE_MODULE(entra) = {
    STANDARD20_MODULE_STUFF,
    entra_create_dir_conf,
    entra_merge_dir_conf,
    entra_create_srv_conf,
    NULL,
    entra_cmds,
    register_hooks,
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    AP_MODULE_FLAG_ALWAYS_MERGE
#endif
};
