"""Entra-aware Require providers beyond roles and scopes: entra-acrs (claims challenges),
entra-app-only / entra-user, entra-group (groups overage) / entra-wid, the same decisions in
Lua rules (claims:is_app_only() ...), and env ENTRA_ERROR in the access log."""

import base64
import json
import os
import time
import uuid

import pytest

import conformance
import entra_tokens as et
from checks import challenge, expect_insufficient_scope, expect_invalid_token, expect_ok, expect_status
from stack import finish_stack

GROUP = conformance.GROUP_1
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"  # role template id of Global Administrator
OTHER_GROUP = "77777777-4a59-4687-9a1b-2c3d4e5f6071"

RULES = """
function app_only(req, claims) return claims:is_app_only(), "not app-only" end
function user(req, claims) return claims:is_user(), "not a user" end
function group(req, claims, id) return claims:in_group(id) end
function acrs(req, claims, v) return claims:has_acrs(v), "no acrs" end
"""

LOG = "%>s err=\\\"%{ENTRA_ERROR}e\\\" test=%{X-Test-Id}i"


def locations(rules_path):
    loc = conformance.location
    out = [
        loc("/acrs", "Require entra-acrs c1 c2"),
        loc("/acrsany", "<RequireAny>\n    Require entra-acrs c3\n    Require entra-role Orders.Admin\n  </RequireAny>"),
        loc("/acrsall", "<RequireAll>\n    Require entra-role Orders.Read\n    Require entra-acrs c4\n  </RequireAll>"),
        loc("/acrsmeta", "Require entra-acrs c5",
            tenant_lines="EntraMetadataURL {authority}" + et.TENANT + "/v2.0/.well-known/openid-configuration"),
        loc("/apponly", "Require entra-app-only"),
        loc("/user", "Require entra-user"),
        loc("/apponlytid", "Require entra-app-only", "EntraRemoteUserClaim tid"),
        loc("/usertid", "Require entra-user", "EntraRemoteUserClaim tid"),
        loc("/group", f"Require entra-group {OTHER_GROUP} {GROUP.upper()}"),
        loc("/wid", f"Require entra-wid {GLOBAL_ADMIN}"),
        loc("/luaapp", "Require entra-lua app_only", f"EntraLuaRules {rules_path}"),
        loc("/luauser", "Require entra-lua user", f"EntraLuaRules {rules_path}"),
        loc("/luagroup", f"Require entra-lua group {GROUP}", f"EntraLuaRules {rules_path}"),
        loc("/luaacrs", "Require entra-lua acrs c1", f"EntraLuaRules {rules_path}"),
        # nothing listens on port 9: no keys, 503
        loc("/nokeys", "Require valid-user", "EntraAuthority http://127.0.0.1:9/"),
    ]
    return "\n".join(out)


PATHS = ["/acrs", "/acrsany", "/acrsall", "/acrsmeta", "/apponly", "/user", "/apponlytid", "/usertid",
         "/group", "/wid", "/luaapp", "/luauser", "/luagroup", "/luaacrs", "/nokeys"]


@pytest.fixture(scope="module")
def st(make_stack, test_root):
    rules = os.path.join(test_root, "authz-rules.lua")
    with open(rules, "w") as f:
        f.write(RULES)
    os.chmod(rules, 0o644)
    s = make_stack(
        "authz",
        locations=lambda a: locations(rules).replace("{authority}", a),
        server_conf=lambda a: conformance.server_conf(a) + f'\nLogFormat "{LOG}" entraerr\n'
                                                           'CustomLog "logs/entra_error.log" entraerr\n',
        files=PATHS)
    yield s
    finish_stack(s)


def get(st, path, test_id=None, **claims):
    h = {"X-Test-Id": test_id} if test_id else {}
    v1 = claims.pop("v1", False)
    return st.get(f"{path}/ok.txt", st.token(v1=v1, **claims), headers=h)


def logged_error(st, test_id):
    """The ENTRA_ERROR of the request tagged test_id, from the access log (bounded wait)."""
    path = os.path.join(st.httpd.workdir, "logs", "entra_error.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                for line in f:
                    if line.rstrip().endswith(f"test={test_id}"):
                        return line.split('err="', 1)[1].split('"', 1)[0]
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {test_id}")


def tid():
    return uuid.uuid4().hex


def decoded_claims_param(resp) -> dict:
    value = challenge(resp)["claims"]
    # Microsoft's format: standard base64 with padding, not base64url.
    assert len(value) % 4 == 0 and "-" not in value and "_" not in value
    return json.loads(base64.b64decode(value, validate=True))


# ------------------------------------------------------------------ 1. entra-acrs

def test_acrs_present_grants(st):
    expect_ok(get(st, "/acrs", acrs=["c2"]))
    expect_ok(get(st, "/acrs", acrs=["c9", "c1"], xms_cc=["cp1"]))


@pytest.mark.parametrize("acrs", [et.DROP, [], ["c3"], ["C1"], "c1", [["c1"]]])
def test_acrs_missing_without_cp1_is_403(st, acrs):
    expect_insufficient_scope(get(st, "/acrs", acrs=acrs))
    expect_insufficient_scope(get(st, "/acrs", acrs=acrs, xms_cc=["cp2"]))


def test_acrs_missing_with_cp1_is_a_claims_challenge(st):
    t = tid()
    r = get(st, "/acrs", test_id=t, acrs=["c9"], xms_cc=["cp1"])
    expect_status(r, 401)
    p = challenge(r)
    assert p["realm"] == conformance.REALM
    assert p["error"] == "insufficient_claims"
    assert p["authorization_uri"] == f"{st.fake.authority}{et.TENANT}/oauth2/v2.0/authorize"
    assert decoded_claims_param(r) == {"access_token": {"acrs": {"essential": True, "value": "c1"}}}
    # byte for byte what Microsoft's documentation shows for such a request
    assert challenge(r)["claims"] == base64.b64encode(
        b'{"access_token":{"acrs":{"essential":true,"value":"c1"}}}').decode()
    assert logged_error(st, t) == "authentication context required"


def test_acrs_challenge_v1_token(st):
    r = get(st, "/acrs", v1=True, acrs=et.DROP, xms_cc=["cp1"])
    expect_status(r, 401)
    assert challenge(r)["error"] == "insufficient_claims"
    expect_ok(get(st, "/acrs", v1=True, acrs=["c1"]))


def test_acrs_challenge_without_authorization_uri_for_metadata_url(st):
    r = get(st, "/acrsmeta", acrs=["c1"], xms_cc=["cp1"])
    expect_status(r, 401)
    p = challenge(r)
    assert p["error"] == "insufficient_claims" and "authorization_uri" not in p
    assert decoded_claims_param(r)["access_token"]["acrs"]["value"] == "c5"


def test_acrs_in_require_any(st):
    expect_ok(get(st, "/acrsany", roles=["Orders.Admin"], xms_cc=["cp1"]))
    expect_ok(get(st, "/acrsany", roles=et.DROP, acrs=["c3"]))
    r = get(st, "/acrsany", roles=["Orders.Read"], xms_cc=["cp1"])
    expect_status(r, 401)
    assert decoded_claims_param(r)["access_token"]["acrs"]["value"] == "c3"
    expect_insufficient_scope(get(st, "/acrsany", roles=["Orders.Read"]))


def test_acrs_in_require_all(st):
    """RequireAll stops at the first denial: a failing rule before entra-acrs answers 403."""
    expect_ok(get(st, "/acrsall", roles=["Orders.Read"], acrs=["c4"]))
    expect_insufficient_scope(get(st, "/acrsall", roles=["Orders.Write"], xms_cc=["cp1"]))
    r = get(st, "/acrsall", roles=["Orders.Read"], xms_cc=["cp1"])
    expect_status(r, 401)
    assert decoded_claims_param(r)["access_token"]["acrs"]["value"] == "c4"


def test_invalid_token_stays_invalid_token(st):
    r = get(st, "/acrs", acrs=["c9"], xms_cc=["cp1"], exp=int(time.time()) - 3600)
    expect_invalid_token(r, desc_contains="expired")


# ------------------------------------------------------------------ 2. caller kind

def test_idtyp_decides(st):
    expect_ok(get(st, "/apponly", idtyp="app"))
    expect_insufficient_scope(get(st, "/user", idtyp="app"))
    expect_ok(get(st, "/user", idtyp="user", scp="User.Read"))
    expect_insufficient_scope(get(st, "/apponly", idtyp="user", scp="User.Read"))
    # idtyp wins over scp / oid==sub
    expect_ok(get(st, "/apponly", idtyp="app", scp="User.Read"))
    expect_ok(get(st, "/user", idtyp="user"))
    for odd in ["device", "App", 1, None]:
        expect_insufficient_scope(get(st, "/apponly", idtyp=odd))
        expect_insufficient_scope(get(st, "/user", idtyp=odd, scp="x"))


def test_without_idtyp(st):
    same = str(uuid.uuid4())
    # no scp, oid == sub: app-only
    expect_ok(get(st, "/apponly", idtyp=et.DROP, oid=same, sub=same))
    expect_insufficient_scope(get(st, "/user", idtyp=et.DROP, oid=same, sub=same))
    # no scp, oid != sub: neither
    expect_insufficient_scope(get(st, "/apponly", idtyp=et.DROP, sub="pairwise-subject"))
    expect_insufficient_scope(get(st, "/user", idtyp=et.DROP, sub="pairwise-subject"))
    # scp: user
    expect_ok(get(st, "/user", idtyp=et.DROP, scp="User.Read", roles=et.DROP, sub="pairwise-subject"))
    expect_insufficient_scope(get(st, "/apponly", idtyp=et.DROP, scp="User.Read", oid=same, sub=same))


def test_v1_tokens(st):
    expect_ok(get(st, "/apponly", v1=True))
    expect_ok(get(st, "/apponly", v1=True, idtyp=et.DROP))
    expect_ok(get(st, "/user", v1=True, idtyp=et.DROP, scp="user_impersonation", sub="pairwise"))
    expect_insufficient_scope(get(st, "/user", v1=True))


def test_no_idtyp_oid_sub_is_neither(st):
    kw = dict(idtyp=et.DROP, oid=et.DROP, sub=et.DROP)
    expect_insufficient_scope(get(st, "/apponlytid", **kw))
    expect_insufficient_scope(get(st, "/usertid", **kw))
    expect_insufficient_scope(get(st, "/usertid", scp="User.Read", **kw))
    expect_ok(get(st, "/apponlytid", idtyp=et.DROP))  # the same route grants an app-only token


# ------------------------------------------------------------------ 3. groups and wids

def test_group_member(st):
    expect_ok(get(st, "/group", groups=["x", GROUP]))
    expect_ok(get(st, "/group", groups=[OTHER_GROUP]))
    for g in [[], ["11111111-4a59-4687-9a1b-2c3d4e5f6071"], GROUP, [[GROUP]], et.DROP]:
        expect_insufficient_scope(get(st, "/group", groups=g))


def test_group_ids_compare_case_insensitively(st):
    expect_ok(get(st, "/group", groups=[GROUP.upper()]))


def test_groups_overage_denied(st):
    t = tid()
    over = {"_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}
    expect_insufficient_scope(get(st, "/group", test_id=t, **over))
    # even when the token still lists the group: in overage the list cannot be trusted
    expect_insufficient_scope(get(st, "/group", groups=[GROUP], **over))
    expect_insufficient_scope(get(st, "/group", groups=[GROUP], hasgroups=True))
    expect_ok(get(st, "/group", groups=[GROUP], hasgroups=False))
    assert logged_error(st, t) == "groups overage"
    assert "ENTRA0702" in st.httpd.error_log_text() and "groups overage" in st.httpd.error_log_text()


def test_wids(st):
    expect_ok(get(st, "/wid", wids=["b79fbf4d-3ef9-4689-8143-76b194e85509", GLOBAL_ADMIN]))
    for w in [[], ["b79fbf4d-3ef9-4689-8143-76b194e85509"], GLOBAL_ADMIN, et.DROP]:
        expect_insufficient_scope(get(st, "/wid", wids=w))


# ------------------------------------------------------------------ 9. the same in Lua rules

def test_lua_caller_kind(st):
    expect_ok(get(st, "/luaapp"))
    expect_insufficient_scope(get(st, "/luaapp", idtyp="user", scp="x"))
    expect_ok(get(st, "/luauser", idtyp=et.DROP, scp="x", sub="s"))
    expect_insufficient_scope(get(st, "/luauser"))


def test_lua_in_group_and_overage(st):
    expect_ok(get(st, "/luagroup", groups=[GROUP]))
    expect_insufficient_scope(get(st, "/luagroup", groups=[OTHER_GROUP]))
    expect_insufficient_scope(get(st, "/luagroup", groups=[GROUP], hasgroups=True))
    assert "lua: group denied: groups overage" in st.httpd.error_log_text()


def test_lua_has_acrs(st):
    expect_ok(get(st, "/luaacrs", acrs=["c1"]))
    expect_insufficient_scope(get(st, "/luaacrs", acrs=["c2"]))


# ------------------------------------------------------------------ 6. ENTRA_ERROR

def test_entra_error_in_access_log(st):
    cases = []
    t = tid()
    r = st.get("/apponly/ok.txt", headers={"X-Test-Id": t})
    expect_status(r, 401)
    cases.append((t, "no access token"))
    t = tid()
    get(st, "/apponly", test_id=t, exp=int(time.time()) - 3600)
    cases.append((t, "token expired"))
    t = tid()
    get(st, "/apponly", test_id=t, aud="api://someone-else")
    cases.append((t, "token audience not accepted"))
    t = tid()
    get(st, "/user", test_id=t)
    cases.append((t, "not a user token"))
    t = tid()
    get(st, "/wid", test_id=t)
    cases.append((t, "no required directory role"))
    t = tid()
    r = st.get("/apponly/ok.txt", headers={"X-Test-Id": t, "Authorization": "Bearer a.b.c, Bearer d.e.f"})
    expect_status(r, 400)
    cases.append((t, "more than one access token"))
    t = tid()
    r = get(st, "/nokeys", test_id=t)
    expect_status(r, 503)
    cases.append((t, "signing keys unavailable"))
    t = tid()
    expect_ok(get(st, "/apponly", test_id=t))
    cases.append((t, "-"))
    for test_id, want in cases:
        assert logged_error(st, test_id) == want, test_id


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("require,word", [("Require entra-app-only now", "entra-app-only"),
                                          ("Require entra-user x", "entra-user"),
                                          ("Require entra-group", "entra-role/scope/app/group/wid/acrs"),
                                          ("Require entra-wid", "at least one value"),
                                          ("Require entra-acrs", "at least one value")])
def test_bad_require_lines_fail_config_test(st, require, word):
    rc, out = st.httpd.config_test(conformance.location("/bad", require))
    assert rc != 0 and word in out, out


def test_conf_examples_pass_config_test(st):
    """The commented <Location> examples of conf/entra.conf are valid configuration."""
    here = os.path.dirname(os.path.abspath(__file__))
    blocks, cur = [], None
    with open(os.path.join(here, "..", "conf", "entra.conf")) as f:
        for line in f:
            text = line[1:].strip() if line.startswith("#") else ""
            if text.startswith("<Location"):
                cur = []
            if cur is not None:
                cur.append(text)
                if text.startswith("</Location>"):
                    blocks.append("\n".join(cur))
                    cur = None
    assert len(blocks) >= 3
    rc, out = st.httpd.config_test("\n".join(blocks))
    assert rc == 0 and "Syntax OK" in out, out
