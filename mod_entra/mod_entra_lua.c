/* Require entra-lua <function> [args...]: authorization rules written in Lua 5.4, run in
 * a sandbox over the verified claims. One prepared lua_State per worker thread at a time
 * (a pool per rules file); text chunks only; base, string, table, math and utf8 only;
 * globals read-only; an instruction budget and a time limit per call and a memory cap per
 * state. Any failure denies, with the traceback in the error log and nothing in the
 * response. The sandbox's Lua code is in mod_entra_lua_sandbox.h, the views a rule receives
 * in mod_entra_lua_views.c; this file holds the directives, limits, states and provider. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
#include "mod_entra.h"
#include "mod_entra_lua_sandbox.h"
#include "mod_entra_lua_views.h"

APLOG_USE_MODULE(entra);

#define DEFAULT_MAX_INSTRUCTIONS 1000000L
#define DEFAULT_MAX_MEMORY (8L * 1024 * 1024)
#define DEFAULT_MAX_TIME_MS 250L
#define SETUP_MIN_TIME_MS 1000L
#define HOOK_EVERY 1000
/* The clock is read on every call, every 64th allocation and every allocation of 64 KiB or
 * more: C functions that neither call back nor allocate are bounded by the sandbox. */
#define CLOCK_EVERY_ALLOCS 64
#define CLOCK_ALLOC_BYTES (64 * 1024)
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
    apr_int64_t deadline_ns; /* CLOCK_MONOTONIC; the running call stops after it */
    apr_int64_t started_ns;
    long max_time_ms;
    unsigned allocs;
    int timed_out;
    const char *aborted; /* why the running call was stopped, or NULL */
    request_rec *r;      /* the request being served (NULL between calls) */
    unsigned long call;  /* generation of the current call, for request views */
} lstate;

typedef struct {
    const char *function;
    apr_array_header_t *args; /* const char * */
    const char *route;
} lua_require;

static apr_thread_mutex_t *rules_init_mu;
static apr_pool_t *child_pool; /* this child's pool: owns the states of every rules file */

static const char *const ABORT_KEY = "entra-abort";
static const char *const ENV_KEY = "entra.env";

static int lua_next_wrapper(lua_State *L);

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
    if (end == arg)
        end = "x"; /* no digits at all */
    if (*(const char *)cmd->info == 'i') {
        if (*end || v < 10000 || v > 1000000000)
            return "EntraLuaMaxInstructions: a number from 10000 to 1000000000";
        sc->lua_max_instructions = (long)v;
    }
    else if (*(const char *)cmd->info == 't') {
        if (*end || v < 10 || v > 60000)
            return "EntraLuaMaxTime: milliseconds from 10 to 60000";
        sc->lua_max_time_ms = (long)v;
    }
    else {
        if (*end || v < 1024 * 1024 || v > 1024L * 1024 * 1024)
            return "EntraLuaMaxMemory: bytes from 1048576 to 1073741824";
        sc->lua_max_memory = (long)v;
    }
    return NULL;
}

/* Names a rule may not own: framing, routing and credentials belong to httpd, the client
 * and EntraProxyToken. Compared like owned names: '-' and '_' alike, any case. */
static const char *const RESERVED_HEADERS[] = {
    "Host", "Content-Length", "Content-Type", "Content-Encoding", "Transfer-Encoding", "TE",
    "Trailer", "Connection", "Keep-Alive", "Upgrade", "Expect", "Proxy-Connection",
    "Proxy-Authenticate", "Proxy-Authorization", "Authorization", "Cookie", NULL};

const char *entra_cmd_lua_headers(cmd_parms *cmd, void *dv, const char *arg)
{
    entra_dir_conf *d = dv;
    const char *c;
    int i;
    for (c = arg; *c; c++)
        if (!apr_isalnum(*c) && *c != '-' && *c != '_')
            break;
    if (!*arg || *c || c - arg > 128)
        return apr_psprintf(cmd->pool,
                            "EntraLuaHeaders: '%s' is not a header name (letters, digits, '-' "
                            "and '_', at most 128)",
                            arg);
    for (i = 0; RESERVED_HEADERS[i]; i++)
        if (entra_header_eq(arg, RESERVED_HEADERS[i]))
            return apr_psprintf(cmd->pool,
                                "EntraLuaHeaders: '%s' belongs to httpd or the client and may not "
                                "be set by a rule",
                                arg);
    if (!d->lua_headers)
        d->lua_headers = apr_array_make(cmd->pool, 4, sizeof(const char *));
    APR_ARRAY_PUSH(d->lua_headers, const char *) = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

/* ---------------------------------------------------------------- limits */

/* Read on every call a rule makes: the coarse clock costs 9 ns where the precise one costs
 * 68 (measured here), and its 4 ms ticks are fine against limits of 10 ms and more. */
#ifdef CLOCK_MONOTONIC_COARSE
#define LIMITS_CLOCK CLOCK_MONOTONIC_COARSE
#else
#define LIMITS_CLOCK CLOCK_MONOTONIC
#endif

static apr_int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(LIMITS_CLOCK, &ts);
    return (apr_int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sets aborted once the deadline has passed; 1 if the call must stop. */
static int past_deadline(lstate *st)
{
    if (!st->aborted && now_ns() > st->deadline_ns) {
        st->aborted = "time limit reached";
        st->timed_out = 1;
    }
    return st->aborted != NULL;
}

static void start_clock(lstate *st, long ms)
{
    st->started_ns = now_ns();
    st->deadline_ns = st->started_ns + (apr_int64_t)ms * 1000000;
    st->timed_out = 0;
}

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
    /* Growing only: Lua counts on shrinking to succeed. A failed allocation raises an error
     * the sandbox's pcall cannot swallow (aborted is set). */
    if (nsize > old && (++st->allocs % CLOCK_EVERY_ALLOCS == 0 || nsize >= CLOCK_ALLOC_BYTES) &&
        past_deadline(st) && st->timed_out)
        return NULL;
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

/* Every HOOK_EVERY instructions and before every call, Lua or C: a call into C counts as
 * one instruction however long it runs, so the clock is what bounds a loop of them. */
static void limits_hook(lua_State *L, lua_Debug *ar)
{
    lstate *st = state_of(L);
    if (ar->event == LUA_HOOKCOUNT) {
        st->count += HOOK_EVERY;
        if (st->count > st->max_count && !st->aborted)
            st->aborted = "instruction budget exhausted";
    }
    if (past_deadline(st))
        raise_abort(L);
}

static void set_limits_hook(lua_State *L)
{
    lua_sethook(L, limits_hook, LUA_MASKCOUNT | LUA_MASKCALL, HOOK_EVERY);
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

/* The request a state serves during call `call` (the views' accessor, see
 * mod_entra_lua_views.h); NULL once that call has ended. */
request_rec *entra_lua_view_request(lua_State *L, unsigned long call)
{
    lstate *st = state_of(L);
    return st->r && call == st->call ? st->r : NULL;
}

/* ---------------------------------------------------------------- states */

static int traceback(lua_State *L)
{
    if (lua_touserdata(L, 1) == (void *)ABORT_KEY)
        return 1;
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

/* Opens the libraries, builds the sandbox and loads the rules; runs under lua_pcall so a
 * memory error cannot escape. Leaves the frozen environment in the registry. */
static int setup_state(lua_State *L)
{
    entra_lua_rules *rules = lua_touserdata(L, 1);
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {NULL, NULL}};
    const luaL_Reg *lib;

    for (lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    entra_lua_views_init(L);
    if (luaL_loadbufferx(L, entra_lua_sandbox, sizeof(entra_lua_sandbox) - 1, "=sandbox", "t") !=
        LUA_OK)
        return lua_error(L);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_aborted);
    lua_setfield(L, -2, "aborted");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, -2, "log");
    lua_pushlightuserdata(L, (void *)ABORT_KEY);
    lua_setfield(L, -2, "ABORT");
    lua_call(L, 1, 1); /* -> loader */
    lua_pushlstring(L, rules->source, rules->len);
    lua_pushstring(L, rules->chunkname);
    /* The rules file's top level runs under the same limits as any call. */
    set_limits_hook(L);
    lua_call(L, 2, 2); /* -> env | nil, err */
    if (lua_isnil(L, -2))
        return lua_error(L);
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, ENV_KEY);
    return 0;
}

/* A new state with the sandbox and the rules loaded and frozen; NULL after logging. */
static lstate *state_new(request_rec *r, entra_lua_rules *rules)
{
    entra_srv_conf *sc = ap_get_module_config(ap_server_conf->module_config, &entra_module);
    lstate *st = calloc(1, sizeof(*st));
    lua_State *L;

    if (!st)
        return NULL;
    st->mem_limit = (size_t)(sc->lua_max_memory != ENTRA_UNSET ? sc->lua_max_memory
                                                               : DEFAULT_MAX_MEMORY);
    st->max_count = sc->lua_max_instructions != ENTRA_UNSET ? sc->lua_max_instructions
                                                            : DEFAULT_MAX_INSTRUCTIONS;
    st->max_time_ms =
        sc->lua_max_time_ms != ENTRA_UNSET ? sc->lua_max_time_ms : DEFAULT_MAX_TIME_MS;
    /* The rules file's top level is bounded too, but building the sandbox and compiling a
     * large file must not fail every request under a small EntraLuaMaxTime. */
    start_clock(st, st->max_time_ms > SETUP_MIN_TIME_MS ? st->max_time_ms : SETUP_MIN_TIME_MS);
    L = st->L = lua_newstate(l_alloc, st);
    if (!L) {
        free(st);
        return NULL;
    }
    st->r = r;
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, setup_state);
    lua_pushlightuserdata(L, rules);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK || st->aborted) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA0402: lua: cannot load %s: %s",
                      rules->path,
                      st->aborted                            ? st->aborted
                      : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                             : "error");
        lua_close(L);
        free(st);
        return NULL;
    }
    lua_settop(L, 0);
    st->r = NULL;
    return st;
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
            /* Per-process runtime parts of a configuration object: the child's pool owns
             * them (never pconf or the process pool, which outlive the child's generation). */
            apr_pool_t *pp = child_pool ? child_pool : r->server->process->pool;
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

/* Header names are tokens; values carry no control byte but HTAB (refused, not repaired:
 * a backend must not mistake a mangled value for what the rule meant). */
static int valid_header(const char *name, size_t nlen, const char *value, size_t vlen)
{
    size_t i;
    if (!nlen || nlen > 128 || strlen(name) != nlen || vlen > 8192 ||
        entra_has_ctl(value, vlen))
        return 0;
    for (i = 0; i < nlen; i++)
        if (!apr_isalnum(name[i]) && name[i] != '-' && name[i] != '_')
            return 0;
    for (i = 0; RESERVED_HEADERS[i]; i++)
        if (entra_header_eq(name, RESERVED_HEADERS[i]))
            return 0;
    return 1;
}

/* One rule call, from setting up its arguments to reading its answer. */
typedef struct {
    request_rec *r;
    const lua_require *q;
    json_t *claims;
    int granted;
    int failed;       /* the rule did not answer properly: never a grant */
    const char *code; /* log message number of the failure */
    const char *why;  /* deny reason or failure description */
    apr_table_t *set; /* headers for the backend */
    const char *rules_path;
    const entra_dir_conf *d; /* for the section's EntraLuaHeaders */
} rule_call;

static void bad_answer(rule_call *c, const char *code, const char *msg)
{
    c->failed = 1;
    c->code = code;
    c->why = msg;
}

/* Reads `true[, {headers}]` or `false[, reason]` starting at stack index `base`. */
static void read_answer(lua_State *L, rule_call *c, int base)
{
    int nres = lua_gettop(L) - base + 1, n = 0;

    if (nres < 1 || !lua_isboolean(L, base)) {
        bad_answer(c, "0403", apr_psprintf(c->r->pool, "returned %s instead of a boolean",
                                   nres < 1 ? "nothing" : luaL_typename(L, base)));
        return;
    }
    if (!lua_toboolean(L, base)) {
        c->why = nres >= 2 && lua_type(L, base + 1) == LUA_TSTRING
                     ? apr_pstrdup(c->r->pool, lua_tostring(L, base + 1))
                     : "no reason given";
        return;
    }
    /* `return cond, "reason"` is the common idiom: a string only matters on denial. */
    if (nres >= 2 && !lua_isnil(L, base + 1) && lua_type(L, base + 1) != LUA_TSTRING) {
        if (!lua_istable(L, base + 1)) {
            bad_answer(c, "0405",
                       apr_psprintf(c->r->pool, "allowed with a %s instead of a table of headers",
                                       luaL_typename(L, base + 1)));
            return;
        }
        /* Iterate as pairs() does, so read-only tables from the rules file work too. */
        if (luaL_getmetafield(L, base + 1, "__pairs") != LUA_TNIL) {
            lua_pushvalue(L, base + 1);
            lua_call(L, 1, 3);
        }
        else {
            lua_pushcfunction(L, lua_next_wrapper);
            lua_pushvalue(L, base + 1);
            lua_pushnil(L);
        }
        for (;;) {
            size_t nl, vl;
            const char *name, *value;
            lua_pushvalue(L, -3);
            lua_pushvalue(L, -3);
            lua_pushvalue(L, -3);
            lua_call(L, 2, 2);
            if (lua_isnil(L, -2)) {
                lua_pop(L, 2);
                break;
            }
            lua_remove(L, -3); /* the key becomes the new control value */
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)) {
                bad_answer(c, "0406", "asked for an invalid header");
                return;
            }
            lua_pushvalue(L, -2);
            name = lua_tolstring(L, -1, &nl);
            value = lua_tolstring(L, -2, &vl);
            if (!valid_header(name, nl, value, vl) || ++n > MAX_SET_HEADERS) {
                bad_answer(c, "0406", "asked for an invalid header");
                return;
            }
            /* Only declared names are stripped from clients' requests: any other name could
             * carry a value the client planted, so it fails closed. */
            if (!entra_owned_header(c->d, name)) {
                bad_answer(c, "0551",
                           apr_psprintf(c->r->pool,
                                        "set header '%s', which is not declared with "
                                        "EntraLuaHeaders",
                                        name));
                return;
            }
            apr_table_set(c->set, name, value);
            lua_pop(L, 2); /* name copy, value: the key stays as control */
        }
    }
    c->granted = 1;
}

static int lua_next_wrapper(lua_State *L)
{
    lua_settop(L, 2);
    return lua_next(L, 1) ? 2 : (lua_pushnil(L), 1);
}

/* Runs under lua_pcall: builds the views, calls the rule, reads its answer. */
static int run_rule(lua_State *L)
{
    rule_call *c = lua_touserdata(L, 1);
    int i, base;

    lua_settop(L, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, ENV_KEY);
    lua_getfield(L, -1, c->q->function);
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        bad_answer(c, "0408", apr_psprintf(c->r->pool, "is not a function in %s",
                                           c->rules_path));
        return 0;
    }
    entra_lua_push_request(L, state_of(L)->call, c->q->route);
    if (c->claims)
        entra_lua_push_claims(L, c->claims);
    else
        lua_pushnil(L); /* an anonymous caller (EntraOptional) */
    for (i = 0; i < c->q->args->nelts; i++)
        lua_pushstring(L, APR_ARRAY_IDX(c->q->args, i, const char *));
    base = 1;
    lua_call(L, 2 + c->q->args->nelts, LUA_MULTRET);
    read_answer(L, c, base);
    return 0;
}

static authz_status check_lua(request_rec *r, const char *line, const void *parsed)
{
    const lua_require *q = parsed;
    entra_dir_conf *d = ap_get_module_config(r->per_dir_config, &entra_module);
    entra_req_state *rs;
    lstate *st;
    lua_State *L;
    rule_call c;
    int rc;
    (void)line;

    rs = entra_req_state_ensure(r);
    if (!r->user && rs->preflight)
        return AUTHZ_GRANTED; /* a CORS preflight under EntraAllowPreflight */
    /* Under EntraOptional a rule decides about anonymous callers too (claims == nil); a
     * rule that denies one asks for a token (401). */
    if (!r->user && d->optional != 1)
        return AUTHZ_DENIED_NO_USER;
    if (r->user && !rs->claims)
        return AUTHZ_DENIED;
    if (!d->lua_rules) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0407: Require entra-lua %s without EntraLuaRules here: denied",
                      q->function);
        rs->lua_failed = 1;
        return AUTHZ_DENIED;
    }
    if (!(st = state_get(r, d->lua_rules))) {
        rs->lua_failed = 1;
        return AUTHZ_DENIED;
    }
    memset(&c, 0, sizeof(c));
    c.r = r;
    c.q = q;
    c.claims = rs->claims;
    c.set = apr_table_make(r->pool, 4);
    c.rules_path = d->lua_rules->path;
    c.d = d;
    L = st->L;
    st->r = r;
    st->count = 0;
    st->aborted = NULL;
    start_clock(st, st->max_time_ms); /* before any Lua API call: the allocator reads it */
    lua_settop(L, 0);
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, run_rule);
    lua_pushlightuserdata(L, &c);
    rc = lua_pcall(L, 1, 0, 1);
    if (st->timed_out) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0409: lua: %s failed, denied: time limit reached (EntraLuaMaxTime "
                      "%ld ms; stopped after %ld ms)",
                      q->function, st->max_time_ms,
                      (long)((now_ns() - st->started_ns) / 1000000));
        c.failed = 1;
    }
    else if (rc != LUA_OK || st->aborted) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA0409: lua: %s failed, denied: %s",
                      q->function,
                      st->aborted                            ? st->aborted
                      : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                             : "error");
        c.failed = 1;
    }
    else if (c.failed)
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA%s: lua: %s %s: denied", c.code,
                      q->function, c.why);
    else if (!c.granted)
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "ENTRA0404: lua: %s denied: %.300s",
                      q->function, c.why);
    lua_settop(L, 0);
    st->r = NULL;
    st->call++; /* views of this call are dead from now on */
    /* A state that failed may be in any condition: start the next call afresh. */
    if (rc != LUA_OK || st->aborted)
        state_free(st);
    else
        state_put(d->lua_rules, st);
    if (c.failed) {
        rs->lua_failed = 1; /* see lua_guard: no composition may turn this into a grant */
        return AUTHZ_DENIED;
    }
    if (c.granted) {
        apr_table_overlap(r->headers_in, c.set, APR_OVERLAP_TABLES_SET);
        return AUTHZ_GRANTED;
    }
    if (!rs->claims)
        return AUTHZ_DENIED_NO_USER;
    entra_note_denied(r, rs, "denied by a Lua rule");
    return AUTHZ_DENIED;
}

/* `Require not entra-lua f` or RequireAny could turn a failing rule into a grant; a rule
 * that failed denies the request whatever the composition (fail closed). */
static int lua_guard(request_rec *r)
{
    entra_req_state *rs = entra_req_state_get(r);
    if (!rs || !rs->lua_failed)
        return DECLINED;
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                  "ENTRA0410: a Lua rule failed for this request: denied whatever the Require "
                  "composition");
    entra_note_error(r, "Lua rule failed");
    entra_challenge(r, "insufficient_scope", "the token does not grant access to this resource");
    return HTTP_FORBIDDEN;
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

static void lua_child_init(apr_pool_t *pchild, server_rec *s)
{
    (void)s;
    child_pool = pchild;
}

void entra_lua_register_providers(apr_pool_t *p)
{
    ap_hook_pre_config(lua_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(lua_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_register_auth_provider(p, AUTHZ_PROVIDER_GROUP, "entra-lua", AUTHZ_PROVIDER_VERSION,
                              &lua_provider, AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_fixups(lua_guard, NULL, NULL, APR_HOOK_REALLY_FIRST);
}
