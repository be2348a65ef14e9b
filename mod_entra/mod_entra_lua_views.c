/* The request and claims views of Lua rules (see mod_entra_lua_views.h). */
#include <string.h>

#include <httpd.h>
#include <http_core.h>
#include <apr_strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "entra_lua_claims.h"
#include "entra_lua_json.h"
#include "mod_entra_lua_views.h"

static const char *const REQ_META = "entra.request";
static const char *const CLAIMS_META = "entra.claims";

/* A request view is valid only during the call that made it: a view a rule saved away
 * carries an old generation and reaches nothing. */
typedef struct {
    unsigned long call;
    const char *route;
} req_ud;

static request_rec *view_request(lua_State *L, const req_ud *u)
{
    return entra_lua_view_request(L, u->call);
}

typedef struct {
    json_t *claims;
} claims_ud;

static request_rec *check_req(lua_State *L)
{
    request_rec *r = view_request(L, luaL_checkudata(L, 1, REQ_META));
    if (!r)
        luaL_error(L, "the request view is only valid during the rule call");
    return r;
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
    request_rec *r = view_request(L, u);
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

/* claims:is_app_only(), is_user(), in_group(id...), has_acrs(v...): entra_lua_claims.c. */
static int claims_is_app_only(lua_State *L)
{
    return entra_lua_is_app_only(L, check_claims(L));
}

static int claims_is_user(lua_State *L)
{
    return entra_lua_is_user(L, check_claims(L));
}

static int claims_in_group(lua_State *L)
{
    return entra_lua_in_group(L, check_claims(L), 2);
}

static int claims_has_acrs(lua_State *L)
{
    return entra_lua_has_acrs(L, check_claims(L), 2);
}

static int claims_index(lua_State *L)
{
    static const luaL_Reg methods[] = {{"has_role", claims_has_role},
                                       {"has_scope", claims_has_scope},
                                       {"app", claims_app},
                                       {"is_app_only", claims_is_app_only},
                                       {"is_user", claims_is_user},
                                       {"in_group", claims_in_group},
                                       {"has_acrs", claims_has_acrs},
                                       {NULL, NULL}};
    const luaL_Reg *m;
    json_t *c = check_claims(L);
    const char *k = luaL_checkstring(L, 2);
    for (m = methods; m->name && strcmp(k, m->name); m++)
        ;
    if (m->name)
        lua_pushcfunction(L, m->func);
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

void entra_lua_views_init(lua_State *L)
{
    make_meta(L, REQ_META, req_index, NULL);
    make_meta(L, CLAIMS_META, claims_index, claims_gc);
}

void entra_lua_push_request(lua_State *L, unsigned long call, const char *route)
{
    req_ud *u = lua_newuserdatauv(L, sizeof(*u), 0);
    u->call = call;
    u->route = route;
    luaL_setmetatable(L, REQ_META);
}

void entra_lua_push_claims(lua_State *L, json_t *claims)
{
    claims_ud *u = lua_newuserdatauv(L, sizeof(*u), 0);
    u->claims = NULL; /* a failing setmetatable must not leave __gc a dangling pointer */
    luaL_setmetatable(L, CLAIMS_META);
    u->claims = json_incref(claims);
}
