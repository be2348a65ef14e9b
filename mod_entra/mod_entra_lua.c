/* Require entra-lua <function> [args...]: authorization rules written in Lua 5.4, run in
 * a sandbox over the verified claims. One prepared lua_State per worker thread at a time
 * (a pool per rules file); text chunks only; base, string, table, math and utf8 only;
 * globals read-only; an instruction budget per call and a memory cap per state. Any
 * failure denies, with the traceback in the error log and nothing in the response. */
#include <stdlib.h>
#include <string.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_request.h>
#include <mod_auth.h>
#include <ap_provider.h>
#include <apr_file_io.h>
#include <apr_strings.h>
#include <apr_lib.h>
#include <apr_thread_mutex.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "entra_json.h"
#include "entra_lua_json.h"
#include "mod_entra.h"
#include "mod_entra_lua_sandbox.h"

APLOG_USE_MODULE(entra);

#define DEFAULT_MAX_INSTRUCTIONS 1000000L
#define DEFAULT_MAX_MEMORY (8L * 1024 * 1024)
#define HOOK_EVERY 1000
#define RULES_MAX (1024 * 1024)
#define MAX_SET_HEADERS 32

/* One rules file: its text (from the configuration pool) and, per process, idle states. */
typedef struct entra_lua_rules {
    const char *path;
    const char *chunkname;
    const char *source;
    apr_size_t len;
    /* per process, created on first use */
    apr_thread_mutex_t *mu;
    apr_array_header_t *idle; /* of lstate * */
} entra_lua_rules;

typedef struct lstate {
    lua_State *L;
    size_t mem, mem_limit;
    long count, max_count;
    const char *aborted; /* why the running call was stopped, or NULL */
    request_rec *r;      /* the request being served, for print() */
    int env_ref;
} lstate;

typedef struct {
    const char *function;
    apr_array_header_t *args; /* const char * */
    const char *route;
} lua_require;

static apr_thread_mutex_t *rules_init_mu;

static const char *const ABORT_KEY = "entra-abort";
static const char *const REQ_META = "entra.request";
static const char *const CLAIMS_META = "entra.claims";

/* ---------------------------------------------------------------- configuration */

const char *entra_cmd_lua_rules(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    entra_lua_rules *rules = apr_pcalloc(cmd->pool, sizeof(*rules));
    const char *path = ap_server_root_relative(cmd->pool, arg);
    apr_file_t *f;
    apr_finfo_t fi;
    char *buf;
    apr_size_t n;
    lua_State *L;

    if (!path || apr_file_open(&f, path, APR_FOPEN_READ, 0, cmd->temp_pool) != APR_SUCCESS)
        return apr_psprintf(cmd->pool, "EntraLuaRules: cannot open '%s'", arg);
    if (apr_file_info_get(&fi, APR_FINFO_SIZE, f) != APR_SUCCESS || fi.size > RULES_MAX) {
        apr_file_close(f);
        return apr_psprintf(cmd->pool, "EntraLuaRules: '%s' is larger than 1 MiB", arg);
    }
    n = (apr_size_t)fi.size;
    buf = apr_palloc(cmd->pool, n + 1);
    if (n && apr_file_read_full(f, buf, n, &n) != APR_SUCCESS) {
        apr_file_close(f);
        return apr_psprintf(cmd->pool, "EntraLuaRules: cannot read '%s'", arg);
    }
    apr_file_close(f);
    buf[n] = '\0';
    rules->path = path;
    rules->chunkname = apr_pstrcat(cmd->pool, "@", path, NULL);
    rules->source = buf;
    rules->len = n;
    /* Syntax errors fail the configuration (apachectl -t), not the first request. */
    L = luaL_newstate();
    if (!L)
        return "EntraLuaRules: cannot create a Lua state";
    if (luaL_loadbufferx(L, buf, n, rules->chunkname, "t") != LUA_OK) {
        const char *err = apr_pstrdup(cmd->pool, lua_tostring(L, -1));
        lua_close(L);
        return apr_psprintf(cmd->pool, "EntraLuaRules: %s", err);
    }
    lua_close(L);
    d->lua_rules = rules;
    return NULL;
}

const char *entra_cmd_lua_limit(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_srv_conf *sc = ap_get_module_config(cmd->server->module_config, &entra_module);
    char *end;
    apr_int64_t v = apr_strtoi64(arg, &end, 10);
    (void)dv;
    if (*(const char *)cmd->info == 'i') {
        if (*end || v < 10000 || v > 1000000000)
            return "EntraLuaMaxInstructions: a number from 10000 to 1000000000";
        sc->lua_max_instructions = (long)v;
    }
    else {
        if (*end || v < 1024 * 1024 || v > 1024L * 1024 * 1024)
            return "EntraLuaMaxMemory: bytes from 1048576 to 1073741824";
        sc->lua_max_memory = (long)v;
    }
    return NULL;
}

/* ---------------------------------------------------------------- limits */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    lstate *st = ud;
    size_t old = ptr ? osize : 0;
    void *n;

    if (nsize == 0) {
        st->mem -= old;
        free(ptr);
        return NULL;
    }
    if (st->mem - old + nsize > st->mem_limit) {
        st->aborted = "memory limit reached";
        return NULL;
    }
    n = realloc(ptr, nsize);
    if (n)
        st->mem = st->mem - old + nsize;
    return n;
}

static lstate *state_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

static void raise_abort(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)ABORT_KEY);
    lua_error(L);
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    lstate *st = state_of(L);
    (void)ar;
    st->count += HOOK_EVERY;
    if (st->count > st->max_count && !st->aborted)
        st->aborted = "instruction budget exhausted";
    if (st->aborted)
        raise_abort(L);
}

static int l_aborted(lua_State *L)
{
    lua_pushboolean(L, state_of(L)->aborted != NULL);
    return 1;
}

static int l_log(lua_State *L)
{
    lstate *st = state_of(L);
    int i, n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    if (st->r)
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, st->r, "ENTRA0401: lua: %.400s",
                      lua_tostring(L, -1));
    return 0;
}

/* ---------------------------------------------------------------- request and claims views */

typedef struct {
    request_rec *r; /* NULL once the call is over: a saved view cannot reach a dead request */
    const char *route;
} req_ud;

typedef struct {
    json_t *claims;
} claims_ud;

static request_rec *check_req(lua_State *L)
{
    req_ud *u = luaL_checkudata(L, 1, REQ_META);
    if (!u->r)
        luaL_error(L, "the request view is only valid during the rule call");
    return u->r;
}

static int req_header(lua_State *L)
{
    request_rec *r = check_req(L);
    const char *name = luaL_checkstring(L, 2), *v;
    /* Credentials are not the rules' business. */
    if (!strcasecmp(name, "Authorization") || !strcasecmp(name, "Cookie") ||
        !strcasecmp(name, "Proxy-Authorization")) {
        lua_pushnil(L);
        return 1;
    }
    v = apr_table_get(r->headers_in, name);
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int req_arg(lua_State *L)
{
    request_rec *r = check_req(L);
    size_t nl;
    const char *name = luaL_checklstring(L, 2, &nl), *a = r->args;
    while (a && *a) {
        const char *amp = strchr(a, '&'), *end = amp ? amp : a + strlen(a);
        if ((size_t)(end - a) > nl && !strncmp(a, name, nl) && a[nl] == '=') {
            char *v = apr_pstrndup(r->pool, a + nl + 1, (apr_size_t)(end - a - nl - 1)), *c;
            for (c = v; *c; c++)
                if (*c == '+')
                    *c = ' ';
            if (ap_unescape_url(v) != OK) {
                lua_pushnil(L);
                return 1;
            }
            lua_pushstring(L, v);
            return 1;
        }
        a = amp ? amp + 1 : NULL;
    }
    lua_pushnil(L);
    return 1;
}

static int req_index(lua_State *L)
{
    req_ud *u = luaL_checkudata(L, 1, REQ_META);
    const char *k = luaL_checkstring(L, 2);
    request_rec *r = u->r;
    if (!strcmp(k, "header")) {
        lua_pushcfunction(L, req_header);
        return 1;
    }
    if (!strcmp(k, "arg")) {
        lua_pushcfunction(L, req_arg);
        return 1;
    }
    if (!r)
        return luaL_error(L, "the request view is only valid during the rule call");
    if (!strcmp(k, "method"))
        lua_pushstring(L, r->method);
    else if (!strcmp(k, "path"))
        lua_pushstring(L, r->uri);
    else if (!strcmp(k, "query"))
        lua_pushstring(L, r->args ? r->args : "");
    else if (!strcmp(k, "client_ip"))
        lua_pushstring(L, r->useragent_ip);
    else if (!strcmp(k, "route"))
        lua_pushstring(L, u->route ? u->route : "");
    else if (!strcmp(k, "user"))
        lua_pushstring(L, r->user ? r->user : "");
    else if (!strcmp(k, "time"))
        lua_pushinteger(L, (lua_Integer)apr_time_sec(r->request_time));
    else if (!strcmp(k, "weekday")) {
        /* Rules have no os library: the request's UTC weekday, ISO 8601 (1 = Monday). */
        apr_time_exp_t tm;
        apr_time_exp_gmt(&tm, r->request_time);
        lua_pushinteger(L, tm.tm_wday == 0 ? 7 : tm.tm_wday);
    }
    else
        lua_pushnil(L);
    return 1;
}

static json_t *check_claims(lua_State *L)
{
    return ((claims_ud *)luaL_checkudata(L, 1, CLAIMS_META))->claims;
}

/* claims:has_role(r...) — any of them in the roles array. */
static int claims_has_role(lua_State *L)
{
    json_t *roles = json_object_get(check_claims(L), "roles"), *e;
    int i, n = lua_gettop(L);
    size_t k;
    if (json_is_array(roles))
        for (i = 2; i <= n; i++) {
            const char *want = luaL_checkstring(L, i);
            json_array_foreach(roles, k, e)
            {
                if (json_is_string(e) && !strcmp(json_string_value(e), want)) {
                    lua_pushboolean(L, 1);
                    return 1;
                }
            }
        }
    lua_pushboolean(L, 0);
    return 1;
}

/* claims:has_scope(s...) — any of them in the space-separated scp. */
static int claims_has_scope(lua_State *L)
{
    json_t *scp = json_object_get(check_claims(L), "scp");
    int i, n = lua_gettop(L);
    if (json_is_string(scp))
        for (i = 2; i <= n; i++) {
            size_t wl;
            const char *want = luaL_checklstring(L, i, &wl), *p = json_string_value(scp);
            while (*p) {
                size_t len = strcspn(p, " ");
                if (len == wl && !memcmp(p, want, wl)) {
                    lua_pushboolean(L, 1);
                    return 1;
                }
                p += len;
                while (*p == ' ')
                    p++;
            }
        }
    lua_pushboolean(L, 0);
    return 1;
}

/* claims:app() — the calling application: azp (v2) or appid (v1). */
static int claims_app(lua_State *L)
{
    json_t *c = check_claims(L), *a = json_object_get(c, "azp");
    if (!json_is_string(a))
        a = json_object_get(c, "appid");
    if (json_is_string(a))
        lua_pushstring(L, json_string_value(a));
    else
        lua_pushnil(L);
    return 1;
}

static int claims_index(lua_State *L)
{
    json_t *c = check_claims(L);
    const char *k = luaL_checkstring(L, 2);
    if (!strcmp(k, "has_role"))
        lua_pushcfunction(L, claims_has_role);
    else if (!strcmp(k, "has_scope"))
        lua_pushcfunction(L, claims_has_scope);
    else if (!strcmp(k, "app"))
        lua_pushcfunction(L, claims_app);
    else {
        json_t *v = json_object_get(c, k);
        if (v)
            entra_lua_push_json(L, v); /* a fresh copy: nothing shared can be changed */
        else
            lua_pushnil(L);
    }
    return 1;
}

static int claims_gc(lua_State *L)
{
    claims_ud *u = luaL_checkudata(L, 1, CLAIMS_META);
    json_decref(u->claims);
    u->claims = NULL;
    return 0;
}

static int read_only(lua_State *L)
{
    return luaL_error(L, "the request and claims views are read-only");
}

/* ---------------------------------------------------------------- states */

static int traceback(lua_State *L)
{
    if (lua_touserdata(L, 1) == (void *)ABORT_KEY)
        return 1;
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

static void make_meta(lua_State *L, const char *name, lua_CFunction index, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, read_only);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}

/* A new state with the sandbox and the rules loaded and frozen; NULL after logging. */
static lstate *state_new(request_rec *r, entra_lua_rules *rules)
{
    entra_srv_conf *sc = ap_get_module_config(ap_server_conf->module_config, &entra_module);
    lstate *st = calloc(1, sizeof(*st));
    lua_State *L;
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {NULL, NULL}};
    const luaL_Reg *lib;

    if (!st)
        return NULL;
    st->mem_limit = (size_t)(sc->lua_max_memory != ENTRA_UNSET ? sc->lua_max_memory
                                                               : DEFAULT_MAX_MEMORY);
    st->max_count = sc->lua_max_instructions != ENTRA_UNSET ? sc->lua_max_instructions
                                                            : DEFAULT_MAX_INSTRUCTIONS;
    L = st->L = lua_newstate(l_alloc, st);
    if (!L) {
        free(st);
        return NULL;
    }
    for (lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    make_meta(L, REQ_META, req_index, NULL);
    make_meta(L, CLAIMS_META, claims_index, claims_gc);
    st->r = r;
    lua_pushcfunction(L, traceback);
    if (luaL_loadbufferx(L, entra_lua_sandbox, sizeof(entra_lua_sandbox) - 1, "=sandbox", "t") !=
        LUA_OK)
        goto fail;
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_aborted);
    lua_setfield(L, -2, "aborted");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, -2, "log");
    lua_pushlightuserdata(L, (void *)ABORT_KEY);
    lua_setfield(L, -2, "ABORT");
    if (lua_pcall(L, 1, 1, -3) != LUA_OK)
        goto fail;
    /* The rules file's top level runs under the same limits as any call. */
    lua_pushlstring(L, rules->source, rules->len);
    lua_pushstring(L, rules->chunkname);
    st->count = 0;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
    if (lua_pcall(L, 2, 2, -4) != LUA_OK || lua_isnil(L, -2)) {
        if (lua_isnil(L, -2))
            lua_remove(L, -2);
        goto fail;
    }
    lua_pop(L, 1);
    st->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    st->r = NULL;
    return st;
fail:
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA0402: lua: cannot load %s: %s", rules->path,
                  st->aborted ? st->aborted
                              : lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_close(L);
    free(st);
    return NULL;
}

static void state_free(lstate *st)
{
    if (st) {
        lua_close(st->L);
        free(st);
    }
}

static apr_status_t rules_cleanup(void *data)
{
    entra_lua_rules *rules = data;
    int i;
    for (i = 0; rules->idle && i < rules->idle->nelts; i++)
        state_free(APR_ARRAY_IDX(rules->idle, i, lstate *));
    rules->idle = NULL;
    return APR_SUCCESS;
}

static lstate *state_get(request_rec *r, entra_lua_rules *rules)
{
    lstate *st = NULL;
    if (!rules->mu) {
        apr_thread_mutex_lock(rules_init_mu);
        if (!rules->mu) {
            /* Per-process runtime parts of a configuration object: the process pool owns them. */
            apr_pool_t *pp = r->server->process->pool;
            rules->idle = apr_array_make(pp, 16, sizeof(lstate *));
            apr_pool_cleanup_register(pp, rules, rules_cleanup, apr_pool_cleanup_null);
            apr_thread_mutex_create(&rules->mu, APR_THREAD_MUTEX_DEFAULT, pp);
        }
        apr_thread_mutex_unlock(rules_init_mu);
    }
    apr_thread_mutex_lock(rules->mu);
    if (rules->idle->nelts)
        st = *(lstate **)apr_array_pop(rules->idle);
    apr_thread_mutex_unlock(rules->mu);
    return st ? st : state_new(r, rules);
}

static void state_put(entra_lua_rules *rules, lstate *st)
{
    apr_thread_mutex_lock(rules->mu);
    APR_ARRAY_PUSH(rules->idle, lstate *) = st;
    apr_thread_mutex_unlock(rules->mu);
}

/* ---------------------------------------------------------------- the provider */

static const char *parse_lua_require(cmd_parms *cmd, const char *line, const void **parsed)
{
    lua_require *q = apr_pcalloc(cmd->pool, sizeof(*q));
    const char *w, *c;
    q->function = ap_getword_conf(cmd->pool, &line);
    if (!*q->function)
        return "Require entra-lua needs a function name";
    for (c = q->function; *c; c++)
        if (!apr_isalnum(*c) && *c != '_')
            return apr_psprintf(cmd->pool, "Require entra-lua: '%s' is not a Lua function name",
                                q->function);
    q->args = apr_array_make(cmd->pool, 2, sizeof(const char *));
    while (*(w = ap_getword_conf(cmd->pool, &line)))
        APR_ARRAY_PUSH(q->args, const char *) = w;
    q->route = cmd->path ? apr_pstrdup(cmd->pool, cmd->path) : NULL;
    *parsed = q;
    return NULL;
}

static int valid_header(const char *name, const char *value)
{
    const char *c;
    if (!*name || strlen(name) > 128 || !strcasecmp(name, "Host") ||
        !strcasecmp(name, "Content-Length") || !strcasecmp(name, "Transfer-Encoding") ||
        !strcasecmp(name, "Connection"))
        return 0;
    for (c = name; *c; c++)
        if (!apr_isalnum(*c) && *c != '-' && *c != '_')
            return 0;
    for (c = value; *c; c++)
        if (*c == '\r' || *c == '\n' || *c == '\0')
            return 0;
    return strlen(value) <= 8192;
}

/* Reads `true[, {headers}]` or `false[, reason]`; anything else denies. */
static authz_status take_result(request_rec *r, lstate *st, const lua_require *q, int base)
{
    lua_State *L = st->L;
    int nres = lua_gettop(L) - base;
    apr_table_t *set;

    if (nres < 1 || !lua_isboolean(L, base + 1)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0403: lua: %s returned %s instead of a boolean: denied", q->function,
                      nres < 1 ? "nothing" : luaL_typename(L, base + 1));
        return AUTHZ_DENIED;
    }
    if (!lua_toboolean(L, base + 1)) {
        const char *why = nres >= 2 && lua_type(L, base + 2) == LUA_TSTRING
                              ? lua_tostring(L, base + 2)
                              : "no reason given";
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "ENTRA0404: lua: %s denied: %.300s",
                      q->function, why);
        return AUTHZ_DENIED;
    }
    if (nres < 2 || lua_isnil(L, base + 2))
        return AUTHZ_GRANTED;
    if (!lua_istable(L, base + 2)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0405: lua: %s allowed with a %s instead of a table of headers: denied",
                      q->function, luaL_typename(L, base + 2));
        return AUTHZ_DENIED;
    }
    /* Headers are applied only once all of them are known to be valid. */
    set = apr_table_make(r->pool, 4);
    lua_pushnil(L);
    while (lua_next(L, base + 2)) {
        if (lua_type(L, -2) != LUA_TSTRING ||
            (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) ||
            !valid_header(lua_tostring(L, -2), lua_tostring(L, -1)) ||
            apr_table_elts(set)->nelts >= MAX_SET_HEADERS) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "ENTRA0406: lua: %s asked for an invalid header: denied", q->function);
            return AUTHZ_DENIED;
        }
        apr_table_set(set, lua_tostring(L, -2), lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    apr_table_overlap(r->headers_in, set, APR_OVERLAP_TABLES_SET);
    return AUTHZ_GRANTED;
}

static authz_status check_lua(request_rec *r, const char *line, const void *parsed)
{
    const lua_require *q = parsed;
    entra_dir_conf *d = ap_get_module_config(r->per_dir_config, &entra_module);
    entra_req_state *rs;
    lstate *st;
    lua_State *L;
    req_ud *ru;
    claims_ud *cu;
    authz_status res = AUTHZ_DENIED;
    int i, base, rc;
    (void)line;

    if (!r->user)
        return AUTHZ_DENIED_NO_USER;
    rs = entra_req_state_get(r);
    if (!rs || !rs->claims)
        return AUTHZ_DENIED;
    if (!d->lua_rules) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0407: Require entra-lua %s without EntraLuaRules here: denied",
                      q->function);
        return AUTHZ_DENIED;
    }
    if (!(st = state_get(r, d->lua_rules)))
        return AUTHZ_DENIED;
    L = st->L;
    st->r = r;
    st->count = 0;
    st->aborted = NULL;
    lua_pushcfunction(L, traceback);
    base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    lua_getfield(L, -1, q->function);
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0408: lua: %s is not a function in %s: denied", q->function,
                      d->lua_rules->path);
        lua_settop(L, 0);
        st->r = NULL;
        state_put(d->lua_rules, st);
        return AUTHZ_DENIED;
    }
    ru = lua_newuserdatauv(L, sizeof(*ru), 0);
    ru->r = r;
    ru->route = q->route;
    luaL_setmetatable(L, REQ_META);
    cu = lua_newuserdatauv(L, sizeof(*cu), 0);
    cu->claims = json_incref(rs->claims);
    luaL_setmetatable(L, CLAIMS_META);
    for (i = 0; i < q->args->nelts; i++)
        lua_pushstring(L, APR_ARRAY_IDX(q->args, i, const char *));
    rc = lua_pcall(L, 2 + q->args->nelts, LUA_MULTRET, base);
    ru->r = NULL;
    if (rc == LUA_OK && !st->aborted)
        res = take_result(r, st, q, base);
    else
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA0409: lua: %s failed, denied: %s",
                      q->function,
                      st->aborted ? st->aborted
                      : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                        : "error");
    lua_settop(L, 0);
    st->r = NULL;
    /* A state that failed may be in any condition: start the next call afresh. */
    if (rc != LUA_OK || st->aborted)
        state_free(st);
    else
        state_put(d->lua_rules, st);
    return res;
}

static const authz_provider lua_provider = {check_lua, parse_lua_require};

static int lua_pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp)
{
    (void)plog;
    (void)ptemp;
    return apr_thread_mutex_create(&rules_init_mu, APR_THREAD_MUTEX_DEFAULT, pconf) == APR_SUCCESS
               ? OK
               : !OK;
}

void entra_lua_register_providers(apr_pool_t *p)
{
    ap_hook_pre_config(lua_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_register_auth_provider(p, AUTHZ_PROVIDER_GROUP, "entra-lua", AUTHZ_PROVIDER_VERSION,
                              &lua_provider, AP_AUTH_INTERNAL_PER_CONF);
}
