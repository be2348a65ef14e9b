/* httpd glue shared by the mod_entra*.c files. */
#ifndef MOD_ENTRA_H
#define MOD_ENTRA_H

#include <httpd.h>
#include <http_config.h>
#include <apr_tables.h>
#include <jansson.h>

#include "entra_store.h"
#include "entra_verify.h"

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
} entra_dir_conf;

typedef struct entra_srv_conf {
    const char *cache_spec; /* "provider[:args]" */
} entra_srv_conf;

/* What authentication established for a request, for the authz providers and filters. */
typedef struct entra_req_state {
    json_t *claims;      /* verified claims */
    const char *token_id;
    int forbidden;       /* a Require denied this authenticated caller */
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

/* Startup validation of every section using AuthType Entra (check_config hook). */
int entra_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s);

/* Shared cache (socache + global mutex): mod_entra_cache.c. */
void entra_cache_register_mutex(apr_pool_t *pconf);
apr_status_t entra_cache_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s);
void entra_cache_child_init(apr_pool_t *p, server_rec *s);
entra_store *entra_cache_store(void);

/* Key sources by configuration, one per process: mod_entra.c. */
entra_source *entra_source_for(apr_pool_t *tmp, const entra_dir_conf *d);

/* This process's small cache of verified claims (NULL before child init). */
entra_l1 *entra_process_l1(void);

/* The request's verified state, or NULL. */
entra_req_state *entra_req_state_get(request_rec *r);

/* Hooks of mod_entra_authn.c and the Require providers of mod_entra_authz.c. */
void entra_authn_register_hooks(apr_pool_t *p);
void entra_authz_register_providers(apr_pool_t *p);

#endif
