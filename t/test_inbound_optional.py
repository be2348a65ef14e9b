"""EntraOptional (anonymous callers where the Require rules allow them, a present token still
verified) and EntraAllowPreflight (CORS preflights without a token).

httpd skips authentication when a rule grants without a user (`Require all granted`), so
EntraOptional has its own hook in front of that check: tested under `Require all granted`,
under RequireAny with an entra rule, with rules that need a caller and with Lua rules."""

import os

import pytest

import conformance
import entra_tokens as et
from checks import (challenge, expect_insufficient_scope, expect_invalid_token, expect_no_token, expect_ok,
                    expect_status)
from echo_backend import headers_of
from stack import finish_stack

RULES = """
function anon(req, claims)
  if claims == nil then return req.method == "GET", "anonymous callers may only read" end
  return claims:has_role("Orders.Read"), "no Orders.Read"
end
function never(req, claims) return false, "never" end
"""

OPT = "EntraOptional on\n  EntraPassClaims oid roles"


def locations(rules):
    loc = conformance.location
    return "\n".join([
        loc("/opt", "Require all granted", OPT),
        loc("/optany", "<RequireAny>\n    Require entra-role Orders.Admin\n    Require all granted\n  </RequireAny>", OPT),
        loc("/optrole", "Require entra-role Orders.Read", OPT),
        loc("/optacrs", "Require entra-acrs c1", OPT),
        loc("/optlua", "Require entra-lua anon", OPT + f"\n  EntraLuaRules {rules}"),
        loc("/optoff", "Require all granted", "EntraOptional off\n  EntraPassClaims oid"),
        loc("/pre", "Require entra-role Orders.Read", "EntraAllowPreflight on"),
        loc("/nopre", "Require entra-role Orders.Read"),
        loc("/preip", "<RequireAll>\n    Require entra-role Orders.Read\n    Require ip 10.255.255.1\n  </RequireAll>",
            "EntraAllowPreflight on"),
        loc("/prelua", "Require entra-lua never", f"EntraAllowPreflight on\n  EntraLuaRules {rules}"),
        loc("/prevalid", "Require valid-user", "EntraAllowPreflight on"),
    ])


PATHS = ["/opt", "/optany", "/optrole", "/optacrs", "/optlua", "/optoff", "/pre", "/nopre", "/preip", "/prelua",
         "/prevalid"]


@pytest.fixture(scope="module")
def st(make_stack, test_root):
    rules = os.path.join(test_root, "optional-rules.lua")
    with open(rules, "w") as f:
        f.write(RULES)
    os.chmod(rules, 0o644)
    s = make_stack("optional", locations=locations(rules), files=PATHS)
    yield s
    finish_stack(s)


FORGED = {"X-Entra-Oid": "forged-oid", "X-Entra-Roles": "Orders.Admin"}


def seen(resp) -> dict:
    expect_ok(resp)
    return headers_of(resp)


# ------------------------------------------------------------------ EntraOptional

@pytest.mark.parametrize("path", ["/opt", "/optany"])
def test_anonymous_passes_without_claims(st, path):
    h = seen(st.get(f"{path}/echo", headers=FORGED))
    assert "x-entra-oid" not in h and "x-entra-roles" not in h  # client copies stripped
    assert h.get("x-test-remote-user") == [""]
    assert h.get("x-test-env-oid") == [""]
    assert "x-test-auth-type" not in h or h["x-test-auth-type"] == [""]


@pytest.mark.parametrize("path", ["/opt", "/optany"])
def test_valid_token_claims_are_passed(st, path):
    claims = et.v2_claims()
    h = seen(st.get(f"{path}/echo", st.token(claims=claims), headers=FORGED))
    assert h["x-entra-oid"] == [claims["oid"]]
    assert h["x-entra-roles"] == ["Orders.Read"]
    assert h["x-test-remote-user"] == [claims["oid"]]
    assert h["x-test-env-oid"] == [claims["oid"]]


@pytest.mark.parametrize("path", ["/opt", "/optany"])
def test_invalid_token_is_401(st, path):
    expect_invalid_token(st.get(f"{path}/ok.txt", st.token(exp=1000000000, iat=999999000, nbf=999999000)),
                         desc_contains="expired")
    expect_invalid_token(st.get(f"{path}/ok.txt", st.token(aud="api://someone-else")))
    r = st.get(f"{path}/ok.txt", headers={"Authorization": "Bearer a.b.c, Bearer d.e.f"})
    expect_status(r, 400)


def test_without_entra_optional_all_granted_ignores_tokens(st):
    """What EntraOptional is for: httpd alone never looks at the token here."""
    h = seen(st.get("/optoff/echo", st.token(exp=1000000000, iat=999999000, nbf=999999000)))
    assert h.get("x-test-remote-user") == [""]
    h = seen(st.get("/optoff/echo", st.token()))
    assert "x-entra-oid" not in h


def test_rules_that_need_a_caller_still_do(st):
    expect_no_token(st.get("/optrole/ok.txt"))
    expect_ok(st.get("/optrole/ok.txt", st.token(roles=["Orders.Read"])))
    expect_insufficient_scope(st.get("/optrole/ok.txt", st.token(roles=["Orders.Write"])))
    expect_invalid_token(st.get("/optrole/ok.txt", st.token(aud="api://someone-else")))


def test_optional_with_role_in_require_any(st):
    expect_ok(st.get("/optany/ok.txt", st.token(roles=["Orders.Admin"])))
    expect_ok(st.get("/optany/ok.txt", st.token(roles=["Orders.Write"])))  # all granted


def test_claims_challenge_under_optional(st):
    r = st.get("/optacrs/ok.txt", st.token(xms_cc=["cp1"]))
    expect_status(r, 401)
    assert challenge(r)["error"] == "insufficient_claims"
    assert "authentication context" in r.text
    expect_insufficient_scope(st.get("/optacrs/ok.txt", st.token()))
    expect_ok(st.get("/optacrs/ok.txt", st.token(acrs=["c1"])))


def test_lua_sees_nil_claims_for_anonymous_callers(st):
    expect_ok(st.get("/optlua/ok.txt"))
    # a rule that denies an anonymous caller asks for a token
    r = st.session.post(st.url("/optlua/ok.txt"), timeout=30)
    expect_status(r, 401)
    assert challenge(r).get("error") is None
    expect_ok(st.get("/optlua/ok.txt", st.token(roles=["Orders.Read"])))
    expect_insufficient_scope(st.get("/optlua/ok.txt", st.token(roles=["Orders.Write"])))
    expect_invalid_token(st.get("/optlua/ok.txt", st.token(aud="api://someone-else")))


# ------------------------------------------------------------------ EntraAllowPreflight

PREFLIGHT = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}


def options(st, path, headers):
    return st.session.options(st.url(path), headers=headers, timeout=30, allow_redirects=False)


def test_preflight_passes_without_token(st):
    expect_ok(options(st, "/pre/ok.txt", PREFLIGHT))


@pytest.mark.parametrize("drop", ["Origin", "Access-Control-Request-Method"])
def test_other_options_still_need_a_token(st, drop):
    h = {k: v for k, v in PREFLIGHT.items() if k != drop}
    expect_no_token(options(st, "/pre/ok.txt", h))


def test_preflight_with_authorization_is_verified(st):
    h = dict(PREFLIGHT, Authorization="Bearer " + st.token(aud="api://someone-else"))
    expect_invalid_token(options(st, "/pre/ok.txt", h))
    h = dict(PREFLIGHT, Authorization="Bearer " + st.token())
    expect_ok(options(st, "/pre/ok.txt", h))


def test_preflight_is_only_for_options(st):
    expect_no_token(st.get("/pre/ok.txt", headers=PREFLIGHT))


def test_without_the_directive_preflight_needs_a_token(st):
    expect_no_token(options(st, "/nopre/ok.txt", PREFLIGHT))


def test_preflight_other_rules_still_apply(st):
    """The entra rules grant a preflight; Require ip and the like still decide."""
    expect_status(options(st, "/preip/ok.txt", PREFLIGHT), 403)
    expect_ok(options(st, "/prelua/ok.txt", PREFLIGHT))  # the Lua rule is not run for it
    expect_no_token(options(st, "/prelua/ok.txt", {"Origin": "https://app.example.com"}))
    # Require valid-user is mod_authz_user's: it still wants a caller
    expect_no_token(options(st, "/prevalid/ok.txt", PREFLIGHT))
