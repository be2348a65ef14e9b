/* JOSE algorithms and JSON Web Keys as EVP_PKEYs (OpenSSL 3). */
#ifndef ENTRA_JWK_H
#define ENTRA_JWK_H

#include <apr_pools.h>
#include <apr_tables.h>
#include <jansson.h>
#include <openssl/evp.h>

typedef enum {
    ENTRA_ALG_UNKNOWN = 0,
    ENTRA_ALG_RS256,
    ENTRA_ALG_RS384,
    ENTRA_ALG_RS512,
    ENTRA_ALG_PS256,
    ENTRA_ALG_PS384,
    ENTRA_ALG_PS512,
    ENTRA_ALG_ES256,
    ENTRA_ALG_ES384,
    ENTRA_ALG_ES512
} entra_alg;

#define ENTRA_ALG_BIT(a) (1u << (unsigned)(a))
#define ENTRA_MIN_RSA_BITS 2048

/* The algorithm with this JOSE name, or ENTRA_ALG_UNKNOWN (never "none" or HMAC). */
entra_alg entra_alg_from_name(const char *name);
const char *entra_alg_name(entra_alg alg);

typedef struct entra_key {
    const char *kid;
    const char *issuer; /* the key's own "issuer" member (Entra has one), or NULL */
    const char *crv;    /* "P-256"... for EC keys, NULL for RSA */
    int is_rsa;
    EVP_PKEY *pkey;     /* freed with the keyset's pool */
    /* Per algorithm, a verification context made on first use and duplicated for each
     * signature (cheaper than a new one: no provider lookups); NULL array: none kept. */
    EVP_PKEY_CTX **verify_ctx;
    /* 64 bits of SHA-256 over kid, issuer and the public key (SPKI): the identity that
     * cached verdicts are bound to, so a withdrawn or replaced key ends them. */
    apr_uint64_t tag;
} entra_key;

typedef struct entra_keyset {
    apr_array_header_t *keys; /* of entra_key */
    json_t *compact;          /* {"keys":[...]} with only what verification needs */
} entra_keyset;

/* Builds a keyset from a JWKS document. Keys with "use" other than "sig", unknown "kty" or
 * curves, no "kid", invalid points or RSA under 2048 bits are skipped (and logged). Fails
 * only when the document has no "keys" array. `origin` names the source in log lines. */
apr_status_t entra_keyset_from_jwks(apr_pool_t *p, const json_t *jwks, const char *origin,
                                    entra_keyset **out, const char **why);

/* The key with this kid, or NULL. */
const entra_key *entra_keyset_find(const entra_keyset *ks, const char *kid);

/* The key whose tag is `tag`, or NULL: is the key a verdict was made with still published? */
const entra_key *entra_keyset_find_tag(const entra_keyset *ks, apr_uint64_t tag);

/* True when `alg` may be used with this key (RSA for RS and PS, the matching curve for ES). */
int entra_alg_fits_key(entra_alg alg, const entra_key *key);

/* SHA-256, fetched once per process (cheaper than SHA256() on every call). */
const EVP_MD *entra_md_sha256(void);

/* Verifies a JWS signature over `input`; APR_SUCCESS only for a valid signature. */
apr_status_t entra_sig_verify(entra_alg alg, const entra_key *key, const unsigned char *input,
                              apr_size_t input_len, const unsigned char *sig, apr_size_t sig_len);

#endif
