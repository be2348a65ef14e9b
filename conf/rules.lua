-- Example authorization rules for mod_entra (Require entra-lua <function> [args...]).
--
-- Each function receives the request view, the verified claims and the words after its
-- name on the Require line, and returns:
--   true                      allow
--   true, { Header = value }  allow and set these request headers for the backend: X-Entra-*
--                             or names the section declares with EntraLuaHeaders (clients'
--                             values of those are removed; any other name denies)
--   false, "reason"           deny (403 insufficient_scope; the reason goes to the error log)
--
-- req:    method, path, query, client_ip, route, user, time (epoch s), weekday (1 = Monday, UTC),
--         req:header(name) (never Authorization or Cookie), req:arg(name)
-- claims: any claim by name (claims.tid, claims.roles...), claims:has_role(r...),
--         claims:has_scope(s...), claims:app() (azp or appid)
-- Rules run in a sandbox: base, string, table, math and utf8 only; globals are read-only;
-- each call is bounded by EntraLuaMaxInstructions, EntraLuaMaxMemory and EntraLuaMaxTime.

local BILLING_APP = "b111111a-0000-4000-8000-00000000b111"

-- GET needs Orders.Read; anything else needs Orders.Write, unless the caller is billing.
function orders(req, claims)
  if req.method == "GET" or req.method == "HEAD" then
    if claims:has_role("Orders.Read") then return true end
    return false, "GET needs Orders.Read"
  end
  if claims:has_role("Orders.Write") or claims:app() == BILLING_APP then
    return true
  end
  return false, req.method .. " needs Orders.Write"
end

-- Only the given tenant, and only Monday to Friday (UTC):  Require entra-lua admin_weekdays <tenant>
function admin_weekdays(req, claims, tenant)
  if claims.tid ~= tenant then return false, "tenant " .. tostring(claims.tid) .. " may not call admin" end
  if req.weekday > 5 then return false, "admin is closed at weekends" end
  return true
end

-- Tell the backend who the customer is, from a claim.
-- Needs, in the section:  EntraLuaHeaders X-Customer X-Caller-App
function with_customer(req, claims)
  if not claims:has_role("Orders.Read") then return false, "needs Orders.Read" end
  return true, { ["X-Customer"] = claims.tid, ["X-Caller-App"] = claims:app() }
end
