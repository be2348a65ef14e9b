/* The whole inbound decision for one token: cheap checks first, the validated-token cache,
 * then keys, claims and the signature. Shared by httpd and the Lua verifier. */
#ifndef ENTRA_VERIFY_H
#define ENTRA_VERIFY_H

#include <apr_pools.h>
#include <jansson.h>

#include "entra_keys.h"
#include "entra_l1.h"
#include "entra_policy.h"
#include "entra_vtab.h"

typedef struct entra_verifier {
    entra_policy policy;
    entra_source *source;
    entra_vtab *vtab; /* signature verdicts shared by processes, or NULL */
    entra_l1 *l1;     /* per-process cache of verified claims in front of it, or NULL */
} entra_verifier;

typedef enum {
    ENTRA_VERIFY_OK = 0,
    ENTRA_VERIFY_INVALID,    /* 401 invalid_token */
    ENTRA_VERIFY_UNAVAILABLE /* keys unobtainable: 503 */
} entra_verify_outcome;

typedef struct entra_verify_result {
    entra_verify_outcome outcome;
    const char *why;      /* short reason, safe for the caller to see */
    json_t *claims;       /* verified claims (OK), or unverified ones when parsed (for logs) */
    const char *token_id; /* first 12 hex digits of SHA-256(token), for logs */
    int cached;           /* answered from the validated-token cache */
    int signed_ok;        /* the signature held, so the claims are the issuer's words */
} entra_verify_result;

/* Verifies `token` (not NUL-terminated, `len` bytes) at `now` (seconds since the epoch). */
void entra_verify_token(apr_pool_t *p, const entra_verifier *v, const char *token,
                        apr_size_t len, apr_int64_t now, entra_verify_result *res);

#endif
