#include <math.h>
#include <lauxlib.h>

#include "entra_lua_json.h"

#define MAX_DEPTH 32

static void push(lua_State *L, const json_t *v, int depth)
{
    size_t i;
    const char *k;
    json_t *e;

    if (depth > MAX_DEPTH)
        luaL_error(L, "JSON nested too deeply");
    luaL_checkstack(L, 3, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach((json_t *)v, k, e)
        {
            push(L, e, depth + 1);
            lua_setfield(L, -2, k);
        }
        break;
    case JSON_ARRAY:
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach(v, i, e)
        {
            push(L, e, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushlightuserdata(L, NULL);
        break;
    }
}

void entra_lua_push_json(lua_State *L, const json_t *v)
{
    push(L, v, 0);
}

static json_t *to_json(lua_State *L, int idx, int depth, const char **err)
{
    json_t *out;
    lua_Integer n;

    if (depth > MAX_DEPTH) {
        *err = "table nested too deeply";
        return NULL;
    }
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx))) {
            *err = "number is not finite";
            return NULL;
        }
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        out = json_stringn(s, len);
        if (!out)
            *err = "string is not UTF-8";
        return out;
    }
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx))
            return json_null();
        break;
    case LUA_TTABLE:
        luaL_checkstack(L, 3, "table nested too deeply");
        n = (lua_Integer)lua_rawlen(L, idx);
        if (n > 0) {
            lua_Integer i;
            out = json_array();
            for (i = 1; i <= n; i++) {
                json_t *e;
                lua_rawgeti(L, idx, i);
                e = to_json(L, -1, depth + 1, err);
                lua_pop(L, 1);
                if (!e) {
                    json_decref(out);
                    return NULL;
                }
                json_array_append_new(out, e);
            }
            return out;
        }
        out = json_object();
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            json_t *e;
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                json_decref(out);
                *err = "table keys must be strings";
                return NULL;
            }
            e = to_json(L, -1, depth + 1, err);
            if (!e) {
                lua_pop(L, 2);
                json_decref(out);
                return NULL;
            }
            json_object_set_new(out, lua_tostring(L, -2), e);
            lua_pop(L, 1);
        }
        return out;
    default:
        break;
    }
    *err = "value cannot be represented in JSON";
    return NULL;
}

json_t *entra_lua_to_json(lua_State *L, int idx, const char **err)
{
    return to_json(L, idx, 0, err);
}
