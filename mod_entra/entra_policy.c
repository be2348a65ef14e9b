#include <string.h>
#include <apr_strings.h>

#include "entra_json.h"
#include "entra_policy.h"

int entra_is_guid(const char *s)
{
    int i;
    if (!s || strlen(s) != 36)
        return 0;
    for (i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        }
        else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return 1;
}

/* Issuer hosts per cloud (v2 first, then v1), from Microsoft's national-cloud documentation
 * and its Q&A on sovereign-cloud token issuers: Azure Government keeps the public v1 issuer
 * host (sts.windows.net); China's v2 issuer is login.partner.microsoftonline.cn (the
 * authority login.chinacloudapi.cn announced it under its own name before). */
static const struct {
    const char *name, *authority, *hosts[4];
} clouds[] = {
    [ENTRA_CLOUD_PUBLIC] = {"public", "https://login.microsoftonline.com/",
                            {"https://login.microsoftonline.com/", "https://sts.windows.net/"}},
    [ENTRA_CLOUD_USGOV] = {"usgov", "https://login.microsoftonline.us/",
                           {"https://login.microsoftonline.us/", "https://sts.windows.net/"}},
    [ENTRA_CLOUD_CHINA] = {"china", "https://login.chinacloudapi.cn/",
                           {"https://login.partner.microsoftonline.cn/",
                            "https://login.chinacloudapi.cn/", "https://sts.chinacloudapi.cn/"}},
};

entra_cloud entra_cloud_from_name(const char *name)
{
    int c;
    for (c = ENTRA_CLOUD_PUBLIC; c <= ENTRA_CLOUD_CHINA; c++)
        if (!strcmp(name, clouds[c].name))
            return (entra_cloud)c;
    return ENTRA_CLOUD_ANY;
}

const char *entra_cloud_authority(entra_cloud c)
{
    return c == ENTRA_CLOUD_ANY ? NULL : clouds[c].authority;
}

int entra_cloud_issuer_ok(entra_cloud c, const char *iss)
{
    int i;
    if (c == ENTRA_CLOUD_ANY)
        return 1;
    for (i = 0; i < 4 && clouds[c].hosts[i]; i++)
        if (!strncmp(iss, clouds[c].hosts[i], strlen(clouds[c].hosts[i])))
            return 1;
    return 0;
}

/* The v1 issuer host when the v1 document could not be fetched. */
static const char *v1_host(entra_cloud c)
{
    return c == ENTRA_CLOUD_CHINA ? "https://sts.chinacloudapi.cn/" : "https://sts.windows.net/";
}

/* Replaces Entra's {tenantid} template with the tenant. */
static const char *templated(apr_pool_t *p, const char *issuer, const char *tid)
{
    const char *at = issuer ? strstr(issuer, "{tenantid}") : NULL;
    if (!at)
        return issuer;
    return apr_pstrcat(p, apr_pstrndup(p, issuer, (apr_size_t)(at - issuer)), tid,
                       at + strlen("{tenantid}"), NULL);
}

/* The token's tenant for Entra rules: the configured one, or its tid when multi-tenant. */
static const char *token_tenant(const entra_policy *pol, const json_t *claims)
{
    return pol->multi_tenant ? entra_json_str(claims, "tid") : pol->tenant;
}

/* The issuers Entra uses for `tid`: v2 and v1 (the canonical v1 one when undiscovered). */
static void issuers_for(apr_pool_t *p, const entra_policy *pol, const entra_issuers *iss,
                        const char *tid, const char **v2, const char **v1)
{
    *v2 = templated(p, iss->v2, tid);
    *v1 = iss->v1 ? templated(p, iss->v1, tid)
                  : apr_pstrcat(p, v1_host(pol->cloud), tid, "/", NULL);
}

static int tenant_allowed(const entra_policy *pol, const char *tid)
{
    int i;
    for (i = 0; pol->allowed_tenants && i < pol->allowed_tenants->nelts; i++)
        if (strcmp(APR_ARRAY_IDX(pol->allowed_tenants, i, const char *), tid) == 0)
            return 1;
    return 0;
}

static apr_status_t check_issuer(apr_pool_t *p, const entra_policy *pol,
                                 const entra_issuers *iss, const json_t *claims,
                                 const char **why)
{
    const char *tok_iss = entra_json_str(claims, "iss"), *tid, *v1, *v2;
    json_t *tidv = json_object_get(claims, "tid");

    if (!tok_iss) {
        *why = "token has no issuer";
        return APR_EINVAL;
    }
    if (!iss->entra) {
        if (strcmp(tok_iss, iss->v2) != 0) {
            *why = "token issuer not accepted";
            return APR_EINVAL;
        }
        return APR_SUCCESS;
    }
    if (tidv && !json_is_string(tidv)) {
        *why = "token tid is not a string";
        return APR_EINVAL;
    }
    tid = token_tenant(pol, claims);
    if (!tid && !pol->multi_tenant) {
        *why = "no tenant configured";
        return APR_EINVAL;
    }
    if (pol->multi_tenant) {
        if (!tid || !entra_is_guid(tid)) {
            *why = "token tid is not a tenant id";
            return APR_EINVAL;
        }
        if (!tenant_allowed(pol, tid)) {
            *why = "token tenant not allowed";
            return APR_EINVAL;
        }
    }
    else if (tidv && strcmp(json_string_value(tidv), tid) != 0) {
        *why = "token tid does not match the tenant";
        return APR_EINVAL;
    }
    issuers_for(p, pol, iss, tid, &v2, &v1);
    if (strcmp(tok_iss, v2) != 0 && strcmp(tok_iss, v1) != 0) {
        *why = "token issuer not accepted";
        return APR_EINVAL;
    }
    /* Discovery answered for the authority; the cloud says which issuers belong to it, so
     * an authority of another cloud (or a document naming one) cannot slip its tokens in. */
    if (!entra_cloud_issuer_ok(pol->cloud, tok_iss)) {
        *why = "token issuer belongs to another cloud";
        return APR_EINVAL;
    }
    return APR_SUCCESS;
}

static apr_status_t check_audience(const entra_policy *pol, const json_t *claims,
                                   const char **why)
{
    json_t *aud = json_object_get(claims, "aud"), *v;
    size_t n;
    int i;

    if (json_is_string(aud)) {
        for (i = 0; i < pol->audiences->nelts; i++)
            if (strcmp(json_string_value(aud), APR_ARRAY_IDX(pol->audiences, i, const char *)) == 0)
                return APR_SUCCESS;
    }
    else if (json_is_array(aud)) {
        json_array_foreach(aud, n, v)
        {
            if (!json_is_string(v)) {
                *why = "token audience is malformed";
                return APR_EINVAL;
            }
        }
        json_array_foreach(aud, n, v)
        {
            for (i = 0; i < pol->audiences->nelts; i++)
                if (strcmp(json_string_value(v), APR_ARRAY_IDX(pol->audiences, i, const char *)) == 0)
                    return APR_SUCCESS;
        }
    }
    else if (!aud) {
        *why = "token has no audience";
        return APR_EINVAL;
    }
    *why = "token audience not accepted";
    return APR_EINVAL;
}

/* A NumericDate member: absent (0), a JSON number (1), or anything else (-1). */
static int numeric_date(const json_t *claims, const char *name, double *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return 1;
}

static apr_status_t check_times(const entra_policy *pol, const json_t *claims, apr_int64_t now,
                                const char **why)
{
    double exp = 0, nbf = 0, iat = 0, t = (double)now, skew = (double)pol->clock_skew;
    int has_exp = numeric_date(claims, "exp", &exp), has_nbf = numeric_date(claims, "nbf", &nbf),
        has_iat = numeric_date(claims, "iat", &iat);

    if (has_exp == 0) {
        *why = "token has no exp";
        return APR_EINVAL;
    }
    if (has_exp < 0 || has_nbf < 0 || has_iat < 0) {
        *why = "token time claim is not a number";
        return APR_EINVAL;
    }
    if (t >= exp + skew) {
        *why = "token expired";
        return APR_EINVAL;
    }
    if (has_nbf && nbf - skew > t) {
        *why = "token not yet valid";
        return APR_EINVAL;
    }
    if (has_iat && iat - skew > t) {
        *why = "token issued in the future";
        return APR_EINVAL;
    }
    if ((has_iat && exp - iat > (double)pol->max_lifetime) ||
        (has_nbf && exp - nbf > (double)pol->max_lifetime) ||
        exp - t > (double)pol->max_lifetime + skew) {
        *why = "token lifetime exceeds the maximum";
        return APR_EINVAL;
    }
    return APR_SUCCESS;
}

apr_status_t entra_policy_check(apr_pool_t *p, const entra_policy *pol,
                                const entra_issuers *iss, const json_t *claims,
                                apr_int64_t now, const char **why)
{
    if (check_times(pol, claims, now, why) || check_issuer(p, pol, iss, claims, why) ||
        check_audience(pol, claims, why))
        return APR_EINVAL;
    return APR_SUCCESS;
}

int entra_policy_key_issuer_ok(apr_pool_t *p, const entra_policy *pol,
                               const entra_issuers *iss, const entra_key *key,
                               const json_t *claims)
{
    const char *tid, *v1, *v2, *kiss;

    if (!key->issuer)
        return 1;
    if (!iss->entra)
        return strcmp(key->issuer, iss->v2) == 0;
    tid = token_tenant(pol, claims);
    if (!tid)
        return 0;
    kiss = templated(p, key->issuer, tid);
    issuers_for(p, pol, iss, tid, &v2, &v1);
    return strcmp(kiss, v2) == 0 || strcmp(kiss, v1) == 0;
}
