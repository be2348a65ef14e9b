/* Credential sources that issue access tokens: Azure managed identity (IMDS, App Service,
 * Arc) and the Entra token endpoint (client secret, certificate, workload identity).
 * One call is one attempt; retrying and caching are entra_tokenstore's business. */
#ifndef ENTRA_CRED_H
#define ENTRA_CRED_H

#include <apr_pools.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "entra_http.h"

typedef enum {
    ENTRA_CRED_IMDS,
    ENTRA_CRED_APPSERVICE,
    ENTRA_CRED_ARC,
    ENTRA_CRED_WORKLOAD,
    ENTRA_CRED_SECRET,
    ENTRA_CRED_CERTIFICATE
} entra_cred_kind;

typedef enum {
    ENTRA_SEL_NONE, /* system-assigned */
    ENTRA_SEL_CLIENT_ID,
    ENTRA_SEL_OBJECT_ID,
    ENTRA_SEL_RESOURCE_ID
} entra_selector;

/* Reads an Arc challenge key file (after validating its path and size); the host decides
 * how (httpd: a privileged helper). Returns the contents or NULL with *why set. */
typedef const char *entra_arc_reader(void *baton, apr_pool_t *p, const char *path,
                                     const char **why);

typedef struct entra_cred {
    const char *name;
    entra_cred_kind kind;
    entra_selector selector;
    const char *selector_value;
    const char *endpoint;      /* managed identity token URL */
    const char *identity_header; /* App Service X-IDENTITY-HEADER value */
    const char *authority;     /* Entra token endpoint base, ends with '/' */
    const char *tenant;
    const char *client_id;
    const char *secret_file;   /* re-read at each acquisition */
    const char *token_file;    /* workload identity: re-read at each acquisition */
    EVP_PKEY *key;             /* certificate credential */
    const char *x5t_s256;      /* b64url(SHA-256(certificate DER)) */
    entra_http_opts http;
    entra_arc_reader *arc_reader;
    void *arc_baton;
    const char *arc_key_dir;   /* "/var/opt/azcmagent/tokens" */
} entra_cred;

typedef struct entra_token {
    const char *access_token;
    apr_int64_t expires_on; /* seconds since the epoch */
    apr_int64_t obtained;
} entra_token;

typedef struct entra_fetch_result {
    int status;          /* HTTP status, 0 when no answer */
    int retryable;       /* the source's rules allow another attempt */
    long retry_after;    /* seconds the endpoint asked to wait, -1 when it did not */
    const char *error;   /* endpoint error code or transport problem; never a secret */
    const char *description;
    apr_interval_time_t duration;
} entra_fetch_result;

/* The managed-identity source MSAL would pick from this environment (getenv):
 * App Service, Arc or IMDS; sets *endpoint and, for App Service, *header. Service
 * Fabric, Cloud Shell and Azure ML are not supported: returns APR_ENOTIMPL with *why. */
apr_status_t entra_cred_detect_managed(apr_pool_t *p, entra_cred_kind *kind,
                                       const char **endpoint, const char **header,
                                       const char **why);

/* "https://vault.azure.net/.default" -> "https://vault.azure.net" (managed identity). */
const char *entra_resource_from_scope(apr_pool_t *p, const char *scope);

const char *entra_cred_kind_name(entra_cred_kind kind);

/* Loads a certificate credential: PEM certificate and private key (RSA). */
apr_status_t entra_cred_load_certificate(apr_pool_t *p, entra_cred *c, const char *cert_file,
                                         const char *key_file, const char **why);

/* One attempt to obtain a token for `resource` within `timeout_ms`. */
apr_status_t entra_cred_fetch(apr_pool_t *p, const entra_cred *c, const char *resource,
                              long timeout_ms, entra_token *tok, entra_fetch_result *fr);

/* Expiry from a token response: expires_on (number, numeric string or App Service's
 * "MM/DD/YYYY HH:MM:SS +00:00") or else expires_in (number or numeric string) after `now`;
 * 0 when neither is usable. */
apr_int64_t entra_token_expiry(const json_t *body, apr_int64_t now);

#endif
