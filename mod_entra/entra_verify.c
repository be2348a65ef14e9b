#include <string.h>
#include <apr_strings.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "entra_b64url.h"
#include "entra_json.h"
#include "entra_jwt.h"
#include "entra_log.h"
#include "entra_verify.h"

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

/* Claims from a cache hit pass the route's policy again: time moves and routes differ.
 * Returns 0, deciding nothing, when the key that verified the token is no longer
 * published: a cached verdict is only as good as its key. */
static int recheck(apr_pool_t *p, const entra_verifier *v, json_t *claims, int alg,
                   apr_uint64_t key_tag, apr_int64_t now, entra_verify_result *res)
{
    entra_keys_snapshot *snap;
    const char *why;

    /* Routes sharing keys may allow different algorithms. */
    if (alg <= ENTRA_ALG_UNKNOWN || alg > ENTRA_ALG_ES512 ||
        !(v->policy.alg_mask & ENTRA_ALG_BIT((entra_alg)alg))) {
        res->claims = claims;
        res->cached = 1;
        set_fail(res, ENTRA_VERIFY_INVALID, "token algorithm not allowed");
        return 1;
    }
    if (entra_source_acquire(v->source, p, &snap, &why) != APR_SUCCESS) {
        res->claims = claims;
        set_fail(res, ENTRA_VERIFY_UNAVAILABLE, why);
        return 1;
    }
    if (!entra_keyset_find_tag(snap->ks, key_tag)) {
        entra_snapshot_release(snap);
        return 0;
    }
    res->claims = claims;
    res->cached = 1;
    res->signed_ok = 1;
    if (entra_policy_check(p, &v->policy, &snap->iss, claims, now, &why) != APR_SUCCESS)
        set_fail(res, ENTRA_VERIFY_INVALID, why);
    entra_snapshot_release(snap);
    return 1;
}

/* Where a good signature is remembered: the source and the key together, so that only
 * the key that verified it can find it again. Bad signatures are remembered per source. */
static apr_uint64_t valid_tag(apr_uint64_t source_tag, const entra_key *key)
{
    return source_tag ^ (key->tag * 0x9e3779b97f4a7c15ULL) ^ 1;
}

/* Who a rejected token claimed to be, as the log line names it: app and object id. */
static void remember_who(json_t *claims, entra_vtab_entry *e)
{
    const char *app = entra_json_str(claims, "azp");

    e->app_claim = 1;
    if (!app) {
        app = entra_json_str(claims, "appid");
        e->app_claim = 2;
    }
    if (!app || !entra_guid_parse(app, e->app))
        e->app_claim = 0;
    e->has_oid = entra_guid_parse(entra_json_str(claims, "oid"), e->oid);
}

static json_t *recall_who(apr_pool_t *p, const entra_vtab_entry *e)
{
    json_t *who = entra_json_pool_own(p, json_object());
    char g[37];

    if (e->app_claim == 1 || e->app_claim == 2) {
        entra_guid_format(e->app, g);
        json_object_set_new(who, e->app_claim == 1 ? "azp" : "appid", json_string(g));
    }
    if (e->has_oid) {
        entra_guid_format(e->oid, g);
        json_object_set_new(who, "oid", json_string(g));
    }
    return who;
}

void entra_verify_token(apr_pool_t *p, const entra_verifier *v, const char *token,
                        apr_size_t len, apr_int64_t now, entra_verify_result *res)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    const char *why;
    apr_uint64_t tag = 0;
    entra_vtab_entry ve;
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
        apr_uint64_t key_tag = 0;
        json_t *claims = entra_l1_get(v->l1, p, md, v->source, now, &alg, &key_tag);
        if (claims && recheck(p, v, claims, alg, key_tag, now, res))
            return;
    }
    if (v->vtab) {
        tag = v->source->tag;
        if (entra_vtab_get(v->vtab, md, tag, now, &ve) && ve.kind == ENTRA_VT_INVALID) {
            res->cached = 1;
            res->claims = recall_who(p, &ve);
            set_fail(res, ENTRA_VERIFY_INVALID, entra_vtab_reason(ve.reason));
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
    if (v->vtab && entra_vtab_get(v->vtab, md, valid_tag(tag, key), now, &ve) &&
        ve.kind == ENTRA_VT_VALID && ve.alg == (int)jwt->alg) {
        /* This very key verified this very token before: the signature holds. */
        res->cached = 1;
        res->signed_ok = 1;
        if (v->l1)
            entra_l1_put(v->l1, md, v->source, jwt->claims, (int)jwt->alg, key->tag,
                         cache_until(v, jwt->claims));
        goto done;
    }
    if (entra_jwt_verify(jwt, key, &why) != APR_SUCCESS) {
        set_fail(res, ENTRA_VERIFY_INVALID, why);
        /* A signature never becomes valid: remember it so floods of one bad token are cheap,
         * with who the caller claimed to be, for the log lines of later rejections. */
        if (v->vtab && entra_vtab_reason_code(why) != 0) {
            memset(&ve, 0, sizeof(ve));
            ve.reason = entra_vtab_reason_code(why);
            ve.kind = ENTRA_VT_INVALID;
            ve.alg = (int)jwt->alg;
            ve.until = now + NEGATIVE_TTL;
            remember_who(jwt->claims, &ve);
            entra_vtab_put(v->vtab, md, tag, &ve, now);
        }
        goto done;
    }
    res->signed_ok = 1;
    if (v->vtab) {
        memset(&ve, 0, sizeof(ve));
        ve.kind = ENTRA_VT_VALID;
        ve.alg = (int)jwt->alg;
        ve.until = cache_until(v, jwt->claims);
        entra_vtab_put(v->vtab, md, valid_tag(tag, key), &ve, now);
    }
    /* A token's claims enter the per-process cache on its second sight (a table hit
     * above): a stream of one-off tokens then never evicts the tokens callers reuse, and
     * its claims are freed by the thread that made them, at the end of the request. */
    if (v->l1 && !v->vtab)
        entra_l1_put(v->l1, md, v->source, jwt->claims, (int)jwt->alg, key->tag,
                     cache_until(v, jwt->claims));
done:
    entra_snapshot_release(snap);
}
