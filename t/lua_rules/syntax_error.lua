-- A rules file with a syntax error: apache2 -t must refuse it.
function broken(req, claims)
  if req.method == "GET" then
    return true
  -- missing "end"
