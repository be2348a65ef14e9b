/* entra_json_parse_object and its helpers: strict, pool-owned JSON. */
#include "unit.h"

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
    return unit_end();
}
