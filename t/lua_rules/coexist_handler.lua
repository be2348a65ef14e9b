-- A mod_lua handler (Debian's mod_lua, Lua 5.3) for t/test_lua_coexist.py.
function handle(r)
  r.content_type = "text/plain"
  r:puts("mod_lua " .. _VERSION .. "\n")
  return apache2.OK
end
