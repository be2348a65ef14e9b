-- The rule of t/bench/bench.py's lua-rule case (Require entra-lua orders): what a typical rule
-- does, to set against the equivalent `Require entra-role Orders.Read` (the entra-role case).
-- A granted call returns true alone: after true, mod_entra expects a table of headers for the
-- backend, and any other second value (a reason string) is a wrong answer, which denies.
function orders(req, claims)
  if req.method == "GET" then
    if claims:has_role("Orders.Read") then return true end
    return false, "GET needs Orders.Read"
  end
  if claims:has_role("Orders.Write") then return true end
  return false, req.method .. " needs Orders.Write"
end
