/* entra_policy_check, entra_policy_key_issuer_ok and entra_is_guid. */
#include "unit.h"

#include "entra_policy.h"

#define T "72f988bf-86f1-41af-91ab-2d7cd011db47" /* the configured tenant */
#define U "0d2e1f3c-4b5a-6978-8a9b-cdeffedcba98" /* another tenant */
#define A "11111111-2222-3333-4444-555555555555" /* allowed (multi-tenant) */
#define B "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" /* allowed (multi-tenant) */
#define V2(t) "https://login.microsoftonline.com/" t "/v2.0"
#define V1(t) "https://sts.windows.net/" t "/"
#define AUD "api://my-api"
#define AUD2 "6e74172b-be56-4843-9ff4-e66a39bb12e3"

static const apr_int64_t NOW = 1700000000;

static apr_array_header_t *strs(const char *a, const char *b)
{
    apr_array_header_t *arr = apr_array_make(up, 2, sizeof(const char *));
    if (a)
        APR_ARRAY_PUSH(arr, const char *) = a;
    if (b)
        APR_ARRAY_PUSH(arr, const char *) = b;
    return arr;
}

static entra_policy single_pol(void)
{
    entra_policy p;
    memset(&p, 0, sizeof(p));
    p.tenant = T;
    p.audiences = strs(AUD, AUD2);
    p.clock_skew = 60;
    p.max_lifetime = 3600;
    return p;
}

static entra_policy multi_pol(void)
{
    entra_policy p = single_pol();
    p.tenant = "common";
    p.multi_tenant = 1;
    p.allowed_tenants = strs(A, B);
    return p;
}

static const entra_issuers ISS_SINGLE = {V2(T), V1(T), 1};
static const entra_issuers ISS_SINGLE_NO_V1 = {V2(T), NULL, 1};
static const entra_issuers ISS_MULTI = {V2("{tenantid}"), V1("{tenantid}"), 1};
static const entra_issuers ISS_MULTI_NO_V1 = {V2("{tenantid}"), NULL, 1};
static const entra_issuers ISS_OTHER = {"https://idp.example.com/realms/main", NULL, 0};

/* A claim set that passes single_pol/ISS_SINGLE at NOW; the caller owns it. */
static json_t *good(const char *iss, const char *tid)
{
    json_t *c = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s}", "iss", iss, "aud", AUD, "exp",
                          (json_int_t)(NOW + 600), "nbf", (json_int_t)(NOW - 60), "iat",
                          (json_int_t)(NOW - 60), "sub", "subject");
    if (tid)
        json_object_set_new(c, "tid", json_string(tid));
    return c;
}

static const char *last_why;

/* Runs the check and drops the claims. */
static apr_status_t check(const entra_policy *pol, const entra_issuers *iss, json_t *claims)
{
    apr_status_t rv;
    last_why = NULL;
    rv = entra_policy_check(up, pol, iss, claims, NOW, &last_why);
    json_decref(claims);
    return rv;
}

/* Replaces (or, with NULL, removes) one member. */
static json_t *with(json_t *c, const char *key, json_t *v)
{
    if (v)
        json_object_set_new(c, key, v);
    else
        json_object_del(c, key);
    return c;
}

#define OK(pol, iss, claims)                                                                       \
    CHECK_MSG(check(&(pol), &(iss), (claims)) == APR_SUCCESS, "why: %s", last_why)
#define BAD(pol, iss, claims)                                                                      \
    CHECK_MSG(check(&(pol), &(iss), (claims)) == APR_EINVAL && last_why && *last_why,              \
              "accepted or no reason")

/* Time claims given explicitly (nbf/iat < 0 leaves them out). */
static json_t *timed(double exp, int exp_real, apr_int64_t nbf, apr_int64_t iat)
{
    json_t *c = good(V2(T), T);
    json_object_set_new(c, "exp", exp_real ? json_real(exp) : json_integer((json_int_t)exp));
    if (nbf >= 0)
        json_object_set_new(c, "nbf", json_integer(nbf));
    else
        json_object_del(c, "nbf");
    if (iat >= 0)
        json_object_set_new(c, "iat", json_integer(iat));
    else
        json_object_del(c, "iat");
    return c;
}

static void test_is_guid(void)
{
    CHECK(entra_is_guid(T));
    CHECK(entra_is_guid("00000000-0000-0000-0000-000000000000"));
    CHECK(entra_is_guid("abcdef01-2345-6789-abcd-ef0123456789"));
    CHECK(!entra_is_guid("72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
    CHECK(!entra_is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4A"));
    CHECK(!entra_is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4"));
    CHECK(!entra_is_guid("72f988bf-86f1-41af-91ab-2d7cd011db477"));
    CHECK(!entra_is_guid("72f988bf86f141af91ab2d7cd011db47"));
    CHECK(!entra_is_guid("72f988bf-86f1-41af-91ab2d7cd011db47-"));
    CHECK(!entra_is_guid("72f988b-f86f1-41af-91ab-2d7cd011db47"));
    CHECK(!entra_is_guid("{72f988bf-86f1-41af-91ab-2d7cd011db}"));
    CHECK(!entra_is_guid("72f988bg-86f1-41af-91ab-2d7cd011db47"));
    CHECK(!entra_is_guid("72f988bf_86f1_41af_91ab_2d7cd011db47"));
    CHECK(!entra_is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4 "));
    CHECK(!entra_is_guid(" 2f988bf-86f1-41af-91ab-2d7cd011db47"));
    CHECK(!entra_is_guid("------------------------------------"));
    CHECK(!entra_is_guid("common"));
    CHECK(!entra_is_guid(""));
    CHECK(!entra_is_guid(NULL));
}

static void test_exp_required_and_numeric(void)
{
    entra_policy p = single_pol();

    OK(p, ISS_SINGLE, good(V2(T), T));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", NULL));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_string("1700000600")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_true()));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_null()));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_pack("[I]", (json_int_t)(NOW + 600))));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_pack("{}")));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_real((double)NOW + 600.5)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_real((double)NOW - 3600.25)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "nbf", json_string("1")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "iat", json_string("1")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "nbf", json_null()));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "iat", json_false()));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "nbf", json_real((double)NOW - 0.5)));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "iat", json_real((double)NOW - 10.75)));
    /* nbf and iat are optional. */
    OK(p, ISS_SINGLE, with(with(good(V2(T), T), "nbf", NULL), "iat", NULL));
    /* Values far outside any range. */
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_integer(0)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "exp", json_integer(-1)));
    BAD(p, ISS_SINGLE, with(with(good(V2(T), T), "iat", NULL), "exp", json_real(1e300)));
    BAD(p, ISS_SINGLE,
        with(with(good(V2(T), T), "iat", NULL), "exp",
             json_integer((json_int_t)0x7fffffffffffffffLL)));
}

static void test_skew_boundaries(void)
{
    entra_policy p = single_pol();

    /* exp with 60 s skew */
    OK(p, ISS_SINGLE, timed((double)(NOW - 59), 0, NOW - 1000, NOW - 1000));
    BAD(p, ISS_SINGLE, timed((double)(NOW - 61), 0, NOW - 1000, NOW - 1000));
    BAD(p, ISS_SINGLE, timed((double)(NOW - 3000), 0, NOW - 3500, NOW - 3500));
    OK(p, ISS_SINGLE, timed((double)NOW - 59.5, 1, NOW - 1000, NOW - 1000));
    BAD(p, ISS_SINGLE, timed((double)NOW - 60.5, 1, NOW - 1000, NOW - 1000));
    /* nbf */
    OK(p, ISS_SINGLE, timed((double)(NOW + 600), 0, NOW + 59, -1));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 600), 0, NOW + 61, -1));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 900), 0, NOW + 600, -1));
    /* iat in the future */
    OK(p, ISS_SINGLE, timed((double)(NOW + 600), 0, -1, NOW + 59));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 600), 0, -1, NOW + 61));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 1200), 0, -1, NOW + 600));
    /* With no skew at all. */
    p.clock_skew = 0;
    OK(p, ISS_SINGLE, timed((double)(NOW + 1), 0, NOW, NOW));
    BAD(p, ISS_SINGLE, timed((double)(NOW - 1), 0, NOW - 100, NOW - 100));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 600), 0, NOW + 1, -1));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 600), 0, -1, NOW + 1));
}

static void test_lifetime(void)
{
    entra_policy p = single_pol(); /* max 3600, skew 60 */

    OK(p, ISS_SINGLE, timed((double)(NOW + 100), 0, -1, NOW - 3500));   /* exp-iat = 3600 */
    BAD(p, ISS_SINGLE, timed((double)(NOW + 100), 0, -1, NOW - 3501));  /* exp-iat = 3601 */
    OK(p, ISS_SINGLE, timed((double)(NOW + 100), 0, NOW - 3500, -1));   /* exp-nbf = 3600 */
    BAD(p, ISS_SINGLE, timed((double)(NOW + 100), 0, NOW - 3501, -1));  /* exp-nbf = 3601 */
    BAD(p, ISS_SINGLE, timed((double)(NOW + 100), 0, NOW - 3501, NOW)); /* nbf alone too long */
    BAD(p, ISS_SINGLE, timed((double)(NOW + 100), 0, NOW, NOW - 3501)); /* iat alone too long */
    /* Without iat and nbf: exp - now may reach max + skew. */
    OK(p, ISS_SINGLE, timed((double)(NOW + 3600 + 60), 0, -1, -1));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 3600 + 61), 0, -1, -1));
    BAD(p, ISS_SINGLE, timed((double)(NOW + 86400 * 365), 0, -1, -1));
    /* With iat: a token issued now cannot live past max either. */
    BAD(p, ISS_SINGLE, timed((double)(NOW + 3601), 0, -1, NOW));
    p.max_lifetime = 90000;
    OK(p, ISS_SINGLE, timed((double)(NOW + 86400), 0, NOW - 300, NOW - 300));
}

static void test_single_tenant_issuer(void)
{
    entra_policy p = single_pol();

    OK(p, ISS_SINGLE, good(V2(T), T));
    OK(p, ISS_SINGLE, good(V1(T), T));
    /* Exact comparison only. */
    BAD(p, ISS_SINGLE, good(V2(T) "/", T));
    BAD(p, ISS_SINGLE, good("https://sts.windows.net/" T, T));
    BAD(p, ISS_SINGLE, good("HTTPS://login.microsoftonline.com/" T "/v2.0", T));
    BAD(p, ISS_SINGLE, good("https://Login.MicrosoftOnline.com/" T "/v2.0", T));
    BAD(p, ISS_SINGLE,
        good("https://login.microsoftonline.com/72F988BF-86F1-41AF-91AB-2D7CD011DB47/v2.0", T));
    BAD(p, ISS_SINGLE, good("https://login.microsoftonline.com/" T "/v2.0 ", T));
    BAD(p, ISS_SINGLE, good("http://login.microsoftonline.com/" T "/v2.0", T));
    BAD(p, ISS_SINGLE, good("https://login.microsoftonline.com/" T "/V2.0", T));
    BAD(p, ISS_SINGLE, good("https://login.microsoftonline.com/" T, T));
    BAD(p, ISS_SINGLE, good("", T));
    /* Another tenant's issuer, with or without its tid. */
    BAD(p, ISS_SINGLE, good(V2(U), T));
    BAD(p, ISS_SINGLE, good(V2(U), U));
    BAD(p, ISS_SINGLE, good(V1(U), U));
    BAD(p, ISS_SINGLE, good(V1(U), T));
    /* The template text is not an issuer. */
    BAD(p, ISS_SINGLE, good(V2("{tenantid}"), T));
    /* tid must equal the tenant and be a string. */
    BAD(p, ISS_SINGLE, good(V2(T), U));
    BAD(p, ISS_SINGLE, good(V2(T), "72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
    BAD(p, ISS_SINGLE, good(V2(T), ""));
    BAD(p, ISS_SINGLE, good(V2(T), "common"));
    BAD(p, ISS_SINGLE, with(good(V2(T), NULL), "tid", json_integer(1)));
    BAD(p, ISS_SINGLE, with(good(V2(T), NULL), "tid", json_null()));
    BAD(p, ISS_SINGLE, with(good(V2(T), NULL), "tid", json_pack("[s]", T)));
    /* iss is required and a string. */
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "iss", NULL));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "iss", json_pack("[s]", V2(T))));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "iss", json_null()));
}

/* Without a discovered v1 issuer the canonical https://sts.windows.net/<tid>/ is accepted. */
static void test_single_tenant_no_v1(void)
{
    entra_policy p = single_pol();

    OK(p, ISS_SINGLE_NO_V1, good(V2(T), T));
    OK(p, ISS_SINGLE_NO_V1, good(V1(T), T));
    BAD(p, ISS_SINGLE_NO_V1, good(V1(U), T));
    BAD(p, ISS_SINGLE_NO_V1, good(V1(U), U));
    BAD(p, ISS_SINGLE_NO_V1, good("https://sts.windows.net/" T, T));
    BAD(p, ISS_SINGLE_NO_V1, good("https://sts.windows.net/" T "//", T));
    BAD(p, ISS_SINGLE_NO_V1, good("https://sts.windows.net//", T));
}

static void test_multi_tenant(void)
{
    entra_policy p = multi_pol();

    OK(p, ISS_MULTI, good(V2(A), A));
    OK(p, ISS_MULTI, good(V1(A), A));
    OK(p, ISS_MULTI, good(V2(B), B));
    OK(p, ISS_MULTI, good(V1(B), B));
    OK(p, ISS_MULTI_NO_V1, good(V1(A), A));
    OK(p, ISS_MULTI_NO_V1, good(V2(B), B));
    /* tid not a tenant id, not allowed, absent, not a string */
    BAD(p, ISS_MULTI, good(V2("not-a-guid"), "not-a-guid"));
    BAD(p, ISS_MULTI,
        good(V2("11111111-2222-3333-4444-55555555555G"), "11111111-2222-3333-4444-55555555555G"));
    BAD(p, ISS_MULTI,
        good(V2("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"), "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"));
    BAD(p, ISS_MULTI, good(V2("common"), "common"));
    BAD(p, ISS_MULTI, good(V2(""), ""));
    BAD(p, ISS_MULTI, good(V2(U), U));
    BAD(p, ISS_MULTI, good(V1(U), U));
    BAD(p, ISS_MULTI, good(V2(T), T));
    BAD(p, ISS_MULTI, good(V2(A), NULL));
    BAD(p, ISS_MULTI, with(good(V2(A), NULL), "tid", json_integer(1)));
    BAD(p, ISS_MULTI, with(good(V2(A), NULL), "tid", json_pack("[s]", A)));
    /* The issuer must be the one of the token's own tid. */
    BAD(p, ISS_MULTI, good(V2(B), A));
    BAD(p, ISS_MULTI, good(V1(B), A));
    BAD(p, ISS_MULTI, good(V2(U), A));
    BAD(p, ISS_MULTI_NO_V1, good(V1(B), A));
    BAD(p, ISS_MULTI, good(V2("{tenantid}"), A));
    BAD(p, ISS_MULTI, good(V2("common"), A));
    BAD(p, ISS_MULTI, good(V2(A) "/", A));
    /* The tid must look like a tenant id even when the allowed list (wrongly) holds the
     * same text: the GUID rule stands on its own. */
    p.allowed_tenants = strs("not-a-guid", "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE");
    BAD(p, ISS_MULTI, good(V2("not-a-guid"), "not-a-guid"));
    BAD(p, ISS_MULTI,
        good(V2("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"), "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"));
    /* An empty allowed list allows nobody. */
    p.allowed_tenants = strs(NULL, NULL);
    BAD(p, ISS_MULTI, good(V2(A), A));
    p.allowed_tenants = strs(B, NULL);
    BAD(p, ISS_MULTI, good(V2(A), A));
    OK(p, ISS_MULTI, good(V2(B), B));
}

/* A non-Entra issuer (EntraMetadataURL): only its one issuer, compared exactly. */
static void test_non_entra(void)
{
    entra_policy p = single_pol();
    p.tenant = NULL;

    OK(p, ISS_OTHER, good(ISS_OTHER.v2, NULL));
    BAD(p, ISS_OTHER, good(apr_pstrcat(up, ISS_OTHER.v2, "/", NULL), NULL));
    BAD(p, ISS_OTHER, good("https://IDP.example.com/realms/main", NULL));
    BAD(p, ISS_OTHER, good("https://idp.example.com/realms/mai", NULL));
    BAD(p, ISS_OTHER, good(V2(T), T));
    BAD(p, ISS_OTHER, good(V1(T), T));
    BAD(p, ISS_OTHER, with(good(ISS_OTHER.v2, NULL), "iss", NULL));
    /* Times and audience still apply. */
    BAD(p, ISS_OTHER, with(good(ISS_OTHER.v2, NULL), "exp", NULL));
    BAD(p, ISS_OTHER, with(good(ISS_OTHER.v2, NULL), "aud", json_string("other")));
}

static void test_audience(void)
{
    entra_policy p = single_pol();

    OK(p, ISS_SINGLE, good(V2(T), T));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string(AUD2)));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s]", AUD)));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s,s]", "other", AUD2)));
    OK(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s,s,s]", "x", "y", AUD)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", NULL));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string("other")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string("")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string("API://my-api")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string(AUD "/")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_string("api://my-ap")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[]")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s,s]", "x", "y")));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s,i]", AUD, 1)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[i,s]", 1, AUD)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[s,n]", AUD)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("[[s]]", AUD)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_integer(1)));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_null()));
    BAD(p, ISS_SINGLE, with(good(V2(T), T), "aud", json_pack("{s:s}", "aud", AUD)));
}

static int key_ok(const entra_policy *pol, const entra_issuers *iss, const char *key_issuer,
                  json_t *claims)
{
    entra_key k;
    int r;
    memset(&k, 0, sizeof(k));
    k.kid = "k";
    k.is_rsa = 1;
    k.issuer = key_issuer;
    r = entra_policy_key_issuer_ok(up, pol, iss, &k, claims);
    json_decref(claims);
    return r;
}

static void test_key_issuer(void)
{
    entra_policy s = single_pol(), m = multi_pol(), o = single_pol();
    o.tenant = NULL;

    /* No issuer on the key: nothing to contradict. */
    CHECK(key_ok(&s, &ISS_SINGLE, NULL, good(V1(T), T)));
    CHECK(key_ok(&m, &ISS_MULTI, NULL, good(V2(A), A)));
    CHECK(key_ok(&o, &ISS_OTHER, NULL, good(ISS_OTHER.v2, NULL)));
    /* Single tenant: the key's v2 form fits a v1 token of the same tenant, and so on. */
    CHECK(key_ok(&s, &ISS_SINGLE, V2(T), good(V1(T), T)));
    CHECK(key_ok(&s, &ISS_SINGLE, V2(T), good(V2(T), T)));
    CHECK(key_ok(&s, &ISS_SINGLE, V1(T), good(V2(T), T)));
    CHECK(key_ok(&s, &ISS_SINGLE_NO_V1, V1(T), good(V2(T), T)));
    CHECK(key_ok(&s, &ISS_SINGLE, V2("{tenantid}"), good(V1(T), T)));
    CHECK(key_ok(&s, &ISS_SINGLE, V1("{tenantid}"), good(V2(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE, V2(U), good(V1(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE, V1(U), good(V2(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE_NO_V1, V1(U), good(V2(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE, V2(T) "/", good(V2(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE, "https://evil.example/" T "/v2.0", good(V2(T), T)));
    CHECK(!key_ok(&s, &ISS_SINGLE, "", good(V2(T), T)));
    /* Multi-tenant: judged against the token's tid. */
    CHECK(key_ok(&m, &ISS_MULTI, V2("{tenantid}"), good(V2(A), A)));
    CHECK(key_ok(&m, &ISS_MULTI, V2(A), good(V1(A), A)));
    CHECK(key_ok(&m, &ISS_MULTI, V1(A), good(V2(A), A)));
    CHECK(key_ok(&m, &ISS_MULTI_NO_V1, V1("{tenantid}"), good(V2(B), B)));
    CHECK(!key_ok(&m, &ISS_MULTI, V2(B), good(V2(A), A)));
    CHECK(!key_ok(&m, &ISS_MULTI, V1(U), good(V1(A), A)));
    CHECK(!key_ok(&m, &ISS_MULTI, V2("{tenantid}"), good(V2(A), NULL)));
    CHECK(!key_ok(&m, &ISS_MULTI, V2(A), with(good(V2(A), NULL), "tid", json_integer(1))));
    /* Non-Entra: the key's issuer is the one issuer or nothing. */
    CHECK(key_ok(&o, &ISS_OTHER, ISS_OTHER.v2, good(ISS_OTHER.v2, NULL)));
    CHECK(
        !key_ok(&o, &ISS_OTHER, "https://idp.example.com/realms/other", good(ISS_OTHER.v2, NULL)));
    CHECK(!key_ok(&o, &ISS_OTHER, V2(T), good(ISS_OTHER.v2, NULL)));
}

/* The checks have no memory: the same claims answer the same way twice. */
static void test_claims_untouched(void)
{
    entra_policy p = multi_pol();
    json_t *c = good(V2(A), A);
    char *before = json_dumps(c, JSON_SORT_KEYS | JSON_COMPACT), *after;
    const char *why;

    CHECK_INT_EQ(entra_policy_check(up, &p, &ISS_MULTI, c, NOW, &why), APR_SUCCESS);
    CHECK_INT_EQ(entra_policy_check(up, &p, &ISS_MULTI, c, NOW, &why), APR_SUCCESS);
    CHECK_INT_EQ(entra_policy_check(up, &p, &ISS_MULTI, c, NOW + 3600, &why), APR_EINVAL);
    after = json_dumps(c, JSON_SORT_KEYS | JSON_COMPACT);
    CHECK_STR_EQ(after, before);
    free(before);
    free(after);
    json_decref(c);
}

/* EntraCloud: the token's issuer must be on the cloud's hosts, whatever discovery says. */
static void test_clouds(void)
{
    entra_policy pub = single_pol(), gov = single_pol(), cn = single_pol();
    const entra_issuers gov_iss = {"https://login.microsoftonline.us/" T "/v2.0", NULL, 1};
    const entra_issuers cn_iss = {"https://login.partner.microsoftonline.cn/" T "/v2.0", NULL, 1};
    pub.cloud = ENTRA_CLOUD_PUBLIC;
    gov.cloud = ENTRA_CLOUD_USGOV;
    cn.cloud = ENTRA_CLOUD_CHINA;
    CHECK(entra_cloud_from_name("public") == ENTRA_CLOUD_PUBLIC);
    CHECK(entra_cloud_from_name("usgov") == ENTRA_CLOUD_USGOV);
    CHECK(entra_cloud_from_name("china") == ENTRA_CLOUD_CHINA);
    CHECK(entra_cloud_from_name("germany") == ENTRA_CLOUD_ANY);
    CHECK_STR_EQ(entra_cloud_authority(ENTRA_CLOUD_CHINA), "https://login.chinacloudapi.cn/");
    CHECK_STR_EQ(entra_cloud_authority(ENTRA_CLOUD_USGOV), "https://login.microsoftonline.us/");
    OK(pub, ISS_SINGLE, good(V2(T), T));
    OK(pub, ISS_SINGLE, good(V1(T), T));
    /* a public-cloud document under a China route: its tokens are refused */
    BAD(cn, ISS_SINGLE, good(V2(T), T));
    CHECK_STR_EQ(last_why, "token issuer belongs to another cloud");
    BAD(gov, ISS_SINGLE, good(V2(T), T));
    OK(gov, gov_iss, good("https://login.microsoftonline.us/" T "/v2.0", T));
    OK(gov, gov_iss, good(V1(T), T)); /* Azure Government keeps sts.windows.net for v1 */
    BAD(pub, gov_iss, good("https://login.microsoftonline.us/" T "/v2.0", T));
    OK(cn, cn_iss, good("https://login.partner.microsoftonline.cn/" T "/v2.0", T));
    OK(cn, cn_iss, good("https://sts.chinacloudapi.cn/" T "/", T)); /* v1 fallback host */
    BAD(cn, cn_iss, good(V1(T), T));
    BAD(pub, cn_iss, good("https://login.partner.microsoftonline.cn/" T "/v2.0", T));
}

int main(void)
{
    unit_begin("test_policy");
    RUN(test_is_guid);
    RUN(test_exp_required_and_numeric);
    RUN(test_skew_boundaries);
    RUN(test_lifetime);
    RUN(test_single_tenant_issuer);
    RUN(test_single_tenant_no_v1);
    RUN(test_multi_tenant);
    RUN(test_non_entra);
    RUN(test_audience);
    RUN(test_key_issuer);
    RUN(test_claims_untouched);
    RUN(test_clouds);
    return unit_end();
}
