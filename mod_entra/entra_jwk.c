#include <pthread.h>
#include <string.h>
#include <apr_strings.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <apr_base64.h>

#include "entra_b64url.h"
#include "entra_json.h"
#include "entra_jwk.h"
#include "entra_log.h"

static const struct {
    const char *name;
    entra_alg alg;
} alg_names[] = {
    {"RS256", ENTRA_ALG_RS256}, {"RS384", ENTRA_ALG_RS384}, {"RS512", ENTRA_ALG_RS512},
    {"PS256", ENTRA_ALG_PS256}, {"PS384", ENTRA_ALG_PS384}, {"PS512", ENTRA_ALG_PS512},
    {"ES256", ENTRA_ALG_ES256}, {"ES384", ENTRA_ALG_ES384}, {"ES512", ENTRA_ALG_ES512},
};

entra_alg entra_alg_from_name(const char *name)
{
    size_t i;
    for (i = 0; name && i < sizeof(alg_names) / sizeof(alg_names[0]); i++)
        if (strcmp(name, alg_names[i].name) == 0)
            return alg_names[i].alg;
    return ENTRA_ALG_UNKNOWN;
}

const char *entra_alg_name(entra_alg alg)
{
    size_t i;
    for (i = 0; i < sizeof(alg_names) / sizeof(alg_names[0]); i++)
        if (alg_names[i].alg == alg)
            return alg_names[i].name;
    return "unknown";
}

/* Digests fetched once per process: OpenSSL 3's implicit fetch on every verification
 * costs a lookup under a lock. */
static EVP_MD *md_fetched[3];
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void fetch_mds(void)
{
    md_fetched[0] = EVP_MD_fetch(NULL, "SHA256", NULL);
    md_fetched[1] = EVP_MD_fetch(NULL, "SHA384", NULL);
    md_fetched[2] = EVP_MD_fetch(NULL, "SHA512", NULL);
}

const EVP_MD *entra_md_sha256(void)
{
    pthread_once(&md_once, fetch_mds);
    return md_fetched[0] ? md_fetched[0] : EVP_sha256();
}

static const EVP_MD *alg_md(entra_alg alg)
{
    int i;
    switch (alg) {
    case ENTRA_ALG_RS256:
    case ENTRA_ALG_PS256:
    case ENTRA_ALG_ES256:
        i = 0;
        break;
    case ENTRA_ALG_RS384:
    case ENTRA_ALG_PS384:
    case ENTRA_ALG_ES384:
        i = 1;
        break;
    case ENTRA_ALG_RS512:
    case ENTRA_ALG_PS512:
    case ENTRA_ALG_ES512:
        i = 2;
        break;
    default:
        return NULL;
    }
    pthread_once(&md_once, fetch_mds);
    if (md_fetched[i])
        return md_fetched[i];
    return i == 0 ? EVP_sha256() : i == 1 ? EVP_sha384() : EVP_sha512();
}

/* Curve name and coordinate size in bytes. */
static const struct {
    const char *crv, *group;
    apr_size_t size;
    entra_alg alg;
} curves[] = {
    {"P-256", "prime256v1", 32, ENTRA_ALG_ES256},
    {"P-384", "secp384r1", 48, ENTRA_ALG_ES384},
    {"P-521", "secp521r1", 66, ENTRA_ALG_ES512},
};

static int curve_index(const char *crv)
{
    int i;
    for (i = 0; crv && i < 3; i++)
        if (strcmp(crv, curves[i].crv) == 0)
            return i;
    return -1;
}

int entra_alg_fits_key(entra_alg alg, const entra_key *key)
{
    int ci;
    if (alg >= ENTRA_ALG_RS256 && alg <= ENTRA_ALG_PS512)
        return key->is_rsa;
    if (key->is_rsa)
        return 0;
    ci = curve_index(key->crv);
    return ci >= 0 && curves[ci].alg == alg;
}

static apr_status_t pkey_cleanup(void *data)
{
    EVP_PKEY_free((EVP_PKEY *)data);
    return APR_SUCCESS;
}

#define VERIFY_CTX_SLOTS (ENTRA_ALG_ES512 + 1)

static apr_status_t verify_ctx_cleanup(void *data)
{
    EVP_PKEY_CTX **c = data;
    int i;
    for (i = 0; i < VERIFY_CTX_SLOTS; i++)
        EVP_PKEY_CTX_free(c[i]);
    return APR_SUCCESS;
}

/* Decodes a base64url member into bytes; NULL when absent or malformed. */
static unsigned char *b64_member(apr_pool_t *p, const json_t *jwk, const char *name,
                                 apr_size_t *len)
{
    const char *s = entra_json_str(jwk, name);
    unsigned char *out;
    if (!s || entra_b64url_decode(p, s, strlen(s), &out, len) != APR_SUCCESS || *len == 0)
        return NULL;
    return out;
}

/* OpenSSL's public key check (point on curve, sane RSA numbers). */
static int public_ok(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int ok = chk && EVP_PKEY_public_check(chk) > 0;
    EVP_PKEY_CTX_free(chk);
    return ok;
}

/* Imports public key parameters and checks them. */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    if (!params)
        return NULL;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0 || !public_ok(pkey)) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_from_jwk(apr_pool_t *p, const json_t *jwk, const char **why)
{
    apr_size_t nlen, elen;
    unsigned char *nb = b64_member(p, jwk, "n", &nlen), *eb = b64_member(p, jwk, "e", &elen);
    OSSL_PARAM_BLD *bld;
    BIGNUM *n = NULL, *e = NULL;
    EVP_PKEY *pkey = NULL;

    if (!nb || !eb) {
        *why = "RSA key without valid n/e";
        return NULL;
    }
    n = BN_bin2bn(nb, (int)nlen, NULL);
    e = BN_bin2bn(eb, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n && e && bld && BN_num_bits(n) < ENTRA_MIN_RSA_BITS) {
        *why = "RSA key shorter than 2048 bits";
    }
    else if (n && e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e)) {
        pkey = pkey_from_params("RSA", bld);
        if (!pkey)
            *why = "RSA key rejected by OpenSSL";
    }
    else {
        *why = "out of memory";
    }
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

static EVP_PKEY *ec_from_jwk(apr_pool_t *p, const json_t *jwk, int ci, const char **why)
{
    apr_size_t xlen, ylen, sz = curves[ci].size;
    unsigned char *x = b64_member(p, jwk, "x", &xlen), *y = b64_member(p, jwk, "y", &ylen);
    unsigned char *pt;
    OSSL_PARAM_BLD *bld;
    EVP_PKEY *pkey = NULL;

    if (!x || !y || xlen != sz || ylen != sz) {
        *why = "EC key without valid x/y";
        return NULL;
    }
    pt = apr_palloc(p, 1 + 2 * sz);
    pt[0] = 0x04; /* uncompressed point */
    memcpy(pt + 1, x, sz);
    memcpy(pt + 1 + sz, y, sz);
    bld = OSSL_PARAM_BLD_new();
    if (bld &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curves[ci].group, 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * sz)) {
        pkey = pkey_from_params("EC", bld);
        if (!pkey)
            *why = "EC point rejected by OpenSSL";
    }
    else {
        *why = "out of memory";
    }
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

/* A JWK that publishes its key only as a certificate (x5c, standard base64 DER): the
 * certificate's public key, when its type matches `kty`. The token header's x5c is never
 * consulted; this is the issuer's own key set. */
static EVP_PKEY *pkey_from_x5c(apr_pool_t *p, const json_t *jwk, int want_rsa, const char **why)
{
    json_t *x5c = json_object_get(jwk, "x5c");
    const char *b64 = json_is_array(x5c) ? json_string_value(json_array_get(x5c, 0)) : NULL;
    unsigned char *der;
    const unsigned char *q;
    X509 *cert;
    EVP_PKEY *pk;
    int len;

    if (!b64 || strlen(b64) > 16384) {
        *why = "no usable key material";
        return NULL;
    }
    der = apr_palloc(p, (apr_size_t)apr_base64_decode_len(b64));
    len = apr_base64_decode((char *)der, b64);
    q = der;
    cert = len > 0 ? d2i_X509(NULL, &q, len) : NULL;
    pk = cert ? X509_get_pubkey(cert) : NULL;
    X509_free(cert);
    ERR_clear_error();
    /* The certificate's key passes the same check as n/e (fuzz_jwk found one that did
     * not, and vanished when the cached record, which holds n/e, was imported again). */
    if (!pk || (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA) != want_rsa ||
        (want_rsa && EVP_PKEY_get_bits(pk) < ENTRA_MIN_RSA_BITS) || !public_ok(pk)) {
        EVP_PKEY_free(pk);
        *why = "x5c certificate without a usable key";
        return NULL;
    }
    return pk;
}

/* Writes n and e of an RSA key (for keys that came as a certificate). */
static int add_rsa_numbers(apr_pool_t *p, json_t *c, EVP_PKEY *pk)
{
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *nb, *eb;
    int ok = 0;
    if (EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
        EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e) == 1) {
        nb = apr_palloc(p, (apr_size_t)BN_num_bytes(n) + 1);
        eb = apr_palloc(p, (apr_size_t)BN_num_bytes(e) + 1);
        BN_bn2bin(n, nb);
        BN_bn2bin(e, eb);
        json_object_set_new(c, "n", json_string(entra_b64url_encode(p, nb, (apr_size_t)BN_num_bytes(n))));
        json_object_set_new(c, "e", json_string(entra_b64url_encode(p, eb, (apr_size_t)BN_num_bytes(e))));
        ok = 1;
    }
    BN_free(n);
    BN_free(e);
    return ok;
}

/* Copies the listed string members that are present. */
static void copy_members(json_t *dst, const json_t *src, const char *const *names)
{
    for (; *names; names++) {
        json_t *v = json_object_get(src, *names);
        if (json_is_string(v))
            json_object_set(dst, *names, v);
    }
}

/* See entra_key.tag; 0 only when the key cannot be encoded (such a key is not used). */
static apr_uint64_t key_tag(const char *kid, const char *issuer, EVP_PKEY *pkey)
{
    unsigned char *der = NULL, md[32];
    int n = i2d_PUBKEY(pkey, &der);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    apr_uint64_t tag = 0;
    unsigned int mdlen = 0;

    if (n > 0 && ctx && EVP_DigestInit_ex(ctx, entra_md_sha256(), NULL) &&
        EVP_DigestUpdate(ctx, kid, strlen(kid) + 1) &&
        EVP_DigestUpdate(ctx, issuer ? issuer : "", issuer ? strlen(issuer) + 1 : 1) &&
        EVP_DigestUpdate(ctx, der, (size_t)n) && EVP_DigestFinal_ex(ctx, md, &mdlen) &&
        mdlen == sizeof(md))
        memcpy(&tag, md, sizeof(tag));
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return tag;
}

apr_status_t entra_keyset_from_jwks(apr_pool_t *p, const json_t *jwks, const char *origin,
                                    entra_keyset **out, const char **why)
{
    static const char *const rsa_members[] = {"kty", "kid", "n", "e", "issuer", NULL};
    static const char *const ec_members[] = {"kty", "kid", "crv", "x", "y", "issuer", NULL};
    json_t *arr = json_object_get(jwks, "keys"), *jwk, *compact_keys;
    entra_keyset *ks;
    size_t i;

    *out = NULL;
    if (!json_is_array(arr)) {
        *why = "JWKS has no \"keys\" array";
        return APR_EINVAL;
    }
    ks = apr_pcalloc(p, sizeof(*ks));
    ks->keys = apr_array_make(p, (int)json_array_size(arr) + 1, sizeof(entra_key));
    ks->compact = entra_json_pool_own(p, json_object());
    compact_keys = json_array();
    json_object_set_new(ks->compact, "keys", compact_keys);

    json_array_foreach(arr, i, jwk)
    {
        const char *kid = entra_json_str(jwk, "kid"), *kty = entra_json_str(jwk, "kty");
        const char *use = entra_json_str(jwk, "use"), *skip = NULL;
        json_t *c;
        entra_key key;
        int ci = -1;

        memset(&key, 0, sizeof(key));
        if (!json_is_object(jwk))
            skip = "not an object";
        else if (!kid || !*kid)
            skip = "no kid";
        else if (json_object_get(jwk, "use") && (!use || strcmp(use, "sig") != 0))
            skip = "use is not sig";
        else if (entra_keyset_find(ks, kid))
            skip = "duplicate kid";
        else if (kty && strcmp(kty, "RSA") == 0) {
            key.is_rsa = 1;
            key.pkey = json_object_get(jwk, "n") ? rsa_from_jwk(p, jwk, &skip)
                                                 : pkey_from_x5c(p, jwk, 1, &skip);
        }
        else if (kty && strcmp(kty, "EC") == 0) {
            ci = curve_index(entra_json_str(jwk, "crv"));
            if (ci < 0)
                skip = "unsupported curve";
            else
                key.pkey = ec_from_jwk(p, jwk, ci, &skip);
        }
        else
            skip = "unsupported kty";

        if (!key.pkey) {
            entra_log(ENTRA_LOG_INFO, "ENTRA0101: %s: key %s ignored: %s", origin,
                      kid ? kid : "(no kid)", skip ? skip : "unusable");
            continue;
        }
        apr_pool_cleanup_register(p, key.pkey, pkey_cleanup, apr_pool_cleanup_null);
        key.verify_ctx = apr_pcalloc(p, VERIFY_CTX_SLOTS * sizeof(EVP_PKEY_CTX *));
        apr_pool_cleanup_register(p, key.verify_ctx, verify_ctx_cleanup, apr_pool_cleanup_null);
        key.kid = apr_pstrdup(p, kid);
        key.issuer = entra_json_str(jwk, "issuer") ? apr_pstrdup(p, entra_json_str(jwk, "issuer"))
                                                   : NULL;
        key.crv = ci >= 0 ? curves[ci].crv : NULL;
        if (!(key.tag = key_tag(key.kid, key.issuer, key.pkey))) {
            entra_log(ENTRA_LOG_INFO, "ENTRA0101: %s: key %s ignored: cannot encode it", origin,
                      kid);
            continue;
        }
        *(entra_key *)apr_array_push(ks->keys) = key;
        c = json_object();
        copy_members(c, jwk, key.is_rsa ? rsa_members : ec_members);
        if (key.is_rsa && !json_object_get(c, "n") && !add_rsa_numbers(p, c, key.pkey)) {
            json_decref(c);
            continue;
        }
        json_array_append_new(compact_keys, c);
    }
    *out = ks;
    return APR_SUCCESS;
}

const entra_key *entra_keyset_find_tag(const entra_keyset *ks, apr_uint64_t tag)
{
    int i;
    for (i = 0; ks && tag && i < ks->keys->nelts; i++) {
        const entra_key *k = &APR_ARRAY_IDX(ks->keys, i, entra_key);
        if (k->tag == tag)
            return k;
    }
    return NULL;
}

const entra_key *entra_keyset_find(const entra_keyset *ks, const char *kid)
{
    int i;
    for (i = 0; ks && kid && i < ks->keys->nelts; i++) {
        const entra_key *k = &APR_ARRAY_IDX(ks->keys, i, entra_key);
        if (strcmp(k->kid, kid) == 0)
            return k;
    }
    return NULL;
}

/* JWS carries ECDSA signatures as fixed-width R||S; OpenSSL wants DER. */
static unsigned char *ecdsa_raw_to_der(const unsigned char *sig, apr_size_t len, int *der_len)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)(len / 2), NULL), *s = BN_bin2bn(sig + len / 2, (int)(len / 2), NULL);
    unsigned char *der = NULL;

    *der_len = 0;
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    *der_len = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    return *der_len > 0 ? der : NULL;
}

/* A verification context for (key, alg) with padding and digest set; NULL on failure. */
static EVP_PKEY_CTX *new_verify_ctx(entra_alg alg, const entra_key *key, const EVP_MD *md)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    int ok = c && EVP_PKEY_verify_init(c) == 1;

    if (ok && alg >= ENTRA_ALG_PS256 && alg <= ENTRA_ALG_PS512)
        ok = EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(c, RSA_PSS_SALTLEN_DIGEST) > 0;
    else if (ok && key->is_rsa)
        ok = EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) > 0;
    ok = ok && EVP_PKEY_CTX_set_signature_md(c, md) > 0;
    if (!ok) {
        EVP_PKEY_CTX_free(c);
        return NULL;
    }
    return c;
}

/* A context of our own for one verification: a copy of the key's kept one (made and
 * published on first use; a thread losing the race frees its own), or a new one. */
static EVP_PKEY_CTX *verify_ctx(entra_alg alg, const entra_key *key, const EVP_MD *md)
{
    EVP_PKEY_CTX *kept, *mine, *expected = NULL;

    if (!key->verify_ctx)
        return new_verify_ctx(alg, key, md);
    kept = __atomic_load_n(&key->verify_ctx[alg], __ATOMIC_ACQUIRE);
    if (!kept) {
        if (!(mine = new_verify_ctx(alg, key, md)))
            return NULL;
        if (__atomic_compare_exchange_n(&key->verify_ctx[alg], &expected, mine, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            kept = mine;
        else {
            EVP_PKEY_CTX_free(mine);
            kept = expected;
        }
    }
    return EVP_PKEY_CTX_dup(kept);
}

apr_status_t entra_sig_verify(entra_alg alg, const entra_key *key, const unsigned char *input,
                              apr_size_t input_len, const unsigned char *sig, apr_size_t sig_len)
{
    const EVP_MD *md = alg_md(alg);
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char *der = NULL, digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    const unsigned char *vsig = sig;
    size_t vlen = sig_len;
    int ok;

    if (!md || !entra_alg_fits_key(alg, key))
        return APR_EINVAL;
    if (key->is_rsa) {
        if (sig_len != (apr_size_t)EVP_PKEY_get_size(key->pkey))
            return APR_EINVAL;
    }
    else {
        int ci = curve_index(key->crv), dl;
        if (ci < 0 || sig_len != 2 * curves[ci].size)
            return APR_EINVAL;
        der = ecdsa_raw_to_der(sig, sig_len, &dl);
        if (!der)
            return APR_EINVAL;
        vsig = der;
        vlen = (size_t)dl;
    }
    ok = EVP_Digest(input, input_len, digest, &dlen, md, NULL) == 1 &&
         (pctx = verify_ctx(alg, key, md)) != NULL &&
         EVP_PKEY_verify(pctx, vsig, vlen, digest, dlen) == 1;
    EVP_PKEY_CTX_free(pctx);
    OPENSSL_free(der);
    if (!ok)
        ERR_clear_error(); /* a bad signature is an answer, not an error to carry along */
    return ok ? APR_SUCCESS : APR_EINVAL;
}
