/* Claim rules for one protected route: issuer/tenant, audience and time. No crypto. */
#ifndef ENTRA_POLICY_H
#define ENTRA_POLICY_H

#include <apr_pools.h>
#include <apr_tables.h>
#include <jansson.h>

#include "entra_jwk.h"

/* Microsoft's cloud instances: each has its own authority and token issuer hosts. */
typedef enum {
    ENTRA_CLOUD_ANY = 0, /* not configured: discovery alone decides the issuers */
    ENTRA_CLOUD_PUBLIC,
    ENTRA_CLOUD_USGOV,
    ENTRA_CLOUD_CHINA
} entra_cloud;

/* "public", "usgov", "china" -> the cloud; ENTRA_CLOUD_ANY for anything else. */
entra_cloud entra_cloud_from_name(const char *name);

/* The cloud's authority, e.g. "https://login.microsoftonline.us/"; NULL for ANY. */
const char *entra_cloud_authority(entra_cloud c);

/* True when `iss` is on one of the cloud's issuer hosts (always true for ANY). */
int entra_cloud_issuer_ok(entra_cloud c, const char *iss);

typedef struct entra_policy {
    const char *tenant;                  /* lower-case GUID, "common", "organizations", or NULL
                                            for a non-Entra issuer (EntraMetadataURL) */
    int multi_tenant;                    /* tenant is common/organizations */
    apr_array_header_t *allowed_tenants; /* const char *, lower-case GUIDs */
    apr_array_header_t *audiences;       /* const char * */
    long clock_skew;                     /* seconds */
    long max_lifetime;                   /* seconds */
    unsigned alg_mask;                   /* ENTRA_ALG_BIT()s */
    entra_cloud cloud;                   /* issuer hosts the token must come from */
} entra_policy;

/* Issuers announced by discovery; Entra's multi-tenant documents hold "{tenantid}". */
typedef struct entra_issuers {
    const char *v2; /* the (only) issuer for a non-Entra metadata document */
    const char *v1; /* NULL when the v1 document was not available */
    int entra;      /* Entra tenant rules apply (v1/v2 issuers, tid) */
} entra_issuers;

/* True for a lower-case 8-4-4-4-12 hexadecimal GUID. */
int entra_is_guid(const char *s);

/* Checks iss/tid, aud, exp/nbf/iat and lifetime of verified-or-about-to-be-verified claims
 * at time `now` (seconds). APR_SUCCESS or APR_EINVAL with a short reason in *why. */
apr_status_t entra_policy_check(apr_pool_t *p, const entra_policy *pol,
                                const entra_issuers *iss, const json_t *claims,
                                apr_int64_t now, const char **why);

/* True when a signing key's own "issuer" member is consistent with the claims' tenant. */
int entra_policy_key_issuer_ok(apr_pool_t *p, const entra_policy *pol,
                               const entra_issuers *iss, const entra_key *key,
                               const json_t *claims);

#endif
