#include <string.h>
#include <apr_strings.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "entra_b64url.h"
#include "entra_json.h"
#include "entra_jwt.h"
#include "entra_log.h"
#include "entra_verify.h"

#define CACHE_VALUE_MAX 8192         /* larger claim sets are verified every time */
#define NEGATIVE_TTL 600             /* seconds a bad signature stays remembered */

static const char hexd[] = "0123456789abcdef";

/* Cached claims live until the token expires (plus the skew the policy allows). */
static apr_int64_t cache_until(const entra_verifier *v, json_t *claims)
{
    return (apr_int64_t)json_number_value(json_object_get(claims, "exp")) + v->policy.clock_skew;
}

static void set_fail(entra_verify_result *res, entra_verify_outcome o, const char *why)
{
    res->outcome = o;
    res->why = why;
}

/* Claims from a cache hit pass the route's policy again: time moves and routes differ. */
static void recheck(apr_pool_t *p, const entra_verifier *v, json_t *claims, int alg,
                    apr_int64_t now, entra_verify_result *res)
{
    entra_keys_snapshot *snap;
    const char *why;

    res->claims = claims;
    res->cached = 1;
    /* Routes sharing keys may allow different algorithms. */
    if (alg <= ENTRA_ALG_UNKNOWN || alg > ENTRA_ALG_ES512 ||
        !(v->policy.alg_mask & ENTRA_ALG_BIT((entra_alg)alg))) {
        set_fail(res, ENTRA_VERIFY_INVALID, "token algorithm not allowed");
        return;
    }
    if (entra_source_acquire(v->source, p, &snap, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_UNAVAILABLE, why);
        return;
    }
    if (entra_policy_check(p, &v->policy, &snap->iss, claims, now, &why) != APR_SUCCESS)
        set_fail(res, ENTRA_VERIFY_INVALID, why);
    entra_snapshot_release(snap);
}

/* Negative entries are "!reason\n{who}"; positive ones the algorithm's number and the
 * claims JSON as it was signed. */
static void answer_from_store(apr_pool_t *p, const entra_verifier *v, const unsigned char *md,
                              const char *val, apr_size_t len, apr_int64_t now,
                              entra_verify_result *res)
{
    json_t *claims;
    const char *why;

    if (val[0] == '!') {
        /* "!reason\n{claims the log names}" */
        const char *nl = strchr(val, '\n');
        res->cached = 1;
        set_fail(res, ENTRA_VERIFY_INVALID,
                 nl ? apr_pstrndup(p, val + 1, (apr_size_t)(nl - val - 1)) : val + 1);
        if (nl && entra_json_parse_object(p, nl + 1, strlen(nl + 1), 1024, &claims, &why) ==
                      APR_SUCCESS)
            res->claims = claims;
        return;
    }
    if (len < 2 || val[0] < '1' || val[0] > '9' ||
        entra_json_parse_object(p, val + 1, len - 1, CACHE_VALUE_MAX, &claims, &why) !=
            APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_INVALID, "token cache entry unreadable");
        return;
    }
    if (v->l1)
        entra_l1_put(v->l1, md, v->source, claims, val[0] - '0', cache_until(v, claims));
    recheck(p, v, claims, val[0] - '0', now, res);
}

void entra_verify_token(apr_pool_t *p, const entra_verifier *v, const char *token,
                        apr_size_t len, apr_int64_t now, entra_verify_result *res)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1], *val;
    const char *ckey = NULL, *why;
    apr_size_t vlen;
    entra_jwt *jwt;
    entra_keys_snapshot *snap = NULL, *newer;
    const entra_key *key;
    int i;

    memset(res, 0, sizeof(*res));
    res->outcome = ENTRA_VERIFY_OK;
    if (len > ENTRA_MAX_TOKEN_LEN) {
        set_fail(res, ENTRA_VERIFY_INVALID, "token too large");
        return;
    }
    if (!EVP_Digest(token, len, md, NULL, entra_md_sha256(), NULL)) {
        set_fail(res, ENTRA_VERIFY_INVALID, "cannot hash the token");
        return;
    }
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        hex[2 * i] = hexd[md[i] >> 4];
        hex[2 * i + 1] = hexd[md[i] & 15];
    }
    hex[sizeof(hex) - 1] = '\0';
    res->token_id = apr_pstrndup(p, hex, 12);
    /* Malformed input is refused before any cache or crypto work. */
    if (!entra_b64url_jws_shape(token, len)) {
        /* The parser names the problem precisely (segments, alphabet). */
        why = NULL;
        entra_jwt_parse(p, token, len, v->policy.alg_mask, &jwt, &why);
        set_fail(res, ENTRA_VERIFY_INVALID, why ? why : "token is not strict base64url");
        return;
    }
    if (v->l1) {
        int alg = ENTRA_ALG_UNKNOWN;
        json_t *claims = entra_l1_get(v->l1, p, md, v->source, now, &alg);
        if (claims) {
            recheck(p, v, claims, alg, now, res);
            return;
        }
    }
    if (v->cache) {
        ckey = apr_pstrcat(p, "t", v->source->id, ":", hex, NULL);
        if (v->cache->get(v->cache, ckey, p, CACHE_VALUE_MAX, &val, &vlen) == APR_SUCCESS) {
            answer_from_store(p, v, md, val, vlen, now, res);
            return;
        }
    }
    if (entra_jwt_parse(p, token, len, v->policy.alg_mask, &jwt, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_INVALID, why);
        return;
    }
    res->claims = jwt->claims;
    if (entra_source_acquire(v->source, p, &snap, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_UNAVAILABLE, why);
        return;
    }
    /* Claims first: they cost no crypto, and a token failing them needs no signature check. */
    if (entra_policy_check(p, &v->policy, &snap->iss, jwt->claims, now, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_INVALID, why);
        goto done;
    }
    key = entra_keyset_find(snap->ks, jwt->kid);
    if (!key) {
        newer = entra_source_refetch_for_kid(v->source, p, snap, jwt->kid);
        entra_snapshot_release(snap);
        snap = newer;
        key = entra_keyset_find(snap->ks, jwt->kid);
        if (!key) {
            set_fail(res, ENTRA_VERIFY_INVALID, "token signing key not found");
            goto done;
        }
    }
    if (!entra_policy_key_issuer_ok(p, &v->policy, &snap->iss, key, jwt->claims)) {
        set_fail(res, ENTRA_VERIFY_INVALID, "signing key belongs to another issuer");
        goto done;
    }
    if (entra_jwt_verify(jwt, key, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_INVALID, why);
        /* A signature never becomes valid: remember it so floods of one bad token are cheap. */
        if (ckey) {
            /* Keep who the caller claimed to be, for the log lines of later rejections. */
            json_t *who = entra_json_pool_own(p, json_object());
            const char *neg, *names[] = {"azp", "appid", "oid"};
            int k;
            for (k = 0; k < 3; k++)
                if (entra_json_str(jwt->claims, names[k]) &&
                    strlen(entra_json_str(jwt->claims, names[k])) <= 64)
                    json_object_set(who, names[k], json_object_get(jwt->claims, names[k]));
            neg = apr_pstrcat(p, "!", why, "\n", entra_json_dump(p, who), NULL);
            v->cache->put(v->cache, ckey, neg, strlen(neg),
                          apr_time_now() + apr_time_from_sec(NEGATIVE_TTL));
        }
        goto done;
    }
    if (ckey && jwt->payload_len < CACHE_VALUE_MAX) {
        char *entry = apr_palloc(p, jwt->payload_len + 1);
        entry[0] = (char)('0' + (int)jwt->alg);
        memcpy(entry + 1, jwt->payload, jwt->payload_len);
        v->cache->put(v->cache, ckey, entry, jwt->payload_len + 1,
                      apr_time_from_sec(cache_until(v, jwt->claims)));
    }
    if (v->l1)
        entra_l1_put(v->l1, md, v->source, jwt->claims, (int)jwt->alg,
                     cache_until(v, jwt->claims));
done:
    entra_snapshot_release(snap);
}
