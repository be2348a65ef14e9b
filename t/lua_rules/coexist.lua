-- Rules for t/test_lua_coexist.py: which Lua runs the rules (must be mod_entra's 5.4).
function version(req, claims)
  return true, { ["X-Rule-Lua-Version"] = _VERSION, ["X-Rule-Int"] = math.type(1) .. "," .. utf8.char(72, 105) }
end
