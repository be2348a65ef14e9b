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
