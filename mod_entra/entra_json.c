#include <stdlib.h>
#include <string.h>
#include <apr_strings.h>

#include "entra_json.h"

static apr_status_t json_cleanup(void *data)
{
    json_decref((json_t *)data);
    return APR_SUCCESS;
}

json_t *entra_json_pool_own(apr_pool_t *p, json_t *j)
{
    if (j)
        apr_pool_cleanup_register(p, j, json_cleanup, apr_pool_cleanup_null);
    return j;
}

apr_status_t entra_json_parse_object(apr_pool_t *p, const char *buf, apr_size_t len,
                                     apr_size_t max, json_t **out, const char **why)
{
    json_error_t err;
    json_t *j;

    *out = NULL;
    if (len > max) {
        *why = "JSON document too large";
        return APR_EINVAL;
    }
    /* Without JSON_DISABLE_EOF_CHECK trailing garbage is an error. */
    j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
    if (!j) {
        /* \u0000 is refused too: C string compares must see every byte of a claim. */
        *why = json_error_code(&err) == json_error_duplicate_key ? "duplicate JSON member"
                                                                 : "malformed JSON";
        return APR_EINVAL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *why = "JSON is not an object";
        return APR_EINVAL;
    }
    *out = entra_json_pool_own(p, j);
    return APR_SUCCESS;
}

const char *entra_json_str(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

char *entra_json_dump(apr_pool_t *p, const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT), *r;
    if (!s)
        return NULL;
    r = apr_pstrdup(p, s);
    free(s);
    return r;
}
