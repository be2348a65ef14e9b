/* The whole inbound decision, entra_verify_token, for the input as a bearer token, with
 * a fixed key set (t/fuzz/verify_jwks.json, whose seeds t/fuzz/make_seeds.py signs), a
 * fixed policy and a fixed clock. The keys sit in an in-process store as a fetched record;
 * unknown kids find the refetch throttle taken, so nothing is ever fetched (the HTTP stub
 * aborts if asked). Each input is verified four times: without caches, then three times
 * through a fresh verdict table and claims cache (cold, table hit, L1 hit); all four
 * outcomes must agree and the keys can never be unavailable. */
#include <string.h>

#include "entra_json.h"
#include "entra_verify.h"
#include "fuzz.h"

#define NOW 1767225600 /* as in make_seeds.py */
#define TENANT "11111111-2222-3333-4444-555555555555"
#define META_V2 "https://login.microsoftonline.com/" TENANT "/v2.0/.well-known/openid-configuration"
#define META_V1 "https://login.microsoftonline.com/" TENANT "/.well-known/openid-configuration"

#ifndef FUZZ_DATA
#define FUZZ_DATA "t/fuzz"
#endif

static entra_source *source;
static entra_policy policy;

static void release_keys(void)
{
    entra_snapshot_release(source->cur); /* an unmanaged pool: apr_terminate misses it */
    source->cur = NULL;
}

static void setup(void)
{
    apr_pool_t *root = fuzz_init();
    static char buf[64 * 1024];
    FILE *f = fopen(FUZZ_DATA "/verify_jwks.json", "rb");
    size_t n;
    json_t *jwks, *rec;
    entra_keyset *ks;
    entra_store *store;
    const char *why, *text;
    apr_time_t forever = apr_time_now() + apr_time_from_sec(10 * 365 * 86400);
    int a;

    FUZZ_ASSERT(f);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    FUZZ_ASSERT(entra_json_parse_object(root, buf, n, sizeof(buf), &jwks, &why) == APR_SUCCESS);
    FUZZ_ASSERT(entra_keyset_from_jwks(root, jwks, "verify_jwks.json", &ks, &why) == APR_SUCCESS);
    FUZZ_ASSERT(ks->keys->nelts == 5);
    /* The record a fetch would have stored (see entra_keys.c). */
    rec = entra_json_pool_own(root, json_deep_copy(ks->compact));
    json_object_set_new(rec, "iss2", json_string("https://login.microsoftonline.com/" TENANT "/v2.0"));
    json_object_set_new(rec, "iss1", json_string("https://sts.windows.net/" TENANT "/"));
    json_object_set_new(rec, "fetched", json_integer((json_int_t)apr_time_sec(apr_time_now())));
    json_object_set_new(rec, "v1try", json_true());
    json_object_set_new(rec, "v", json_integer(1));
    text = entra_json_dump(root, rec);

    FUZZ_ASSERT(entra_memstore_create(root, 64, &store) == APR_SUCCESS);
    FUZZ_ASSERT(entra_source_create(root, "fuzz", META_V2, META_V1, 1, &source) == APR_SUCCESS);
    source->store = store;
    atexit(release_keys); /* runs before fuzz_init's apr_terminate */
    store->put(store, "fuzz|rec", text, strlen(text), forever);
    /* An unknown kid would refetch: the throttle is taken and a failure is remembered. */
    store->put(store, "fuzz|kid", "1", 1, forever);
    store->put(store, "fuzz|fail", "no network in the fuzzer", 24, forever);

    memset(&policy, 0, sizeof(policy));
    policy.tenant = TENANT;
    policy.audiences = apr_array_make(root, 2, sizeof(const char *));
    APR_ARRAY_PUSH(policy.audiences, const char *) = "api://fuzz-api";
    APR_ARRAY_PUSH(policy.audiences, const char *) = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    policy.clock_skew = 300;
    policy.max_lifetime = 86400;
    for (a = ENTRA_ALG_RS256; a <= ENTRA_ALG_ES512; a++)
        policy.alg_mask |= ENTRA_ALG_BIT(a);
}

static void check(const entra_verify_result *r)
{
    FUZZ_ASSERT(r->outcome == ENTRA_VERIFY_OK || r->outcome == ENTRA_VERIFY_INVALID);
    FUZZ_ASSERT(r->outcome == ENTRA_VERIFY_OK ? r->claims != NULL : r->why && *r->why);
    FUZZ_ASSERT(r->token_id == NULL || strlen(r->token_id) == 12);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    entra_verifier plain, cached;
    entra_verify_result r0, r;
    apr_size_t bytes = entra_vtab_bytes(16);
    void *mem;
    int i;

    if (!source)
        setup();
    apr_pool_create(&p, fuzz_init());
    memset(&plain, 0, sizeof(plain));
    plain.policy = policy;
    plain.source = source;
    entra_verify_token(p, &plain, (const char *)data, size, NOW, &r0);
    check(&r0);
    if (getenv("FUZZ_VERBOSE")) /* to see what the seeds reach */
        fprintf(stderr, "verify: %s\n", r0.outcome == ENTRA_VERIFY_OK ? "OK" : r0.why);

    cached = plain;
    mem = apr_pcalloc(p, bytes);
    cached.vtab = entra_vtab_attach(p, mem, bytes, 7);
    FUZZ_ASSERT(cached.vtab && entra_l1_create(p, 16, &cached.l1) == APR_SUCCESS);
    for (i = 0; i < 3; i++) {
        entra_verify_token(p, &cached, (const char *)data, size, NOW, &r);
        check(&r);
        FUZZ_ASSERT(r.outcome == r0.outcome);
        if (r0.outcome == ENTRA_VERIFY_OK)
            FUZZ_ASSERT(r.cached == (i > 0) && json_equal(r.claims, r0.claims));
    }
    apr_pool_destroy(p);
    return 0;
}
