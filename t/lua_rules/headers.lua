-- Rules for t/test_headers_planted.py: which headers a rule may set, and with what values.

-- Sets X-Customer only when asked (?set=1): the client's X-Customer must be gone either way.
function maybe_set(req, claims)
  if req:arg("set") == "1" then
    return true, { ["X-Customer"] = "from-rule", ["X-Tenant"] = claims.tid }
  end
  return true, { ["X-Seen-Customer"] = req:header("X-Customer") or "<nil>" }
end

-- A header no EntraLuaHeaders line declares: denied, the name in the error log.
function set_undeclared(req, claims)
  return true, { ["X-Undeclared-Name"] = "v" }
end

-- X-Entra-* needs no declaration, in any spelling.
function set_entra(req, claims)
  return true, { ["X-Entra-Rule"] = "rule-value", ["x_entra_rule2"] = "rule-value-2" }
end

-- A declared name from the server level (merged with the section's own).
function set_server_wide(req, claims)
  return true, { ["X-Server-Wide"] = "rule-value" }
end

local VALUES = { soh = "a\1b", del = "a\127b", esc = "a\27[31m", tab = "a\tb", nul = "a\0b" }

function set_value(req, claims)
  return true, { ["X-Customer"] = VALUES[req:arg("v")] }
end
