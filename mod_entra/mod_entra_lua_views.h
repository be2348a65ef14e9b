/* The views a Lua rule receives (mod_entra_lua.c calls the rule): `req`, a read-only view of
 * the request valid only during the call that made it, and `claims`, the verified claims
 * with their methods (has_role, has_scope, app, is_app_only, is_user, in_group, has_acrs).
 * Credentials (Authorization, Cookie, Proxy-Authorization) are never shown. */
#ifndef MOD_ENTRA_LUA_VIEWS_H
#define MOD_ENTRA_LUA_VIEWS_H

#include <httpd.h>
#include <jansson.h>
#include <lua.h>

/* Creates both views' metatables in a new state. */
void entra_lua_views_init(lua_State *L);

/* Pushes a request view for call generation `call` of the state (route: the rule's route
 * label or NULL). */
void entra_lua_push_request(lua_State *L, unsigned long call, const char *route);

/* Pushes a claims view holding a reference to `claims` (dropped by the view's __gc). */
void entra_lua_push_claims(lua_State *L, json_t *claims);

/* Defined in mod_entra_lua.c: the request the state serves during call `call`, or NULL
 * when that call has ended. */
request_rec *entra_lua_view_request(lua_State *L, unsigned long call);

#endif
