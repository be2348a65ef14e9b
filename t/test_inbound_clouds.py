"""EntraCloud (national clouds: authority and issuer hosts) and EntraAppSigningKeys (an app's
own signing keys at jwks_uri?appid=).

The fake serves each cloud's instance under a path prefix (<base>/usgov/, <base>/china/) with
that cloud's issuers; EntraAuthority points a route at it, as it stays authoritative over the
cloud's default authority."""

import time

import pytest

import conformance
import entra_tokens as et
from checks import expect_invalid_token, expect_ok
from stack import finish_stack

T = et.TENANT
GOV_V2 = et.CLOUD_ISSUERS["usgov"][0].replace("{tenantid}", T)
CN_V2 = et.CLOUD_ISSUERS["china"][0].replace("{tenantid}", T)
CN_V1 = et.CLOUD_ISSUERS["china"][1].replace("{tenantid}", T)
PUB_V2 = et.v2_issuer(T)
PUB_V1 = et.v1_issuer(T)


def locations(a: str) -> str:
    loc = conformance.location
    return "\n".join([
        loc("/pub", extra=f"EntraCloud public\n  EntraAuthority {a}"),
        loc("/gov", extra=f"EntraCloud usgov\n  EntraAuthority {a}usgov/"),
        loc("/cn", extra=f"EntraCloud china\n  EntraAuthority {a}china/"),
        # a China route whose authority answers with public-cloud documents
        loc("/cnpub", extra=f"EntraCloud china\n  EntraAuthority {a}"),
        loc("/nocloud", extra=f"EntraAuthority {a}"),
        # the cloud's own authority (unreachable here: only its discovery URL is checked)
        loc("/govdefault", extra="EntraCloud usgov"),
        loc("/cndefault", extra="EntraCloud china"),
        loc("/appkeys", extra=f"EntraAppSigningKeys on\n  EntraAuthority {a}"),
        loc("/noappkeys", extra=f"EntraAuthority {a}"),
        loc("/appkeysoff", extra=f"EntraAppSigningKeys off\n  EntraAuthority {a}"),
    ])


PATHS = ["/pub", "/gov", "/cn", "/cnpub", "/nocloud", "/govdefault", "/cndefault", "/appkeys", "/noappkeys",
         "/appkeysoff"]


def prepare(s):
    s.fake.add_key(kty="RSA", bits=2048, role="app1", appid=et.AUD_GUID)


@pytest.fixture(scope="module")
def st(make_stack):
    s = make_stack("clouds", locations=locations,
                   server_conf="EntraAlgorithms RS256\nEntraClockSkew 60\n", prepare=prepare, files=PATHS)
    yield s
    finish_stack(s)


def ok(st, path, iss, **kw):
    expect_ok(st.get(f"{path}/ok.txt", st.token(iss=iss, **kw)), f"{path} with iss {iss}")


def bad(st, path, iss, desc=None, **kw):
    expect_invalid_token(st.get(f"{path}/ok.txt", st.token(iss=iss, **kw)), desc_contains=desc)


# ------------------------------------------------------------------ EntraCloud

def test_each_cloud_accepts_its_own_tokens(st):
    ok(st, "/pub", PUB_V2)
    ok(st, "/pub", PUB_V1, v1=True)
    ok(st, "/gov", GOV_V2)
    ok(st, "/gov", PUB_V1, v1=True)  # Azure Government keeps sts.windows.net for v1 tokens
    ok(st, "/cn", CN_V2)
    ok(st, "/cn", CN_V1, v1=True)


def test_tokens_of_one_cloud_fail_in_another(st):
    bad(st, "/gov", PUB_V2, "issuer")
    bad(st, "/cn", PUB_V2, "issuer")
    bad(st, "/cn", PUB_V1, "issuer", v1=True)
    bad(st, "/pub", GOV_V2, "issuer")
    bad(st, "/pub", CN_V2, "issuer")
    bad(st, "/pub", CN_V1, "issuer", v1=True)
    bad(st, "/gov", CN_V2, "issuer")
    bad(st, "/nocloud", CN_V2, "issuer")


def test_cloud_checks_issuers_whatever_discovery_says(st):
    """A China route pointed at a public-cloud authority refuses that cloud's tokens."""
    bad(st, "/cnpub", PUB_V2, "another cloud")
    bad(st, "/cnpub", PUB_V1, "issuer", v1=True)
    ok(st, "/nocloud", PUB_V2)  # the same token and documents without EntraCloud


@pytest.mark.parametrize("path,authority", [("/govdefault", "https://login.microsoftonline.us/"),
                                            ("/cndefault", "https://login.chinacloudapi.cn/")])
def test_cloud_sets_the_default_authority(st, path, authority):
    want = f"discovery {authority}{T}/v2.0/.well-known/openid-configuration"
    log = st.httpd.error_log_text()
    assert any("ENTRA0700" in line and want in line for line in log.splitlines()), want


def test_bad_cloud_name_fails_config_test(st):
    rc, out = st.httpd.config_test(conformance.location("/bad", extra="EntraCloud germany"))
    assert rc != 0 and "EntraCloud" in out and "germany" in out, out


# ------------------------------------------------------------------ EntraAppSigningKeys

def test_app_keys_only_with_the_directive(st):
    expect_ok(st.get("/appkeys/ok.txt", st.token(key="app1")))
    for path in ("/noappkeys", "/appkeysoff"):
        expect_invalid_token(st.get(f"{path}/ok.txt", st.token(key="app1")))
    # the tenant's own keys stay valid on both
    expect_ok(st.get("/appkeys/ok.txt", st.token()))
    expect_ok(st.get("/noappkeys/ok.txt", st.token()))
    # again, from the caches: still only with the directive
    expect_ok(st.get("/appkeys/ok.txt", st.token(key="app1")))
    expect_invalid_token(st.get("/noappkeys/ok.txt", st.token(key="app1")))


def test_app_keys_fetched_with_appid(st):
    paths = [r["path"] for r in st.fake.requests_log()]
    deadline = time.monotonic() + 10
    while not any(p.endswith(f"/discovery/v2.0/keys?appid={et.AUD_GUID}") for p in paths):
        assert time.monotonic() < deadline, paths
        time.sleep(0.2)
        paths = [r["path"] for r in st.fake.requests_log()]


def test_app_keys_need_a_client_id_audience(st):
    body = ("  AuthType Entra\n  EntraTenant " + T + "\n  EntraAudience api://orders-api\n"
            "  EntraAppSigningKeys on\n  Require valid-user")
    rc, out = st.httpd.config_test(f"<Location /bad>\n{body}\n</Location>\n")
    assert rc != 0 and "EntraAppSigningKeys" in out, out
