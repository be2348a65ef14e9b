/* httpd glue shared by the mod_entra*.c files. */
#ifndef MOD_ENTRA_H
#define MOD_ENTRA_H

#include <httpd.h>
#include <http_config.h>
#include <apr_tables.h>
#include <apr_hash.h>
#include <jansson.h>

#include "entra_store.h"
#include "entra_verify.h"
#include "entra_vtab.h"

extern module AP_MODULE_DECLARE_DATA entra_module;

#define ENTRA_TOKEN_IN_HEADER 1u
#define ENTRA_TOKEN_IN_QUERY 2u
#define ENTRA_TOKEN_IN_COOKIE 4u

#define ENTRA_UNSET (-1)

/* Per-directory configuration; every member has an "unset" state so <Location> sections
 * inherit what they do not set. */
typedef struct entra_dir_conf {
    int auth_entra;                      /* AuthType Entra seen here (ENTRA_UNSET otherwise) */
    const char *tenant;                  /* lower-case GUID, common or organizations */
    apr_array_header_t *allowed_tenants; /* const char * */
    apr_array_header_t *audiences;       /* const char * */
    const char *authority;               /* ends with '/' */
    const char *metadata_url;
    const char *ca_file;
    unsigned alg_mask;          /* 0 = unset */
    long clock_skew;            /* ENTRA_UNSET */
    long max_lifetime;          /* ENTRA_UNSET */
    unsigned token_in;          /* 0 = unset */
    const char *cookie_name;
    const char *remote_user_claim;
    apr_array_header_t *pass_claims; /* const char * */
    long refetch_interval;           /* ENTRA_UNSET */
    long refresh_interval;           /* ENTRA_UNSET */
    struct entra_proxy_token *proxy_token; /* EntraProxyToken, or NULL */
    struct entra_lua_rules *lua_rules;     /* EntraLuaRules, or NULL */
    apr_array_header_t *lua_headers;       /* EntraLuaHeaders (const char *), or NULL */
    int proxy_on_error_pass;               /* ENTRA_UNSET, 0 deny, 1 pass */
    int optional;                          /* EntraOptional: ENTRA_UNSET, 0, 1 */
    int allow_preflight;                   /* EntraAllowPreflight: ENTRA_UNSET, 0, 1 */
    int app_signing_keys;                  /* EntraAppSigningKeys: ENTRA_UNSET, 0, 1 */
    int cloud;                             /* EntraCloud: entra_cloud, ENTRA_CLOUD_ANY unset */
} entra_dir_conf;

/* One EntraProxyToken line; merged configs share it, so resolving it once serves all. */
typedef struct entra_proxy_token {
    const char *resource;
    const char *identity; /* name, or NULL for the only one */
    const char *header;   /* "Authorization" by default */
    const char *where;    /* for messages */
    struct entra_tokensrc *ts; /* resolved at startup */
} entra_proxy_token;

typedef struct entra_srv_conf {
    const char *cache_spec;  /* "provider[:args]" */
    const char *cache_key_file; /* EntraCacheKeyFile, absolute */
    apr_hash_t *identities;  /* name -> entra_cred *, main server only */
    long token_timeout_ms;   /* ENTRA_UNSET */
    const char *arc_key_dir; /* ENTRA_UNSET -> /var/opt/azcmagent/tokens */
    long lua_max_instructions; /* ENTRA_UNSET */
    long lua_max_memory;       /* ENTRA_UNSET */
    long lua_max_time_ms;      /* ENTRA_UNSET */
    long token_cache_entries;  /* ENTRA_UNSET -> ENTRA_TOKEN_CACHE_DEFAULT */
} entra_srv_conf;

#define ENTRA_TOKEN_CACHE_DEFAULT 8192
#define ENTRA_TOKEN_CACHE_MAX (1 << 22)

/* What authentication established for a request, for the authz providers and filters. */
typedef struct entra_req_state {
    json_t *claims;      /* verified claims; NULL for an anonymous caller (EntraOptional) */
    const char *token_id;
    int forbidden;       /* a Require denied this authenticated caller */
    int lua_failed;      /* a Lua rule failed: the request must not be served */
    int authn_done;      /* authentication ran for this request_rec ... */
    int authn_status;    /* ... and decided this (OK, DECLINED or an HTTP status) */
    int preflight;       /* a CORS preflight under EntraAllowPreflight: entra rules grant */
    const request_rec *optional_done; /* EntraOptional verified this (sub)request's token */
    const char *denied;  /* short reason of the first Require that denied, for ENTRA_ERROR */
    const char *claims_challenge; /* an entra-acrs rule denied a cp1 client: the base64
                                     claims request of a 401 insufficient_claims */
    int authz_counted;   /* the status counters have its authorization outcome */
} entra_req_state;

extern const command_rec entra_cmds[];
void *entra_create_dir_conf(apr_pool_t *p, char *dir);
void *entra_merge_dir_conf(apr_pool_t *p, void *basev, void *addv);
void *entra_create_srv_conf(apr_pool_t *p, server_rec *s);

/* Effective values after merging with the defaults. */
long entra_conf_clock_skew(const entra_dir_conf *d);
long entra_conf_max_lifetime(const entra_dir_conf *d);
unsigned entra_conf_alg_mask(const entra_dir_conf *d);
unsigned entra_conf_token_in(const entra_dir_conf *d);
const char *entra_conf_authority(const entra_dir_conf *d);

/* Calls `fn` with the merged configuration of every section of every server: the top
 * level, <Location>, <Directory> and the <Files> and <If> sections nested in any of them;
 * stops at the first result other than OK and returns it. */
typedef int (*entra_section_fn)(server_rec *s, const char *where, const entra_dir_conf *d,
                                void *baton);
int entra_walk_sections(server_rec *s, apr_pool_t *ptemp, entra_section_fn fn, void *baton);

/* Startup validation of every section using AuthType Entra (check_config hook). */
int entra_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s);

/* Shared cache (socache + global mutex): mod_entra_cache.c. */
void entra_cache_register_mutex(apr_pool_t *pconf);
apr_status_t entra_cache_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s);
void entra_cache_child_init(apr_pool_t *p, server_rec *s);
int entra_cache_check_config(server_rec *s, apr_pool_t *ptemp);
/* Keys, client-credential tokens: shared with the fleet when EntraCache is networked. */
entra_store *entra_cache_store(void);
/* This machine only (leases, managed-identity tokens): never leaves it. */
entra_store *entra_cache_local_store(void);
/* The machine-wide table of signature verdicts (NULL when EntraTokenCacheEntries is 0). */
entra_vtab *entra_cache_vtab(void);

/* Key sources by configuration, one per process: mod_entra.c. */
entra_source *entra_source_for(apr_pool_t *tmp, const entra_dir_conf *d);

/* Every key source of this process (entra_source *), in no order. */
apr_array_header_t *entra_sources_list(apr_pool_t *p);

/* This process's small cache of verified claims (NULL before child init). */
entra_l1 *entra_process_l1(void);

/* Sets WWW-Authenticate: Bearer realm=..., error=..., error_description=... */
void entra_challenge(request_rec *r, const char *error, const char *desc);

/* Authenticates the request (AuthType Entra) once; later calls return the first outcome. */
int entra_authenticate(request_rec *r);

/* A claim as text for headers, env and expressions: strings as they are, arrays of strings
 * joined with ", ", integers and booleans as text; NULL when absent, of another shape, or
 * holding a control byte (other than HTAB) or DEL. */
const char *entra_claim_text(apr_pool_t *p, json_t *claims, const char *name);

/* ap_expr function entra_claim (mod_entra_expr.c). */
void entra_expr_register_hooks(apr_pool_t *p);

/* The request's verified state, or NULL. */
entra_req_state *entra_req_state_get(request_rec *r);

/* The request's state, created (anonymous) when there is none yet. */
entra_req_state *entra_req_state_ensure(request_rec *r);

/* Records why the module answers 400/401/403/503 in env ENTRA_ERROR (a short reason, never
 * token content), for %{ENTRA_ERROR}e in a LogFormat. */
void entra_note_error(request_rec *r, const char *why);

/* A Require provider denies an authenticated caller: keeps the first reason. */
void entra_note_denied(request_rec *r, entra_req_state *st, const char *why);

/* The API's client id for EntraAppSigningKeys: the first GUID among EntraAudience. */
const char *entra_conf_app_id(const entra_dir_conf *d);
/* 1 if two header names are the same to a backend: any case, '-' and '_' alike. */
int entra_header_eq(const char *a, const char *b);

/* 1 if only the module may set request header `name` here: X-Entra-* and the section's
 * EntraLuaHeaders, compared case-insensitively with '-' and '_' alike (d may be NULL). */
int entra_owned_header(const entra_dir_conf *d, const char *name);

/* 1 if `v` (len bytes) has a byte below 0x20 other than HTAB, or 0x7f: such values never
 * reach a backend header or REMOTE_USER. */
int entra_has_ctl(const char *v, apr_size_t len);

/* Outbound tokens (mod_entra_proxy.c). */
const char *entra_cmd_identity(cmd_parms *cmd, void *dv, const char *args);
const char *entra_cmd_proxy_token(cmd_parms *cmd, void *dv, const char *args);
const char *entra_cmd_proxy_on_error(cmd_parms *cmd, void *dv, const char *arg);
const char *entra_cmd_token_timeout(cmd_parms *cmd, void *dv, const char *arg);
const char *entra_cmd_arc_key_dir(cmd_parms *cmd, void *dv, const char *arg);
int entra_proxy_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s);
void entra_proxy_child_init(apr_pool_t *p, server_rec *s, const volatile int *cancel);
void entra_proxy_maintain(apr_pool_t *p);
void entra_proxy_register_hooks(apr_pool_t *p);
/* Every outbound token source of this process (entra_tokensrc *), in no order. */
apr_array_header_t *entra_proxy_token_sources(apr_pool_t *p);

/* Counters, the entra-status handler and mod_status's section (mod_entra_status.c). */
void entra_status_register_hooks(apr_pool_t *p);

/* Lua rules (mod_entra_lua.c). */
const char *entra_cmd_lua_rules(cmd_parms *cmd, void *dv, const char *arg);
const char *entra_cmd_lua_limit(cmd_parms *cmd, void *dv, const char *arg);
const char *entra_cmd_lua_headers(cmd_parms *cmd, void *dv, const char *arg);
void entra_lua_register_providers(apr_pool_t *p);

/* Arc key files through a privileged helper (mod_entra_arc.c). entra_arc_read_key is an
 * entra_arc_reader whose baton is the child's cancel flag (or NULL). */
apr_status_t entra_arc_helper_start(apr_pool_t *pconf, server_rec *s, const char *key_dir);
const char *entra_arc_read_key(void *baton, apr_pool_t *p, const char *path, const char **why);

/* Hooks of mod_entra_authn.c and the Require providers of mod_entra_authz.c. */
void entra_authn_register_hooks(apr_pool_t *p);
void entra_authz_register_providers(apr_pool_t *p);

#endif
