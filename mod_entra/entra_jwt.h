/* Compact JWS access tokens: strict parsing (no crypto) and signature verification. */
#ifndef ENTRA_JWT_H
#define ENTRA_JWT_H

#include <apr_pools.h>
#include <jansson.h>

#include "entra_jwk.h"

#define ENTRA_MAX_TOKEN_LEN 16384

typedef struct entra_jwt {
    json_t *header;
    json_t *claims;
    entra_alg alg;
    const char *alg_name;
    const char *kid;
    const char *signing_input; /* header.payload as received */
    apr_size_t signing_input_len;
    unsigned char *sig;
    apr_size_t sig_len;
    const char *payload; /* decoded claims JSON text */
    apr_size_t payload_len;
} entra_jwt;

/* Parses a compact JWS without any crypto: exactly three non-empty strict-base64url
 * segments, header and claims JSON objects without duplicate keys, a known signing `alg`
 * in `alg_mask` (ENTRA_ALG_BIT set), a string `kid`, no `crit`, no Graph-style `nonce`.
 * `jku`, `x5u`, `jwk` and `x5c` are never looked at (but count towards the 2 KiB limit of
 * the decoded header). On failure *why is a short reason safe to show to the caller. */
apr_status_t entra_jwt_parse(apr_pool_t *p, const char *token, apr_size_t len,
                             unsigned alg_mask, entra_jwt **out, const char **why);

/* Checks the signature with `key`; the algorithm must fit the key type. */
apr_status_t entra_jwt_verify(const entra_jwt *jwt, const entra_key *key, const char **why);

#endif
