/* Compact JWS splitting and strict base64url: entra_jwt_parse on the input as a token,
 * entra_b64url_jws_shape against a plain reference, and base64url decoding as the exact
 * inverse of encoding (only canonical text decodes, and it encodes back to itself). */
#include <string.h>

#include "entra_b64url.h"
#include "entra_jwt.h"
#include "fuzz.h"

static int b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

/* Decodes `s`; when that succeeds, the encoding of the result must be `s` again. */
static int round_trip(apr_pool_t *p, const char *s, apr_size_t len)
{
    unsigned char *out;
    apr_size_t outlen, i;
    char *back;

    if (entra_b64url_decode(p, s, len, &out, &outlen) != APR_SUCCESS)
        return 0;
    FUZZ_ASSERT(out[outlen] == '\0');
    FUZZ_ASSERT(outlen == len * 3 / 4);
    for (i = 0; i < len; i++)
        FUZZ_ASSERT(b64url_char((unsigned char)s[i]));
    back = entra_b64url_encode(p, out, outlen);
    FUZZ_ASSERT(strlen(back) == len && memcmp(back, s, len) == 0);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    const char *t = (const char *)data, *why = NULL;
    entra_jwt *jwt = NULL;
    unsigned all = 0, dots = 0, bad = 0;
    apr_size_t i, start = 0;
    int a, shape, segs_ok = 1;
    apr_status_t rv;

    apr_pool_create(&p, fuzz_init());
    for (a = ENTRA_ALG_RS256; a <= ENTRA_ALG_ES512; a++)
        all |= ENTRA_ALG_BIT(a);
    for (i = 0; i < size; i++) {
        if (data[i] == '.')
            dots++;
        else if (!b64url_char(data[i]))
            bad = 1;
    }
    shape = entra_b64url_jws_shape(t, size);
    FUZZ_ASSERT(shape == (dots == 2 && !bad));

    round_trip(p, t, size);
    /* Each dot-separated segment, as the parser decodes them. */
    for (i = 0; i <= size; i++) {
        if (i == size || data[i] == '.') {
            if (!round_trip(p, t + start, i - start))
                segs_ok = 0;
            start = i + 1;
        }
    }

    rv = entra_jwt_parse(p, t, size, all, &jwt, &why);
    if (rv == APR_SUCCESS) {
        FUZZ_ASSERT(jwt && shape && segs_ok);
        FUZZ_ASSERT(size <= ENTRA_MAX_TOKEN_LEN);
        FUZZ_ASSERT(jwt->alg != ENTRA_ALG_UNKNOWN && (all & ENTRA_ALG_BIT(jwt->alg)));
        FUZZ_ASSERT(strcmp(entra_alg_name(jwt->alg), jwt->alg_name) == 0);
        FUZZ_ASSERT(jwt->kid && *jwt->kid);
        FUZZ_ASSERT(json_is_object(jwt->header) && json_is_object(jwt->claims));
        FUZZ_ASSERT(!json_object_get(jwt->header, "crit") && !json_object_get(jwt->header, "enc"));
        FUZZ_ASSERT(jwt->signing_input == t && jwt->signing_input_len < size);
        FUZZ_ASSERT(t[jwt->signing_input_len] == '.' && jwt->sig_len > 0);
        /* With only one algorithm allowed, the token parses exactly when it is that one. */
        jwt = NULL;
        FUZZ_ASSERT(entra_jwt_parse(p, t, size, ENTRA_ALG_BIT(ENTRA_ALG_ES256), &jwt, &why) ==
                    APR_SUCCESS ? jwt->alg == ENTRA_ALG_ES256 : why != NULL);
    }
    else {
        FUZZ_ASSERT(jwt == NULL && why && *why);
    }
    apr_pool_destroy(p);
    return 0;
}
