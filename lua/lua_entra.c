/* The standalone Lua 5.4 module `entra` (local entra = require "entra"): acquires tokens
 * (managed identity, client secret, certificate, workload identity) and decodes and verifies
 * Entra ID access tokens with the same core as mod_entra.
 *
 * No C globals: each luaopen_entra makes a context userdata (an APR pool, the in-process
 * token store, the token sources by identity and resource) that every function holds as an
 * upvalue, as lua-cjson keeps its configuration. Verifiers own their pool, store and key
 * source, and keep the context alive through a user value. Pools are unmanaged (their own
 * allocator), so states in different threads share nothing but what APR, curl and OpenSSL
 * make safe. Expected failures return nil, message; misuse raises. No message ever holds a
 * token, a secret or key material. */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <apr_general.h>
#include <apr_hash.h>
#include <apr_lib.h>
#include <apr_strings.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <lauxlib.h>
#include <lua.h>

#include "entra_arc.h"
#include "entra_b64url.h"
#include "entra_cred.h"
#include "entra_http.h"
#include "entra_json.h"
#include "entra_jwk.h"
#include "entra_l1.h"
#include "entra_lua_claims.h"
#include "entra_lua_json.h"
#include "entra_policy.h"
#include "entra_store.h"
#include "entra_tokenstore.h"
#include "entra_verify.h"

#define CONTEXT_MT "entra.context"
#define SCRATCH_MT "entra.scratch"
#define VERIFIER_MT "entra.verifier"
#define CLAIMSREF_MT "entra.claimsref"
#define CLAIMS_METHODS "entra.claims.methods"
#define CLAIMS_REF_FIELD "__entra_claims"

#define DEFAULT_AUTHORITY "https://login.microsoftonline.com/"
#define DEFAULT_ARC_KEY_DIR "/var/opt/azcmagent/tokens"
#define IMDS_URL "http://169.254.169.254/metadata/identity/oauth2/token"
#define TOKEN_STORE_ENTRIES 4096 /* tokens, leases, failures, IMDS rate slots */
#define VERIFIER_STORE_ENTRIES 1024
#define VERIFIER_VTAB_ENTRIES 256
#define VERIFIER_L1_SLOTS 256
#define DEFAULT_TIMEOUT_MS 10000L
#define MAX_TIMEOUT_S 120
#define DECODE_MAX (64 * 1024)

/* ------------------------------------------------------------------ context */

typedef struct {
    apr_pool_t *pool;      /* NULL once the context is finalized */
    entra_store *tokens;   /* in-process store behind every token source */
    apr_hash_t *creds;     /* identity key -> entra_cred (each in its own subpool) */
    apr_hash_t *sources;   /* identity key "\n" resource -> entra_tokensrc */
    int apr_initialized;   /* this instance holds one apr_initialize reference */
} lentra_ctx;

static int context_gc(lua_State *L)
{
    lentra_ctx *ctx = luaL_checkudata(L, 1, CONTEXT_MT);
    if (ctx->pool) {
        apr_pool_destroy(ctx->pool);
        ctx->pool = NULL;
    }
    if (ctx->apr_initialized) {
        ctx->apr_initialized = 0;
        apr_terminate(); /* refcounted: the last instance tears APR down */
    }
    return 0;
}

static lentra_ctx *context_of(lua_State *L)
{
    lentra_ctx *ctx = lua_touserdata(L, lua_upvalueindex(1));
    if (!ctx || !ctx->pool)
        luaL_error(L, "entra: module instance is closed");
    return ctx;
}

/* ------------------------------------------------------------------ scratch pools */

/* A per-call pool in a to-be-closed userdata: freed when the call returns or raises. */
typedef struct {
    apr_pool_t *pool;
} lentra_scratch;

static int scratch_close(lua_State *L)
{
    lentra_scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    if (s->pool) {
        apr_pool_destroy(s->pool);
        s->pool = NULL;
    }
    return 0;
}

/* Pushes a to-be-closed scratch box; returns its pool. */
static apr_pool_t *scratch_push(lua_State *L)
{
    lentra_scratch *s = lua_newuserdatauv(L, sizeof(*s), 0);
    s->pool = NULL;
    luaL_setmetatable(L, SCRATCH_MT);
    if (apr_pool_create_unmanaged_ex(&s->pool, NULL, NULL) != APR_SUCCESS) {
        s->pool = NULL;
        luaL_error(L, "entra: out of memory");
    }
    lua_toclose(L, -1);
    return s->pool;
}

/* ------------------------------------------------------------------ option tables */

/* Raises unless every key of the table at `t` is a string named in `known`. */
static void check_fields(lua_State *L, int t, const char *const *known, const char *what)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        const char *const *k;
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: option keys must be strings", what);
        for (k = known; *k && strcmp(*k, lua_tostring(L, -2)) != 0; k++)
            ;
        if (!*k)
            luaL_error(L, "%s: unknown option '%s'", what, lua_tostring(L, -2));
        lua_pop(L, 1);
    }
}

static int has_control(const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 1;
    return 0;
}

/* The non-empty string field `name` of the table at `t` (raw access, so it stays anchored
 * in the table), or NULL when absent. Raises for other types, empty strings and control
 * characters. */
static const char *opt_string(lua_State *L, int t, const char *what, const char *name)
{
    const char *s;
    size_t len;
    int type;

    lua_pushstring(L, name);
    type = lua_rawget(L, t);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a string", what, name);
    s = lua_tolstring(L, -1, &len);
    if (len == 0 || strlen(s) != len || has_control(s, len))
        luaL_error(L, "%s: %s must be a non-empty string without control characters", what, name);
    lua_pop(L, 1);
    return s;
}

/* An integer field within [min, max], or `def` when absent. */
static long opt_integer(lua_State *L, int t, const char *what, const char *name, long min,
                        long max, long def)
{
    lua_Integer v;
    int ok;

    lua_pushstring(L, name);
    if (lua_rawget(L, t) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    ok = 0;
    v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
    if (!ok || v < min || v > max)
        luaL_error(L, "%s: %s must be an integer from %d to %d", what, name, (int)min, (int)max);
    lua_pop(L, 1);
    return (long)v;
}

/* A list-valued field (a string or a sequence of strings) appended to a new array in `p`;
 * NULL when absent. `check` may refuse (raise) or rewrite each element. */
typedef const char *list_check_fn(lua_State *L, apr_pool_t *p, const char *what,
                                  const char *name, const char *v);

static apr_array_header_t *opt_list(lua_State *L, apr_pool_t *p, int t, const char *what,
                                    const char *name, list_check_fn *check)
{
    apr_array_header_t *a;
    lua_Integer i, n;
    int type;

    lua_pushstring(L, name);
    type = lua_rawget(L, t);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    a = apr_array_make(p, 4, sizeof(const char *));
    if (type == LUA_TSTRING) {
        APR_ARRAY_PUSH(a, const char *) = check(L, p, what, name, lua_tostring(L, -1));
        lua_pop(L, 1);
        return a;
    }
    if (type != LUA_TTABLE)
        luaL_error(L, "%s: %s must be a string or a list of strings", what, name);
    n = (lua_Integer)lua_rawlen(L, -1);
    if (n == 0)
        luaL_error(L, "%s: %s must not be empty", what, name);
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s;
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
            luaL_error(L, "%s: %s[%d] must be a string", what, name, (int)i);
        s = lua_tolstring(L, -1, &len);
        if (len == 0 || strlen(s) != len || has_control(s, len))
            luaL_error(L, "%s: %s[%d] must be a non-empty string without control characters",
                       what, name, (int)i);
        APR_ARRAY_PUSH(a, const char *) = check(L, p, what, name, s);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return a;
}

static const char *lowercase(apr_pool_t *p, const char *s)
{
    char *out = apr_pstrdup(p, s), *c;
    for (c = out; *c; c++)
        *c = (char)apr_tolower(*c);
    return out;
}

static const char *check_any(lua_State *L, apr_pool_t *p, const char *what, const char *name,
                             const char *v)
{
    (void)L, (void)what, (void)name;
    return apr_pstrdup(p, v);
}

static const char *check_guid(lua_State *L, apr_pool_t *p, const char *what, const char *name,
                              const char *v)
{
    const char *g = lowercase(p, v);
    if (!entra_is_guid(g))
        luaL_error(L, "%s: %s: '%s' is not a tenant id (a GUID)", what, name, v);
    return g;
}

static const char *check_alg(lua_State *L, apr_pool_t *p, const char *what, const char *name,
                             const char *v)
{
    if (entra_alg_from_name(v) == ENTRA_ALG_UNKNOWN)
        luaL_error(L,
                   "%s: %s: unsupported algorithm '%s' (allowed: RS256 RS384 RS512 PS256 PS384 "
                   "PS512 ES256 ES384 ES512)",
                   what, name, v);
    return apr_pstrdup(p, v);
}

/* An https URL (http only to a loopback address), with a trailing slash when `dir`. */
static const char *check_url(lua_State *L, apr_pool_t *p, const char *what, const char *name,
                             const char *v, int dir)
{
    if (!entra_http_url_allowed(v))
        luaL_error(L,
                   "%s: %s '%s' must be an https:// URL (http:// only for a loopback address "
                   "such as 127.0.0.1)",
                   what, name, v);
    return dir && v[strlen(v) - 1] != '/' ? apr_pstrcat(p, v, "/", NULL) : apr_pstrdup(p, v);
}

/* ------------------------------------------------------------------ decode_unverified */

static int push_fail(lua_State *L, const char *msg)
{
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    return 2;
}

/* Decodes one strict-base64url segment holding a JSON object and pushes it as a table. */
static const char *push_segment(lua_State *L, apr_pool_t *p, const char *seg, size_t len,
                                const char *label)
{
    unsigned char *raw;
    apr_size_t rawlen;
    json_t *j;
    const char *why;

    if (entra_b64url_decode(p, seg, len, &raw, &rawlen) != APR_SUCCESS)
        return "token is not strict base64url";
    if (entra_json_parse_object(p, (const char *)raw, rawlen, DECODE_MAX, &j, &why) != APR_SUCCESS)
        return apr_pstrcat(p, label, why, NULL);
    entra_lua_push_json(L, j);
    return NULL;
}

/* entra.decode_unverified(jwt) -> header, claims: no signature or claim check at all. */
static int l_decode_unverified(lua_State *L)
{
    size_t len;
    const char *t, *d1, *d2, *end, *why;
    unsigned char *sig;
    apr_size_t siglen;
    apr_pool_t *p;

    luaL_checktype(L, 1, LUA_TSTRING);
    t = lua_tolstring(L, 1, &len);
    end = t + len;
    p = scratch_push(L);
    if (len == 0)
        return push_fail(L, "empty token");
    if (len > DECODE_MAX)
        return push_fail(L, "token too large");
    d1 = memchr(t, '.', len);
    d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return push_fail(L, "token is not a JWS with three segments");
    if (d1 == t || d2 == d1 + 1)
        return push_fail(L, "empty token segment");
    /* The signature is not checked, but it must still be well-formed (it may be empty). */
    if (entra_b64url_decode(p, d2 + 1, (apr_size_t)(end - d2 - 1), &sig, &siglen) != APR_SUCCESS)
        return push_fail(L, "token is not strict base64url");
    if ((why = push_segment(L, p, t, (size_t)(d1 - t), "token header: ")))
        return push_fail(L, why);
    if ((why = push_segment(L, p, d1 + 1, (size_t)(d2 - d1 - 1), "token claims: ")))
        return push_fail(L, why);
    return 2;
}

/* ------------------------------------------------------------------ verifier */

typedef struct {
    apr_pool_t *pool; /* NULL once closed */
    entra_verifier v;
    const char *label;
} lentra_verifier;

static int verifier_close(lua_State *L)
{
    lentra_verifier *lv = luaL_checkudata(L, 1, VERIFIER_MT);
    if (lv->pool) {
        apr_pool_destroy(lv->pool);
        lv->pool = NULL;
    }
    return 0;
}

/* The key source has no destroy function: drop the snapshot it holds with the pool. */
static apr_status_t release_keys(void *data)
{
    entra_source *src = data;
    entra_snapshot_release(src->cur);
    src->cur = NULL;
    return APR_SUCCESS;
}

static const char *const verifier_fields[] = {
    "tenant",   "audience",     "algorithms",      "clock_skew", "max_lifetime",
    "authority", "metadata_url", "allowed_tenants", "ca_file",    NULL};

/* entra.verifier{...} -> verifier: the httpd module's inbound rules for one route. */
static int l_verifier(lua_State *L)
{
    const char *const what = "entra.verifier";
    lentra_verifier *lv;
    entra_policy *pol;
    entra_source *src;
    entra_store *store;
    apr_size_t vbytes;
    apr_uint64_t seed;
    apr_pool_t *p;
    apr_array_header_t *algs;
    const char *tenant_arg, *tenant, *authority, *metadata_url, *ca_file, *v2, *v1 = NULL, *key;
    unsigned char md[SHA256_DIGEST_LENGTH];
    char id[2 * 8 + 1];
    int i;

    context_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    check_fields(L, 1, verifier_fields, what);
    /* The userdata first: any error below leaves its pool to __gc. */
    lv = lua_newuserdatauv(L, sizeof(*lv), 1);
    memset(lv, 0, sizeof(*lv));
    luaL_setmetatable(L, VERIFIER_MT);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setiuservalue(L, -2, 1); /* the context outlives its verifiers */
    if (apr_pool_create_unmanaged_ex(&lv->pool, NULL, NULL) != APR_SUCCESS) {
        lv->pool = NULL;
        return luaL_error(L, "entra: out of memory");
    }
    p = lv->pool;
    pol = &lv->v.policy;

    tenant = tenant_arg = opt_string(L, 1, what, "tenant");
    metadata_url = opt_string(L, 1, what, "metadata_url");
    authority = opt_string(L, 1, what, "authority");
    ca_file = opt_string(L, 1, what, "ca_file");
    if (tenant) {
        tenant = lowercase(p, tenant);
        if (strcmp(tenant, "common") != 0 && strcmp(tenant, "organizations") != 0 &&
            !entra_is_guid(tenant))
            return luaL_error(L,
                              "%s: tenant '%s' is not a tenant id (a GUID), 'organizations' or "
                              "'common'",
                              what, tenant_arg);
    }
    if (!tenant && !metadata_url)
        return luaL_error(L, "%s: tenant (a tenant GUID) or metadata_url is required", what);
    pol->audiences = opt_list(L, p, 1, what, "audience", check_any);
    if (!pol->audiences)
        return luaL_error(L, "%s: audience is required, e.g. {\"api://<app-id>\", \"<app-id>\"}",
                          what);
    pol->allowed_tenants = opt_list(L, p, 1, what, "allowed_tenants", check_guid);
    algs = opt_list(L, p, 1, what, "algorithms", check_alg);
    pol->alg_mask = 0;
    for (i = 0; algs && i < algs->nelts; i++)
        pol->alg_mask |= ENTRA_ALG_BIT(entra_alg_from_name(APR_ARRAY_IDX(algs, i, const char *)));
    if (!pol->alg_mask)
        pol->alg_mask = ENTRA_ALG_BIT(ENTRA_ALG_RS256);
    pol->clock_skew = opt_integer(L, 1, what, "clock_skew", 0, 600, 60);
    pol->max_lifetime = opt_integer(L, 1, what, "max_lifetime", 60, 7 * 86400, 90000);
    pol->tenant = metadata_url ? NULL : tenant;
    pol->multi_tenant = pol->tenant && (!strcmp(pol->tenant, "common") ||
                                        !strcmp(pol->tenant, "organizations"));
    if (pol->multi_tenant && !pol->allowed_tenants)
        return luaL_error(L,
                          "%s: tenant '%s' accepts any tenant: list the callers' tenants in "
                          "allowed_tenants",
                          what, pol->tenant);
    if (ca_file) {
        struct stat st;
        if (stat(ca_file, &st) != 0 || !S_ISREG(st.st_mode) || access(ca_file, R_OK) != 0)
            return luaL_error(L, "%s: ca_file '%s' is not a readable file", what, ca_file);
        ca_file = apr_pstrdup(p, ca_file);
    }
    authority = authority ? check_url(L, p, what, "authority", authority, 1) : DEFAULT_AUTHORITY;
    if (metadata_url)
        v2 = check_url(L, p, what, "metadata_url", metadata_url, 0);
    else {
        v2 = apr_pstrcat(p, authority, tenant, "/v2.0/.well-known/openid-configuration", NULL);
        v1 = apr_pstrcat(p, authority, tenant, "/.well-known/openid-configuration", NULL);
    }

    key = apr_pstrcat(p, v2, "|", ca_file ? ca_file : "", NULL);
    SHA256((const unsigned char *)key, strlen(key), md);
    for (i = 0; i < 8; i++)
        apr_snprintf(id + 2 * i, 3, "%02x", md[i]);
    /* Each verifier has its own store (keys) and verdict table (signatures). */
    vbytes = entra_vtab_bytes(VERIFIER_VTAB_ENTRIES);
    if (apr_generate_random_bytes((unsigned char *)&seed, sizeof(seed)) != APR_SUCCESS ||
        !(lv->v.vtab = entra_vtab_attach(p, apr_pcalloc(p, vbytes), vbytes, seed)) ||
        entra_memstore_create(p, VERIFIER_STORE_ENTRIES, &store) != APR_SUCCESS ||
        entra_source_create(p, id, v2, v1, !metadata_url, &src) != APR_SUCCESS ||
        entra_l1_create(p, VERIFIER_L1_SLOTS, &lv->v.l1) != APR_SUCCESS)
        return luaL_error(L, "entra: cannot create the verifier");
    src->store = store;
    src->http.ca_file = ca_file;
    apr_pool_cleanup_register(p, src, release_keys, apr_pool_cleanup_null);
    lv->v.source = src;
    lv->label = metadata_url ? v2 : apr_pstrcat(p, "tenant ", tenant, NULL);
    return 1;
}

/* ------------------------------------------------------------------ verified claims */

/* Verified claims are a plain table (read it, iterate it) whose protected metatable holds
 * the verified JSON and offers the Entra methods through __index. The methods read that
 * JSON, not the table, so a script that edits its copy cannot change their answers. */
typedef struct {
    json_t *claims;
} lentra_claimsref;

static int claimsref_gc(lua_State *L)
{
    lentra_claimsref *c = luaL_checkudata(L, 1, CLAIMSREF_MT);
    json_decref(c->claims);
    c->claims = NULL;
    return 0;
}

/* Pushes `claims` as a table with the methods. */
static void push_claims(lua_State *L, json_t *claims)
{
    lentra_claimsref *ref;
    entra_lua_push_json(L, claims);
    lua_createtable(L, 0, 3);
    lua_getfield(L, LUA_REGISTRYINDEX, CLAIMS_METHODS);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "entra");
    lua_setfield(L, -2, "__metatable");
    ref = lua_newuserdatauv(L, sizeof(*ref), 0);
    ref->claims = NULL;
    luaL_setmetatable(L, CLAIMSREF_MT);
    ref->claims = json_incref(claims);
    lua_setfield(L, -2, CLAIMS_REF_FIELD);
    lua_setmetatable(L, -2);
}

/* The verified JSON behind `self` (argument 1); raises for anything but verified claims. */
static const json_t *self_claims(lua_State *L)
{
    lentra_claimsref *ref = NULL;
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getmetatable(L, 1)) {
        lua_pushliteral(L, CLAIMS_REF_FIELD);
        lua_rawget(L, -2); /* raw: a metatable a script made runs no code of its own here */
        ref = luaL_testudata(L, -1, CLAIMSREF_MT);
        lua_pop(L, 2); /* the metatable of argument 1 keeps the reference alive */
    }
    if (!ref || !ref->claims) {
        luaL_argerror(L, 1, "verified claims expected (from verifier:verify)");
        return NULL; /* not reached: luaL_argerror raises */
    }
    return ref->claims;
}

static int claims_is_app_only(lua_State *L)
{
    return entra_lua_is_app_only(L, self_claims(L));
}

static int claims_is_user(lua_State *L)
{
    return entra_lua_is_user(L, self_claims(L));
}

static int claims_in_group(lua_State *L)
{
    return entra_lua_in_group(L, self_claims(L), 2);
}

static int claims_has_acrs(lua_State *L)
{
    return entra_lua_has_acrs(L, self_claims(L), 2);
}

/* v:verify(jwt) -> claims | nil, reason */
static int verifier_verify(lua_State *L)
{
    lentra_verifier *lv = luaL_checkudata(L, 1, VERIFIER_MT);
    entra_verify_result res;
    const char *tok;
    size_t len;
    apr_pool_t *p;

    luaL_checktype(L, 2, LUA_TSTRING);
    tok = lua_tolstring(L, 2, &len);
    if (!lv->pool)
        return luaL_error(L, "entra: verifier is closed");
    p = scratch_push(L);
    entra_verify_token(p, &lv->v, tok, len, (apr_int64_t)apr_time_sec(apr_time_now()), &res);
    switch (res.outcome) {
    case ENTRA_VERIFY_OK:
        push_claims(L, res.claims);
        return 1;
    case ENTRA_VERIFY_UNAVAILABLE:
        luaL_pushfail(L);
        lua_pushfstring(L, "keys unavailable: %s", res.why ? res.why : "no usable keys");
        return 2;
    default:
        return push_fail(L, res.why ? res.why : "invalid token");
    }
}

static int verifier_tostring(lua_State *L)
{
    lentra_verifier *lv = luaL_checkudata(L, 1, VERIFIER_MT);
    if (!lv->pool)
        lua_pushliteral(L, "entra.verifier (closed)");
    else
        lua_pushfstring(L, "entra.verifier (%s)", lv->label);
    return 1;
}

/* ------------------------------------------------------------------ acquire_token */

typedef struct {
    const char *kind; /* managed | secret | certificate | workload */
    entra_selector selector;
    const char *selector_name, *selector_value;
    const char *source, *endpoint, *arc_key_dir;
    const char *tenant, *client_id, *authority, *secret_file, *token_file, *cert, *key;
} ident_opts;

static const char *const acquire_fields[] = {"resource", "identity", "timeout", NULL};
static const char *const managed_fields[] = {"kind",     "client_id",   "object_id", "resource_id",
                                             "source",   "endpoint",    "arc_key_dir", NULL};
static const char *const secret_fields[] = {"kind", "tenant", "client_id", "secret_file",
                                            "authority", NULL};
static const char *const certificate_fields[] = {"kind", "tenant", "client_id", "cert", "key",
                                                 "authority", NULL};
static const char *const workload_fields[] = {"kind", "tenant", "client_id", "token_file",
                                              "authority", NULL};

/* Reads and checks the identity table at `t` (misuse raises). */
static void parse_identity(lua_State *L, int t, ident_opts *o)
{
    const char *const what = "entra.acquire_token: identity";
    static const char *const sels[] = {"client_id", "object_id", "resource_id"};
    const char *v;
    int i;

    memset(o, 0, sizeof(*o));
    /* Say so plainly when someone tries to pass a secret itself. */
    lua_pushliteral(L, "secret");
    if (lua_rawget(L, t) != LUA_TNIL)
        luaL_error(L, "%s: never pass a secret itself: use kind=\"secret\" with secret_file",
                   what);
    lua_pop(L, 1);
    o->kind = opt_string(L, t, what, "kind");
    if (!o->kind)
        o->kind = "managed";
    if (!strcmp(o->kind, "managed")) {
        check_fields(L, t, managed_fields, what);
        for (i = 0; i < 3; i++) {
            if (!(v = opt_string(L, t, what, sels[i])))
                continue;
            if (o->selector != ENTRA_SEL_NONE)
                luaL_error(L,
                           "%s: name one of client_id, object_id or resource_id (a managed "
                           "identity request takes exactly one selector)",
                           what);
            o->selector = i == 0 ? ENTRA_SEL_CLIENT_ID
                          : i == 1 ? ENTRA_SEL_OBJECT_ID
                                   : ENTRA_SEL_RESOURCE_ID;
            o->selector_name = sels[i];
            o->selector_value = v;
        }
        o->source = opt_string(L, t, what, "source");
        if (o->source && strcmp(o->source, "imds") && strcmp(o->source, "appservice") &&
            strcmp(o->source, "arc"))
            luaL_error(L, "%s: source must be imds, appservice or arc", what);
        if (o->source && !strcmp(o->source, "arc") && o->selector != ENTRA_SEL_NONE)
            luaL_error(L, "%s: Azure Arc has only a system-assigned identity", what);
        o->endpoint = opt_string(L, t, what, "endpoint");
        if (o->endpoint && strncmp(o->endpoint, "https://", 8) && strncmp(o->endpoint, "http://", 7))
            luaL_error(L, "%s: endpoint must be an http(s) URL", what);
        o->arc_key_dir = opt_string(L, t, what, "arc_key_dir");
        if (o->arc_key_dir && entra_arc_key_dir_check(o->arc_key_dir))
            luaL_error(L, "%s: arc_key_dir must be an absolute directory path without a "
                          "trailing slash", what);
        return;
    }
    if (!strcmp(o->kind, "secret"))
        check_fields(L, t, secret_fields, what);
    else if (!strcmp(o->kind, "certificate"))
        check_fields(L, t, certificate_fields, what);
    else if (!strcmp(o->kind, "workload"))
        check_fields(L, t, workload_fields, what);
    else
        luaL_error(L, "%s: kind must be managed, secret, certificate or workload", what);
    o->tenant = opt_string(L, t, what, "tenant");
    o->client_id = opt_string(L, t, what, "client_id");
    o->authority = opt_string(L, t, what, "authority");
    o->secret_file = opt_string(L, t, what, "secret_file");
    o->token_file = opt_string(L, t, what, "token_file");
    o->cert = opt_string(L, t, what, "cert");
    o->key = opt_string(L, t, what, "key");
    if (o->tenant && !(entra_is_guid(o->tenant) || strchr(o->tenant, '.')))
        luaL_error(L, "%s: tenant must be a tenant id (a lower-case GUID) or a domain name",
                   what);
    if (o->authority && !entra_http_url_allowed(o->authority))
        luaL_error(L, "%s: authority must be https (http only for a loopback address)", what);
    if (strcmp(o->kind, "workload") != 0 && (!o->tenant || !o->client_id))
        luaL_error(L, "%s: tenant and client_id are required", what);
    if (!strcmp(o->kind, "secret") && !o->secret_file)
        luaL_error(L, "%s: secret_file is required", what);
    if (!strcmp(o->kind, "certificate") && (!o->cert || !o->key))
        luaL_error(L, "%s: cert and key are required", what);
}

/* One string naming everything that makes an identity distinct (never a secret). Options
 * hold no control characters, so the '\n' separators are unambiguous. */
static const char *identity_key(apr_pool_t *p, const ident_opts *o)
{
#define OR_DASH(s) ((s) ? (s) : "-")
    if (!strcmp(o->kind, "managed"))
        return apr_pstrcat(p, "managed\n", OR_DASH(o->source), "\n", OR_DASH(o->selector_name),
                           "=", OR_DASH(o->selector_value), "\n", OR_DASH(o->endpoint), "\n",
                           OR_DASH(o->arc_key_dir), NULL);
    return apr_pstrcat(p, o->kind, "\n", OR_DASH(o->tenant), "\n", OR_DASH(o->client_id), "\n",
                       OR_DASH(o->authority), "\n", OR_DASH(o->secret_file), "\n",
                       OR_DASH(o->token_file), "\n", OR_DASH(o->cert), "\n", OR_DASH(o->key),
                       NULL);
#undef OR_DASH
}

/* Reads an Arc challenge key with the core's rules (entra_arc_key_read); the contents go
 * only into `p`. */
static const char *arc_read_key(void *baton, apr_pool_t *p, const char *path, const char **why)
{
    const entra_cred *c = baton;
    char buf[ENTRA_ARC_KEY_MAX + 1];
    const char *out = NULL;
    size_t len;

    if (entra_arc_key_read(c->arc_key_dir, path, buf, sizeof(buf), &len, why) == 0)
        out = apr_pstrmemdup(p, buf, len);
    OPENSSL_cleanse(buf, sizeof(buf));
    return out;
}

static const char *readable_file(apr_pool_t *p, const char *name, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, R_OK) != 0)
        return apr_psprintf(p, "identity.%s '%s' is not a readable file", name, path);
    return NULL;
}

static const char *env_or(const char *v, const char *env)
{
    return v ? v : getenv(env);
}

/* Builds the credential in `p`; NULL on success, else why (an expected failure). */
static const char *build_cred(apr_pool_t *p, const ident_opts *o, entra_cred *c)
{
    const char *why = NULL, *ep = NULL, *hdr = NULL, *auth;

    c->http.connect_timeout_ms = 3000;
    c->http.timeout_ms = DEFAULT_TIMEOUT_MS;
    c->http.max_body = 64 * 1024;
    c->arc_key_dir = apr_pstrdup(p, o->arc_key_dir ? o->arc_key_dir : DEFAULT_ARC_KEY_DIR);
    if (!strcmp(o->kind, "managed")) {
        c->selector = o->selector;
        c->selector_value = o->selector_value ? apr_pstrdup(p, o->selector_value) : NULL;
        if (!o->source) {
            if (entra_cred_detect_managed(p, &c->kind, &ep, &hdr, &why) != APR_SUCCESS)
                return why;
        }
        else
            c->kind = !strcmp(o->source, "imds")         ? ENTRA_CRED_IMDS
                      : !strcmp(o->source, "appservice") ? ENTRA_CRED_APPSERVICE
                                                         : ENTRA_CRED_ARC;
        if (c->kind == ENTRA_CRED_APPSERVICE) {
            hdr = hdr ? hdr : getenv("IDENTITY_HEADER");
            if (!hdr || !*hdr)
                return "App Service managed identity needs IDENTITY_HEADER in the environment";
            c->identity_header = apr_pstrdup(p, hdr);
        }
        c->endpoint = o->endpoint                   ? o->endpoint
                      : ep                          ? ep
                      : c->kind == ENTRA_CRED_IMDS ? IMDS_URL
                                                    : getenv("IDENTITY_ENDPOINT");
        if (!c->endpoint || !*c->endpoint)
            return "no managed identity endpoint: set identity.endpoint or IDENTITY_ENDPOINT";
        c->endpoint = apr_pstrdup(p, c->endpoint);
        if (c->kind == ENTRA_CRED_ARC && c->selector != ENTRA_SEL_NONE)
            return "Azure Arc has only a system-assigned identity";
        if (c->kind == ENTRA_CRED_ARC) {
            c->arc_reader = arc_read_key;
            c->arc_baton = c;
        }
        return NULL;
    }

    c->kind = !strcmp(o->kind, "secret")        ? ENTRA_CRED_SECRET
              : !strcmp(o->kind, "certificate") ? ENTRA_CRED_CERTIFICATE
                                                : ENTRA_CRED_WORKLOAD;
    if (c->kind == ENTRA_CRED_WORKLOAD) {
        c->tenant = env_or(o->tenant, "AZURE_TENANT_ID");
        c->client_id = env_or(o->client_id, "AZURE_CLIENT_ID");
        c->token_file = env_or(o->token_file, "AZURE_FEDERATED_TOKEN_FILE");
        auth = env_or(o->authority, "AZURE_AUTHORITY_HOST");
        if (!c->tenant || !(entra_is_guid(c->tenant) || strchr(c->tenant, '.')))
            return "workload identity needs a tenant: identity.tenant or AZURE_TENANT_ID";
        if (!c->client_id || !*c->client_id)
            return "workload identity needs a client id: identity.client_id or AZURE_CLIENT_ID";
        if (!c->token_file || !*c->token_file)
            return "workload identity needs a token file: identity.token_file or "
                   "AZURE_FEDERATED_TOKEN_FILE";
        if ((why = readable_file(p, "token_file", c->token_file)))
            return why;
    }
    else {
        c->tenant = o->tenant;
        c->client_id = o->client_id;
        c->secret_file = o->secret_file;
        auth = o->authority;
        if (c->secret_file && (why = readable_file(p, "secret_file", c->secret_file)))
            return why;
    }
    auth = auth && *auth ? auth : DEFAULT_AUTHORITY;
    if (!entra_http_url_allowed(auth))
        return "authority must be https (http only for a loopback address)";
    c->authority = auth[strlen(auth) - 1] == '/' ? apr_pstrdup(p, auth)
                                                 : apr_pstrcat(p, auth, "/", NULL);
    c->tenant = apr_pstrdup(p, c->tenant);
    c->client_id = apr_pstrdup(p, c->client_id);
    c->secret_file = c->secret_file ? apr_pstrdup(p, c->secret_file) : NULL;
    c->token_file = c->token_file ? apr_pstrdup(p, c->token_file) : NULL;
    if (c->kind == ENTRA_CRED_CERTIFICATE) {
        if ((why = readable_file(p, "cert", o->cert)) || (why = readable_file(p, "key", o->key)))
            return why;
        if (entra_cred_load_certificate(p, c, o->cert, o->key, &why) != APR_SUCCESS)
            return why;
    }
    return NULL;
}

/* The token source for (identity, resource), made on first use; NULL with *why. */
static entra_tokensrc *token_source(lentra_ctx *ctx, apr_pool_t *tmp, const ident_opts *o,
                                    const char *resource, long timeout_ms, const char **why)
{
    const char *ik = identity_key(tmp, o), *key = apr_pstrcat(tmp, ik, "\n", resource, NULL);
    entra_tokensrc *ts = apr_hash_get(ctx->sources, key, APR_HASH_KEY_STRING);
    entra_cred *c;

    if (ts)
        return ts;
    c = apr_hash_get(ctx->creds, ik, APR_HASH_KEY_STRING);
    if (!c) {
        apr_pool_t *ip;
        const char *err;
        if (apr_pool_create(&ip, ctx->pool) != APR_SUCCESS) {
            *why = "out of memory";
            return NULL;
        }
        c = apr_pcalloc(ip, sizeof(*c));
        c->name = apr_pstrdup(ip, ik);
        if ((err = build_cred(ip, o, c))) {
            *why = apr_pstrdup(tmp, err);
            apr_pool_destroy(ip);
            return NULL;
        }
        apr_hash_set(ctx->creds, c->name, APR_HASH_KEY_STRING, c);
    }
    if (entra_tokensrc_create(ctx->pool, c, resource, ctx->tokens, timeout_ms, &ts) !=
        APR_SUCCESS) {
        *why = "cannot create a token source";
        return NULL;
    }
    apr_hash_set(ctx->sources, apr_pstrdup(ctx->pool, key), APR_HASH_KEY_STRING, ts);
    return ts;
}

/* entra.acquire_token{resource=, identity={...}, timeout=} -> {access_token, expires_on,
 * token_type} | nil, err, retry_after */
static int l_acquire_token(lua_State *L)
{
    const char *const what = "entra.acquire_token";
    lentra_ctx *ctx = context_of(L);
    ident_opts o;
    entra_tokensrc *ts;
    const char *resource, *tok = NULL, *why = NULL;
    long timeout_ms = DEFAULT_TIMEOUT_MS, retry_after = 0;
    apr_pool_t *p;
    int type;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    check_fields(L, 1, acquire_fields, what);
    if (!(resource = opt_string(L, 1, what, "resource")))
        return luaL_error(L, "%s: resource is required (a resource URI or a .default scope)",
                          what);
    lua_pushliteral(L, "timeout");
    type = lua_rawget(L, 1);
    if (type != LUA_TNIL) {
        lua_Number s = lua_tonumber(L, -1);
        if (type != LUA_TNUMBER || !(s > 0 && s <= MAX_TIMEOUT_S))
            return luaL_error(L, "%s: timeout must be a number of seconds from 0 to %d", what,
                              MAX_TIMEOUT_S);
        timeout_ms = (long)(s * 1000);
        if (timeout_ms < 100)
            timeout_ms = 100;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "identity");
    type = lua_rawget(L, 1);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L); /* no identity: the managed identity this environment offers */
    }
    else if (type != LUA_TTABLE)
        return luaL_error(L, "%s: identity must be a table", what);
    parse_identity(L, 2, &o); /* the identity table stays at index 2, anchoring its strings */

    p = scratch_push(L);
    if (!(ts = token_source(ctx, p, &o, resource, timeout_ms, &why)))
        return push_fail(L, why);
    ts->wait_ms = timeout_ms; /* one Lua state at a time uses this source */
    if (entra_tokensrc_get(ts, p, &tok, &retry_after, &why) != APR_SUCCESS) {
        luaL_pushfail(L);
        lua_pushstring(L, why ? why : "no token");
        lua_pushinteger(L, retry_after);
        return 3;
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, tok);
    lua_setfield(L, -2, "access_token");
    lua_pushinteger(L, (lua_Integer)entra_tokensrc_expiry(ts));
    lua_setfield(L, -2, "expires_on");
    lua_pushliteral(L, "Bearer");
    lua_setfield(L, -2, "token_type");
    return 1;
}

/* ------------------------------------------------------------------ module */

static void new_metatable(lua_State *L, const char *name, const luaL_Reg *mm,
                          const luaL_Reg *methods)
{
    if (luaL_newmetatable(L, name)) {
        luaL_setfuncs(L, mm, 0);
        if (methods) {
            lua_newtable(L);
            luaL_setfuncs(L, methods, 0);
            lua_setfield(L, -2, "__index");
        }
        lua_pushliteral(L, "entra");
        lua_setfield(L, -2, "__metatable"); /* scripts cannot swap our metatables */
    }
    lua_pop(L, 1);
}

int luaopen_entra(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"acquire_token", l_acquire_token},
                                     {"decode_unverified", l_decode_unverified},
                                     {"verifier", l_verifier},
                                     {NULL, NULL}};
    static const luaL_Reg context_mm[] = {{"__gc", context_gc}, {NULL, NULL}};
    static const luaL_Reg scratch_mm[] = {{"__gc", scratch_close}, {"__close", scratch_close},
                                          {NULL, NULL}};
    static const luaL_Reg verifier_mm[] = {{"__gc", verifier_close},
                                           {"__close", verifier_close},
                                           {"__tostring", verifier_tostring},
                                           {NULL, NULL}};
    static const luaL_Reg verifier_methods[] = {{"verify", verifier_verify},
                                                {"close", verifier_close},
                                                {NULL, NULL}};
    static const luaL_Reg claimsref_mm[] = {{"__gc", claimsref_gc}, {NULL, NULL}};
    static const luaL_Reg claims_methods[] = {{"is_app_only", claims_is_app_only},
                                              {"is_user", claims_is_user},
                                              {"in_group", claims_in_group},
                                              {"has_acrs", claims_has_acrs},
                                              {NULL, NULL}};
    lentra_ctx *ctx;

    luaL_checkversion(L);
    new_metatable(L, CONTEXT_MT, context_mm, NULL);
    new_metatable(L, SCRATCH_MT, scratch_mm, NULL);
    new_metatable(L, VERIFIER_MT, verifier_mm, verifier_methods);
    new_metatable(L, CLAIMSREF_MT, claimsref_mm, NULL);
    luaL_newlib(L, claims_methods);
    lua_setfield(L, LUA_REGISTRYINDEX, CLAIMS_METHODS);

    /* The context gets its finalizer before it holds anything, so errors below unwind. */
    ctx = lua_newuserdatauv(L, sizeof(*ctx), 0);
    memset(ctx, 0, sizeof(*ctx));
    luaL_setmetatable(L, CONTEXT_MT);
    if (apr_initialize() != APR_SUCCESS)
        return luaL_error(L, "entra: apr_initialize failed");
    ctx->apr_initialized = 1;
    if (entra_http_global_init() != APR_SUCCESS)
        return luaL_error(L, "entra: HTTP client initialisation failed");
    if (apr_pool_create_unmanaged_ex(&ctx->pool, NULL, NULL) != APR_SUCCESS) {
        ctx->pool = NULL;
        return luaL_error(L, "entra: out of memory");
    }
    ctx->creds = apr_hash_make(ctx->pool);
    ctx->sources = apr_hash_make(ctx->pool);
    if (entra_memstore_create(ctx->pool, TOKEN_STORE_ENTRIES, &ctx->tokens) != APR_SUCCESS)
        return luaL_error(L, "entra: cannot create the token store");

    luaL_newlibtable(L, funcs);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, funcs, 1);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushliteral(L, "0.1");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
