/* entra_jwt_parse / entra_jwt_verify, entra_keyset_from_jwks and entra_sig_verify, with
 * keys generated at run time and tokens signed here through OpenSSL 3 EVP APIs. */
#include "unit.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "entra_b64url.h"
#include "entra_json.h"
#include "entra_jwk.h"
#include "entra_jwt.h"
#include "entra_log.h"

static EVP_PKEY *rsa_a, *rsa_b, *rsa_1024, *ec256, *ec256_b, *ec384, *ec521;
static entra_keyset *ks; /* the keyset every verification uses */
static unsigned all_algs;

static void die(const char *what)
{
    fprintf(stderr, "test_jwt: setup failed: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

/* ---- helpers: keys, JWKs, signing ---- */

static const char *b64(const void *d, apr_size_t n)
{
    return entra_b64url_encode(up, d, n);
}

static const char *b64s(const char *s)
{
    return b64(s, strlen(s));
}

static const char *bn_b64(EVP_PKEY *pk, const char *param, int width)
{
    BIGNUM *bn = NULL;
    unsigned char *buf;
    int n;
    if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
        die(param);
    n = width > 0 ? width : BN_num_bytes(bn);
    buf = apr_palloc(up, (apr_size_t)n);
    if (BN_bn2binpad(bn, buf, n) != n)
        die("BN_bn2binpad");
    BN_free(bn);
    return b64(buf, (apr_size_t)n);
}

static int ec_width(EVP_PKEY *pk)
{
    return (EVP_PKEY_get_bits(pk) + 7) / 8;
}

/* A JWK for `pk` (owned by the caller); kid NULL leaves it out, use NULL too. */
static json_t *jwk_of(EVP_PKEY *pk, const char *kid, const char *use)
{
    json_t *j;
    if (EVP_PKEY_is_a(pk, "RSA")) {
        j = json_pack("{s:s, s:s, s:s}", "kty", "RSA", "n", bn_b64(pk, OSSL_PKEY_PARAM_RSA_N, 0),
                      "e", bn_b64(pk, OSSL_PKEY_PARAM_RSA_E, 0));
    } else {
        int w = ec_width(pk);
        const char *crv = w == 32 ? "P-256" : w == 48 ? "P-384" : "P-521";
        j = json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", crv, "x",
                      bn_b64(pk, OSSL_PKEY_PARAM_EC_PUB_X, w), "y",
                      bn_b64(pk, OSSL_PKEY_PARAM_EC_PUB_Y, w));
    }
    if (!j)
        die("json_pack");
    if (kid)
        json_object_set_new(j, "kid", json_string(kid));
    if (use)
        json_object_set_new(j, "use", json_string(use));
    return j;
}

/* The PSS salt length sign_raw uses (JWA: the digest length). */
static int pss_saltlen = RSA_PSS_SALTLEN_DIGEST;

/* Signs with `md` (RSA: PKCS#1 v1.5 or PSS with salt = digest length; EC: raw R||S of the
 * key's width, or DER when `der`). */
static unsigned char *sign_raw(EVP_PKEY *pk, const char *md, int pss, int der, const char *in,
                               apr_size_t inlen, apr_size_t *outlen)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    unsigned char *sig;
    size_t sl = 0;

    if (!m || EVP_DigestSignInit_ex(m, &pc, md, NULL, NULL, pk, NULL) != 1)
        die("EVP_DigestSignInit_ex");
    if (EVP_PKEY_is_a(pk, "RSA")) {
        if (EVP_PKEY_CTX_set_rsa_padding(pc, pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) <= 0)
            die("rsa padding");
        if (pss && EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, pss_saltlen) <= 0)
            die("pss salt");
    }
    if (EVP_DigestSign(m, NULL, &sl, (const unsigned char *)in, inlen) != 1)
        die("EVP_DigestSign size");
    sig = apr_palloc(up, sl);
    if (EVP_DigestSign(m, sig, &sl, (const unsigned char *)in, inlen) != 1)
        die("EVP_DigestSign");
    EVP_MD_CTX_free(m);
    if (EVP_PKEY_is_a(pk, "EC") && !der) {
        const unsigned char *q = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sl);
        const BIGNUM *r, *s;
        int w = ec_width(pk);
        unsigned char *raw = apr_palloc(up, (apr_size_t)(2 * w));
        if (!es)
            die("d2i_ECDSA_SIG");
        ECDSA_SIG_get0(es, &r, &s);
        if (BN_bn2binpad(r, raw, w) != w || BN_bn2binpad(s, raw + w, w) != w)
            die("ecdsa raw");
        ECDSA_SIG_free(es);
        *outlen = (apr_size_t)(2 * w);
        return raw;
    }
    *outlen = sl;
    return sig;
}

/* The digest and padding a JOSE alg name implies (for names this test signs with). */
static void alg_scheme(const char *alg, const char **md, int *pss)
{
    const char *bits = alg + 2;
    *md = strcmp(bits, "384") == 0 ? "SHA384" : strcmp(bits, "512") == 0 ? "SHA512" : "SHA256";
    *pss = alg[0] == 'P';
}

/* header.payload.signature with the signature of `pk` per `sign_alg` over the first two. */
static const char *token_signed_as(EVP_PKEY *pk, const char *sign_alg, const char *hdr_json,
                                   const char *claims_json)
{
    const char *input = apr_pstrcat(up, b64s(hdr_json), ".", b64s(claims_json), NULL), *md;
    apr_size_t sl;
    unsigned char *sig;
    int pss;
    alg_scheme(sign_alg, &md, &pss);
    sig = sign_raw(pk, md, pss, 0, input, strlen(input), &sl);
    return apr_pstrcat(up, input, ".", b64(sig, sl), NULL);
}

static const char *hdr(const char *alg, const char *kid)
{
    return apr_psprintf(up, "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}", alg, kid);
}

static const char *CLAIMS =
    "{\"iss\":\"https://issuer.example/\",\"sub\":\"s\",\"exp\":2000000000}";

static const char *token_for(EVP_PKEY *pk, const char *alg, const char *kid)
{
    return token_signed_as(pk, alg, hdr(alg, kid), CLAIMS);
}

/* Replaces segment `i` (0..2) of a compact token. */
static const char *with_segment(const char *tok, int i, const char *seg)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d2)
        die("with_segment");
    if (i == 0)
        return apr_pstrcat(up, seg, d1, NULL);
    if (i == 1)
        return apr_pstrcat(up, apr_pstrndup(up, tok, (apr_size_t)(d1 - tok + 1)), seg, d2, NULL);
    return apr_pstrcat(up, apr_pstrndup(up, tok, (apr_size_t)(d2 - tok + 1)), seg, NULL);
}

static const char *segment(const char *tok, int i)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d2)
        die("segment");
    if (i == 0)
        return apr_pstrndup(up, tok, (apr_size_t)(d1 - tok));
    if (i == 1)
        return apr_pstrndup(up, d1 + 1, (apr_size_t)(d2 - d1 - 1));
    return d2 + 1;
}

/* Three arbitrary segments: the JSON ones are encoded here, the signature is given. */
static const char *assemble(const char *hdr_json, const char *claims_json, const char *sig_b64)
{
    return apr_pstrcat(up, b64s(hdr_json), ".", b64s(claims_json), ".", sig_b64, NULL);
}

static const char *SIG = "c2lnbmF0dXJl"; /* "signature": a non-empty stand-in */

static apr_status_t parse_m(const char *tok, unsigned mask, entra_jwt **jwt, const char **why)
{
    *why = NULL;
    return entra_jwt_parse(up, tok, strlen(tok), mask, jwt, why);
}

static apr_status_t parse(const char *tok, entra_jwt **jwt, const char **why)
{
    return parse_m(tok, all_algs, jwt, why);
}

/* Parse must refuse: APR_EINVAL, *out NULL, a reason. */
static int parse_refused(const char *tok, apr_size_t len, unsigned mask, const char **why)
{
    entra_jwt *jwt = (entra_jwt *)1;
    *why = NULL;
    return entra_jwt_parse(up, tok, len, mask, &jwt, why) == APR_EINVAL && jwt == NULL &&
           *why != NULL && **why != '\0';
}
#define REFUSED(tok) parse_refused((tok), strlen(tok), all_algs, &why)

/* Parses (must succeed) and verifies against the keyset key `kid`. */
static apr_status_t verify_with(const char *tok, const char *kid, const char **why)
{
    entra_jwt *jwt;
    const entra_key *key = entra_keyset_find(ks, kid);
    if (!key || parse(tok, &jwt, why) != APR_SUCCESS) {
        *why = "(test) parse failed or key missing";
        return APR_EGENERAL;
    }
    *why = NULL;
    return entra_jwt_verify(jwt, key, why);
}

/* ---- log capture ---- */

static int log_count;
static char log_last[1024];

static void log_sink(void *baton, entra_log_level level, const char *msg)
{
    log_count++;
    apr_cpystrn(log_last, msg, sizeof(log_last));
}

/* ---- setup ---- */

static void setup(void)
{
    json_t *jwks;
    const char *why;
    int a;

    for (a = ENTRA_ALG_RS256; a <= ENTRA_ALG_ES512; a++)
        all_algs |= ENTRA_ALG_BIT(a);
    rsa_a = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_b = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec256_b = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    ec521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
    if (!rsa_a || !rsa_b || !rsa_1024 || !ec256 || !ec256_b || !ec384 || !ec521)
        die("key generation");
    jwks = json_pack("{s:[o,o,o,o,o,o]}", "keys", jwk_of(rsa_a, "rsa1", "sig"),
                     jwk_of(rsa_b, "rsa2", NULL), jwk_of(ec256, "ec256", "sig"),
                     jwk_of(ec256_b, "ec256b", "sig"), jwk_of(ec384, "ec384", NULL),
                     jwk_of(ec521, "ec521", "sig"));
    if (!jwks || entra_keyset_from_jwks(up, jwks, "setup", &ks, &why) != APR_SUCCESS ||
        ks->keys->nelts != 6)
        die("keyset");
    json_decref(jwks);
}

static void teardown(void)
{
    EVP_PKEY_free(rsa_a);
    EVP_PKEY_free(rsa_b);
    EVP_PKEY_free(rsa_1024);
    EVP_PKEY_free(ec256);
    EVP_PKEY_free(ec256_b);
    EVP_PKEY_free(ec384);
    EVP_PKEY_free(ec521);
}

/* ---- algorithm names ---- */

static void test_alg_names(void)
{
    static const char *const names[] = {"RS256", "RS384", "RS512", "PS256", "PS384",
                                        "PS512", "ES256", "ES384", "ES512"};
    int i;
    for (i = 0; i < 9; i++) {
        entra_alg a = entra_alg_from_name(names[i]);
        CHECK_INT_EQ(a, ENTRA_ALG_RS256 + i);
        CHECK_STR_EQ(entra_alg_name(a), names[i]);
    }
    CHECK_INT_EQ(entra_alg_from_name("none"), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name("HS256"), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name("HS512"), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name("rs256"), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name("RS256 "), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name("EdDSA"), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name(""), ENTRA_ALG_UNKNOWN);
    CHECK_INT_EQ(entra_alg_from_name(NULL), ENTRA_ALG_UNKNOWN);
}

/* ---- verification of every algorithm ---- */

static void test_each_alg_verifies(void)
{
    static const struct {
        const char *alg, *kid;
        entra_alg id;
    } v[] = {
        {"RS256", "rsa1", ENTRA_ALG_RS256},  {"RS384", "rsa1", ENTRA_ALG_RS384},
        {"RS512", "rsa2", ENTRA_ALG_RS512},  {"PS256", "rsa1", ENTRA_ALG_PS256},
        {"PS384", "rsa2", ENTRA_ALG_PS384},  {"PS512", "rsa1", ENTRA_ALG_PS512},
        {"ES256", "ec256", ENTRA_ALG_ES256}, {"ES384", "ec384", ENTRA_ALG_ES384},
        {"ES512", "ec521", ENTRA_ALG_ES512},
    };
    size_t i;

    for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        EVP_PKEY *pk = strcmp(v[i].kid, "rsa1") == 0    ? rsa_a
                       : strcmp(v[i].kid, "rsa2") == 0  ? rsa_b
                       : strcmp(v[i].kid, "ec256") == 0 ? ec256
                       : strcmp(v[i].kid, "ec384") == 0 ? ec384
                                                        : ec521;
        const char *tok = token_for(pk, v[i].alg, v[i].kid), *why = NULL, *dot2;
        const entra_key *key = entra_keyset_find(ks, v[i].kid);
        entra_jwt *jwt = NULL;

        CHECK_MSG(parse(tok, &jwt, &why) == APR_SUCCESS, "%s: %s", v[i].alg, why);
        if (!jwt || !key)
            continue;
        CHECK_INT_EQ(jwt->alg, v[i].id);
        CHECK_STR_EQ(jwt->alg_name, v[i].alg);
        CHECK_STR_EQ(jwt->kid, v[i].kid);
        CHECK_STR_EQ(entra_json_str(jwt->claims, "sub"), "s");
        CHECK_STR_EQ(entra_json_str(jwt->header, "typ"), "JWT");
        dot2 = strrchr(tok, '.');
        CHECK_INT_EQ(jwt->signing_input_len, dot2 - tok);
        CHECK(memcmp(jwt->signing_input, tok, jwt->signing_input_len) == 0);
        CHECK(jwt->payload_len == strlen(CLAIMS) &&
              memcmp(jwt->payload, CLAIMS, jwt->payload_len) == 0);
        CHECK_INT_EQ(jwt->sig_len, v[i].id <= ENTRA_ALG_PS512   ? 256
                                   : v[i].id == ENTRA_ALG_ES256 ? 64
                                   : v[i].id == ENTRA_ALG_ES384 ? 96
                                                                : 132);
        CHECK(entra_alg_fits_key(jwt->alg, key));
        CHECK_MSG(entra_jwt_verify(jwt, key, &why) == APR_SUCCESS, "%s: %s", v[i].alg, why);
        CHECK_INT_EQ(entra_sig_verify(jwt->alg, key, (const unsigned char *)jwt->signing_input,
                                      jwt->signing_input_len, jwt->sig, jwt->sig_len),
                     APR_SUCCESS);
        /* The same token with only its own algorithm allowed, and with all but it. */
        CHECK_INT_EQ(parse_m(tok, ENTRA_ALG_BIT(v[i].id), &jwt, &why), APR_SUCCESS);
        CHECK(parse_refused(tok, strlen(tok), all_algs & ~ENTRA_ALG_BIT(v[i].id), &why));
        CHECK_STR_EQ(why, "token algorithm not allowed");
    }
}

static const char *flip_sig_bit(const char *tok, apr_size_t byte)
{
    const char *s = segment(tok, 2);
    unsigned char *raw, *copy;
    apr_size_t n;
    if (entra_b64url_decode(up, s, strlen(s), &raw, &n) != APR_SUCCESS || byte >= n)
        die("flip_sig_bit");
    copy = apr_pmemdup(up, raw, n);
    copy[byte] ^= 0x01;
    return with_segment(tok, 2, b64(copy, n));
}

static void test_tampering_fails(void)
{
    static const struct {
        const char *alg, *kid;
    } v[] = {{"RS256", "rsa1"},
             {"PS384", "rsa1"},
             {"ES256", "ec256"},
             {"ES384", "ec384"},
             {"ES512", "ec521"}};
    const char *other =
        "{\"iss\":\"https://issuer.example/\",\"sub\":\"admin\",\"exp\":2000000000}";
    size_t i;

    for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        EVP_PKEY *pk = v[i].kid[0] == 'r'               ? rsa_a
                       : strcmp(v[i].kid, "ec256") == 0 ? ec256
                       : strcmp(v[i].kid, "ec384") == 0 ? ec384
                                                        : ec521;
        const char *tok = token_for(pk, v[i].alg, v[i].kid), *why, *t, *s;
        unsigned char *raw;
        apr_size_t n, half;

        CHECK_MSG(verify_with(tok, v[i].kid, &why) == APR_SUCCESS, "%s: %s", v[i].alg, why);
        /* Another payload under the original signature. */
        t = with_segment(tok, 1, b64s(other));
        CHECK_MSG(verify_with(t, v[i].kid, &why) == APR_EINVAL, "%s", v[i].alg);
        CHECK_STR_EQ(why, "invalid signature");
        /* Another header (same alg and kid, one more member). */
        t = with_segment(
            tok, 0, b64s(apr_psprintf(up, "{\"alg\":\"%s\",\"kid\":\"%s\"}", v[i].alg, v[i].kid)));
        CHECK_MSG(verify_with(t, v[i].kid, &why) == APR_EINVAL, "%s", v[i].alg);
        /* One bit of the signature, at the start, the middle and the end. */
        s = segment(tok, 2);
        if (entra_b64url_decode(up, s, strlen(s), &raw, &n) != APR_SUCCESS)
            die("decode sig");
        half = n / 2;
        CHECK_MSG(verify_with(flip_sig_bit(tok, 0), v[i].kid, &why) == APR_EINVAL, "%s", v[i].alg);
        CHECK_MSG(verify_with(flip_sig_bit(tok, half), v[i].kid, &why) == APR_EINVAL, "%s",
                  v[i].alg);
        CHECK_MSG(verify_with(flip_sig_bit(tok, n - 1), v[i].kid, &why) == APR_EINVAL, "%s",
                  v[i].alg);
        /* Truncated, extended, all zero, halves swapped. */
        CHECK(verify_with(with_segment(tok, 2, b64(raw, n - 1)), v[i].kid, &why) == APR_EINVAL);
        {
            unsigned char *ext = apr_palloc(up, n + 1), *zero = apr_pcalloc(up, n),
                          *sw = apr_palloc(up, n);
            memcpy(ext, raw, n);
            ext[n] = 0;
            CHECK(verify_with(with_segment(tok, 2, b64(ext, n + 1)), v[i].kid, &why) == APR_EINVAL);
            ext[0] = 0;
            memcpy(ext + 1, raw, n);
            CHECK(verify_with(with_segment(tok, 2, b64(ext, n + 1)), v[i].kid, &why) == APR_EINVAL);
            CHECK(verify_with(with_segment(tok, 2, b64(zero, n)), v[i].kid, &why) == APR_EINVAL);
            memcpy(sw, raw + half, n - half);
            memcpy(sw + (n - half), raw, half);
            CHECK(verify_with(with_segment(tok, 2, b64(sw, n)), v[i].kid, &why) == APR_EINVAL);
        }
    }
}

/* ECDSA specifics: DER signatures are not JWS signatures; r or s of zero never verify. */
static void test_ecdsa_encoding(void)
{
    const char *input = apr_pstrcat(up, b64s(hdr("ES256", "ec256")), ".", b64s(CLAIMS), NULL);
    const entra_key *key = entra_keyset_find(ks, "ec256");
    unsigned char *sig, rs[64];
    apr_size_t sl;
    const char *why;

    sig = sign_raw(ec256, "SHA256", 0, 1, input, strlen(input), &sl);
    CHECK(sl != 64);
    CHECK_INT_EQ(entra_sig_verify(ENTRA_ALG_ES256, key, (const unsigned char *)input, strlen(input),
                                  sig, sl),
                 APR_EINVAL);
    CHECK(verify_with(apr_pstrcat(up, input, ".", b64(sig, sl), NULL), "ec256", &why) ==
          APR_EINVAL);

    sig = sign_raw(ec256, "SHA256", 0, 0, input, strlen(input), &sl);
    CHECK_INT_EQ(sl, 64);
    CHECK_INT_EQ(entra_sig_verify(ENTRA_ALG_ES256, key, (const unsigned char *)input, strlen(input),
                                  sig, sl),
                 APR_SUCCESS);
    memcpy(rs, sig, 64);
    memset(rs + 32, 0, 32); /* s = 0 */
    CHECK_INT_EQ(
        entra_sig_verify(ENTRA_ALG_ES256, key, (const unsigned char *)input, strlen(input), rs, 64),
        APR_EINVAL);
    memcpy(rs, sig, 64);
    memset(rs, 0, 32); /* r = 0 */
    CHECK_INT_EQ(
        entra_sig_verify(ENTRA_ALG_ES256, key, (const unsigned char *)input, strlen(input), rs, 64),
        APR_EINVAL);
    memset(rs, 0xff, 64); /* r, s >= n */
    CHECK_INT_EQ(
        entra_sig_verify(ENTRA_ALG_ES256, key, (const unsigned char *)input, strlen(input), rs, 64),
        APR_EINVAL);
    /* Another key of the same curve. */
    CHECK(verify_with(token_for(ec256_b, "ES256", "ec256"), "ec256", &why) == APR_EINVAL);
    CHECK(verify_with(token_for(ec256_b, "ES256", "ec256b"), "ec256b", &why) == APR_SUCCESS);
}

/* RS and PS are not interchangeable, and a token signed by another RSA key fails. */
static void test_rsa_schemes(void)
{
    const char *why;

    CHECK(verify_with(token_signed_as(rsa_a, "RS256", hdr("PS256", "rsa1"), CLAIMS), "rsa1",
                      &why) == APR_EINVAL);
    CHECK(verify_with(token_signed_as(rsa_a, "PS256", hdr("RS256", "rsa1"), CLAIMS), "rsa1",
                      &why) == APR_EINVAL);
    CHECK(verify_with(token_signed_as(rsa_a, "RS384", hdr("RS256", "rsa1"), CLAIMS), "rsa1",
                      &why) == APR_EINVAL);
    CHECK(verify_with(token_signed_as(rsa_a, "PS512", hdr("PS384", "rsa1"), CLAIMS), "rsa1",
                      &why) == APR_EINVAL);
    CHECK(verify_with(token_for(rsa_b, "RS256", "rsa1"), "rsa1", &why) == APR_EINVAL);
    CHECK(verify_with(token_for(rsa_b, "PS256", "rsa1"), "rsa1", &why) == APR_EINVAL);
    CHECK(verify_with(token_for(rsa_a, "RS256", "rsa2"), "rsa2", &why) == APR_EINVAL);
    CHECK(verify_with(token_for(rsa_b, "RS256", "rsa2"), "rsa2", &why) == APR_SUCCESS);
}

/* RFC 7518 3.5: the PSS salt is as long as the digest. Other salt lengths are refused
 * (the verifier asks OpenSSL for exactly the digest length). */
static void test_pss_salt_length(void)
{
    const char *why;

    pss_saltlen = 32;
    CHECK(verify_with(token_for(rsa_a, "PS256", "rsa1"), "rsa1", &why) == APR_SUCCESS);
    pss_saltlen = 48;
    CHECK(verify_with(token_for(rsa_a, "PS384", "rsa1"), "rsa1", &why) == APR_SUCCESS);
    pss_saltlen = 0;
    CHECK(verify_with(token_for(rsa_a, "PS256", "rsa1"), "rsa1", &why) == APR_EINVAL);
    pss_saltlen = 20;
    CHECK(verify_with(token_for(rsa_a, "PS256", "rsa1"), "rsa1", &why) == APR_EINVAL);
    pss_saltlen = RSA_PSS_SALTLEN_MAX;
    CHECK(verify_with(token_for(rsa_a, "PS256", "rsa1"), "rsa1", &why) == APR_EINVAL);
    CHECK(verify_with(token_for(rsa_a, "PS512", "rsa1"), "rsa1", &why) == APR_EINVAL);
    pss_saltlen = RSA_PSS_SALTLEN_DIGEST;
    CHECK(verify_with(token_for(rsa_a, "PS512", "rsa1"), "rsa1", &why) == APR_SUCCESS);
}

static void test_alg_key_mismatch(void)
{
    const entra_key *rsa = entra_keyset_find(ks, "rsa1"), *p256 = entra_keyset_find(ks, "ec256"),
                    *p384 = entra_keyset_find(ks, "ec384"), *p521 = entra_keyset_find(ks, "ec521");
    const char *why;
    int a;

    if (!rsa || !p256 || !p384 || !p521) {
        CHECK(!"keys missing from the keyset");
        return;
    }
    /* ES256 header, PKCS#1 SHA-256 signature by the RSA key. */
    CHECK(verify_with(token_signed_as(rsa_a, "RS256", hdr("ES256", "rsa1"), CLAIMS), "rsa1",
                      &why) == APR_EINVAL);
    CHECK_STR_EQ(why, "token algorithm does not match the signing key");
    /* ES384 header, SHA-384 ECDSA signature by the P-256 key. */
    CHECK(verify_with(token_signed_as(ec256, "ES384", hdr("ES384", "ec256"), CLAIMS), "ec256",
                      &why) == APR_EINVAL);
    CHECK_STR_EQ(why, "token algorithm does not match the signing key");
    /* ES256 header, P-384 key; ES512 header, P-384 key. */
    CHECK(verify_with(token_signed_as(ec384, "ES256", hdr("ES256", "ec384"), CLAIMS), "ec384",
                      &why) == APR_EINVAL);
    CHECK(verify_with(token_signed_as(ec384, "ES512", hdr("ES512", "ec384"), CLAIMS), "ec384",
                      &why) == APR_EINVAL);
    /* RS256 / PS256 headers with an EC key. */
    CHECK(verify_with(token_signed_as(ec256, "ES256", hdr("RS256", "ec256"), CLAIMS), "ec256",
                      &why) == APR_EINVAL);
    CHECK_STR_EQ(why, "token algorithm does not match the signing key");
    CHECK(verify_with(token_signed_as(ec256, "ES256", hdr("PS256", "ec256"), CLAIMS), "ec256",
                      &why) == APR_EINVAL);

    for (a = ENTRA_ALG_RS256; a <= ENTRA_ALG_PS512; a++) {
        CHECK(entra_alg_fits_key((entra_alg)a, rsa));
        CHECK(!entra_alg_fits_key((entra_alg)a, p256));
        CHECK(!entra_alg_fits_key((entra_alg)a, p521));
    }
    CHECK(entra_alg_fits_key(ENTRA_ALG_ES256, p256));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_ES384, p256));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_ES512, p256));
    CHECK(entra_alg_fits_key(ENTRA_ALG_ES384, p384));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_ES256, p384));
    CHECK(entra_alg_fits_key(ENTRA_ALG_ES512, p521));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_ES384, p521));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_ES256, rsa));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_UNKNOWN, rsa));
    CHECK(!entra_alg_fits_key(ENTRA_ALG_UNKNOWN, p256));

    /* entra_sig_verify itself refuses a valid signature under a mismatched algorithm. */
    {
        const char *input = "abc.def";
        apr_size_t sl;
        unsigned char *sig = sign_raw(rsa_a, "SHA256", 0, 0, input, 7, &sl);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_RS256, rsa, (const unsigned char *)input, 7, sig, sl),
            APR_SUCCESS);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_ES256, rsa, (const unsigned char *)input, 7, sig, sl),
            APR_EINVAL);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_UNKNOWN, rsa, (const unsigned char *)input, 7, sig, sl),
            APR_EINVAL);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_RS256, rsa, (const unsigned char *)"abc.deg", 7, sig, sl),
            APR_EINVAL);
        sig = sign_raw(ec256, "SHA256", 0, 0, input, 7, &sl);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_ES256, p256, (const unsigned char *)input, 7, sig, sl),
            APR_SUCCESS);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_ES384, p256, (const unsigned char *)input, 7, sig, sl),
            APR_EINVAL);
        CHECK_INT_EQ(
            entra_sig_verify(ENTRA_ALG_RS256, p256, (const unsigned char *)input, 7, sig, sl),
            APR_EINVAL);
    }
}

/* ---- JWKS import ---- */

static json_t *ec_jwk_bad_point(void)
{
    json_t *j = jwk_of(ec256, "bad-point", "sig");
    const char *y = entra_json_str(j, "y");
    unsigned char *raw;
    apr_size_t n;
    if (entra_b64url_decode(up, y, strlen(y), &raw, &n) != APR_SUCCESS || n != 32)
        die("bad point");
    raw[31] ^= 0x01; /* (x, y^1) is not on P-256 */
    json_object_set_new(j, "y", json_string(b64(raw, n)));
    return j;
}

static int skipped;

/* Appends a key entra_keyset_from_jwks must skip. */
static void skip_key(json_t *keys, json_t *jwk)
{
    json_array_append_new(keys, jwk);
    skipped++;
}

static void test_keyset_import(void)
{
    entra_keyset *k = NULL;
    json_t *jwks, *keys, *j, *c;
    const char *why = NULL;
    const entra_key *key;
    unsigned char zero[32];
    int before, i;
    size_t idx;

    memset(zero, 0, sizeof(zero));
    keys = json_array();
    /* kept */
    json_array_append_new(keys, jwk_of(rsa_a, "rsa1", "sig"));
    j = jwk_of(ec256, "p256", NULL);
    json_object_set_new(j, "x5c", json_pack("[s]", "MIIBfake"));
    json_object_set_new(j, "alg", json_string("ES256"));
    json_object_set_new(j, "key_ops", json_pack("[s]", "verify"));
    json_array_append_new(keys, j);
    json_array_append_new(keys, jwk_of(ec384, "p384", "sig"));
    json_array_append_new(keys, jwk_of(ec521, "p521", "sig"));
    j = jwk_of(rsa_b, "with-issuer", "sig");
    json_object_set_new(j, "issuer",
                        json_string("https://login.microsoftonline.com/{tenantid}/v2.0"));
    json_object_set_new(j, "x5t", json_string("thumb"));
    json_array_append_new(keys, j);
    /* skipped */
    skipped = 0;
    skip_key(keys, jwk_of(rsa_1024, "weak", "sig"));
    skip_key(keys, jwk_of(rsa_b, "enc-key", "enc"));
    skip_key(keys, jwk_of(rsa_b, "use-num", NULL));
    json_object_set_new(json_array_get(keys, json_array_size(keys) - 1), "use", json_integer(1));
    skip_key(keys, jwk_of(rsa_b, NULL, "sig"));
    skip_key(keys, jwk_of(rsa_b, "", "sig"));
    j = jwk_of(rsa_b, NULL, "sig");
    json_object_set_new(j, "kid", json_integer(7));
    skip_key(keys, j);
    skip_key(keys, json_pack("{s:s, s:s, s:s}", "kty", "oct", "kid", "hmac", "k", "c2VjcmV0"));
    skip_key(keys, json_pack("{s:s, s:s, s:s, s:s}", "kty", "OKP", "kid", "ed", "crv", "Ed25519",
                             "x", b64(zero, 32)));
    j = jwk_of(rsa_b, "no-kty", "sig");
    json_object_del(j, "kty");
    skip_key(keys, j);
    j = jwk_of(rsa_b, "rsa-lower", "sig");
    json_object_set_new(j, "kty", json_string("rsa"));
    skip_key(keys, j);
    j = jwk_of(rsa_b, "rsa-no-e", "sig");
    json_object_del(j, "e");
    skip_key(keys, j);
    skip_key(keys, ec_jwk_bad_point());
    skip_key(keys, json_pack("{s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "kid", "zero", "crv",
                             "P-256", "x", b64(zero, 32), "y", b64(zero, 32)));
    j = jwk_of(ec256, "crv-mismatch", "sig");
    json_object_set_new(j, "crv", json_string("P-384"));
    skip_key(keys, j);
    j = jwk_of(ec256, "k1", "sig");
    json_object_set_new(j, "crv", json_string("secp256k1"));
    skip_key(keys, j);
    j = jwk_of(ec256, "short-x", "sig");
    {
        const char *x = entra_json_str(j, "x");
        unsigned char *raw;
        apr_size_t n;
        if (entra_b64url_decode(up, x, strlen(x), &raw, &n) != APR_SUCCESS)
            die("short-x");
        json_object_set_new(j, "x", json_string(b64(raw + 1, n - 1)));
    }
    skip_key(keys, j);
    j = jwk_of(rsa_b, "padded-n", "sig");
    json_object_set_new(j, "n", json_string(apr_pstrcat(up, entra_json_str(j, "n"), "=", NULL)));
    skip_key(keys, j);
    /* duplicate of "rsa1" with another key: the first stays */
    skip_key(keys, jwk_of(rsa_b, "rsa1", "sig"));
    skip_key(keys, json_string("not a key"));
    skip_key(keys, json_integer(42));
    skip_key(keys, json_null());
    jwks = json_pack("{s:o}", "keys", keys);

    entra_log_set(log_sink, NULL, ENTRA_LOG_DEBUG);
    log_count = 0;
    CHECK_INT_EQ(entra_keyset_from_jwks(up, jwks, "unit-jwks", &k, &why), APR_SUCCESS);
    entra_log_set(NULL, NULL, ENTRA_LOG_INFO);
    if (!k) {
        json_decref(jwks);
        return;
    }
    CHECK_INT_EQ(k->keys->nelts, 5);
    CHECK_INT_EQ(log_count, skipped);
    CHECK(unit_contains(log_last, "unit-jwks"));

    key = entra_keyset_find(k, "rsa1");
    CHECK(key && key->is_rsa && key->crv == NULL && EVP_PKEY_eq(key->pkey, rsa_a) == 1);
    CHECK(key && EVP_PKEY_eq(key->pkey, rsa_b) != 1);
    CHECK(key && key->issuer == NULL);
    key = entra_keyset_find(k, "p256");
    CHECK(key && !key->is_rsa && key->crv && strcmp(key->crv, "P-256") == 0 &&
          EVP_PKEY_eq(key->pkey, ec256) == 1);
    key = entra_keyset_find(k, "p384");
    CHECK(key && key->crv && strcmp(key->crv, "P-384") == 0 && EVP_PKEY_eq(key->pkey, ec384) == 1);
    key = entra_keyset_find(k, "p521");
    CHECK(key && key->crv && strcmp(key->crv, "P-521") == 0 && EVP_PKEY_eq(key->pkey, ec521) == 1);
    key = entra_keyset_find(k, "with-issuer");
    CHECK(key && key->issuer &&
          strcmp(key->issuer, "https://login.microsoftonline.com/{tenantid}/v2.0") == 0);
    {
        static const char *const gone[] = {"weak",     "enc-key",   "use-num", "",
                                           "hmac",     "ed",        "no-kty",  "rsa-lower",
                                           "rsa-no-e", "bad-point", "zero",    "crv-mismatch",
                                           "k1",       "short-x",   "padded-n"};
        for (idx = 0; idx < sizeof(gone) / sizeof(gone[0]); idx++)
            CHECK_MSG(entra_keyset_find(k, gone[idx]) == NULL, "kid %s", gone[idx]);
    }
    CHECK(entra_keyset_find(k, NULL) == NULL);
    CHECK(entra_keyset_find(NULL, "rsa1") == NULL);

    /* Tokens signed by the first "rsa1" verify against it, by the duplicate do not. */
    {
        entra_jwt *jwt;
        const char *tok = token_for(rsa_a, "RS256", "rsa1");
        CHECK(parse(tok, &jwt, &why) == APR_SUCCESS &&
              entra_jwt_verify(jwt, entra_keyset_find(k, "rsa1"), &why) == APR_SUCCESS);
        tok = token_for(rsa_b, "RS256", "rsa1");
        CHECK(parse(tok, &jwt, &why) == APR_SUCCESS &&
              entra_jwt_verify(jwt, entra_keyset_find(k, "rsa1"), &why) == APR_EINVAL);
    }

    /* The compact form holds only verification members and rebuilds the same keyset. */
    c = json_object_get(k->compact, "keys");
    CHECK_INT_EQ(json_array_size(c), 5);
    before = 0;
    json_array_foreach(c, idx, j)
    {
        const char *kty = entra_json_str(j, "kty");
        if (json_object_get(j, "use") || json_object_get(j, "x5c") || json_object_get(j, "alg") ||
            json_object_get(j, "key_ops") || json_object_get(j, "x5t") || !entra_json_str(j, "kid"))
            before++;
        if (kty && strcmp(kty, "RSA") == 0 && (!entra_json_str(j, "n") || !entra_json_str(j, "e")))
            before++;
        if (kty && strcmp(kty, "EC") == 0 &&
            (!entra_json_str(j, "crv") || !entra_json_str(j, "x") || !entra_json_str(j, "y")))
            before++;
    }
    CHECK_INT_EQ(before, 0);
    /* entra_keys.c pairs compact entry i with key i. */
    for (i = 0; i < k->keys->nelts && (size_t)i < json_array_size(c); i++)
        CHECK_STR_EQ(entra_json_str(json_array_get(c, (size_t)i), "kid"),
                     APR_ARRAY_IDX(k->keys, i, entra_key).kid);
    {
        entra_keyset *k2 = NULL;
        CHECK_INT_EQ(entra_keyset_from_jwks(up, k->compact, "compact", &k2, &why), APR_SUCCESS);
        CHECK(k2 && k2->keys->nelts == 5);
        for (i = 0; k2 && i < k->keys->nelts; i++) {
            const entra_key *a = &APR_ARRAY_IDX(k->keys, i, entra_key);
            const entra_key *b = entra_keyset_find(k2, a->kid);
            CHECK_MSG(b && EVP_PKEY_eq(a->pkey, b->pkey) == 1 &&
                          ((!a->issuer && !b->issuer) ||
                           (a->issuer && b->issuer && strcmp(a->issuer, b->issuer) == 0)),
                      "kid %s", a->kid);
        }
    }
    json_decref(jwks);
}

static const char *bn_word_b64(unsigned long w)
{
    BIGNUM *bn = BN_new();
    unsigned char buf[16];
    int n;
    if (!bn || !BN_set_word(bn, w))
        die("BN_set_word");
    n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64(buf, (apr_size_t)n);
}

/* RSA numbers no one can use: e = 1, an even e, an even or a power-of-two modulus. */
static void test_keyset_rsa_numbers(void)
{
    json_t *keys = json_array(), *j, *d;
    entra_keyset *k = NULL;
    const char *why, *n_b64;
    unsigned char *n;
    apr_size_t nlen;

    j = jwk_of(rsa_a, "e-one", "sig");
    json_object_set_new(j, "e", json_string(bn_word_b64(1)));
    json_array_append_new(keys, j);
    j = jwk_of(rsa_a, "e-even", "sig");
    json_object_set_new(j, "e", json_string(bn_word_b64(65538)));
    json_array_append_new(keys, j);
    j = jwk_of(rsa_a, "n-even", "sig");
    n_b64 = entra_json_str(j, "n");
    if (entra_b64url_decode(up, n_b64, strlen(n_b64), &n, &nlen) != APR_SUCCESS)
        die("n");
    n[nlen - 1] &= 0xfe;
    json_object_set_new(j, "n", json_string(b64(n, nlen)));
    json_array_append_new(keys, j);
    j = jwk_of(rsa_a, "n-pow2", "sig");
    memset(n, 0, nlen);
    n[0] = 0x80;
    json_object_set_new(j, "n", json_string(b64(n, nlen)));
    json_array_append_new(keys, j);
    j = jwk_of(rsa_a, "e-empty", "sig");
    json_object_set_new(j, "e", json_string(""));
    json_array_append_new(keys, j);
    json_array_append_new(keys, jwk_of(rsa_a, "fine", "sig"));
    d = json_pack("{s:o}", "keys", keys);
    CHECK_INT_EQ(entra_keyset_from_jwks(up, d, "t", &k, &why), APR_SUCCESS);
    CHECK(k && k->keys->nelts == 1 && entra_keyset_find(k, "fine") != NULL);
    json_decref(d);
}

static void test_keyset_documents(void)
{
    entra_keyset *k = (entra_keyset *)1;
    json_t *d;
    const char *why = NULL;

    d = json_pack("{s:s}", "kid", "x");
    CHECK_INT_EQ(entra_keyset_from_jwks(up, d, "t", &k, &why), APR_EINVAL);
    CHECK(k == NULL && why != NULL);
    json_decref(d);
    d = json_pack("{s:{}}", "keys");
    why = NULL;
    CHECK_INT_EQ(entra_keyset_from_jwks(up, d, "t", &k, &why), APR_EINVAL);
    CHECK(why != NULL);
    json_decref(d);
    d = json_pack("{s:[]}", "keys");
    CHECK_INT_EQ(entra_keyset_from_jwks(up, d, "t", &k, &why), APR_SUCCESS);
    CHECK(k && k->keys->nelts == 0 && entra_keyset_find(k, "x") == NULL);
    json_decref(d);
    /* Nothing usable is not an error. */
    d = json_pack("{s:[o]}", "keys", jwk_of(rsa_1024, "weak", "sig"));
    CHECK_INT_EQ(entra_keyset_from_jwks(up, d, "t", &k, &why), APR_SUCCESS);
    CHECK(k && k->keys->nelts == 0);
    json_decref(d);
}

/* Keys live as long as the keyset's pool (ASan would see a leak or a use after free). */
static void test_keyset_pool_lifetime(void)
{
    apr_pool_t *sub;
    entra_keyset *k;
    json_t *d = json_pack("{s:[o,o]}", "keys", jwk_of(rsa_a, "a", "sig"), jwk_of(ec384, "b", NULL));
    const char *why, *tok = token_for(ec384, "ES384", "b");
    entra_jwt *jwt;
    int i, ok = 0;

    for (i = 0; i < 20; i++) {
        apr_pool_create(&sub, up);
        if (entra_keyset_from_jwks(sub, d, "t", &k, &why) == APR_SUCCESS && k->keys->nelts == 2 &&
            parse(tok, &jwt, &why) == APR_SUCCESS &&
            entra_jwt_verify(jwt, entra_keyset_find(k, "b"), &why) == APR_SUCCESS)
            ok++;
        apr_pool_destroy(sub);
    }
    CHECK_INT_EQ(ok, 20);
    json_decref(d);
}

/* ---- parse refusals ---- */

static void test_parse_segments(void)
{
    const char *tok = token_for(rsa_a, "RS256", "rsa1"), *why;
    const char *h = segment(tok, 0), *p = segment(tok, 1), *s = segment(tok, 2);
    entra_jwt *jwt;

    CHECK_INT_EQ(parse(tok, &jwt, &why), APR_SUCCESS);
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, NULL)));
    CHECK(REFUSED(h));
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, ".", s, ".", s, NULL)));
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, ".", s, ".", s, ".", s, NULL)));
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, ".", s, ".", NULL)));
    CHECK(REFUSED(apr_pstrcat(up, ".", h, ".", p, ".", s, NULL)));
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, ".", s, "..", NULL)));
    CHECK(REFUSED(apr_pstrcat(up, ".", p, ".", s, NULL)));
    CHECK(REFUSED(apr_pstrcat(up, h, "..", s, NULL)));
    CHECK(REFUSED(".."));
    CHECK(REFUSED("."));
    CHECK(REFUSED("..."));
    CHECK(parse_refused("", 0, all_algs, &why));
    CHECK(REFUSED(apr_pstrcat(up, h, ".", p, ".", NULL)));
    CHECK_STR_EQ(why, "unsigned token");
    /* Only `len` bytes count: a valid token followed by more text parses. */
    {
        const char *longer = apr_pstrcat(up, tok, ".extra", NULL);
        CHECK_INT_EQ(entra_jwt_parse(up, longer, strlen(tok), all_algs, &jwt, &why), APR_SUCCESS);
        CHECK(parse_refused(longer, strlen(longer), all_algs, &why));
        CHECK(parse_refused(tok, strlen(tok) - strlen(s) - 1, all_algs, &why));
    }
}

static void test_parse_alg(void)
{
    const char *why;
    entra_jwt *jwt;

    CHECK(REFUSED(assemble("{\"alg\":\"none\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"none\",\"kid\":\"rsa1\"}", CLAIMS, "")));
    CHECK(REFUSED(assemble("{\"alg\":\"None\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"HS384\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"rs256\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256 \",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"EdDSA\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"ES256K\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"\",\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":256,\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":[\"RS256\"],\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":null,\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"kid\":\"rsa1\"}", CLAIMS, SIG)));
    /* The mask decides. */
    CHECK_INT_EQ(parse_m(assemble(hdr("PS256", "rsa1"), CLAIMS, SIG),
                         ENTRA_ALG_BIT(ENTRA_ALG_PS256), &jwt, &why),
                 APR_SUCCESS);
    CHECK(parse_refused(assemble(hdr("PS256", "rsa1"), CLAIMS, SIG),
                        strlen(assemble(hdr("PS256", "rsa1"), CLAIMS, SIG)),
                        ENTRA_ALG_BIT(ENTRA_ALG_RS256) | ENTRA_ALG_BIT(ENTRA_ALG_ES256), &why));
    CHECK(parse_refused(assemble(hdr("RS256", "rsa1"), CLAIMS, SIG),
                        strlen(assemble(hdr("RS256", "rsa1"), CLAIMS, SIG)), 0, &why));
    CHECK(parse_refused(assemble(hdr("RS256", "rsa1"), CLAIMS, SIG),
                        strlen(assemble(hdr("RS256", "rsa1"), CLAIMS, SIG)),
                        ENTRA_ALG_BIT(ENTRA_ALG_UNKNOWN), &why));
    CHECK(parse_refused(assemble("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", CLAIMS, SIG),
                        strlen(assemble("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", CLAIMS, SIG)),
                        0xffffffffu, &why));
    CHECK(parse_refused(assemble("{\"alg\":\"none\",\"kid\":\"rsa1\"}", CLAIMS, SIG),
                        strlen(assemble("{\"alg\":\"none\",\"kid\":\"rsa1\"}", CLAIMS, SIG)),
                        0xffffffffu, &why));
}

static void test_parse_header_rules(void)
{
    const char *why;
    entra_jwt *jwt;

    CHECK_INT_EQ(parse(assemble("{\"alg\":\"RS256\",\"kid\":\"k\"}", CLAIMS, SIG), &jwt, &why),
                 APR_SUCCESS);
    /* kid */
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"\"}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":5}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":null}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":[\"k\"]}", CLAIMS, SIG)));
    /* crit, in any form */
    CHECK(REFUSED(
        assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"crit\":[\"exp\"],\"exp\":1}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"crit\":[]}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"crit\":null}", CLAIMS, SIG)));
    /* Graph-style nonce: the reason points at the audience */
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"nonce\":\"abc\"}", CLAIMS, SIG)));
    CHECK(unit_contains(why, "audience"));
    CHECK(REFUSED(assemble("{\"nonce\":\"abc\",\"alg\":\"RS256\",\"kid\":\"k\"}", CLAIMS, SIG)));
    CHECK(unit_contains(why, "audience"));
    /* JWE */
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"enc\":\"A256GCM\"}", CLAIMS, SIG)));
    CHECK(
        REFUSED(assemble("{\"alg\":\"RSA-OAEP\",\"kid\":\"k\",\"enc\":\"A256GCM\"}", CLAIMS, SIG)));
    /* header not an object, not JSON, duplicated members */
    CHECK(REFUSED(assemble("[\"RS256\",\"k\"]", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("\"RS256\"", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("1", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("null", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{alg:RS256}", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\"", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\"}x", CLAIMS, SIG)));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"kid\":\"other\"}", CLAIMS, SIG)));
    CHECK(unit_contains(why, "duplicate"));
    CHECK(REFUSED(assemble("{\"alg\":\"none\",\"alg\":\"RS256\",\"kid\":\"k\"}", CLAIMS, SIG)));
    CHECK(unit_contains(why, "duplicate"));
    CHECK(REFUSED(assemble("{\"alg\":\"RS256\",\"kid\":\"k\",\"x\":\"\\u0000\"}", CLAIMS, SIG)));
}

static void test_parse_claims_rules(void)
{
    const char *h = "{\"alg\":\"RS256\",\"kid\":\"k\"}", *why;

    CHECK(REFUSED(assemble(h, "{\"sub\":\"a\",\"sub\":\"admin\"}", SIG)));
    CHECK(unit_contains(why, "duplicate"));
    CHECK(REFUSED(assemble(h, "{\"x\":{\"a\":1,\"a\":1}}", SIG)));
    CHECK(unit_contains(why, "duplicate"));
    CHECK(REFUSED(assemble(h, "[{\"sub\":\"a\"}]", SIG)));
    CHECK(REFUSED(assemble(h, "\"sub\"", SIG)));
    CHECK(REFUSED(assemble(h, "{\"sub\":\"a\"", SIG)));
    CHECK(REFUSED(assemble(h, "{\"sub\":\"a\"} {}", SIG)));
    CHECK(REFUSED(assemble(h, "{\"sub\":\"a\\u0000b\"}", SIG)));
    CHECK(REFUSED(assemble(h, "not json", SIG)));
}

static void test_parse_strict_base64url(void)
{
    const char *tok = token_for(rsa_a, "RS256", "rsa1"), *why;
    int i;

    for (i = 0; i < 3; i++) {
        const char *s = segment(tok, i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, s, "=", NULL))), "segment %d", i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, s, "==", NULL))), "segment %d", i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, s, "AA==", NULL))), "segment %d", i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, "+", s + 1, NULL))), "segment %d",
                  i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, "/", s + 1, NULL))), "segment %d",
                  i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, " ", s, NULL))), "segment %d", i);
        CHECK_MSG(REFUSED(with_segment(tok, i, apr_pstrcat(up, s, "\n", NULL))), "segment %d", i);
    }
    /* Padding where the unpadded form is canonical: header of 1 mod 3 bytes. */
    {
        const char *h = "{\"alg\":\"RS256\",\"kid\":\"k\",\"x\":\"\"}";
        const char *enc = b64s(h), *pads = strlen(h) % 3 == 1 ? "==" : "=";
        CHECK(strlen(h) % 3 != 0);
        CHECK(REFUSED(apr_pstrcat(up, enc, pads, ".", b64s(CLAIMS), ".", SIG, NULL)));
        CHECK(!REFUSED(apr_pstrcat(up, enc, ".", b64s(CLAIMS), ".", SIG, NULL)));
    }
    /* A NUL byte inside the token. */
    {
        apr_size_t n = strlen(tok);
        char *t = apr_pmemdup(up, tok, n + 1);
        t[5] = '\0';
        CHECK(parse_refused(t, n, all_algs, &why));
        memcpy(t, tok, n);
        t[n - 3] = '\0';
        CHECK(parse_refused(t, n, all_algs, &why));
    }
}

/* Finds claims padding so that the signed token is exactly `target` chars long. */
static const char *token_of_length(apr_size_t target)
{
    apr_size_t siglen = (256 * 4 + 2) / 3, pad, x;
    const char *base = "{\"exp\":2000000000,\"pad\":\"\"}";
    for (x = 0; x < 3; x++) {
        const char *h =
            apr_psprintf(up, "{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"x\":\"%.*s\"}", (int)x, "aaa");
        apr_size_t hl = (strlen(h) * 4 + 2) / 3;
        for (pad = 0; pad < target; pad++) {
            apr_size_t cl = strlen(base) + pad;
            if (hl + 1 + (cl * 4 + 2) / 3 + 1 + siglen == target) {
                char *pb = apr_palloc(up, pad + 1);
                memset(pb, 'a', pad);
                pb[pad] = '\0';
                return token_signed_as(
                    rsa_a, "RS256", h,
                    apr_pstrcat(up, "{\"exp\":2000000000,\"pad\":\"", pb, "\"}", NULL));
            }
        }
    }
    die("token_of_length");
    return NULL;
}

static void test_parse_size_limit(void)
{
    const char *at = token_of_length(ENTRA_MAX_TOKEN_LEN);
    const char *over = token_of_length(ENTRA_MAX_TOKEN_LEN + 1), *why;
    entra_jwt *jwt;

    CHECK_INT_EQ(strlen(at), ENTRA_MAX_TOKEN_LEN);
    CHECK_INT_EQ(strlen(over), ENTRA_MAX_TOKEN_LEN + 1);
    CHECK_MSG(parse(at, &jwt, &why) == APR_SUCCESS, "%s", why);
    CHECK(verify_with(at, "rsa1", &why) == APR_SUCCESS);
    CHECK(REFUSED(over));
    /* Far over the limit. */
    {
        apr_size_t big = 4 * ENTRA_MAX_TOKEN_LEN;
        char *b = apr_palloc(up, big + 1);
        memset(b, 'A', big);
        b[big] = '\0';
        memcpy(b, at, strlen(at));
        CHECK(parse_refused(b, big, all_algs, &why));
    }
}

/* jku, x5u, jwk and x5c never matter: the token parses and only the keyset key decides. */
static void test_parse_ignores_key_references(void)
{
    json_t *ej = jwk_of(rsa_b, "evil", "sig");
    const char *evil_jwk = entra_json_dump(up, ej), *why, *h, *tok;
    entra_jwt *jwt;

    json_decref(ej);
    h = apr_psprintf(
        up,
        "{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"jku\":\"https://attacker.invalid/jwks\","
        "\"x5u\":\"https://attacker.invalid/cert.pem\",\"jwk\":%s,"
        "\"x5c\":[\"MIIBnotacert\"]}",
        evil_jwk);
    /* Signed by the real key: parses and verifies. */
    tok = token_signed_as(rsa_a, "RS256", h, CLAIMS);
    CHECK_MSG(parse(tok, &jwt, &why) == APR_SUCCESS, "%s", why);
    CHECK(jwt && jwt->kid && strcmp(jwt->kid, "rsa1") == 0);
    CHECK(jwt && json_is_object(json_object_get(jwt->header, "jwk")));
    CHECK(verify_with(tok, "rsa1", &why) == APR_SUCCESS);
    /* Signed by the attacker's embedded key: parses, fails against the keyset key. */
    tok = token_signed_as(rsa_b, "RS256", h, CLAIMS);
    CHECK_MSG(parse(tok, &jwt, &why) == APR_SUCCESS, "%s", why);
    CHECK(verify_with(tok, "rsa1", &why) == APR_EINVAL);
    CHECK_STR_EQ(why, "invalid signature");
    /* Unusable values of these members do not matter either. */
    tok = token_signed_as(rsa_a, "RS256",
                          "{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"jku\":5,\"x5u\":null,"
                          "\"jwk\":\"x\",\"x5c\":{}}",
                          CLAIMS);
    CHECK(verify_with(tok, "rsa1", &why) == APR_SUCCESS);
    /* An embedded key is no substitute for a kid. */
    h = apr_psprintf(up, "{\"alg\":\"RS256\",\"jwk\":%s}", evil_jwk);
    CHECK(REFUSED(token_signed_as(rsa_b, "RS256", h, CLAIMS)));
}

int main(void)
{
    unit_begin("test_jwt");
    setup();
    RUN(test_alg_names);
    RUN(test_each_alg_verifies);
    RUN(test_tampering_fails);
    RUN(test_ecdsa_encoding);
    RUN(test_rsa_schemes);
    RUN(test_pss_salt_length);
    RUN(test_alg_key_mismatch);
    RUN(test_keyset_import);
    RUN(test_keyset_rsa_numbers);
    RUN(test_keyset_documents);
    RUN(test_keyset_pool_lifetime);
    RUN(test_parse_segments);
    RUN(test_parse_alg);
    RUN(test_parse_header_rules);
    RUN(test_parse_claims_rules);
    RUN(test_parse_strict_base64url);
    RUN(test_parse_size_limit);
    RUN(test_parse_ignores_key_references);
    teardown();
    return unit_end();
}
