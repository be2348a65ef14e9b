"""Require entra-role / entra-scope / entra-app / entra-claim, their composition, and claim typing.

A token that is valid but does not satisfy the rule gets 403 with error="insufficient_scope".
Values are compared byte for byte: no case folding, no whitespace trimming.
"""

import pytest

import conformance
import entra_tokens as et
from checks import assert_log_has_no_tokens, expect_insufficient_scope, expect_ok

APP = et.CLIENT_APP
OTHER_APP = conformance.OTHER_APP
GROUP_1 = conformance.GROUP_1


def allowed(stack, path, **claims):
    expect_ok(stack.get(f"{path}/ok.txt", stack.token(**claims)), f"on {path} with {claims}")


def denied(stack, path, **claims):
    expect_insufficient_scope(stack.get(f"{path}/ok.txt", stack.token(**claims)))


# ------------------------------------------------------------------ entra-role

@pytest.mark.parametrize("roles", [["Orders.Read"], ["Other", "Orders.Read"], ["Orders.Read", "Orders.Read"]])
def test_role_present(stack, roles):
    allowed(stack, "/role", roles=roles)


@pytest.mark.parametrize("roles", [[], ["Orders.Write"], ["orders.read"], ["ORDERS.READ"], ["Orders.Read "],
                                   [" Orders.Read"], ["Orders.ReadX"], ["Orders.Rea"], ["Orders.Réad"],
                                   ["Orders.Read\u200b"], ["Orders.Read Orders.Write"]])
def test_role_absent_or_different(stack, roles):
    denied(stack, "/role", roles=roles)


def test_role_claim_missing(stack):
    denied(stack, "/role", roles=et.DROP)


@pytest.mark.parametrize("roles", ["Orders.Read", {"Orders.Read": True}, [["Orders.Read"]], [{"v": "Orders.Read"}],
                                   1, None, True])
def test_roles_must_be_an_array_of_strings(stack, roles):
    """Entra issues roles as an array of strings; anything else matches no role (403, not 200)."""
    denied(stack, "/role", roles=roles)


def test_any_of_several_roles(stack):
    allowed(stack, "/role2", roles=["Orders.Admin"])
    allowed(stack, "/role2", roles=["Orders.Write"])
    allowed(stack, "/role2", roles=["x", "Orders.Write", "Orders.Admin"])
    denied(stack, "/role2", roles=["Orders.Read"])


def test_scope_does_not_grant_a_role(stack):
    denied(stack, "/role", roles=et.DROP, scp="Orders.Read")


def test_v1_token_roles(stack):
    allowed(stack, "/role", v1=True, roles=["Orders.Read"])
    denied(stack, "/role", v1=True, roles=["Orders.Write"])


# ------------------------------------------------------------------ entra-scope

@pytest.mark.parametrize("scp", ["Orders.Read", "User.Read Orders.Read", "Orders.Read Orders.Write",
                                 "a b c Orders.Read d"])
def test_scope_present(stack, scp):
    allowed(stack, "/scope", scp=scp, roles=et.DROP, idtyp=et.DROP)


@pytest.mark.parametrize("scp", ["", "Orders.ReadWrite", "orders.read", "Orders.Rea", "User.Read",
                                 "Orders.Read,User.Read", "User.Read,Orders.Read", "Orders.Read\tUser.Read",
                                 "xOrders.Read"])
def test_scope_absent_or_different(stack, scp):
    denied(stack, "/scope", scp=scp, roles=et.DROP, idtyp=et.DROP)


@pytest.mark.parametrize("scp", [["Orders.Read"], {"Orders.Read": 1}, 1, None])
def test_scp_must_be_a_string(stack, scp):
    denied(stack, "/scope", scp=scp, roles=et.DROP, idtyp=et.DROP)


def test_role_does_not_grant_a_scope(stack):
    denied(stack, "/scope", roles=["Orders.Read"])


def test_any_of_several_scopes(stack):
    allowed(stack, "/scope2", scp="Orders.Admin", roles=et.DROP, idtyp=et.DROP)
    allowed(stack, "/scope2", scp="User.Read Orders.Write", roles=et.DROP, idtyp=et.DROP)
    denied(stack, "/scope2", scp="Orders.Read", roles=et.DROP, idtyp=et.DROP)


# ------------------------------------------------------------------ entra-app

def test_app_v2_uses_azp(stack):
    allowed(stack, "/app", azp=APP)
    denied(stack, "/app", azp=OTHER_APP)
    denied(stack, "/app", azp=APP.upper())
    denied(stack, "/app", azp=et.DROP)
    # A v2 token's appid (not issued by Entra in v2) does not count.
    denied(stack, "/app", azp=OTHER_APP, appid=APP)


def test_app_v1_uses_appid(stack):
    allowed(stack, "/app", v1=True, appid=APP)
    denied(stack, "/app", v1=True, appid=OTHER_APP)
    denied(stack, "/app", v1=True, appid=OTHER_APP, azp=APP)


def test_app_must_be_a_string(stack):
    denied(stack, "/app", azp=[APP])


# ------------------------------------------------------------------ entra-claim

@pytest.mark.parametrize("value", ["Sales", "Engineering", ["Sales"], ["Marketing", "Engineering"]])
def test_claim_matches(stack, value):
    allowed(stack, "/claim", department=value)


@pytest.mark.parametrize("value", ["sales", "Sales ", " Sales", "Sales Engineering", "Marketing", "",
                                   ["Marketing"], [], [["Sales"]], {"Sales": 1}, 1, None])
def test_claim_does_not_match(stack, value):
    denied(stack, "/claim", department=value)


def test_claim_missing(stack):
    denied(stack, "/claim")


def test_claim_array_element(stack):
    allowed(stack, "/claimarr", groups=["11111111-0000-0000-0000-000000000000", GROUP_1])
    allowed(stack, "/claimarr", groups=[GROUP_1])
    allowed(stack, "/claimarr", groups=GROUP_1)
    denied(stack, "/claimarr", groups=[GROUP_1.upper()])
    denied(stack, "/claimarr", groups=[])
    denied(stack, "/claimarr", groups=f"{GROUP_1} x")


# ------------------------------------------------------------------ composition

def test_require_all(stack):
    allowed(stack, "/all", roles=["Orders.Read"], azp=APP)
    denied(stack, "/all", roles=["Orders.Read"], azp=OTHER_APP)
    denied(stack, "/all", roles=["Orders.Write"], azp=APP)


def test_require_any(stack):
    allowed(stack, "/anyof", roles=["Orders.Admin"])
    allowed(stack, "/anyof", roles=et.DROP, scp="Orders.Admin")
    denied(stack, "/anyof", roles=["Orders.Read"], scp="Orders.Read")


def test_require_not(stack):
    allowed(stack, "/not", azp=APP)
    denied(stack, "/not", azp=OTHER_APP)


def test_valid_user_needs_no_claims(stack):
    allowed(stack, "/any", roles=et.DROP)


def test_error_log_has_no_tokens(stack):
    assert_log_has_no_tokens(stack.httpd.error_log_text())
