#include <string.h>
#include <apr_strings.h>

#include "entra_b64url.h"
#include "entra_json.h"
#include "entra_jwt.h"
#include "entra_vtab.h"

#define MAX_HEADER_JSON 2048

apr_status_t entra_jwt_parse(apr_pool_t *p, const char *token, apr_size_t len,
                             unsigned alg_mask, entra_jwt **out, const char **why)
{
    const char *d1, *d2, *end = token + len;
    unsigned char *hdr, *payload, *sig;
    apr_size_t hdr_len, payload_len, sig_len;
    entra_jwt *jwt;
    json_t *alg;

    *out = NULL;
    if (len == 0) {
        *why = "empty token";
        return APR_EINVAL;
    }
    if (len > ENTRA_MAX_TOKEN_LEN) {
        *why = "token too large";
        return APR_EINVAL;
    }
    d1 = memchr(token, '.', len);
    d2 = d1 ? memchr(d1 + 1, '.', (apr_size_t)(end - d1 - 1)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', (apr_size_t)(end - d2 - 1))) {
        *why = "token is not a JWS with three segments";
        return APR_EINVAL;
    }
    if (d1 == token || d2 == d1 + 1) {
        *why = "empty token segment";
        return APR_EINVAL;
    }
    if (d2 + 1 == end) {
        *why = "unsigned token";
        return APR_EINVAL;
    }
    if (entra_b64url_decode(p, token, (apr_size_t)(d1 - token), &hdr, &hdr_len) ||
        entra_b64url_decode(p, d1 + 1, (apr_size_t)(d2 - d1 - 1), &payload, &payload_len) ||
        entra_b64url_decode(p, d2 + 1, (apr_size_t)(end - d2 - 1), &sig, &sig_len)) {
        *why = "token is not strict base64url";
        return APR_EINVAL;
    }
    jwt = apr_pcalloc(p, sizeof(*jwt));
    if (entra_json_parse_object(p, (const char *)hdr, hdr_len, MAX_HEADER_JSON, &jwt->header,
                                why)) {
        *why = apr_pstrcat(p, "token header: ", *why, NULL);
        return APR_EINVAL;
    }
    alg = json_object_get(jwt->header, "alg");
    if (!json_is_string(alg)) {
        *why = "token header has no alg";
        return APR_EINVAL;
    }
    jwt->alg_name = json_string_value(alg);
    if (json_object_get(jwt->header, "enc")) {
        *why = "encrypted tokens (JWE) are not accepted";
        return APR_EINVAL;
    }
    if (strcmp(jwt->alg_name, "none") == 0) {
        *why = "unsigned token";
        return APR_EINVAL;
    }
    jwt->alg = entra_alg_from_name(jwt->alg_name);
    if (jwt->alg == ENTRA_ALG_UNKNOWN || !(alg_mask & ENTRA_ALG_BIT(jwt->alg))) {
        *why = "token algorithm not allowed";
        return APR_EINVAL;
    }
    if (json_object_get(jwt->header, "crit")) {
        *why = "token header has unsupported crit";
        return APR_EINVAL;
    }
    if (json_object_get(jwt->header, "nonce")) {
        *why = "token is for another audience (e.g. Microsoft Graph); request a token for this "
               "API's audience";
        return APR_EINVAL;
    }
    jwt->kid = entra_json_str(jwt->header, "kid");
    if (!jwt->kid || !*jwt->kid) {
        *why = "token header has no kid";
        return APR_EINVAL;
    }
    if (entra_json_parse_object(p, (const char *)payload, payload_len, ENTRA_MAX_TOKEN_LEN,
                                &jwt->claims, why)) {
        *why = apr_pstrcat(p, "token claims: ", *why, NULL);
        return APR_EINVAL;
    }
    jwt->signing_input = token;
    jwt->signing_input_len = (apr_size_t)(d2 - token);
    jwt->sig = sig;
    jwt->sig_len = sig_len;
    jwt->payload = (const char *)payload;
    jwt->payload_len = payload_len;
    *out = jwt;
    return APR_SUCCESS;
}

apr_status_t entra_jwt_verify(const entra_jwt *jwt, const entra_key *key, const char **why)
{
    if (!entra_alg_fits_key(jwt->alg, key)) {
        *why = ENTRA_WHY_ALG_NOT_KEY;
        return APR_EINVAL;
    }
    if (entra_sig_verify(jwt->alg, key, (const unsigned char *)jwt->signing_input,
                         jwt->signing_input_len, jwt->sig, jwt->sig_len) != APR_SUCCESS) {
        *why = ENTRA_WHY_BAD_SIGNATURE;
        return APR_EINVAL;
    }
    return APR_SUCCESS;
}
