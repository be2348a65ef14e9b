#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <apr_base64.h>
#include <apr_strings.h>

#include "entra_claims.h"

entra_caller entra_claims_caller(const json_t *claims)
{
    json_t *idtyp = json_object_get(claims, "idtyp"), *scp, *oid, *sub;

    /* Entra sets idtyp only when the app registration asks for it (optional claim); when it
     * is there it is the authority. */
    if (idtyp) {
        const char *v = json_is_string(idtyp) ? json_string_value(idtyp) : "";
        return !strcmp(v, "app") ? ENTRA_CALLER_APP
               : !strcmp(v, "user") ? ENTRA_CALLER_USER
                                    : ENTRA_CALLER_NEITHER;
    }
    scp = json_object_get(claims, "scp");
    oid = json_object_get(claims, "oid");
    sub = json_object_get(claims, "sub");
    if (!json_is_string(oid) && !json_is_string(sub))
        return ENTRA_CALLER_NEITHER;
    if (scp)
        return json_is_string(scp) ? ENTRA_CALLER_USER : ENTRA_CALLER_NEITHER;
    /* Microsoft's documented test for app-only tokens without idtyp: the subject is the
     * calling service principal itself. */
    if (json_is_string(oid) && json_is_string(sub) &&
        !strcmp(json_string_value(oid), json_string_value(sub)))
        return ENTRA_CALLER_APP;
    return ENTRA_CALLER_NEITHER;
}

int entra_claims_array_has(const json_t *claims, const char *name, const char *const *values,
                           int n, int nocase)
{
    json_t *arr = json_object_get(claims, name), *e;
    size_t k;
    int i;

    if (!json_is_array(arr))
        return 0;
    json_array_foreach(arr, k, e)
    {
        const char *s;
        if (!json_is_string(e))
            continue;
        s = json_string_value(e);
        for (i = 0; i < n; i++)
            if (nocase ? !strcasecmp(s, values[i]) : !strcmp(s, values[i]))
                return 1;
    }
    return 0;
}

int entra_claims_groups_overage(const json_t *claims)
{
    json_t *names = json_object_get(claims, "_claim_names");
    return (json_is_object(names) && json_object_get(names, "groups")) ||
           json_is_true(json_object_get(claims, "hasgroups"));
}

entra_member entra_claims_in_groups(const json_t *claims, const char *const *ids, int n)
{
    /* In overage the groups claim is absent or partial: "not a member" would be a guess. */
    if (entra_claims_groups_overage(claims))
        return ENTRA_MEMBER_OVERAGE;
    return entra_claims_array_has(claims, "groups", ids, n, 1) ? ENTRA_MEMBER_YES
                                                                : ENTRA_MEMBER_NO;
}

int entra_claims_client_cp1(const json_t *claims)
{
    static const char *const cp1[] = {"cp1"};
    json_t *cc = json_object_get(claims, "xms_cc");
    if (json_is_string(cc))
        return !strcmp(json_string_value(cc), "cp1");
    return entra_claims_array_has(claims, "xms_cc", cp1, 1, 0);
}

const char *entra_claims_acrs_challenge(apr_pool_t *p, const char *acrs)
{
    json_t *req = json_pack("{s:{s:{s:b,s:s}}}", "access_token", "acrs", "essential", 1,
                            "value", acrs);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL, *out;
    int len;

    json_decref(req);
    if (!text)
        return NULL;
    len = (int)strlen(text);
    out = apr_palloc(p, (apr_size_t)apr_base64_encode_len(len));
    apr_base64_encode(out, text, len);
    free(text);
    return out;
}
