#include <lauxlib.h>

#include "entra_claims.h"
#include "entra_lua_claims.h"

int entra_lua_is_app_only(lua_State *L, const json_t *claims)
{
    lua_pushboolean(L, entra_claims_caller(claims) == ENTRA_CALLER_APP);
    return 1;
}

int entra_lua_is_user(lua_State *L, const json_t *claims)
{
    lua_pushboolean(L, entra_claims_caller(claims) == ENTRA_CALLER_USER);
    return 1;
}

int entra_lua_in_group(lua_State *L, const json_t *claims, int from)
{
    int i, n = lua_gettop(L);
    for (i = from; i <= n; i++) {
        const char *id = luaL_checkstring(L, i);
        switch (entra_claims_in_groups(claims, &id, 1)) {
        case ENTRA_MEMBER_YES:
            lua_pushboolean(L, 1);
            return 1;
        case ENTRA_MEMBER_OVERAGE:
            lua_pushboolean(L, 0);
            lua_pushliteral(L, "groups overage");
            return 2;
        default:
            break;
        }
    }
    lua_pushboolean(L, 0);
    return 1;
}

int entra_lua_has_acrs(lua_State *L, const json_t *claims, int from)
{
    int i, n = lua_gettop(L);
    for (i = from; i <= n; i++) {
        const char *v = luaL_checkstring(L, i);
        if (entra_claims_array_has(claims, "acrs", &v, 1, 0)) {
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    lua_pushboolean(L, 0);
    return 1;
}
