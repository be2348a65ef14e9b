/* Outbound: identities, EntraProxyToken and the fixup that attaches tokens to requests
 * mod_proxy sends on. */
#include <string.h>
#include <strings.h>
#include <stdlib.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_protocol.h>
#include <http_request.h>
#include <apr_hash.h>
#include <apr_strings.h>
#include <apr_lib.h>

#include "entra_arc.h"
#include "entra_cred.h"
#include "entra_flight.h"
#include "entra_http.h"
#include "entra_policy.h"
#include "entra_tokenstore.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define DEFAULT_AUTHORITY "https://login.microsoftonline.com/"
#define DEFAULT_ARC_KEY_DIR "/var/opt/azcmagent/tokens"

static apr_hash_t *token_sources; /* "identity\nresource" -> entra_tokensrc */
static apr_thread_mutex_t *token_sources_mu;
static apr_pool_t *token_sources_pool;
static const volatile int *cancel_flag;

/* Identities are global (main server) configuration. */
static entra_srv_conf *main_conf(void)
{
    return ap_get_module_config(ap_server_conf->module_config, &entra_module);
}

static const char *kv_error(cmd_parms *cmd, const char *name, const char *msg)
{
    return apr_psprintf(cmd->pool, "EntraIdentity %s: %s", name, msg);
}

static const char *file_arg(cmd_parms *cmd, const char *name, const char *what, const char *v,
                            const char **out)
{
    apr_finfo_t fi;
    const char *path = ap_server_root_relative(cmd->pool, v);
    apr_file_t *f;
    if (!path || apr_stat(&fi, path, APR_FINFO_TYPE, cmd->temp_pool) != APR_SUCCESS ||
        fi.filetype != APR_REG ||
        apr_file_open(&f, path, APR_FOPEN_READ, 0, cmd->temp_pool) != APR_SUCCESS)
        return kv_error(cmd, name, apr_psprintf(cmd->pool, "%s '%s' is not a readable file", what, v));
    apr_file_close(f);
    *out = path;
    return NULL;
}

const char *entra_cmd_identity(cmd_parms *cmd, void *dv, const char *args)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    const char *name = ap_getword_conf(cmd->pool, &args), *kind = ap_getword_conf(cmd->pool, &args);
    const char *w, *err, *source = NULL, *cert = NULL, *key = NULL, *why;
    entra_cred *c = apr_pcalloc(cmd->pool, sizeof(*c));
    int selectors = 0;
    (void)dv;

    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)))
        return err;
    if (!*name || !*kind)
        return "EntraIdentity needs a name and a kind: managed, workload, secret or certificate";
    if (apr_hash_get(sc->identities, name, APR_HASH_KEY_STRING))
        return kv_error(cmd, name, "defined twice");
    c->name = name;
    c->authority = getenv("AZURE_AUTHORITY_HOST") && strcasecmp(kind, "workload") == 0
                       ? getenv("AZURE_AUTHORITY_HOST")
                       : DEFAULT_AUTHORITY;
    c->http.connect_timeout_ms = 3000;
    c->http.timeout_ms = 10000;
    c->http.max_body = 64 * 1024;
    if (!strcasecmp(kind, "managed"))
        c->kind = ENTRA_CRED_IMDS;
    else if (!strcasecmp(kind, "workload")) {
        c->kind = ENTRA_CRED_WORKLOAD;
        c->tenant = getenv("AZURE_TENANT_ID");
        c->client_id = getenv("AZURE_CLIENT_ID");
        c->token_file = getenv("AZURE_FEDERATED_TOKEN_FILE");
    }
    else if (!strcasecmp(kind, "secret"))
        c->kind = ENTRA_CRED_SECRET;
    else if (!strcasecmp(kind, "certificate"))
        c->kind = ENTRA_CRED_CERTIFICATE;
    else
        return kv_error(cmd, name, apr_psprintf(cmd->pool,
                                                "unknown kind '%s' (managed, workload, secret, "
                                                "certificate)",
                                                kind));

    while (*(w = ap_getword_conf(cmd->pool, &args))) {
        const char *eq = strchr(w, '='), *v;
        char *k;
        if (!eq || eq == w || !eq[1])
            return kv_error(cmd, name, apr_psprintf(cmd->pool, "'%s' is not key=value", w));
        k = apr_pstrndup(cmd->pool, w, (apr_size_t)(eq - w));
        v = eq + 1;
        if (c->kind == ENTRA_CRED_IMDS &&
            (!strcmp(k, "client_id") || !strcmp(k, "object_id") || !strcmp(k, "resource_id"))) {
            if (++selectors > 1)
                return kv_error(cmd, name,
                                "name one of client_id=, object_id= or resource_id= (a managed "
                                "identity request takes exactly one selector)");
            c->selector = !strcmp(k, "client_id")   ? ENTRA_SEL_CLIENT_ID
                          : !strcmp(k, "object_id") ? ENTRA_SEL_OBJECT_ID
                                                    : ENTRA_SEL_RESOURCE_ID;
            c->selector_value = v;
        }
        else if (c->kind == ENTRA_CRED_IMDS && !strcmp(k, "source"))
            source = v;
        else if (c->kind == ENTRA_CRED_IMDS && !strcmp(k, "endpoint"))
            c->endpoint = v;
        else if (c->kind != ENTRA_CRED_IMDS && !strcmp(k, "tenant"))
            c->tenant = v;
        else if (c->kind != ENTRA_CRED_IMDS && !strcmp(k, "client_id"))
            c->client_id = v;
        else if (c->kind != ENTRA_CRED_IMDS && !strcmp(k, "authority"))
            c->authority = v;
        else if (c->kind == ENTRA_CRED_WORKLOAD && !strcmp(k, "token_file"))
            c->token_file = v;
        else if (c->kind == ENTRA_CRED_SECRET && !strcmp(k, "secret_file")) {
            if ((err = file_arg(cmd, name, "secret_file", v, &c->secret_file)))
                return err;
        }
        else if (c->kind == ENTRA_CRED_SECRET && !strcmp(k, "secret"))
            return kv_error(cmd, name, "never put a secret in the configuration: use secret_file=");
        else if (c->kind == ENTRA_CRED_CERTIFICATE && !strcmp(k, "cert"))
            cert = v;
        else if (c->kind == ENTRA_CRED_CERTIFICATE && !strcmp(k, "key"))
            key = v;
        else
            return kv_error(cmd, name, apr_psprintf(cmd->pool, "unknown or misplaced option '%s'", k));
    }

    if (c->kind == ENTRA_CRED_IMDS) {
        entra_cred_kind detected;
        const char *ep = NULL, *hdr = NULL;
        if (!source) {
            if (entra_cred_detect_managed(cmd->pool, &detected, &ep, &hdr, &why) != APR_SUCCESS)
                return kv_error(cmd, name, why);
            c->kind = detected;
        }
        else if (!strcmp(source, "imds"))
            c->kind = ENTRA_CRED_IMDS;
        else if (!strcmp(source, "appservice"))
            c->kind = ENTRA_CRED_APPSERVICE;
        else if (!strcmp(source, "arc"))
            c->kind = ENTRA_CRED_ARC;
        else
            return kv_error(cmd, name, "source= must be imds, appservice or arc");
        if (c->kind == ENTRA_CRED_APPSERVICE)
            c->identity_header = hdr ? hdr : getenv("IDENTITY_HEADER");
        if (!c->endpoint)
            c->endpoint = ep ? ep
                          : c->kind == ENTRA_CRED_IMDS
                              ? "http://169.254.169.254/metadata/identity/oauth2/token"
                              : getenv("IDENTITY_ENDPOINT");
        if (!c->endpoint)
            return kv_error(cmd, name, "no endpoint: set endpoint= or IDENTITY_ENDPOINT");
        if (c->kind == ENTRA_CRED_APPSERVICE && !c->identity_header)
            return kv_error(cmd, name, "App Service needs IDENTITY_HEADER in httpd's environment");
        if (c->kind == ENTRA_CRED_ARC && c->selector != ENTRA_SEL_NONE)
            return kv_error(cmd, name, "Azure Arc has only a system-assigned identity");
        if (strncmp(c->endpoint, "https://", 8) != 0 && strncmp(c->endpoint, "http://", 7) != 0)
            return kv_error(cmd, name, "endpoint= must be an http(s) URL");
    }
    else {
        if (!c->tenant || !(entra_is_guid(c->tenant) || strchr(c->tenant, '.')))
            return kv_error(cmd, name, "tenant= must be a tenant id (or AZURE_TENANT_ID set)");
        if (!c->client_id || !*c->client_id)
            return kv_error(cmd, name, "client_id= is required (or AZURE_CLIENT_ID set)");
        if (!c->authority || !entra_http_url_allowed(c->authority))
            return kv_error(cmd, name, "authority= must be https (http only for loopback)");
        if (c->authority[strlen(c->authority) - 1] != '/')
            c->authority = apr_pstrcat(cmd->pool, c->authority, "/", NULL);
        if (c->kind == ENTRA_CRED_SECRET && !c->secret_file)
            return kv_error(cmd, name, "secret_file= is required");
        if (c->kind == ENTRA_CRED_WORKLOAD && !c->token_file)
            return kv_error(cmd, name,
                            "token_file= is required (or AZURE_FEDERATED_TOKEN_FILE set)");
        if (c->kind == ENTRA_CRED_CERTIFICATE) {
            const char *cp = NULL, *kp = NULL;
            if (!cert || !key)
                return kv_error(cmd, name, "cert= and key= are required");
            if ((err = file_arg(cmd, name, "cert", cert, &cp)) ||
                (err = file_arg(cmd, name, "key", key, &kp)))
                return err;
            if (entra_cred_load_certificate(cmd->pool, c, cp, kp, &why) != APR_SUCCESS)
                return kv_error(cmd, name, why);
        }
    }
    apr_hash_set(sc->identities, name, APR_HASH_KEY_STRING, c);
    return NULL;
}

const char *entra_cmd_proxy_token(cmd_parms *cmd, void *dv, const char *args)
{
    entra_dir_conf *d = dv;
    entra_proxy_token *pt = apr_pcalloc(cmd->pool, sizeof(*pt));
    const char *w;

    pt->resource = ap_getword_conf(cmd->pool, &args);
    if (!*pt->resource || strchr(pt->resource, '='))
        return "EntraProxyToken needs a resource or scope first, e.g. EntraProxyToken "
               "api://orders-api/.default identity=web";
    pt->header = "Authorization";
    while (*(w = ap_getword_conf(cmd->pool, &args))) {
        if (!strncmp(w, "identity=", 9) && w[9])
            pt->identity = w + 9;
        else if (!strncmp(w, "header=", 7) && w[7]) {
            const char *c;
            for (c = w + 7; *c; c++)
                if (!apr_isalnum(*c) && *c != '-' && *c != '_')
                    return apr_psprintf(cmd->pool, "EntraProxyToken: '%s' is not a header name",
                                        w + 7);
            pt->header = w + 7;
        }
        else
            return apr_psprintf(cmd->pool, "EntraProxyToken: unknown option '%s'", w);
    }
    pt->where = cmd->path ? apr_pstrdup(cmd->pool, cmd->path) : "server config";
    d->proxy_token = pt;
    return NULL;
}

const char *entra_cmd_proxy_on_error(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    (void)cmd;
    if (!strcasecmp(arg, "deny"))
        d->proxy_on_error_pass = 0;
    else if (!strcasecmp(arg, "pass"))
        d->proxy_on_error_pass = 1;
    else
        return "EntraProxyTokenOnError: deny or pass";
    return NULL;
}

const char *entra_cmd_token_timeout(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    char *end;
    apr_int64_t v = apr_strtoi64(arg, &end, 10);
    (void)dv;
    if (*end || v < 1 || v > 120)
        return "EntraTokenTimeout: seconds from 1 to 120";
    sc->token_timeout_ms = (long)v * 1000;
    return NULL;
}

const char *entra_cmd_arc_key_dir(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    (void)dv;
    if (entra_arc_key_dir_check(arg))
        return "EntraArcKeyDirectory: an absolute directory path without a trailing slash";
    sc->arc_key_dir = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

/* The identity an EntraProxyToken names, or the only one defined. */
static entra_cred *identity_for(entra_srv_conf *sc, const entra_proxy_token *pt)
{
    if (pt->identity)
        return apr_hash_get(sc->identities, pt->identity, APR_HASH_KEY_STRING);
    if (apr_hash_count(sc->identities) == 1) {
        void *v;
        apr_hash_this(apr_hash_first(NULL, sc->identities), NULL, NULL, &v);
        return v;
    }
    return NULL;
}

/* The shared source for (identity, resource), created on first use. */
static entra_tokensrc *source_for(apr_pool_t *tmp, entra_srv_conf *sc, entra_cred *c,
                                  const char *resource)
{
    const char *key = apr_pstrcat(tmp, c->name, "\n", resource, NULL);
    entra_tokensrc *ts;
    /* A managed identity is this machine's: its tokens (and leases) never leave it, or a
     * fleet sharing a cache would attach machine A's identity to machine B's requests. */
    entra_store *store = c->kind == ENTRA_CRED_IMDS || c->kind == ENTRA_CRED_APPSERVICE ||
                                 c->kind == ENTRA_CRED_ARC
                             ? entra_cache_local_store()
                             : entra_cache_store();
    apr_thread_mutex_lock(token_sources_mu);
    ts = apr_hash_get(token_sources, key, APR_HASH_KEY_STRING);
    if (!ts && entra_tokensrc_create(token_sources_pool, c, resource, store,
                                     sc->token_timeout_ms != ENTRA_UNSET ? sc->token_timeout_ms
                                                                         : 10000,
                                     &ts) == APR_SUCCESS)
        apr_hash_set(token_sources, apr_pstrdup(token_sources_pool, key), APR_HASH_KEY_STRING, ts);
    apr_thread_mutex_unlock(token_sources_mu);
    return ts;
}

int entra_proxy_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    apr_hash_index_t *hi;
    int arc = 0;
    server_rec *vs;

    token_sources_pool = pconf;
    token_sources = apr_hash_make(pconf);
    if (apr_thread_mutex_create(&token_sources_mu, APR_THREAD_MUTEX_DEFAULT, pconf) != APR_SUCCESS)
        return !OK;
    for (hi = apr_hash_first(ptemp, sc->identities); hi; hi = apr_hash_next(hi)) {
        void *v;
        entra_cred *c;
        apr_hash_this(hi, NULL, NULL, &v);
        c = v;
        if (c->kind == ENTRA_CRED_ARC) {
            arc = 1;
            c->arc_reader = entra_arc_read_key;
            c->arc_key_dir = sc->arc_key_dir ? sc->arc_key_dir : DEFAULT_ARC_KEY_DIR;
        }
    }
    /* Resolve every EntraProxyToken now: names are checked and pairs warmed up at start. */
    for (vs = s; vs; vs = vs->next) {
        core_server_config *cc = ap_get_core_module_config(vs->module_config);
        apr_array_header_t *secs[2] = {cc->sec_url, cc->sec_dir};
        int k, i;
        for (k = 0; k < 2; k++) {
            ap_conf_vector_t **sv = (ap_conf_vector_t **)secs[k]->elts;
            for (i = -1; i < secs[k]->nelts; i++) {
                entra_dir_conf *d = ap_get_module_config(i < 0 ? vs->lookup_defaults : sv[i],
                                                         &entra_module);
                entra_proxy_token *pt = d ? d->proxy_token : NULL;
                entra_cred *c;
                /* A section without our directives has no config of ours at all. */
                if (!pt || pt->ts)
                    continue;
                if (!(c = identity_for(sc, pt))) {
                    ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                                 "ENTRA0009: EntraProxyToken %s in %s: %s", pt->resource, pt->where,
                                 pt->identity ? "no EntraIdentity of that name"
                                              : "name the identity with identity=<name>");
                    return !OK;
                }
                pt->ts = source_for(ptemp, sc, c, pt->resource);
            }
        }
    }
    if (arc)
        return entra_arc_helper_start(pconf, s, sc->arc_key_dir ? sc->arc_key_dir
                                                                : DEFAULT_ARC_KEY_DIR) == APR_SUCCESS
                   ? OK
                   : !OK;
    return OK;
}

void entra_proxy_child_init(apr_pool_t *p, server_rec *s, const volatile int *cancel)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    apr_hash_index_t *hi;
    cancel_flag = cancel;
    for (hi = apr_hash_first(p, sc->identities); hi; hi = apr_hash_next(hi)) {
        void *v;
        apr_hash_this(hi, NULL, NULL, &v);
        ((entra_cred *)v)->http.cancel = cancel;
        if (((entra_cred *)v)->kind == ENTRA_CRED_ARC)
            ((entra_cred *)v)->arc_baton = (void *)cancel; /* see entra_arc_read_key */
    }
    /* Sources created from now on belong to this process. */
    apr_pool_create(&token_sources_pool, p);
    token_sources = apr_hash_copy(token_sources_pool, token_sources); /* not pconf's */
}

apr_array_header_t *entra_proxy_token_sources(apr_pool_t *p)
{
    apr_array_header_t *list = apr_array_make(p, 4, sizeof(entra_tokensrc *));
    apr_hash_index_t *hi;
    if (!token_sources_mu)
        return list;
    apr_thread_mutex_lock(token_sources_mu);
    for (hi = apr_hash_first(p, token_sources); hi; hi = apr_hash_next(hi)) {
        void *v;
        apr_hash_this(hi, NULL, NULL, &v);
        APR_ARRAY_PUSH(list, entra_tokensrc *) = v;
    }
    apr_thread_mutex_unlock(token_sources_mu);
    return list;
}

void entra_proxy_maintain(apr_pool_t *p)
{
    apr_array_header_t *list = entra_proxy_token_sources(p);
    int i;
    for (i = 0; i < list->nelts && !(cancel_flag && __atomic_load_n(cancel_flag, __ATOMIC_ACQUIRE));
         i++)
        entra_tokensrc_maintain(APR_ARRAY_IDX(list, i, entra_tokensrc *), p);
}

static int is_proxied(request_rec *r)
{
    return r->proxyreq != PROXYREQ_NONE || (r->handler && !strcmp(r->handler, "proxy-server"));
}

static int proxy_fixups(request_rec *r)
{
    entra_dir_conf *d = ap_get_module_config(r->per_dir_config, &entra_module);
    entra_proxy_token *pt = d->proxy_token;
    entra_tokensrc *ts;
    const char *tok, *why = NULL;
    long retry_after = -1; /* no identity or source: nothing sets it */

    if (!pt || !is_proxied(r))
        return DECLINED;
    /* The caller's credentials never travel on. */
    apr_table_unset(r->headers_in, "Authorization");
    ts = pt->ts;
    if (!ts) {
        entra_srv_conf *sc = main_conf();
        entra_cred *c = identity_for(sc, pt);
        ts = c ? source_for(r->pool, sc, c, pt->resource) : NULL;
    }
    if (ts && entra_tokensrc_get(ts, r->pool, &tok, &retry_after, &why) == APR_SUCCESS) {
        apr_table_set(r->headers_in, pt->header, apr_pstrcat(r->pool, "Bearer ", tok, NULL));
        return DECLINED;
    }
    if (d->proxy_on_error_pass == 1) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "ENTRA0304: no token for %s (%s): forwarding without one "
                      "(EntraProxyTokenOnError pass)",
                      pt->resource, why ? why : "no identity");
        return DECLINED;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                  "ENTRA0305: no token for %s (%s): answering 503", pt->resource,
                  why ? why : "no identity");
    apr_table_setn(r->err_headers_out, "Retry-After",
                   apr_ltoa(r->pool, retry_after < 1                   ? 1
                                     : retry_after > ENTRA_BACKOFF_MAX ? ENTRA_BACKOFF_MAX
                                                                       : retry_after));
    return HTTP_SERVICE_UNAVAILABLE;
}

void entra_proxy_register_hooks(apr_pool_t *p)
{
    (void)p;
    /* Before mod_headers (APR_HOOK_LAST), so RequestHeader can still adjust. */
    ap_hook_fixups(proxy_fixups, NULL, NULL, APR_HOOK_MIDDLE);
}
