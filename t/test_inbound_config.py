"""Misconfiguration fails `apache2 -t` with a message naming the directive; good configs pass."""

import os

import pytest

import conformance
import entra_tokens as et
from httpd import Httpd

T = et.TENANT
AUTHORITY = "http://127.0.0.1:9/"


@pytest.fixture(scope="module")
def httpd(module_so, test_root):
    d = os.path.join(test_root, "config")
    h = Httpd(d, server_conf=conformance.server_conf(AUTHORITY))
    for p in conformance.all_paths():
        h.add_file(p.strip("/") + "/ok.txt")
    return h


def loc(body: str, path: str = "/p") -> str:
    return f"<Location {path}>\n{body}\n</Location>\n"


FULL = (f'  AuthType Entra\n  AuthName "orders"\n  EntraTenant {T}\n'
        f"  EntraAudience {et.AUD_URI} {et.AUD_GUID}\n")


def passes(httpd, locations: str, server_conf: str | None = None):
    rc, out = httpd.config_test(locations, server_conf=server_conf)
    assert rc == 0, f"config should pass, rc={rc}:\n{out}\n--- config:\n{locations}"
    assert "Syntax OK" in out


def fails(httpd, locations: str, directive: str, server_conf: str | None = None):
    rc, out = httpd.config_test(locations, server_conf=server_conf)
    assert rc > 0, f"config should fail (rc={rc}):\n{out}\n--- config:\n{locations}"
    assert "Syntax OK" not in out
    assert directive.lower() in out.lower(), f"output should name {directive}:\n{out}"
    return out


# ------------------------------------------------------------------ good configurations

def test_conformance_layout_passes(httpd):
    passes(httpd, conformance.locations(AUTHORITY))


def test_module_loads_without_any_entra_location(httpd):
    passes(httpd, "", server_conf="")


@pytest.mark.parametrize("algs", ["RS256", "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512"])
def test_known_algorithms_pass(httpd, algs):
    passes(httpd, loc(FULL + "  Require valid-user"), server_conf=conformance.server_conf(AUTHORITY, algs))


@pytest.mark.parametrize("authority", ["https://login.microsoftonline.com/", "http://127.0.0.1:8080/",
                                       "https://login.microsoftonline.us/"])
def test_good_authorities_pass(httpd, authority):
    passes(httpd, loc(FULL + "  Require valid-user"), server_conf=conformance.server_conf(authority))


def test_metadata_url_instead_of_tenant_passes(httpd):
    body = (f'  AuthType Entra\n  AuthName "x"\n  EntraMetadataURL {AUTHORITY}{T}/v2.0/.well-known/'
            f"openid-configuration\n  EntraAudience {et.AUD_URI}\n  Require valid-user")
    passes(httpd, loc(body))


@pytest.mark.parametrize("tenant", ["common", "organizations"])
def test_multi_tenant_with_allowlist_passes(httpd, tenant):
    body = (f'  AuthType Entra\n  AuthName "x"\n  EntraTenant {tenant}\n  EntraAllowedTenants {T} '
            f"{et.ALLOWED_TENANT_2}\n  EntraAudience {et.AUD_URI}\n  Require valid-user")
    passes(httpd, loc(body))


def test_all_directives_pass(httpd):
    body = FULL + ("  EntraClockSkew 30\n  EntraMaxTokenLifetime 7200\n"
                   "  EntraAcceptTokenIn header query cookie=entra_at\n  EntraRemoteUserClaim sub\n"
                   "  EntraPassClaims oid azp roles tid\n"
                   "  <RequireAll>\n    Require entra-role A B\n    Require entra-scope s1\n"
                   f"    Require entra-app {et.CLIENT_APP}\n    Require entra-claim department Sales Eng\n"
                   "    Require not entra-claim department Marketing\n  </RequireAll>")
    passes(httpd, loc(body))


def test_child_location_inherits_tenant_and_audience(httpd):
    passes(httpd, loc(FULL + "  Require valid-user", "/parent") +
           loc("  Require entra-role Orders.Read", "/parent/child"))


# ------------------------------------------------------------------ bad configurations

@pytest.mark.parametrize("algs", ["RS256 HS256", "none", "ES256K", "RSA-OAEP", "RS256 RS1"])
def test_unknown_algorithm_fails(httpd, algs):
    fails(httpd, loc(FULL + "  Require valid-user"), "EntraAlgorithms",
          server_conf=conformance.server_conf(AUTHORITY, algs))


def test_unknown_algorithm_in_location_fails(httpd):
    fails(httpd, loc(FULL + "  EntraAlgorithms RS256 HS512\n  Require valid-user"), "EntraAlgorithms")


def test_missing_tenant_fails(httpd):
    body = f'  AuthType Entra\n  AuthName "x"\n  EntraAudience {et.AUD_URI}\n  Require valid-user'
    fails(httpd, loc(body), "EntraTenant")


def test_missing_audience_fails(httpd):
    body = f'  AuthType Entra\n  AuthName "x"\n  EntraTenant {T}\n  Require valid-user'
    fails(httpd, loc(body), "EntraAudience")


@pytest.mark.parametrize("tenant", ["common", "organizations"])
def test_multi_tenant_without_allowlist_fails(httpd, tenant):
    body = (f'  AuthType Entra\n  AuthName "x"\n  EntraTenant {tenant}\n  EntraAudience {et.AUD_URI}\n'
            "  Require valid-user")
    fails(httpd, loc(body), "EntraAllowedTenants")


@pytest.mark.parametrize("authority", ["http://login.example.com/", "http://10.1.2.3/", "http://127.0.0.1.example.com/",
                                       "ftp://127.0.0.1/", "login.microsoftonline.com"])
def test_non_loopback_http_authority_fails(httpd, authority):
    fails(httpd, loc(FULL + "  Require valid-user"), "EntraAuthority",
          server_conf=conformance.server_conf(authority))


def test_non_loopback_http_metadata_url_fails(httpd):
    body = ('  AuthType Entra\n  AuthName "x"\n  EntraMetadataURL http://idp.example.com/x/.well-known/'
            f"openid-configuration\n  EntraAudience {et.AUD_URI}\n  Require valid-user")
    fails(httpd, loc(body), "EntraMetadataURL")


@pytest.mark.parametrize("value", ["not_a_guid", "11111111-2222-3333-4444-55555555555Z"])
def test_malformed_tenant_fails(httpd, value):
    body = (f'  AuthType Entra\n  AuthName "x"\n  EntraTenant {value}\n  EntraAudience {et.AUD_URI}\n'
            "  Require valid-user")
    fails(httpd, loc(body), "EntraTenant")


def test_malformed_allowed_tenant_fails(httpd):
    body = (f'  AuthType Entra\n  AuthName "x"\n  EntraTenant common\n  EntraAllowedTenants {T} contoso\n'
            f"  EntraAudience {et.AUD_URI}\n  Require valid-user")
    fails(httpd, loc(body), "EntraAllowedTenants")


@pytest.mark.parametrize("value", ["body", "cookie=", "cookie", "header header2"])
def test_bad_accept_token_in_fails(httpd, value):
    fails(httpd, loc(FULL + f"  EntraAcceptTokenIn {value}\n  Require valid-user"), "EntraAcceptTokenIn")


@pytest.mark.parametrize("value", ["-1", "abc", "10s"])
def test_bad_clock_skew_fails(httpd, value):
    fails(httpd, loc(FULL + f"  EntraClockSkew {value}\n  Require valid-user"), "EntraClockSkew")


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_bad_max_lifetime_fails(httpd, value):
    fails(httpd, loc(FULL + f"  EntraMaxTokenLifetime {value}\n  Require valid-user"), "EntraMaxTokenLifetime")


@pytest.mark.parametrize("require", ["Require entra-role", "Require entra-scope", "Require entra-app",
                                     "Require entra-claim department"])
def test_require_without_values_fails(httpd, require):
    # The message must at least point at an entra- Require provider.
    fails(httpd, loc(FULL + "  " + require), "entra-")
