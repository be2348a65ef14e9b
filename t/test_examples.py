"""The scenario examples of conf/examples/, loaded and driven end to end.

Each example is read as an administrator would copy it; the test replaces only the values
of its `Define` lines (tenant, app and identity ids, backend URLs) with the fakes' and
Includes it. For every example: `apache2 -t` accepts it; a token shaped like the
scenario's caller gets 200 (and, for outbound scenarios, the backend receives a bearer
token with the audience the downstream wants); a wrong audience, role or application gets
401 or 403 with the documented error_description.

Managed identity tokens come from the fake identity endpoint, found like on App Service
(IDENTITY_ENDPOINT + IDENTITY_HEADER), so the examples need no endpoint= option.
"""

import os
import re
import tempfile

import pytest

import entra_tokens as et
from httpd import REPO
from outbound import backend_headers, bearer, claims, get, oenv  # noqa: F401
from stack import Stack

EXAMPLES_DIR = os.path.join(REPO, "conf", "examples")
EXAMPLES = ["logic-app-to-api", "apim-backend", "logic-app-to-logic-app", "apim-to-power-automate",
            "client-credentials-managed-identity"]
DEFINE_RE = re.compile(r"^(\s*Define\s+)(\S+)(\s+)(\S+)[ \t]*$", re.M)

TENANT = et.TENANT
API_APP = "1a1a1a1a-0000-4000-8000-00000000000a"        # the API's application id
GATEWAY_APP = "2b2b2b2b-0000-4000-8000-00000000000b"
CLIENT_APP = "3c3c3c3c-0000-4000-8000-00000000000c"     # an allowed client application
OTHER_APP = "4d4d4d4d-0000-4000-8000-00000000000d"      # holds the role, but is not allowed
CALLER_MI = "5e5e5e5e-0000-4000-8000-00000000000e"      # the calling Logic App's / APIM's identity
B_AUDIENCE = "api://6f6f6f6f-0000-4000-8000-00000000000f"
FLOW_AUDIENCE = "https://service.flow.microsoft.com/"
DOWNSTREAM = "api://7a7a7a7a-0000-4000-8000-00000000001a"


def render(name: str, values: dict) -> str:
    """The example's text with its Define values replaced; every Define must be known."""
    with open(os.path.join(EXAMPLES_DIR, name + ".conf")) as f:
        text = f.read()
    names = [m.group(2) for m in DEFINE_RE.finditer(text)]
    assert sorted(names) == sorted(values), f"{name}.conf defines {names}, the test knows {sorted(values)}"
    return DEFINE_RE.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + values[m.group(2)], text)


@pytest.fixture(scope="module")
def world(oenv, test_root, master_keys):
    """(fake Entra stack used for its issuer and tokens, fake identity endpoint, env)."""
    d = tempfile.mkdtemp(prefix="examples-entra-", dir=oenv.dir)
    os.chmod(d, 0o755)
    s = Stack(d, master_keys)
    s.fake.start()
    fake_id = oenv.fake()
    yield s, fake_id, oenv
    s.fake.stop()


def values_for(name: str, world) -> dict:
    s, fake_id, env = world
    b = env.backend
    mi = {n: fake_id.identity(n)["client_id"] for n in ("user1", "user2", "user3")}
    common = {"ENTRA_TENANT_ID": TENANT}
    return {
        "logic-app-to-api": {**common, "ORDERS_API_APP_ID": API_APP, "LOGICAPP_MI_CLIENT_ID": CALLER_MI,
                             "ORDERS_BACKEND": b.url("orders")},
        "apim-backend": {**common, "BACKEND_APP_ID": API_APP, "APIM_MI_CLIENT_ID": CALLER_MI,
                         "BACKEND_URL": b.url("inventory"), "GATEWAY_APP_ID": GATEWAY_APP,
                         "CLIENT_APP_ID": CLIENT_APP, "GATEWAY_MI_CLIENT_ID": mi["user1"]},
        "logic-app-to-logic-app": {**common, "RELAY_APP_ID": GATEWAY_APP, "LOGICAPP_A_MI_CLIENT_ID": CALLER_MI,
                                   "RELAY_MI_CLIENT_ID": mi["user2"], "LOGICAPP_B_AUDIENCE": B_AUDIENCE,
                                   "LOGICAPP_B_TRIGGER": b.url("logicapp-b").rstrip("/")},
        "apim-to-power-automate": {**common, "GATEWAY_APP_ID": GATEWAY_APP, "FLOW_MI_CLIENT_ID": mi["user3"],
                                   "FLOW_AUDIENCE": FLOW_AUDIENCE, "FLOW_TRIGGER": b.url("flow").rstrip("/")},
        "client-credentials-managed-identity": {**common, "REPORTS_API_APP_ID": API_APP,
                                                "REPORTS_BACKEND": b.url("reports"),
                                                "DAEMON_MI_CLIENT_ID": mi["user1"],
                                                "DOWNSTREAM_API_URI": DOWNSTREAM,
                                                "DOWNSTREAM_URL": b.url("downstream")},
    }[name]


def make_httpd(world, name: str):
    s, fake_id, env = world
    path = env.path(name + ".conf")
    with open(path, "w") as f:
        f.write(render(name, values_for(name, world)))
    os.chmod(path, 0o644)
    return env.httpd(f"EntraAuthority {s.fake.authority}\n", f'Include "{path}"\n',
                     extra_env={"IDENTITY_ENDPOINT": fake_id.url("appservice"),
                                "IDENTITY_HEADER": fake_id.identity_header})


_started: dict = {}


def server(world, name: str):
    """The example's httpd, started once per module."""
    if name not in _started:
        _started[name] = make_httpd(world, name).start()
    return _started[name]


@pytest.fixture(scope="module", autouse=True)
def _forget_servers():
    yield
    _started.clear()


def token(world, v: int = 2, aud: str = API_APP, app: str = CALLER_MI, roles=None, **over) -> str:
    s = world[0]
    roles = ["Orders.Read"] if roles is None else roles
    if v == 1:
        c = et.v1_claims(aud=aud, appid=app, roles=roles, **over)
    else:
        c = et.v2_claims(aud=aud, azp=app, roles=roles, **over)
    return s.token(claims=c)


def call(h, path: str, tok: str | None, method: str = "GET"):
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return get(h.url(path), headers)


def description(r) -> str:
    m = re.search(r'error_description="([^"]*)"', r.headers.get("WWW-Authenticate", ""))
    return m.group(1) if m else ""


def assert_denied(r, status: int, why: str | None = None):
    assert r.status_code == status, (r.status_code, r.headers.get("WWW-Authenticate"), r.text[:200])
    if why is not None:
        assert description(r) == why, r.headers.get("WWW-Authenticate")


def outbound_claims(r) -> dict:
    """Claims of the bearer token the backend received (decoded, not verified here)."""
    return claims(bearer(r))


# ------------------------------------------------------------------------ every example

def test_every_example_is_tested():
    on_disk = sorted(f[:-5] for f in os.listdir(EXAMPLES_DIR) if f.endswith(".conf"))
    assert on_disk == sorted(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_passes_config_test(world, name):
    h = make_httpd(world, name)
    rc, out = h.config_test(h.locations)
    assert rc == 0 and "Syntax OK" in out, out


def test_example_with_a_typo_fails_config_test(world):
    """The config test above would notice a broken example: a misspelt audience line fails."""
    h = make_httpd(world, "logic-app-to-api")
    path = h.locations.split('"')[1]
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("EntraAudience api://", "EntraAudiance api://"))
    rc, out = h.config_test(h.locations)
    assert rc != 0 and "EntraAudiance" in out, out


# ------------------------------------------------------------------------ Logic App -> API

def test_logic_app_v1_token_with_role(world):
    h = server(world, "logic-app-to-api")
    r = call(h, "/orders/items", token(world, v=1, aud=f"api://{API_APP}"))
    hdrs = backend_headers(r)
    assert r.json()["path"] == "/echo/orders/items"
    assert hdrs["x-entra-appid"] == [CALLER_MI] and hdrs["x-entra-roles"] == ["Orders.Read"]


def test_logic_app_v2_token_with_role(world):
    h = server(world, "logic-app-to-api")
    r = call(h, "/orders/items", token(world, v=2, aud=API_APP))
    assert backend_headers(r)["x-entra-azp"] == [CALLER_MI]


@pytest.mark.parametrize("case,status,why", [
    ("management-audience", 401, "token audience not accepted"),
    ("audience-of-another-api", 401, "token audience not accepted"),
    ("other-tenant", 401, "token tid does not match the tenant"),
    ("no-role", 403, "the token does not grant access to this resource"),
    ("other-app-with-role", 403, "the token does not grant access to this resource"),
    ("no-token", 401, ""),
])
def test_logic_app_wrong_callers(world, case, status, why):
    h = server(world, "logic-app-to-api")
    tok = {
        # The Logic App's Audience left at a default such as Azure Resource Manager.
        "management-audience": lambda: token(world, v=1, aud="https://management.azure.com/"),
        "audience-of-another-api": lambda: token(world, v=1, aud=f"api://orders/{API_APP}"),
        "other-tenant": lambda: token(world, v=1, aud=f"api://{API_APP}", tenant=et.OTHER_TENANT,
                                      iss=et.v1_issuer(et.OTHER_TENANT)),
        "no-role": lambda: token(world, v=1, aud=f"api://{API_APP}", roles=[]),
        "other-app-with-role": lambda: token(world, v=2, app=OTHER_APP),
        "no-token": lambda: None,
    }[case]()
    assert_denied(call(h, "/orders/items", tok), status, why)


# ------------------------------------------------------------------------ APIM -> backend

def test_apim_identity_reaches_backend(world):
    h = server(world, "apim-backend")
    r = call(h, "/inventory/stock", token(world, v=1, aud=f"api://{API_APP}", roles=["Inventory.Read"]))
    assert backend_headers(r)["x-entra-appid"] == [CALLER_MI]


def test_backend_refuses_other_callers(world):
    h = server(world, "apim-backend")
    # A client calling the backend directly, around APIM, with the right role.
    assert_denied(call(h, "/inventory/stock", token(world, app=CLIENT_APP, roles=["Inventory.Read"])),
                  403, "the token does not grant access to this resource")
    # APIM's identity without the role.
    assert_denied(call(h, "/inventory/stock", token(world, roles=["Orders.Read"])), 403)
    # A token APIM requested for the gateway instead of the backend.
    assert_denied(call(h, "/inventory/stock", token(world, aud=GATEWAY_APP, roles=["Inventory.Read"])),
                  401, "token audience not accepted")


def test_gateway_validates_then_attaches_managed_identity_token(world):
    s, fake_id, env = world
    h = server(world, "apim-backend")
    caller = token(world, aud=GATEWAY_APP, app=CLIENT_APP, roles=["Gateway.Call"])
    r = call(h, "/gateway/stock", caller)
    tok = bearer(r)
    assert tok != caller
    c = claims(tok)
    assert c["aud"] == f"api://{API_APP}"
    assert c["appid"] == fake_id.identity("user1")["client_id"]
    assert c["iss"].startswith("https://sts.windows.net/")
    assert r.json()["path"] == "/echo/inventory/stock"


def test_gateway_refuses_unlisted_client_and_missing_role(world):
    h = server(world, "apim-backend")
    assert_denied(call(h, "/gateway/stock", token(world, aud=GATEWAY_APP, app=OTHER_APP, roles=["Gateway.Call"])),
                  403)
    assert_denied(call(h, "/gateway/stock", token(world, aud=GATEWAY_APP, app=CLIENT_APP, roles=[])), 403)
    assert_denied(call(h, "/gateway/stock", token(world, aud=API_APP, app=CLIENT_APP, roles=["Gateway.Call"])),
                  401, "token audience not accepted")


# ------------------------------------------------------------------------ Logic App -> Logic App

def test_relay_forwards_with_the_audience_of_the_policy(world):
    s, fake_id, env = world
    h = server(world, "logic-app-to-logic-app")
    r = get(h.url("/intake?api-version=2016-10-01"),
            {"Authorization": "Bearer " + token(world, v=1, aud=f"api://{GATEWAY_APP}", roles=["Intake.Submit"])})
    c = outbound_claims(r)
    # What Logic App B's policy checks: Issuer (v1, sts.windows.net) and Audience.
    assert c["iss"] == f"https://sts.windows.net/{fake_id.tenant}/"
    assert c["aud"] == B_AUDIENCE
    assert c["appid"] == fake_id.identity("user2")["client_id"]
    body = r.json()
    assert body["path"] == "/echo/logicapp-b" and body["query"] == "api-version=2016-10-01"


def test_relay_refuses_other_logic_apps(world):
    h = server(world, "logic-app-to-logic-app")
    assert_denied(call(h, "/intake", token(world, aud=GATEWAY_APP, app=OTHER_APP, roles=["Intake.Submit"])), 403)
    assert_denied(call(h, "/intake", token(world, aud=GATEWAY_APP, roles=["Orders.Read"])), 403)
    assert_denied(call(h, "/intake", token(world, aud=B_AUDIENCE, roles=["Intake.Submit"])),
                  401, "token audience not accepted")


# ------------------------------------------------------------------------ Power Automate

def test_flow_receives_flow_service_audience(world):
    s, fake_id, env = world
    h = server(world, "apim-to-power-automate")
    r = call(h, "/flows/order-approved", token(world, aud=f"api://{GATEWAY_APP}", v=1, app=CLIENT_APP,
                                                 roles=["Flow.Trigger"]))
    c = outbound_claims(r)
    ident = fake_id.identity("user3")
    # The claims the flow's trigger checks: aud, iss, tid, and oid for "specific users".
    assert c["aud"] == FLOW_AUDIENCE
    assert c["tid"] == fake_id.tenant and c["iss"] == f"https://sts.windows.net/{fake_id.tenant}/"
    assert c["oid"] == ident["object_id"] and c["appid"] == ident["client_id"]
    assert r.json()["path"] == "/echo/flow"


def test_flow_gateway_needs_the_role(world):
    h = server(world, "apim-to-power-automate")
    assert_denied(call(h, "/flows/order-approved", token(world, aud=GATEWAY_APP, roles=["Orders.Read"])), 403)
    assert_denied(call(h, "/flows/order-approved", token(world, aud=FLOW_AUDIENCE, roles=["Flow.Trigger"])),
                  401, "token audience not accepted")


# ------------------------------------------------------------------------ client credentials

def test_app_only_token_with_role(world):
    h = server(world, "client-credentials-managed-identity")
    for v, aud in ((1, f"api://{API_APP}"), (2, API_APP)):
        r = call(h, "/reports/q1", token(world, v=v, aud=aud, roles=["Reports.Read"]))
        assert r.status_code == 200, (v, r.status_code, r.headers.get("WWW-Authenticate"))


def test_delegated_token_without_the_role_is_refused(world):
    h = server(world, "client-credentials-managed-identity")
    user = token(world, roles=et.DROP, scp="Reports.Read", idtyp=et.DROP, name="A User")
    assert_denied(call(h, "/reports/q1", user), 403, "the token does not grant access to this resource")


def test_daemon_uses_managed_identity_for_default_scope(world):
    s, fake_id, env = world
    h = server(world, "client-credentials-managed-identity")
    c = outbound_claims(get(h.url("/downstream/jobs")))
    assert c["aud"] == DOWNSTREAM        # `/.default` removed for managed identity
    assert c["appid"] == fake_id.identity("user1")["client_id"] and c["idtyp"] == "app"
    assert "scp" not in c


# ------------------------------------------------------------------------ troubleshooting table
#
# The README's troubleshooting table must list every error_description the module can send,
# and nothing else: the strings are collected from the C sources, so a new or reworded
# reason fails here until the table follows.

SRC = os.path.join(REPO, "mod_entra")
_LIT = r'"(?:[^"\\\n]|\\.)*"'
_LITS = rf"{_LIT}(?:\s*{_LIT})*"            # adjacent literals, as C concatenates them


def _joined(seq: str) -> str:
    return "".join(m[1:-1] for m in re.findall(_LIT, seq))


def _read(name: str) -> str:
    with open(os.path.join(SRC, name)) as f:
        return f.read()


def _why_literals(name: str) -> list[str]:
    """Every string literal (adjacent ones joined) in `*why = ...;` statements of a file."""
    out = []
    for stmt in re.findall(rf'\*why\s*=\s*((?:{_LIT}|[^;"])*);', _read(name)):
        out += [_joined(s) for s in re.findall(_LITS, stmt)]
    return out


def source_descriptions() -> tuple[set, set, set]:
    """(plain reasons, composed "prefix: <json reason>" pairs, 503 reasons) from the sources."""
    plain, prefixes = set(), set()
    for name in ("entra_policy.c", "entra_jwt.c"):
        for s in _why_literals(name):
            (prefixes if s.endswith(": ") else plain).add(s)
    for call in re.findall(rf'set_fail\(((?:{_LIT}|[^;"])*)\);', _read("entra_verify.c")):
        plain.update(_joined(s) for s in re.findall(_LITS, call))
    plain.update(_joined(s) for s in re.findall(rf"#define ENTRA_WHY_\w+\s+({_LIT})", _read("entra_vtab.h")))
    for name in ("mod_entra_authn.c", "mod_entra_lua.c"):
        text = _read(name)
        plain.update(_joined(s) for s in re.findall(rf'entra_challenge\(r,\s*"\w+",\s*({_LITS})\)', text))
        # "token has no %s claim" with the default EntraRemoteUserClaim.
        plain.update(_joined(s).replace("%s", "oid")
                     for s in re.findall(rf"res\.why\s*=\s*apr_psprintf\(r->pool,\s*({_LITS})", text))
    json_reasons = set(_why_literals("entra_json.c"))
    composed = {(p, j) for p in prefixes for j in json_reasons}
    # 503: whole reasons only (composed ones, "discovery <url>: HTTP 404", are described).
    unavailable = {_joined(s) for name in ("entra_keys.c", "entra_flight.c")
                   for s in re.findall(rf"\*why\s*=\s*({_LITS})\s*;", _read(name))}
    return plain, composed, unavailable


def readme_troubleshooting() -> tuple[list, str]:
    """(first cells of the table rows, the text after the table) of README's Troubleshooting."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    body = lines[next(i for i, ln in enumerate(lines) if ln.startswith("|---")) + 1:]
    rows = [ln for ln in body if ln.startswith("| `")]
    cells = [ln.split(" | ")[0][2:] for ln in rows]
    return cells, section.split(rows[-1], 1)[1]


def test_troubleshooting_table_lists_every_description():
    plain, composed, _ = source_descriptions()
    cells, _ = readme_troubleshooting()
    # The extraction itself must keep working: a handful of reasons known to exist.
    for known in ("token expired", "token audience not accepted", "invalid signature",
                  "the token does not grant access to this resource", "token has no oid claim",
                  "more than one access token in the request",
                  "token is for another audience (e.g. Microsoft Graph); request a token for this API's audience"):
        assert known in plain, known
    assert len(plain) >= 35 and len(composed) >= 8, (len(plain), len(composed))
    keys = {re.match(r"`([^`]*)`", c).group(1) for c in cells}
    missing = sorted(s for s in plain if s not in keys)
    assert not missing, f"README troubleshooting table lacks: {missing}"
    for prefix, reason in sorted(composed):
        assert any(c.startswith(f"`{prefix}") and reason in c for c in cells), (prefix, reason)
    stale = sorted(k for k in keys
                   if k not in plain and not any(k == p + j for p, j in composed))
    assert not stale, f"README troubleshooting rows no source emits: {stale}"


def test_troubleshooting_lists_the_503_reasons():
    _, _, unavailable = source_descriptions()
    _, after = readme_troubleshooting()
    assert unavailable, "no key-source reasons found in entra_keys.c"
    flat = " ".join(after.split())
    for s in unavailable:
        assert s in flat, s


def test_entra_token_decode_names_the_same_reasons(tmp_path):
    """The table's advice to decode holds: entra-token refuses with httpd's own reasons."""
    import subprocess

    from httpd import sanitize_enabled, sanitizer_env
    luamod = os.environ.get("ENTRA_LUAMOD") or os.path.join(REPO, "lua", "entra.so")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_")}
    env["LUA_CPATH"] = os.path.join(os.path.dirname(os.path.abspath(luamod)), "?.so") + ";;"
    if sanitize_enabled():
        env.update(sanitizer_env(str(tmp_path)))
    dup = et.b64url(b'{"alg":"RS256","kid":"k"}') + "." + et.b64url(b'{"aud":"a","aud":"b"}') + ".c2ln"
    cells, _ = readme_troubleshooting()
    for tok, reason in (("abc.def", "token is not a JWS with three segments"),
                        (dup, "token claims: duplicate JSON member")):
        p = subprocess.run(["/usr/bin/lua5.4", os.path.join(REPO, "lua", "entra-token"), "decode", "-"],
                           input=tok, capture_output=True, text=True, timeout=30, env=env)
        assert p.returncode != 0 and reason in p.stderr, (p.returncode, p.stderr)
        assert any(reason.split(": ")[0] in c for c in cells)


def test_all_examples_together_pass_config_test(world):
    """An administrator may Include several examples in one server: their names do not clash."""
    s, fake_id, env = world
    includes = []
    for name in EXAMPLES:
        path = env.path("all-" + name + ".conf")
        with open(path, "w") as f:
            f.write(render(name, values_for(name, world)))
        includes.append(f'Include "{path}"')
    h = env.httpd(f"EntraAuthority {s.fake.authority}\n", "\n".join(includes) + "\n",
                  extra_env={"IDENTITY_ENDPOINT": fake_id.url("appservice"),
                             "IDENTITY_HEADER": fake_id.identity_header})
    rc, out = h.config_test(h.locations)
    assert rc == 0 and "Syntax OK" in out, out
