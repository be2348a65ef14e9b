/* JSON values as Lua values, one way (rules and scripts only read claims); shared by the
 * standalone `entra` module and httpd's rules. */
#ifndef ENTRA_LUA_JSON_H
#define ENTRA_LUA_JSON_H

#include <jansson.h>
#include <lua.h>

/* Pushes `v`: objects and arrays as tables (arrays as sequences), integral numbers as
 * integers, null as the light userdata NULL (exposed as entra.null). Nesting deeper than
 * 32 levels raises a Lua error. */
void entra_lua_push_json(lua_State *L, const json_t *v);

#endif
