/* The Entra claims methods both Lua faces offer (httpd's rules and the standalone module):
 * claims:is_app_only(), claims:is_user(), claims:in_group(id...), claims:has_acrs(v...),
 * answered by entra_claims.c like the Require providers. Each face finds the claims behind
 * its own `self` and calls these; they return the number of results pushed. */
#ifndef ENTRA_LUA_CLAIMS_H
#define ENTRA_LUA_CLAIMS_H

#include <jansson.h>
#include <lua.h>

/* true/false */
int entra_lua_is_app_only(lua_State *L, const json_t *claims);
int entra_lua_is_user(lua_State *L, const json_t *claims);
/* Any of the strings from stack index `from` on: true; none: false; a token in groups
 * overage: false, "groups overage" (it cannot say). */
int entra_lua_in_group(lua_State *L, const json_t *claims, int from);
/* Any of the strings from stack index `from` on in acrs: true, else false. */
int entra_lua_has_acrs(lua_State *L, const json_t *claims, int from);

#endif
