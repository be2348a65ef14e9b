/* Strict, pool-owned JSON: our own parser (entra_json.c) building jansson values. */
#ifndef ENTRA_JSON_H
#define ENTRA_JSON_H

#include <apr_pools.h>
#include <jansson.h>

/* Parses untrusted JSON: at most `max` bytes, duplicate keys rejected, the whole buffer
 * consumed, the top level an object, \u0000 refused, at most 256 levels deep. The reference belongs to pool `p` (released by
 * a pool cleanup). On failure returns APR_EINVAL and sets *why to a short reason. */
apr_status_t entra_json_parse_object(apr_pool_t *p, const char *buf, apr_size_t len,
                                     apr_size_t max, json_t **out, const char **why);

/* Hands a reference the caller owns to pool `p`; returns `j`. */
json_t *entra_json_pool_own(apr_pool_t *p, json_t *j);

/* The string member `key` of object `o`, or NULL when absent or not a string. */
const char *entra_json_str(const json_t *o, const char *key);

/* Seconds (a time or a duration) from a JSON number, or from a string of at most 12 digits
 * when `strings` is set: 1 with *out set when the value lies in 0..ENTRA_JSON_SECONDS_MAX,
 * 0 otherwise (absent, another type, negative, or beyond the year 9999).
 * Untrusted numbers never reach an integer conversion they could overflow. */
#define ENTRA_JSON_SECONDS_MAX 253402300799.0
int entra_json_seconds(const json_t *v, int strings, apr_int64_t *out);

/* Serialises compactly into pool memory. */
char *entra_json_dump(apr_pool_t *p, const json_t *j);

#endif
