/* entra.decode_unverified of the standalone Lua module, called through a real lua_State
 * (its own splitting, then base64url, the JSON parser and the JSON-to-Lua conversion).
 * It returns two tables or nil and a message; the only error it may raise is for claims
 * nested deeper than the Lua view allows (entra_lua_json.c). */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "fuzz.h"

int luaopen_entra(lua_State *L);

static lua_State *L;
static int decode_ref;

/* The module's context pool (unmanaged, in memory LeakSanitizer does not scan) goes with
 * the state. */
static void close_state(void)
{
    lua_close(L);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int rc, top;

    if (!L) {
        L = luaL_newstate();
        FUZZ_ASSERT(L);
        luaL_requiref(L, "entra", luaopen_entra, 0);
        lua_getfield(L, -1, "decode_unverified");
        FUZZ_ASSERT(lua_isfunction(L, -1));
        decode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pop(L, 1);
        atexit(close_state);
    }
    top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, decode_ref);
    lua_pushlstring(L, (const char *)data, size);
    rc = lua_pcall(L, 1, 2, 0);
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        FUZZ_ASSERT(rc == LUA_ERRRUN && msg && strstr(msg, "JSON nested too deeply"));
    }
    else if (lua_istable(L, -2)) {
        FUZZ_ASSERT(lua_istable(L, -1));
    }
    else {
        FUZZ_ASSERT(lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING);
    }
    lua_settop(L, top);
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
