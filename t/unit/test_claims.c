/* entra_claims: caller kind, array membership, groups overage, xms_cc, the acrs challenge. */
#include "unit.h"

#include <apr_base64.h>

#include "entra_claims.h"

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        fprintf(stderr, "bad test JSON %s: %s\n", text, e.text);
        exit(2);
    }
    return j;
}

static entra_caller caller(const char *text)
{
    json_t *j = J(text);
    entra_caller c = entra_claims_caller(j);
    json_decref(j);
    return c;
}

static void test_caller_idtyp_decides(void)
{
    CHECK(caller("{\"idtyp\":\"app\",\"scp\":\"x\"}") == ENTRA_CALLER_APP);
    CHECK(caller("{\"idtyp\":\"user\"}") == ENTRA_CALLER_USER);
    CHECK(caller("{\"idtyp\":\"user\",\"oid\":\"a\",\"sub\":\"a\"}") == ENTRA_CALLER_USER);
    CHECK(caller("{\"idtyp\":\"device\",\"oid\":\"a\",\"sub\":\"a\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"idtyp\":\"App\",\"oid\":\"a\",\"sub\":\"a\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"idtyp\":1,\"scp\":\"x\",\"oid\":\"a\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"idtyp\":null,\"oid\":\"a\",\"sub\":\"a\"}") == ENTRA_CALLER_NEITHER);
}

static void test_caller_without_idtyp(void)
{
    CHECK(caller("{\"oid\":\"a\",\"sub\":\"a\"}") == ENTRA_CALLER_APP);
    CHECK(caller("{\"oid\":\"a\",\"sub\":\"b\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"oid\":\"a\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"sub\":\"a\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"oid\":\"a\",\"sub\":\"b\",\"scp\":\"User.Read\"}") == ENTRA_CALLER_USER);
    CHECK(caller("{\"oid\":\"a\",\"sub\":\"a\",\"scp\":\"User.Read\"}") == ENTRA_CALLER_USER);
    CHECK(caller("{\"sub\":\"b\",\"scp\":\"\"}") == ENTRA_CALLER_USER);
    CHECK(caller("{\"oid\":\"a\",\"sub\":\"a\",\"scp\":[\"x\"]}") == ENTRA_CALLER_NEITHER);
    /* missing idtyp, oid and sub alike: neither, even with a scope */
    CHECK(caller("{\"scp\":\"User.Read\"}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{}") == ENTRA_CALLER_NEITHER);
    CHECK(caller("{\"oid\":1,\"sub\":1}") == ENTRA_CALLER_NEITHER);
}

static void test_array_has(void)
{
    static const char *const v[] = {"c1", "c3"};
    json_t *j = J("{\"acrs\":[\"c2\",\"c3\"],\"s\":\"c1\",\"m\":[1,\"C1\",null]}");
    CHECK(entra_claims_array_has(j, "acrs", v, 2, 0));
    CHECK(!entra_claims_array_has(j, "acrs", v, 1, 0));
    CHECK(!entra_claims_array_has(j, "s", v, 2, 0)); /* a string is not an array */
    CHECK(!entra_claims_array_has(j, "m", v, 2, 0));
    CHECK(entra_claims_array_has(j, "m", v, 2, 1));
    CHECK(!entra_claims_array_has(j, "absent", v, 2, 0));
    json_decref(j);
}

static void test_groups_and_overage(void)
{
    static const char *const g[] = {"0E1D2C3B-4A59-4687-9A1B-2C3D4E5F6071"};
    json_t *in = J("{\"groups\":[\"0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071\"]}");
    json_t *out = J("{\"groups\":[\"11111111-4a59-4687-9a1b-2c3d4e5f6071\"]}");
    json_t *over1 = J("{\"groups\":[\"0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071\"],"
                      "\"_claim_names\":{\"groups\":\"src1\"},\"_claim_sources\":{}}");
    json_t *over2 = J("{\"hasgroups\":true}");
    json_t *not_over = J("{\"hasgroups\":false,\"_claim_names\":{\"other\":\"src1\"},"
                         "\"groups\":[\"0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071\"]}");
    CHECK(entra_claims_in_groups(in, g, 1) == ENTRA_MEMBER_YES);
    CHECK(entra_claims_in_groups(out, g, 1) == ENTRA_MEMBER_NO);
    CHECK(entra_claims_in_groups(over1, g, 1) == ENTRA_MEMBER_OVERAGE);
    CHECK(entra_claims_in_groups(over2, g, 1) == ENTRA_MEMBER_OVERAGE);
    CHECK(entra_claims_in_groups(not_over, g, 1) == ENTRA_MEMBER_YES);
    CHECK(!entra_claims_groups_overage(in));
    json_decref(in);
    json_decref(out);
    json_decref(over1);
    json_decref(over2);
    json_decref(not_over);
}

static void test_cp1(void)
{
    json_t *a = J("{\"xms_cc\":[\"cp1\"]}"), *b = J("{\"xms_cc\":[\"cp2\",\"cp1\"]}"),
           *c = J("{\"xms_cc\":\"cp1\"}"), *d = J("{\"xms_cc\":[\"CP1\"]}"), *e = J("{}");
    CHECK(entra_claims_client_cp1(a));
    CHECK(entra_claims_client_cp1(b));
    CHECK(entra_claims_client_cp1(c));
    CHECK(!entra_claims_client_cp1(d));
    CHECK(!entra_claims_client_cp1(e));
    json_decref(a);
    json_decref(b);
    json_decref(c);
    json_decref(d);
    json_decref(e);
}

static void test_acrs_challenge(void)
{
    const char *b64 = entra_claims_acrs_challenge(up, "c1");
    char dec[256];
    int n;
    /* Microsoft's documentation shows the same encoding (standard base64, padded) for
     * value "cp1": eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiY3AxIn19fQ== */
    CHECK_STR_EQ(entra_claims_acrs_challenge(up, "cp1"),
                 "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiY3AxIn19fQ==");
    n = apr_base64_decode(dec, b64);
    dec[n] = '\0';
    CHECK_STR_EQ(dec, "{\"access_token\":{\"acrs\":{\"essential\":true,\"value\":\"c1\"}}}");
    b64 = entra_claims_acrs_challenge(up, "a\"b");
    n = apr_base64_decode(dec, b64);
    dec[n] = '\0';
    CHECK_STR_EQ(dec, "{\"access_token\":{\"acrs\":{\"essential\":true,\"value\":\"a\\\"b\"}}}");
}

int main(void)
{
    unit_begin("test_claims");
    RUN(test_caller_idtyp_decides);
    RUN(test_caller_without_idtyp);
    RUN(test_array_has);
    RUN(test_groups_and_overage);
    RUN(test_cp1);
    RUN(test_acrs_challenge);
    return unit_end();
}
