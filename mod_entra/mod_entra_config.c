/* Directives, per-directory merging and startup validation. */
#include <string.h>
#include <strings.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <apr_strings.h>
#include <apr_hash.h>
#include <apr_lib.h>

#include "entra_http.h"
#include "entra_jwk.h"
#include "entra_policy.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define DEFAULT_AUTHORITY "https://login.microsoftonline.com/"
#define DEFAULT_ALGS ENTRA_ALG_BIT(ENTRA_ALG_RS256)

void *entra_create_dir_conf(apr_pool_t *p, char *dir)
{
    entra_dir_conf *d = apr_pcalloc(p, sizeof(*d));
    (void)dir;
    d->auth_entra = ENTRA_UNSET;
    d->clock_skew = ENTRA_UNSET;
    d->max_lifetime = ENTRA_UNSET;
    d->refetch_interval = ENTRA_UNSET;
    d->refresh_interval = ENTRA_UNSET;
    d->proxy_on_error_pass = ENTRA_UNSET;
    d->optional = ENTRA_UNSET;
    d->allow_preflight = ENTRA_UNSET;
    d->app_signing_keys = ENTRA_UNSET;
    return d;
}

#define MERGE_PTR(f) n->f = add->f ? add->f : base->f
#define MERGE_NUM(f) n->f = add->f != ENTRA_UNSET ? add->f : base->f
#define MERGE_BITS(f) n->f = add->f ? add->f : base->f

void *entra_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    entra_dir_conf *base = basev, *add = addv, *n = apr_pcalloc(p, sizeof(*n));
    MERGE_NUM(auth_entra);
    /* The issuer source is one setting with two spellings: the section's own wins whole. */
    if (add->tenant || add->metadata_url) {
        n->tenant = add->tenant;
        n->metadata_url = add->metadata_url;
    }
    else {
        n->tenant = base->tenant;
        n->metadata_url = base->metadata_url;
    }
    MERGE_PTR(allowed_tenants);
    MERGE_PTR(audiences);
    MERGE_PTR(authority);
    MERGE_PTR(ca_file);
    MERGE_BITS(alg_mask);
    MERGE_NUM(clock_skew);
    MERGE_NUM(max_lifetime);
    MERGE_BITS(token_in);
    MERGE_PTR(cookie_name);
    MERGE_PTR(remote_user_claim);
    MERGE_PTR(pass_claims);
    MERGE_NUM(refetch_interval);
    MERGE_NUM(refresh_interval);
    MERGE_PTR(proxy_token);
    MERGE_PTR(lua_rules);
    /* Declared Lua headers add up: a section can own more names, never fewer than its parent. */
    n->lua_headers = !add->lua_headers    ? base->lua_headers
                     : !base->lua_headers ? add->lua_headers
                                          : apr_array_append(p, base->lua_headers, add->lua_headers);
    MERGE_NUM(proxy_on_error_pass);
    MERGE_NUM(optional);
    MERGE_NUM(allow_preflight);
    MERGE_NUM(app_signing_keys);
    MERGE_BITS(cloud);
    return n;
}

void *entra_create_srv_conf(apr_pool_t *p, server_rec *s)
{
    entra_srv_conf *sc = apr_pcalloc(p, sizeof(entra_srv_conf));
    (void)s;
    sc->identities = apr_hash_make(p);
    sc->token_timeout_ms = ENTRA_UNSET;
    sc->lua_max_instructions = ENTRA_UNSET;
    sc->lua_max_memory = ENTRA_UNSET;
    sc->lua_max_time_ms = ENTRA_UNSET;
    sc->token_cache_entries = ENTRA_UNSET;
    return sc;
}

long entra_conf_clock_skew(const entra_dir_conf *d)
{
    return d->clock_skew != ENTRA_UNSET ? d->clock_skew : 60;
}

long entra_conf_max_lifetime(const entra_dir_conf *d)
{
    return d->max_lifetime != ENTRA_UNSET ? d->max_lifetime : 90000;
}

unsigned entra_conf_alg_mask(const entra_dir_conf *d)
{
    return d->alg_mask ? d->alg_mask : DEFAULT_ALGS;
}

unsigned entra_conf_token_in(const entra_dir_conf *d)
{
    return d->token_in ? d->token_in : ENTRA_TOKEN_IN_HEADER;
}

const char *entra_conf_authority(const entra_dir_conf *d)
{
    /* EntraAuthority stays authoritative (tests, proxies); EntraCloud sets the default. */
    if (d->authority)
        return d->authority;
    return d->cloud ? entra_cloud_authority((entra_cloud)d->cloud) : DEFAULT_AUTHORITY;
}

const char *entra_conf_app_id(const entra_dir_conf *d)
{
    int i;
    for (i = 0; d->audiences && i < d->audiences->nelts; i++) {
        const char *a = APR_ARRAY_IDX(d->audiences, i, const char *);
        if (entra_is_guid(a))
            return a;
    }
    return NULL;
}

/* Lower-cases a GUID; NULL when `s` is not one. */
static const char *guid_arg(apr_pool_t *p, const char *s)
{
    char *g = apr_pstrdup(p, s), *c;
    for (c = g; *c; c++)
        *c = (char)apr_tolower(*c);
    return entra_is_guid(g) ? g : NULL;
}

/* Records AuthType for startup checks, then lets mod_authn_core handle it as usual. */
static const char *cmd_auth_type(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    (void)cmd;
    d->auth_entra = strcasecmp(arg, "Entra") == 0;
    return DECLINE_CMD;
}

/* EntraTenant and EntraMetadataURL name the same thing (where keys and issuers come from):
 * one section says one of them. */
static const char *one_issuer_source(cmd_parms *cmd, const entra_dir_conf *d)
{
    if (d->tenant || d->metadata_url)
        return apr_psprintf(cmd->pool,
                            "%s: this section already has %s; use EntraTenant for Entra ID or "
                            "EntraMetadataURL for another OpenID provider, not both",
                            cmd->cmd->name, d->tenant ? "EntraTenant" : "EntraMetadataURL");
    return NULL;
}

static const char *cmd_tenant(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    const char *err = one_issuer_source(cmd, d);
    if (err)
        return err;
    if (strcasecmp(arg, "common") == 0 || strcasecmp(arg, "organizations") == 0) {
        d->tenant = apr_pstrdup(cmd->pool, arg);
        ap_str_tolower((char *)d->tenant);
        return NULL;
    }
    if (!(d->tenant = guid_arg(cmd->pool, arg)))
        return apr_psprintf(cmd->pool,
                            "EntraTenant: '%s' is not a tenant id (a GUID), 'organizations' or "
                            "'common'",
                            arg);
    return NULL;
}

static const char *cmd_allowed_tenants(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    const char *g = guid_arg(cmd->pool, arg);
    if (!g)
        return apr_psprintf(cmd->pool, "EntraAllowedTenants: '%s' is not a tenant id (a GUID)",
                            arg);
    if (!d->allowed_tenants)
        d->allowed_tenants = apr_array_make(cmd->pool, 4, sizeof(const char *));
    APR_ARRAY_PUSH(d->allowed_tenants, const char *) = g;
    return NULL;
}

static const char *cmd_audience(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    if (!d->audiences)
        d->audiences = apr_array_make(cmd->pool, 4, sizeof(const char *));
    APR_ARRAY_PUSH(d->audiences, const char *) = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *url_arg(cmd_parms *cmd, const char *arg, const char **out)
{
    if (!entra_http_url_allowed(arg))
        return apr_psprintf(cmd->pool,
                            "%s: '%s' must be an https:// URL (http:// only for a loopback "
                            "address such as 127.0.0.1)",
                            cmd->cmd->name, arg);
    *out = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *cmd_authority(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    const char *err = url_arg(cmd, arg, &d->authority);
    if (!err && d->authority[strlen(d->authority) - 1] != '/')
        d->authority = apr_pstrcat(cmd->pool, d->authority, "/", NULL);
    return err;
}

static const char *cmd_metadata_url(cmd_parms *cmd, void *dv, const char *arg)
{
    const char *err = one_issuer_source(cmd, dv);
    return err ? err : url_arg(cmd, arg, &((entra_dir_conf *)dv)->metadata_url);
}

static const char *cmd_ca_file(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    apr_finfo_t fi;
    const char *path = ap_server_root_relative(cmd->pool, arg);
    if (!path || apr_stat(&fi, path, APR_FINFO_TYPE, cmd->temp_pool) != APR_SUCCESS ||
        fi.filetype != APR_REG)
        return apr_psprintf(cmd->pool, "EntraCACertificateFile: '%s' is not a readable file",
                            arg);
    d->ca_file = path;
    return NULL;
}

static const char *cmd_algorithms(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    entra_alg alg = entra_alg_from_name(arg);
    if (alg == ENTRA_ALG_UNKNOWN)
        return apr_psprintf(cmd->pool,
                            "EntraAlgorithms: unsupported algorithm '%s' (allowed: RS256 RS384 "
                            "RS512 PS256 PS384 PS512 ES256 ES384 ES512)",
                            arg);
    d->alg_mask |= ENTRA_ALG_BIT(alg);
    return NULL;
}

static const char *seconds_arg(cmd_parms *cmd, const char *arg, long min, long max, long *out)
{
    char *end;
    apr_int64_t v = apr_strtoi64(arg, &end, 10);
    if (!*arg || *end || v < min || v > max)
        return apr_psprintf(cmd->pool, "%s: '%s' must be a number of seconds from %ld to %ld",
                            cmd->cmd->name, arg, min, max);
    *out = (long)v;
    return NULL;
}

static const char *cmd_clock_skew(cmd_parms *cmd, void *dv, const char *arg)
{
    return seconds_arg(cmd, arg, 0, 600, &((entra_dir_conf *)dv)->clock_skew);
}

static const char *cmd_max_lifetime(cmd_parms *cmd, void *dv, const char *arg)
{
    return seconds_arg(cmd, arg, 60, 7 * 86400, &((entra_dir_conf *)dv)->max_lifetime);
}

static const char *cmd_refetch(cmd_parms *cmd, void *dv, const char *arg)
{
    return seconds_arg(cmd, arg, 1, 3600, &((entra_dir_conf *)dv)->refetch_interval);
}

static const char *cmd_refresh(cmd_parms *cmd, void *dv, const char *arg)
{
    return seconds_arg(cmd, arg, 60, 7 * 86400, &((entra_dir_conf *)dv)->refresh_interval);
}

static int is_token_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!apr_isalnum(*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

static const char *cmd_token_in(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    if (strcasecmp(arg, "header") == 0)
        d->token_in |= ENTRA_TOKEN_IN_HEADER;
    else if (strcasecmp(arg, "query") == 0)
        d->token_in |= ENTRA_TOKEN_IN_QUERY;
    else if (strncasecmp(arg, "cookie=", 7) == 0 && is_token_name(arg + 7)) {
        d->token_in |= ENTRA_TOKEN_IN_COOKIE;
        d->cookie_name = apr_pstrdup(cmd->pool, arg + 7);
    }
    else
        return apr_psprintf(cmd->pool,
                            "EntraAcceptTokenIn: '%s' is not header, query or cookie=<name>", arg);
    return NULL;
}

static const char *cmd_remote_user_claim(cmd_parms *cmd, void *dv, const char *arg)
{
    ((entra_dir_conf *)dv)->remote_user_claim = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *cmd_pass_claims(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    if (!is_token_name(arg))
        return apr_psprintf(cmd->pool, "EntraPassClaims: '%s' is not a usable claim name", arg);
    if (!d->pass_claims)
        d->pass_claims = apr_array_make(cmd->pool, 4, sizeof(const char *));
    APR_ARRAY_PUSH(d->pass_claims, const char *) = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *cmd_flag(cmd_parms *cmd, void *dv, int on)
{
    entra_dir_conf *d = dv;
    switch (*(const char *)cmd->info) {
    case 'o':
        d->optional = on;
        break;
    case 'p':
        d->allow_preflight = on;
        break;
    default:
        d->app_signing_keys = on;
    }
    return NULL;
}

static const char *cmd_cloud(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_cloud c = entra_cloud_from_name(arg);
    if (c == ENTRA_CLOUD_ANY)
        return apr_psprintf(cmd->pool, "EntraCloud: '%s' is not public, usgov or china", arg);
    ((entra_dir_conf *)dv)->cloud = (int)c;
    return NULL;
}

static const char *cmd_cache(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    (void)dv;
    if (err)
        return err;
    sc->cache_spec = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *cmd_cache_key_file(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    (void)dv;
    if (err)
        return err;
    /* Read and checked at startup (as root), see entra_cache_check_config. */
    if (!(sc->cache_key_file = ap_server_root_relative(cmd->pool, arg)))
        return apr_pstrcat(cmd->pool, "EntraCacheKeyFile: invalid path ", arg, NULL);
    return NULL;
}

static const char *cmd_token_cache_entries(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    char *end;
    long v;
    (void)dv;
    if (err)
        return err;
    v = strtol(arg, &end, 10);
    if (end == arg || *end || v < 0 || v > ENTRA_TOKEN_CACHE_MAX)
        return apr_psprintf(cmd->pool, "EntraTokenCacheEntries: a number of entries from 0 (off) "
                                       "to %d", ENTRA_TOKEN_CACHE_MAX);
    sc->token_cache_entries = v;
    return NULL;
}

#define DIR_CMD (RSRC_CONF | ACCESS_CONF)

const command_rec entra_cmds[] = {
    AP_INIT_TAKE1("AuthType", cmd_auth_type, NULL, OR_AUTHCFG,
                  "noted by mod_entra, handled by mod_authn_core"),
    AP_INIT_TAKE1("EntraTenant", cmd_tenant, NULL, DIR_CMD,
                  "Tenant id (GUID) whose tokens are accepted, or 'organizations'/'common' "
                  "with EntraAllowedTenants"),
    AP_INIT_ITERATE("EntraAllowedTenants", cmd_allowed_tenants, NULL, DIR_CMD,
                    "Tenant ids allowed to call when EntraTenant is organizations or common"),
    AP_INIT_ITERATE("EntraAudience", cmd_audience, NULL, DIR_CMD,
                    "Accepted token audiences, e.g. api://<app-id> and the bare <app-id>"),
    AP_INIT_TAKE1("EntraAuthority", cmd_authority, NULL, DIR_CMD,
                  "Entra authority URL (default https://login.microsoftonline.com/)"),
    AP_INIT_TAKE1("EntraMetadataURL", cmd_metadata_url, NULL, DIR_CMD,
                  "OpenID Connect discovery URL of a non-Entra issuer"),
    AP_INIT_TAKE1("EntraCACertificateFile", cmd_ca_file, NULL, DIR_CMD,
                  "PEM file with extra trust anchors for discovery and JWKS"),
    AP_INIT_ITERATE("EntraAlgorithms", cmd_algorithms, NULL, DIR_CMD,
                    "Allowed signature algorithms (default RS256)"),
    AP_INIT_TAKE1("EntraClockSkew", cmd_clock_skew, NULL, DIR_CMD,
                  "Seconds of clock skew allowed for exp/nbf (default 60)"),
    AP_INIT_TAKE1("EntraMaxTokenLifetime", cmd_max_lifetime, NULL, DIR_CMD,
                  "Longest accepted token lifetime in seconds (default 90000)"),
    AP_INIT_ITERATE("EntraAcceptTokenIn", cmd_token_in, NULL, DIR_CMD,
                    "Where tokens are read: header, query, cookie=<name> (default header)"),
    AP_INIT_TAKE1("EntraRemoteUserClaim", cmd_remote_user_claim, NULL, DIR_CMD,
                  "Claim that becomes REMOTE_USER (default oid)"),
    AP_INIT_ITERATE("EntraPassClaims", cmd_pass_claims, NULL, DIR_CMD,
                    "Claims passed to the backend as X-Entra-<Claim> and ENTRA_<CLAIM>"),
    AP_INIT_TAKE1("EntraKeyRefetchInterval", cmd_refetch, NULL, DIR_CMD,
                  "Minimum seconds between key refetches for unknown kids (default 60)"),
    AP_INIT_TAKE1("EntraKeyRefreshInterval", cmd_refresh, NULL, DIR_CMD,
                  "Seconds between background key refreshes (default 86400)"),
    AP_INIT_FLAG("EntraOptional", cmd_flag, (void *)"o", DIR_CMD,
                 "On: requests without a token pass anonymously where the Require rules "
                 "allow it; a token that is present must be valid"),
    AP_INIT_FLAG("EntraAllowPreflight", cmd_flag, (void *)"p", DIR_CMD,
                 "On: CORS preflight requests (OPTIONS with Origin and "
                 "Access-Control-Request-Method, no Authorization) pass without a token"),
    AP_INIT_FLAG("EntraAppSigningKeys", cmd_flag, (void *)"k", DIR_CMD,
                 "On: the API signs with its own keys (claims-mapping policy): fetch them "
                 "from jwks_uri?appid=<the GUID in EntraAudience>"),
    AP_INIT_TAKE1("EntraCloud", cmd_cloud, NULL, DIR_CMD,
                  "public, usgov or china: the cloud's authority and token issuer hosts"),
    AP_INIT_TAKE1("EntraCache", cmd_cache, NULL, RSRC_CONF,
                  "Shared cache: socache provider[:args] (default shmcb)"),
    AP_INIT_TAKE1("EntraCacheKeyFile", cmd_cache_key_file, NULL, RSRC_CONF,
                  "File of at least 32 random bytes sealing what a networked EntraCache holds "
                  "(required unless EntraCache is shmcb)"),
    AP_INIT_TAKE1("EntraTokenCacheEntries", cmd_token_cache_entries, NULL, RSRC_CONF,
                  "Signature verdicts kept in shared memory for all processes (default 8192, "
                  "96 bytes each; 0: off)"),
    AP_INIT_RAW_ARGS("EntraIdentity", entra_cmd_identity, NULL, RSRC_CONF,
                     "<name> managed|workload|secret|certificate [key=value ...]: an identity "
                     "that acquires tokens"),
    AP_INIT_RAW_ARGS("EntraProxyToken", entra_cmd_proxy_token, NULL, DIR_CMD,
                     "<resource-or-scope> [identity=<name>] [header=<name>]: attach a token to "
                     "requests proxied from here"),
    AP_INIT_TAKE1("EntraProxyTokenOnError", entra_cmd_proxy_on_error, NULL, DIR_CMD,
                  "deny (503, default) or pass (forward without a token) when none is available"),
    AP_INIT_TAKE1("EntraTokenTimeout", entra_cmd_token_timeout, NULL, RSRC_CONF,
                  "Seconds a request waits for a token fetch (default 10)"),
    AP_INIT_TAKE1("EntraLuaRules", entra_cmd_lua_rules, NULL, DIR_CMD,
                  "Lua file whose functions 'Require entra-lua <function>' calls"),
    AP_INIT_TAKE1("EntraLuaMaxInstructions", entra_cmd_lua_limit, (void *)"i", RSRC_CONF,
                  "Lua instructions one rule call may run (default 1000000)"),
    AP_INIT_TAKE1("EntraLuaMaxMemory", entra_cmd_lua_limit, (void *)"m", RSRC_CONF,
                  "Bytes of memory one Lua rules state may use (default 8388608)"),
    AP_INIT_TAKE1("EntraLuaMaxTime", entra_cmd_lua_limit, (void *)"t", RSRC_CONF,
                  "Milliseconds one Lua rule call may run (default 250)"),
    AP_INIT_ITERATE("EntraLuaHeaders", entra_cmd_lua_headers, NULL, DIR_CMD,
                    "Request headers the section's Lua rules may set; clients' values of them "
                    "are removed"),
    AP_INIT_TAKE1("EntraArcKeyDirectory", entra_cmd_arc_key_dir, NULL, RSRC_CONF,
                  "Directory of Azure Arc challenge key files (default /var/opt/azcmagent/tokens)"),
    {NULL}};

static server_rec *check_main;

static server_rec *main_server_of(server_rec *s)
{
    return check_main ? check_main : s;
}

/* Reports a section's problem; returns !OK so startup (and apachectl -t) fails. */
static int section_error_n(server_rec *s, const char *num, const char *where, const char *msg)
{
    ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s, "ENTRA%s: %s: %s", num, where, msg);
    return !OK;
}

static int section_error(server_rec *s, const char *where, const char *msg)
{
    return section_error_n(s, "0001", where, msg);
}

static int check_one(server_rec *s, const char *where, const entra_dir_conf *d)
{
    if (d->proxy_token) {
        entra_srv_conf *sc = ap_get_module_config(main_server_of(s)->module_config, &entra_module);
        const entra_proxy_token *pt = d->proxy_token;
        if (pt->identity && !apr_hash_get(sc->identities, pt->identity, APR_HASH_KEY_STRING))
            return section_error_n(s, "0009", where,
                                 apr_psprintf(s->process->pool,
                                              "EntraProxyToken %s: no EntraIdentity named '%s'",
                                              pt->resource, pt->identity));
        if (!pt->identity && apr_hash_count(sc->identities) != 1)
            return section_error_n(s, "0009", where,
                                 apr_psprintf(s->process->pool,
                                              "EntraProxyToken %s: %s: name the identity with identity=<name>",
                                              pt->resource,
                                              apr_hash_count(sc->identities)
                                                  ? "several EntraIdentity are defined"
                                                  : "no EntraIdentity is defined"));
    }
    if (d->auth_entra != 1)
        return OK;
    if (!d->tenant && !d->metadata_url)
        return section_error(s, where,
                             "AuthType Entra needs EntraTenant (or EntraMetadataURL): add "
                             "'EntraTenant <tenant-guid>'");
    if (!d->audiences)
        return section_error(s, where,
                             "AuthType Entra needs EntraAudience: add 'EntraAudience "
                             "api://<app-id> <app-id>'");
    if (d->app_signing_keys == 1 && !d->metadata_url && !entra_conf_app_id(d))
        return section_error(s, where,
                             "EntraAppSigningKeys on needs the API's client id (a GUID) in "
                             "EntraAudience: its keys are at jwks_uri?appid=<client id>");
    if (d->tenant && (!strcmp(d->tenant, "common") || !strcmp(d->tenant, "organizations")) &&
        !d->metadata_url && !d->allowed_tenants)
        return section_error(s, where,
                             apr_pstrcat(s->process->pool, "EntraTenant ", d->tenant,
                                         " accepts any tenant: list the callers' tenants with "
                                         "EntraAllowedTenants",
                                         NULL));
    return OK;
}

/* `parent` is `child` or a path prefix of it ending at a '/'. */
static int path_parent(const char *parent, const char *child)
{
    apr_size_t n = strlen(parent);
    return strncmp(child, parent, n) == 0 &&
           (n == 0 || parent[n - 1] == '/' || child[n] == '/' || child[n] == '\0');
}

/* Calls `fn` on the merged configuration of each section nested in `own` (<Files>, <If>,
 * <ElseIf>, <Else>, at any depth httpd allows), each merged onto `outer`. */
static int walk_nested(server_rec *s, apr_pool_t *ptemp, const char *where,
                       ap_conf_vector_t *outer, ap_conf_vector_t *own, entra_section_fn fn,
                       void *baton, int depth)
{
    core_dir_config *c = ap_get_core_module_config(own);
    apr_array_header_t *inner[2] = {c->sec_file, c->sec_if};
    int k, i;

    for (k = 0; k < 2 && depth < 16; k++) {
        ap_conf_vector_t **sv = inner[k] ? (ap_conf_vector_t **)inner[k]->elts : NULL;
        for (i = 0; sv && i < inner[k]->nelts; i++) {
            core_dir_config *ci = ap_get_core_module_config(sv[i]);
            ap_conf_vector_t *m = ap_merge_per_dir_configs(ptemp, outer, sv[i]);
            const char *w = k ? apr_pstrcat(ptemp, where, " <If>", NULL)
                              : apr_pstrcat(ptemp, where, " <Files ", ci->d ? ci->d : "?", ">",
                                            NULL);
            if (fn(s, w, ap_get_module_config(m, &entra_module), baton) != OK ||
                walk_nested(s, ptemp, w, m, sv[i], fn, baton, depth + 1) != OK)
                return !OK;
        }
    }
    return OK;
}

int entra_walk_sections(server_rec *s, apr_pool_t *ptemp, entra_section_fn fn, void *baton)
{
    for (; s; s = s->next) {
        core_server_config *sc = ap_get_core_module_config(s->module_config);
        apr_array_header_t *secs[2] = {sc->sec_url, sc->sec_dir};
        const char *host = s->is_virtual ? apr_psprintf(ptemp, "<VirtualHost %s:%u> ",
                                                        s->server_hostname ? s->server_hostname
                                                                           : "?",
                                                        (unsigned)s->port)
                                         : "";
        const char *top = s->is_virtual ? apr_pstrcat(ptemp, host, "top level", NULL)
                                        : "server config";
        int k, i, j;

        if (fn(s, top, ap_get_module_config(s->lookup_defaults, &entra_module), baton) != OK ||
            walk_nested(s, ptemp, top, s->lookup_defaults, s->lookup_defaults, fn, baton, 0) !=
                OK)
            return !OK;
        for (k = 0; k < 2; k++) {
            ap_conf_vector_t **sv = (ap_conf_vector_t **)secs[k]->elts;
            for (i = 0; i < secs[k]->nelts; i++) {
                core_dir_config *ci = ap_get_core_module_config(sv[i]);
                ap_conf_vector_t *m = s->lookup_defaults;
                const char *where;
                /* A section inherits from the sections above it whose path is a prefix of
                 * its own, whole segments only, as httpd matches them (/gov is not a parent
                 * of /govdefault). */
                for (j = 0; j <= i; j++) {
                    core_dir_config *cj = ap_get_core_module_config(sv[j]);
                    if (j == i || (!cj->r && !ci->r && cj->d && ci->d && path_parent(cj->d, ci->d)))
                        m = ap_merge_per_dir_configs(ptemp, m, sv[j]);
                }
                where = apr_pstrcat(ptemp, host, k ? "<Directory " : "<Location ",
                                    ci->d ? ci->d : "?", ">", NULL);
                if (fn(s, where, ap_get_module_config(m, &entra_module), baton) != OK ||
                    walk_nested(s, ptemp, where, m, sv[i], fn, baton, 0) != OK)
                    return !OK;
            }
        }
    }
    return OK;
}

static int check_section(server_rec *s, const char *where, const entra_dir_conf *d, void *baton)
{
    (void)baton;
    return check_one(s, where, d);
}

int entra_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    check_main = s; /* the first server_rec is the main server, where identities live */
    if (entra_cache_check_config(s, ptemp) != OK)
        return !OK;
    return entra_walk_sections(s, ptemp, check_section, NULL);
}
