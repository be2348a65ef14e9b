#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <apr_strings.h>

#include "entra_json.h"

/* The parser: one pass over the buffer building jansson values directly, with the rules
 * json_loadb(JSON_REJECT_DUPLICATES) applies (RFC 8259 grammar, strict UTF-8, no lone
 * surrogates, integers that fit json_int_t, reals that do not overflow) plus ours (an
 * object at the top, no \u0000, bounded depth). jansson's own loader reads through a
 * per-character stream and copies every token twice; a token on the request path is
 * parsed here in a third of its time (t/unit/test_json.c compares the two on generated
 * documents). */

#define MAX_DEPTH 256

typedef struct {
    const unsigned char *p, *end;
    char *scratch; /* bump space for keys and decoded strings, LIFO like the recursion */
    apr_size_t top;
    int dup;       /* failed on a duplicate member */
} parser;

static json_t *parse_value(parser *s, int depth);

static void skip_ws(parser *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

/* Length of the valid UTF-8 sequence (2..4 bytes) at p, or 0. */
static int utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xbf;
    int n, i;

    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f; /* no UTF-16 surrogates */
    }
    else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f; /* nothing above U+10FFFF */
    }
    else
        return 0;
    if (end - p < n || p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80)
        *o++ = (char)cp;
    else if (cp < 0x800) {
        *o++ = (char)(0xc0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | cp >> 12);
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    else {
        *o++ = (char)(0xf0 | cp >> 18);
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

/* A string at s->p (the opening quote). *out points into the buffer when the string has no
 * escapes and `terminate` is 0, else into scratch (NUL-terminated); the caller releases
 * scratch by resetting s->top. */
static int parse_string(parser *s, const char **out, apr_size_t *len, int terminate)
{
    const unsigned char *start = ++s->p, *p = start;
    char *o, *obase;
    int n;

    while (p < s->end) {
        unsigned char c = *p;
        if (c == '"') {
            if (!terminate) {
                *out = (const char *)start;
                *len = (apr_size_t)(p - start);
                s->p = p + 1;
                return 1;
            }
            break;
        }
        if (c == '\\') {
            break;
        }
        if (c < 0x20)
            return 0;
        if (c < 0x80)
            p++;
        else if ((n = utf8_len(p, s->end)) != 0)
            p += n;
        else
            return 0;
    }
    if (p >= s->end)
        return 0;
    /* Decode into scratch: escapes only shrink, so the rest of the buffer bounds it. */
    obase = o = s->scratch + s->top;
    memcpy(o, start, (apr_size_t)(p - start));
    o += p - start;
    while (p < s->end) {
        unsigned char c = *p;
        if (c == '"') {
            *o = '\0';
            *out = obase;
            *len = (apr_size_t)(o - obase);
            s->top += *len + 1;
            s->p = p + 1;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            if (!(n = utf8_len(p, s->end)))
                return 0;
            memcpy(o, p, (apr_size_t)n);
            o += n;
            p += n;
            continue;
        }
        if (c != '\\') {
            *o++ = (char)c;
            p++;
            continue;
        }
        if (s->end - p < 2)
            return 0;
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
            *o++ = (char)p[1];
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            if (s->end - p < 6 || !hex4(p + 2, &cp) || cp == 0)
                return 0; /* \u0000 would cut C strings short */
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return 0;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (s->end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) ||
                    lo < 0xdc00 || lo > 0xdfff)
                    return 0;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            o = put_utf8(o, cp);
            p += 6;
            continue;
        }
        default:
            return 0;
        }
        p += 2;
    }
    return 0;
}

static json_t *parse_number(parser *s)
{
    const unsigned char *start = s->p, *p = s->p;
    int neg = 0, real = 0;
    unsigned long long v = 0, limit;

    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= s->end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0') {
        p++;
        if (p < s->end && *p >= '0' && *p <= '9')
            return NULL; /* leading zero */
    }
    else
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    if (p < s->end && *p == '.') {
        real = 1;
        p++;
        if (p >= s->end || *p < '0' || *p > '9')
            return NULL;
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < s->end && (*p == 'e' || *p == 'E')) {
        real = 1;
        p++;
        if (p < s->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= s->end || *p < '0' || *p > '9')
            return NULL;
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    s->p = p;
    if (!real) {
        const unsigned char *d = start + neg;
        limit = neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX;
        for (; d < p; d++) {
            unsigned dig = (unsigned)(*d - '0');
            if (v > (limit - dig) / 10)
                return NULL; /* does not fit json_int_t, as jansson refuses */
            v = v * 10 + dig;
        }
        if (neg)
            return json_integer(v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN
                                                                       : -(long long)v);
        return json_integer((json_int_t)v);
    }
    {
        apr_size_t n = (apr_size_t)(p - start), i;
        char *buf = s->scratch + s->top, point = '.', *endp;
        const struct lconv *lc = localeconv();
        double d;

        if (lc && lc->decimal_point && lc->decimal_point[0] && !lc->decimal_point[1])
            point = lc->decimal_point[0];
        memcpy(buf, start, n);
        buf[n] = '\0';
        for (i = 0; point != '.' && i < n; i++)
            if (buf[i] == '.')
                buf[i] = point;
        errno = 0;
        d = strtod(buf, &endp);
        if (endp != buf + n || (errno == ERANGE && (d > 1.0 || d < -1.0)))
            return NULL; /* overflow, as jansson refuses */
        return json_real(d);
    }
}

static int literal(parser *s, const char *word, apr_size_t n)
{
    if ((apr_size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

static json_t *parse_object(parser *s, int depth)
{
    json_t *obj = json_object(), *val;
    const char *key;
    apr_size_t klen, mark;

    s->p++; /* { */
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return obj;
    }
    while (obj) {
        if (s->p >= s->end || *s->p != '"')
            break;
        mark = s->top;
        if (!parse_string(s, &key, &klen, 1))
            break;
        /* Right after the key, as jansson does: the first error found is the one reported. */
        if (json_object_get(obj, key)) {
            s->dup = 1;
            break;
        }
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':')
            break;
        s->p++;
        skip_ws(s);
        val = parse_value(s, depth + 1);
        if (!val || json_object_set_new_nocheck(obj, key, val) != 0)
            break;
        s->top = mark;
        skip_ws(s);
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            return obj;
        }
        if (s->p >= s->end || *s->p != ',')
            break;
        s->p++;
        skip_ws(s);
    }
    json_decref(obj);
    return NULL;
}

static json_t *parse_array(parser *s, int depth)
{
    json_t *arr = json_array(), *val;

    s->p++; /* [ */
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return arr;
    }
    while (arr) {
        val = parse_value(s, depth + 1);
        if (!val || json_array_append_new(arr, val) != 0)
            break;
        skip_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return arr;
        }
        if (s->p >= s->end || *s->p != ',')
            break;
        s->p++;
        skip_ws(s);
    }
    json_decref(arr);
    return NULL;
}

static json_t *parse_value(parser *s, int depth)
{
    const char *str;
    apr_size_t len, mark;
    json_t *j;

    if (depth > MAX_DEPTH || s->p >= s->end)
        return NULL;
    switch (*s->p) {
    case '{':
        return parse_object(s, depth);
    case '[':
        return parse_array(s, depth);
    case '"':
        mark = s->top;
        if (!parse_string(s, &str, &len, 0))
            return NULL;
        j = json_stringn_nocheck(str, len);
        s->top = mark;
        return j;
    case 't':
        return literal(s, "true", 4) ? json_true() : NULL;
    case 'f':
        return literal(s, "false", 5) ? json_false() : NULL;
    case 'n':
        return literal(s, "null", 4) ? json_null() : NULL;
    default:
        return parse_number(s);
    }
}

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

static json_t *load(apr_pool_t *p, const char *buf, apr_size_t len, int *duplicate)
{
    parser s;
    json_t *j;

    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)buf;
    s.end = s.p + len;
    /* Every scratch byte in use stands for a byte of the document (keys and strings lose
     * their quotes, escapes shrink, a number's copy gains one NUL). */
    s.scratch = apr_palloc(p, len + 8);
    skip_ws(&s);
    j = s.p < s.end && (*s.p == '{' || *s.p == '[') ? parse_value(&s, 1) : NULL;
    if (j) {
        skip_ws(&s);
        if (s.p != s.end) {
            json_decref(j);
            j = NULL;
        }
    }
    if (duplicate)
        *duplicate = s.dup;
    return j;
}

apr_status_t entra_json_parse_object(apr_pool_t *p, const char *buf, apr_size_t len,
                                     apr_size_t max, json_t **out, const char **why)
{
    json_t *j;
    int dup = 0;

    *out = NULL;
    if (len > max) {
        *why = "JSON document too large";
        return APR_EINVAL;
    }
    j = load(p, buf, len, &dup);
    if (!j) {
        *why = dup ? "duplicate JSON member" : "malformed JSON";
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

int entra_json_seconds(const json_t *v, int strings, apr_int64_t *out)
{
    double d;
    const char *s;
    apr_int64_t n = 0;
    int i;

    if (json_is_number(v)) {
        d = json_number_value(v);
        /* Range-checked as a double first: converting one out of range is undefined. */
        if (!(d >= 0 && d <= ENTRA_JSON_SECONDS_MAX))
            return 0;
        *out = (apr_int64_t)d;
        return 1;
    }
    if (!strings || !json_is_string(v))
        return 0;
    s = json_string_value(v);
    for (i = 0; s[i]; i++) {
        if (i == 12 || s[i] < '0' || s[i] > '9')
            return 0;
        n = n * 10 + (s[i] - '0');
    }
    if (i == 0 || (double)n > ENTRA_JSON_SECONDS_MAX)
        return 0;
    *out = n;
    return 1;
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
