/* entra_json_parse_object and its helpers: strict, pool-owned JSON. */
#include "unit.h"

#include <limits.h>

#include "entra_json.h"

#define BIG 1000000

/* Parses the NUL-terminated `s` with a generous limit. */
static apr_status_t parse(const char *s, json_t **out, const char **why)
{
    *why = NULL;
    return entra_json_parse_object(up, s, strlen(s), BIG, out, why);
}

/* Parses and expects a refusal with a reason and no object. */
static int refused(const char *buf, apr_size_t len)
{
    json_t *j = (json_t *)1;
    const char *why = NULL;
    apr_status_t rv = entra_json_parse_object(up, buf, len, BIG, &j, &why);
    return rv == APR_EINVAL && j == NULL && why != NULL && *why != '\0';
}
#define REFUSED(s) refused((s), sizeof(s) - 1)

static void test_accepts_objects(void)
{
    json_t *j = NULL;
    const char *why;

    CHECK_INT_EQ(parse("{\"a\":1,\"b\":[1,2],\"c\":{\"d\":\"e\"},\"f\":null,\"g\":1.5}", &j, &why),
                 APR_SUCCESS);
    CHECK(json_is_object(j));
    CHECK_INT_EQ(json_object_size(j), 5);
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "a")), 1);
    CHECK_INT_EQ(json_array_size(json_object_get(j, "b")), 2);
    CHECK_STR_EQ(entra_json_str(json_object_get(j, "c"), "d"), "e");
    CHECK(json_is_null(json_object_get(j, "f")));

    CHECK_INT_EQ(parse("{}", &j, &why), APR_SUCCESS);
    CHECK(json_is_object(j) && json_object_size(j) == 0);
    /* Insignificant whitespace (RFC 8259) is part of the document. */
    CHECK_INT_EQ(parse(" \t\r\n{ \"a\" : \"b\" }\n ", &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "a"), "b");
    /* Escapes other than \u0000 are fine. */
    CHECK_INT_EQ(parse("{\"s\":\"\\u00e9\\n\\\"\\/\"}", &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "s"), "\xc3\xa9\n\"/");
    /* Only `len` bytes are read: what follows is not part of the document. */
    CHECK_INT_EQ(entra_json_parse_object(up, "{\"a\":1}garbage", 7, BIG, &j, &why), APR_SUCCESS);
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "a")), 1);
}

static void test_rejects_non_objects(void)
{
    json_t *j = (json_t *)1;
    const char *why = NULL;

    CHECK_INT_EQ(parse("[1,2]", &j, &why), APR_EINVAL);
    CHECK(j == NULL);
    CHECK_STR_EQ(why, "JSON is not an object");
    CHECK(REFUSED("[]"));
    CHECK(REFUSED("[{\"a\":1}]"));
    CHECK(REFUSED("\"str\""));
    CHECK(REFUSED("42"));
    CHECK(REFUSED("-1.5e3"));
    CHECK(REFUSED("true"));
    CHECK(REFUSED("false"));
    CHECK(REFUSED("null"));
}

static void test_rejects_malformed(void)
{
    CHECK(refused("", 0));
    CHECK(REFUSED(" "));
    CHECK(REFUSED("{"));
    CHECK(REFUSED("{\"a\":1"));
    CHECK(REFUSED("{\"a\"}"));
    CHECK(REFUSED("{a:1}"));
    CHECK(REFUSED("{'a':1}"));
    CHECK(REFUSED("{\"a\":1,}"));
    CHECK(REFUSED("{\"a\":01}"));
    CHECK(REFUSED("{\"a\":NaN}"));
    CHECK(REFUSED("{\"a\":\"\xff\"}"));    /* invalid UTF-8 */
    CHECK(REFUSED("{\"a\":\"\\ud800\"}")); /* lone surrogate */
    CHECK(REFUSED("{\"a\":\"x\ny\"}"));    /* raw control character */
}

static void test_rejects_duplicate_keys(void)
{
    json_t *j = (json_t *)1;
    const char *why = NULL;

    CHECK_INT_EQ(parse("{\"a\":1,\"a\":2}", &j, &why), APR_EINVAL);
    CHECK(j == NULL);
    CHECK_STR_EQ(why, "duplicate JSON member");
    CHECK_INT_EQ(parse("{\"a\":1,\"b\":2,\"a\":1}", &j, &why), APR_EINVAL);
    CHECK_STR_EQ(why, "duplicate JSON member");
    /* Nested objects too. */
    CHECK_INT_EQ(parse("{\"x\":{\"k\":\"v\",\"k\":\"v\"}}", &j, &why), APR_EINVAL);
    CHECK_STR_EQ(why, "duplicate JSON member");
    CHECK_INT_EQ(parse("{\"x\":[{\"k\":1,\"k\":2}]}", &j, &why), APR_EINVAL);
    CHECK_STR_EQ(why, "duplicate JSON member");
    /* The same key spelt with an escape is the same key. */
    CHECK_INT_EQ(parse("{\"alg\":\"RS256\",\"\\u0061lg\":\"none\"}", &j, &why), APR_EINVAL);
    CHECK_STR_EQ(why, "duplicate JSON member");
    /* Same names in different objects are fine. */
    CHECK_INT_EQ(parse("{\"k\":{\"k\":{\"k\":1}}}", &j, &why), APR_SUCCESS);
}

static void test_rejects_trailing_garbage(void)
{
    CHECK(REFUSED("{\"a\":1}x"));
    CHECK(REFUSED("{\"a\":1}{\"b\":2}"));
    CHECK(REFUSED("{\"a\":1} 1"));
    CHECK(REFUSED("{\"a\":1}}"));
    CHECK(REFUSED("{\"a\":1},"));
    /* A NUL byte inside the buffer, after the object, is not whitespace. */
    CHECK(refused("{\"a\":1}\0", 8));
    CHECK(refused("{\"a\":1}\0{\"b\":2}", 15));
    CHECK(refused("{\"a\":\0}", 7));
}

static void test_rejects_nul_in_strings(void)
{
    CHECK(REFUSED("{\"a\":\"x\\u0000y\"}"));
    CHECK(REFUSED("{\"a\":\"\\u0000\"}"));
    CHECK(REFUSED("{\"a\\u0000b\":1}"));
    CHECK(REFUSED("{\"a\":[\"\\u0000\"]}"));
    CHECK(refused("{\"a\":\"x\0y\"}", 11)); /* a raw NUL byte */
}

static void test_size_limit(void)
{
    const char *doc = "{\"abc\":\"defg\"}"; /* 14 bytes */
    json_t *j = (json_t *)1;
    const char *why = NULL;

    CHECK_INT_EQ(entra_json_parse_object(up, doc, 14, 13, &j, &why), APR_EINVAL);
    CHECK(j == NULL);
    CHECK(why != NULL && *why != '\0');
    CHECK_INT_EQ(entra_json_parse_object(up, doc, 14, 14, &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "abc"), "defg");
    CHECK_INT_EQ(entra_json_parse_object(up, doc, 14, 0, &j, &why), APR_EINVAL);
}

static void test_deep_nesting(void)
{
    /* Bounded recursion: a very deep document is refused, not a stack overflow. */
    apr_size_t depth = 100000, i, n = 0;
    char *buf = apr_palloc(up, 2 * depth + 16);

    n += (apr_size_t)sprintf(buf, "{\"a\":");
    for (i = 0; i < depth; i++)
        buf[n++] = '[';
    for (i = 0; i < depth; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    CHECK(refused(buf, n));
}

/* The parsed reference belongs to the pool: destroying the pool drops it. */
static void test_pool_owns_reference(void)
{
    apr_pool_t *sub;
    json_t *j, *kept;
    const char *why;
    int i, failures = 0;

    apr_pool_create(&sub, up);
    CHECK_INT_EQ(entra_json_parse_object(sub, "{\"a\":[1,2,3]}", 13, BIG, &j, &why), APR_SUCCESS);
    CHECK_INT_EQ(j->refcount, 1);
    kept = json_incref(j);
    CHECK_INT_EQ(kept->refcount, 2);
    apr_pool_destroy(sub);
    CHECK_INT_EQ(kept->refcount, 1);
    CHECK_INT_EQ(json_array_size(json_object_get(kept, "a")), 3);
    json_decref(kept);

    /* Many documents in a subpool; ASan's leak check catches a missing decref. */
    apr_pool_create(&sub, up);
    for (i = 0; i < 2000; i++) {
        const char *doc =
            apr_psprintf(sub, "{\"i\":%d,\"s\":\"%0100d\",\"o\":{\"x\":[%d]}}", i, i, i);
        if (entra_json_parse_object(sub, doc, strlen(doc), BIG, &j, &why) != APR_SUCCESS ||
            json_integer_value(json_object_get(j, "i")) != i)
            failures++;
    }
    /* Failed parses own nothing. */
    for (i = 0; i < 200; i++) {
        if (entra_json_parse_object(sub, "[1,{\"a\":1}]", 11, BIG, &j, &why) != APR_EINVAL)
            failures++;
        if (entra_json_parse_object(sub, "{\"a\":1,\"a\":[1]}", 15, BIG, &j, &why) != APR_EINVAL)
            failures++;
    }
    apr_pool_destroy(sub);
    CHECK_INT_EQ(failures, 0);
}

static void test_pool_own(void)
{
    apr_pool_t *sub;
    json_t *j = json_pack("{s:i}", "n", 5);

    apr_pool_create(&sub, up);
    CHECK(entra_json_pool_own(sub, j) == j);
    json_incref(j);
    CHECK_INT_EQ(j->refcount, 2);
    apr_pool_destroy(sub);
    CHECK_INT_EQ(j->refcount, 1);
    json_decref(j);
    CHECK(entra_json_pool_own(up, NULL) == NULL);
}

static void test_str_and_dump(void)
{
    json_t *j;
    const char *why;

    CHECK_INT_EQ(
        parse("{\"s\":\"v\",\"n\":1,\"z\":\"\",\"o\":{\"s\":\"w\"},\"nul\":null}", &j, &why),
        APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "s"), "v");
    CHECK_STR_EQ(entra_json_str(j, "z"), "");
    CHECK(entra_json_str(j, "n") == NULL);
    CHECK(entra_json_str(j, "o") == NULL);
    CHECK(entra_json_str(j, "nul") == NULL);
    CHECK(entra_json_str(j, "absent") == NULL);
    CHECK(entra_json_str(json_object_get(j, "n"), "s") == NULL);

    CHECK_INT_EQ(parse("{ \"a\" : [ 1 , 2 ] }", &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_dump(up, j), "{\"a\":[1,2]}");
}

static void test_numbers_and_strings(void)
{
    json_t *j = NULL;
    const char *why;

    CHECK_INT_EQ(parse("{\"max\":9223372036854775807,\"min\":-9223372036854775808,\"z\":-0}", &j, &why),
                 APR_SUCCESS);
    CHECK(json_integer_value(json_object_get(j, "max")) == LLONG_MAX);
    CHECK(json_integer_value(json_object_get(j, "min")) == LLONG_MIN);
    CHECK(json_is_integer(json_object_get(j, "z")) && json_integer_value(json_object_get(j, "z")) == 0);
    CHECK(REFUSED("{\"a\":9223372036854775808}"));
    CHECK(REFUSED("{\"a\":-9223372036854775809}"));
    CHECK(REFUSED("{\"a\":1e400}"));
    CHECK(REFUSED("{\"a\":-1e400}"));
    CHECK(REFUSED("{\"a\":1.}"));
    CHECK(REFUSED("{\"a\":.5}"));
    CHECK(REFUSED("{\"a\":+1}"));
    CHECK(REFUSED("{\"a\":1e}"));
    CHECK(REFUSED("{\"a\":-}"));
    CHECK(REFUSED("{\"a\":tru}"));
    CHECK(REFUSED("{\"a\":truex}"));
    CHECK_INT_EQ(parse("{\"a\":1e-400,\"b\":2.5E+3,\"c\":1.25}", &j, &why), APR_SUCCESS);
    CHECK(json_is_real(json_object_get(j, "a")) && json_real_value(json_object_get(j, "a")) == 0.0);
    CHECK(json_real_value(json_object_get(j, "b")) == 2500.0);
    CHECK(json_real_value(json_object_get(j, "c")) == 1.25);
    /* A surrogate pair is one code point; 4-byte UTF-8 passes through. */
    CHECK_INT_EQ(parse("{\"e\":\"\\ud83d\\ude00\",\"r\":\"\xf0\x9f\x98\x80\"}", &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "e"), "\xf0\x9f\x98\x80");
    CHECK_STR_EQ(entra_json_str(j, "r"), "\xf0\x9f\x98\x80");
    CHECK(REFUSED("{\"a\":\"\\udc00\"}"));             /* low surrogate alone */
    CHECK(REFUSED("{\"a\":\"\\ud800\\u0041\"}"));      /* high surrogate, then no low one */
    CHECK(REFUSED("{\"a\":\"\xc0\xaf\"}"));            /* overlong */
    CHECK(REFUSED("{\"a\":\"\xed\xa0\x80\"}"));        /* UTF-8 encoded surrogate */
    CHECK(REFUSED("{\"a\":\"\xf4\x90\x80\x80\"}"));    /* above U+10FFFF */
    CHECK(REFUSED("{\"a\":\"\xe2\x82\"}"));            /* truncated */
    CHECK(REFUSED("{\"a\":\"\\x41\"}"));               /* unknown escape */
    CHECK(REFUSED("{\"a\":\"\\u00g1\"}"));
    CHECK(REFUSED("{\"a\":\"abc"));
    CHECK(REFUSED("{\"a\":\"abc\\"));
    CHECK(REFUSED("\xef\xbb\xbf{}"));                  /* no byte order mark */
    /* Escaped keys and values of every kind, decoded. */
    CHECK_INT_EQ(parse("{\"k\\t\\\"\":\"\\b\\f\\n\\r\\t\\\\\\/\\u20ac\"}", &j, &why), APR_SUCCESS);
    CHECK_STR_EQ(entra_json_str(j, "k\t\""), "\b\f\n\r\t\\/\xe2\x82\xac");
}

/* The parser against jansson's own loader on generated documents: same verdict, same
 * values (both refuse \u0000; depth stays far below both limits). */
static unsigned long long rng_state = 0x2545f4914f6cdd1dULL;
static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

static const char *const atoms[] = {
    "0", "-0", "1", "-1", "42", "3.25", "-2.5e-3", "1E+2", "9223372036854775807",
    "-9223372036854775808", "1e-400", "true", "false", "null", "\"\"", "\"abc\"",
    "\"\\u00e9t\\u00e9\"", "\"\\ud83d\\ude00\"", "\"a\\nb\\\"c\\\\\"", "\"\xc3\xa9\"",
    "\"\xf0\x9f\x98\x80\"", "\"\\/\"",
};
static const char *const bad_atoms[] = {
    "9223372036854775808", "1e400", "01", "1.", ".5", "\"\\ud800\"", "\"\\u0000\"", "\"\xff\"",
    "\"\xed\xa0\x80\"", "\"tab\there\"",
};
static const char *const keys[] = {"\"a\"", "\"b\"", "\"\\u0061\"", "\"aud\"", "\"\"", "\"k\\u00e9\"",
                                   "\"roles\"", "\"a\\u0000\""};
static const char *const noise[] = {"{", "}", "[", "]", ",", ":", "\"", "\\", " ", "\n", "0", "e",
                                    "-", ".", "\x01", "\xc3", "\0", "u", "t", "n"};

static void gen(apr_pool_t *p, char **buf, apr_size_t *n, apr_size_t cap, int depth, int top)
{
    unsigned i, k, c = top ? 0 : depth > 3 ? 2 : rnd(3);
#define EMIT(str)                                                                                  \
    do {                                                                                           \
        const char *s_ = (str);                                                                    \
        apr_size_t l_ = strlen(s_);                                                                \
        if (*n + l_ < cap) {                                                                       \
            memcpy(*buf + *n, s_, l_);                                                             \
            *n += l_;                                                                              \
        }                                                                                          \
    } while (0)
    if (c == 0) {
        EMIT("{");
        k = rnd(5);
        for (i = 0; i < k; i++) {
            if (i)
                EMIT(rnd(2) ? "," : " , ");
            EMIT(keys[rnd(16) ? rnd(sizeof(keys) / sizeof(keys[0]) - 1) : sizeof(keys) / sizeof(keys[0]) - 1]);
            EMIT(rnd(2) ? ":" : " :\t");
            gen(p, buf, n, cap, depth + 1, 0);
        }
        EMIT("}");
    }
    else if (c == 1) {
        EMIT("[");
        k = rnd(5);
        for (i = 0; i < k; i++) {
            if (i)
                EMIT(",");
            gen(p, buf, n, cap, depth + 1, 0);
        }
        EMIT(rnd(2) ? "]" : " ]");
    }
    else if (rnd(16))
        EMIT(atoms[rnd(sizeof(atoms) / sizeof(atoms[0]))]);
    else
        EMIT(bad_atoms[rnd(sizeof(bad_atoms) / sizeof(bad_atoms[0]))]);
#undef EMIT
}

static void test_agrees_with_jansson(void)
{
    apr_pool_t *p;
    unsigned i, accepted = 0, refused_n = 0, dups = 0, disagree = 0, nul_docs = 0;
    char first[200] = "";

    apr_pool_create(&p, up);
    for (i = 0; i < 200000; i++) {
        char *buf = apr_palloc(p, 2048);
        apr_size_t n = 0, m;
        json_t *ours = NULL, *theirs;
        json_error_t err;
        const char *why = NULL;
        int ok_ours, ok_theirs, dup_theirs;

        gen(p, &buf, &n, 2000, 0, 1);
        /* Half the documents get a few random edits. */
        for (m = rnd(2) ? 0 : 1 + rnd(3); m > 0 && n > 0; m--) {
            apr_size_t at = rnd((unsigned)n);
            const char *t = noise[rnd(sizeof(noise) / sizeof(noise[0]))];
            apr_size_t tl = t[0] ? strlen(t) : 1;
            switch (rnd(3)) {
            case 0: /* delete a byte */
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            case 1: /* insert */
                if (n + tl < 2000) {
                    memmove(buf + at + tl, buf + at, n - at);
                    memcpy(buf + at, t, tl);
                    n += tl;
                }
                break;
            default: /* replace */
                buf[at] = t[0];
            }
        }
        ok_ours = entra_json_parse_object(p, buf, n, BIG, &ours, &why) == APR_SUCCESS;
        theirs = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &err);
        dup_theirs = !theirs && json_error_code(&err) == json_error_duplicate_key;
        ok_theirs = theirs && json_is_object(theirs);
        if (memchr(buf, 0, n)) {
            /* jansson's reader skips a NUL byte in some places (it ends its look-ahead
             * buffer); we refuse NUL bytes everywhere. */
            nul_docs++;
            if (ok_ours && !disagree++)
                snprintf(first, sizeof(first), "a document with a NUL byte was accepted");
        }
        else if (ok_ours != ok_theirs || (ok_ours && !json_equal(ours, theirs)) ||
            (!ok_ours && dup_theirs != (why && strcmp(why, "duplicate JSON member") == 0))) {
            if (!disagree++)
                snprintf(first, sizeof(first), "ours %d (%s), jansson %d (%s): %.*s", ok_ours,
                         why ? why : "-", ok_theirs, theirs ? "-" : err.text, (int)(n > 120 ? 120 : n),
                         buf);
        }
        accepted += (unsigned)ok_ours;
        refused_n += (unsigned)!ok_ours;
        dups += (unsigned)dup_theirs;
        json_decref(theirs);
        if (i % 1000 == 999)
            apr_pool_clear(p);
    }
    apr_pool_destroy(p);
    CHECK_MSG(disagree == 0, "%u of 200000 documents judged differently; first: %s", disagree, first);
    CHECK_MSG(accepted > 10000 && refused_n > 10000 && dups > 1000 && nul_docs > 1000,
              "the generator should produce all kinds: %u accepted, %u refused, %u duplicates, "
              "%u with NUL bytes", accepted, refused_n, dups, nul_docs);
}

/* Seconds from untrusted numbers: out-of-range values are refused before any conversion
 * (a fuzzer found expires_in 7.2e32 reaching an undefined double-to-integer cast). */
static void test_seconds(void)
{
    json_t *j;
    const char *why;
    apr_int64_t v = -7;

    CHECK_INT_EQ(parse("{\"a\":3600,\"b\":1.9,\"c\":\"3599\",\"big\":7.2e32,\"neg\":-1,"
                       "\"nine\":253402300799,\"ten\":253402300800,\"s13\":\"1234567890123\","
                       "\"sx\":\"12a\",\"se\":\"\",\"t\":true}", &j, &why),
                 APR_SUCCESS);
    CHECK(entra_json_seconds(json_object_get(j, "a"), 0, &v) && v == 3600);
    CHECK(entra_json_seconds(json_object_get(j, "b"), 0, &v) && v == 1);
    CHECK(!entra_json_seconds(json_object_get(j, "c"), 0, &v));
    CHECK(entra_json_seconds(json_object_get(j, "c"), 1, &v) && v == 3599);
    CHECK(entra_json_seconds(json_object_get(j, "nine"), 1, &v) && v == 253402300799LL);
    v = -7;
    CHECK(!entra_json_seconds(json_object_get(j, "big"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "neg"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "ten"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "s13"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "sx"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "se"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "t"), 1, &v));
    CHECK(!entra_json_seconds(json_object_get(j, "absent"), 1, &v));
    CHECK(v == -7);
}

int main(void)
{
    unit_begin("test_json");
    RUN(test_accepts_objects);
    RUN(test_rejects_non_objects);
    RUN(test_rejects_malformed);
    RUN(test_rejects_duplicate_keys);
    RUN(test_rejects_trailing_garbage);
    RUN(test_rejects_nul_in_strings);
    RUN(test_size_limit);
    RUN(test_deep_nesting);
    RUN(test_pool_owns_reference);
    RUN(test_pool_own);
    RUN(test_str_and_dump);
    RUN(test_numbers_and_strings);
    RUN(test_agrees_with_jansson);
    RUN(test_seconds);
    return unit_end();
}
