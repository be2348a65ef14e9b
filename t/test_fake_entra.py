"""Self-test of the test infrastructure: key generation, minting, and the fake Entra server.

Needs no httpd and no built module.
"""

import base64
import hashlib
import json
import os
import shutil
import socket
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import entra_tokens as et
from fake_entra_client import FakeEntra
from tls_certs import make_ca_and_server_cert

T = et.TENANT


@pytest.fixture(scope="module")
def fake(test_root, master_keys):
    d = os.path.join(test_root, "selftest-fake")
    keys = os.path.join(d, "keys")
    shutil.copytree(master_keys, keys)
    f = FakeEntra(d, keys_dir=keys).start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.reset(keys=True)
    yield


def get(fake, path, **kw):
    s = requests.Session()
    s.trust_env = False
    return s.get(fake.url(path), timeout=kw.pop("timeout", 10), **kw)


# ------------------------------------------------------------------ discovery

def test_v2_discovery_document(fake):
    r = get(fake, f"/{T}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["issuer"] == f"https://login.microsoftonline.com/{T}/v2.0"
    assert doc["jwks_uri"] == fake.url(f"/{T}/discovery/v2.0/keys")
    assert doc["token_endpoint"] == fake.url(f"/{T}/oauth2/v2.0/token")
    assert doc["authorization_endpoint"] == fake.url(f"/{T}/oauth2/v2.0/authorize")
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "tenant_region_scope" in doc and "msgraph_host" in doc


def test_v1_discovery_document(fake):
    doc = get(fake, f"/{T}/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"https://sts.windows.net/{T}/"
    assert doc["jwks_uri"] == fake.url(f"/{T}/discovery/keys")
    assert doc["token_endpoint"] == fake.url(f"/{T}/oauth2/token")


@pytest.mark.parametrize("tenant", ["common", "organizations"])
def test_multi_tenant_issuer_is_templated(fake, tenant):
    v2 = get(fake, f"/{tenant}/v2.0/.well-known/openid-configuration").json()
    v1 = get(fake, f"/{tenant}/.well-known/openid-configuration").json()
    assert v2["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert v1["issuer"] == "https://sts.windows.net/{tenantid}/"
    assert v2["jwks_uri"] == fake.url(f"/{tenant}/discovery/v2.0/keys")
    keys = get(fake, f"/{tenant}/discovery/v2.0/keys").json()["keys"]
    assert {k["issuer"] for k in keys} == {"https://login.microsoftonline.com/{tenantid}/v2.0"}


def test_consumers_issuer_is_the_msa_tenant(fake):
    doc = get(fake, "/consumers/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"


@pytest.mark.parametrize("path", ["/contoso.example/v2.0/.well-known/openid-configuration",
                                  "/not-a-tenant/discovery/v2.0/keys",
                                  "/11111111-2222/.well-known/openid-configuration"])
def test_unknown_tenant_answers_like_entra(fake, path):
    r = get(fake, path)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_tenant"
    assert body["error_codes"] == [90002]
    assert body["error_description"].startswith("AADSTS90002: Tenant '")
    assert "not found" in body["error_description"]
    for field in ("timestamp", "trace_id", "correlation_id"):
        assert body[field]


def test_malformed_tenant_name(fake):
    r = get(fake, "/bad_tenant!/v2.0/.well-known/openid-configuration")
    assert r.status_code == 400
    assert r.json()["error_codes"] == [900023]


def test_unknown_guid_tenant_can_be_scripted(fake):
    other = et.OTHER_TENANT
    fake.set_unknown_tenants([other])
    r = get(fake, f"/{other}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 400 and r.json()["error"] == "invalid_tenant"
    assert get(fake, f"/{T}/v2.0/.well-known/openid-configuration").status_code == 200


# ------------------------------------------------------------------ JWKS

def test_jwks_default_key_set(fake):
    keys = get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"]
    assert keys == get(fake, f"/{T}/discovery/keys").json()["keys"]
    by_kid = {k["kid"]: k for k in keys}
    assert len(by_kid) == len(keys) == 7
    store = fake.store
    for role in ("rsa1", "rsa2", "weak", "enc"):
        jwk = by_kid[store[role].kid]
        assert jwk["kty"] == "RSA"
        assert set(jwk) == {"kty", "use", "kid", "x5t", "n", "e", "x5c", "issuer"}
        n = int.from_bytes(et.b64url_decode(jwk["n"]), "big")
        assert n.bit_length() == (1024 if role == "weak" else 2048)
        der = base64.b64decode(jwk["x5c"][0])
        cert = x509.load_der_x509_certificate(der)
        assert cert.public_key().public_numbers().n == n
        assert jwk["x5t"] == et.b64url(hashlib.sha1(der).digest())
        assert jwk["use"] == ("enc" if role == "enc" else "sig")
    for role, crv, size in (("ec256", "P-256", 32), ("ec384", "P-384", 48), ("ec521", "P-521", 66)):
        jwk = by_kid[store[role].kid]
        assert set(jwk) == {"kty", "use", "kid", "crv", "x", "y", "issuer"}
        assert jwk["crv"] == crv
        assert len(et.b64url_decode(jwk["x"])) == size == len(et.b64url_decode(jwk["y"]))
    assert {k["issuer"] for k in keys} == {f"https://login.microsoftonline.com/{T}/v2.0"}


# ------------------------------------------------------------------ minting

ALG_ROLE = [("RS256", "rsa1"), ("RS384", "rsa1"), ("RS512", "rsa2"), ("PS256", "rsa1"), ("PS384", "rsa2"),
            ("PS512", "rsa1"), ("ES256", "ec256"), ("ES384", "ec384"), ("ES512", "ec521")]


@pytest.mark.parametrize("alg,role", ALG_ROLE)
def test_mint_verifies_against_served_jwks(fake, alg, role):
    jwks = get(fake, f"/{T}/discovery/v2.0/keys").json()
    claims = et.v2_claims()
    token = et.mint(fake.key(role), claims, alg=alg)
    header = json.loads(et.b64url_decode(token.split(".")[0]))
    assert header == {"typ": "JWT", "alg": alg, "kid": fake.key(role).kid}
    assert et.verify(token, jwks) == claims
    if alg.startswith("ES"):
        assert len(et.b64url_decode(token.split(".")[2])) == {"ES256": 64, "ES384": 96, "ES512": 132}[alg]
    tampered = token.split(".")
    tampered[1] = et.b64url(et.json_bytes({**claims, "oid": "x"}))
    with pytest.raises(et.VerifyError):
        et.verify(".".join(tampered), jwks)


@pytest.mark.parametrize("alg,role", [("RS256", "rsa2"), ("PS384", "rsa1"), ("ES256", "ec256")])
def test_control_mint_verifies(fake, alg, role):
    jwks = get(fake, f"/{T}/discovery/v2.0/keys").json()
    claims = et.v2_claims()
    token = fake.mint_remote(fake.key(role).kid, claims, alg=alg)
    assert et.verify(token, jwks) == claims


def test_pss_salt_length_is_digest_length(fake):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    key = fake.key("rsa1")
    token = et.mint(key, {"a": 1}, alg="PS384")
    h, c, s = token.split(".")
    pub = key.public_key()
    pub.verify(et.b64url_decode(s), f"{h}.{c}".encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA384()),
                                                                      salt_length=48), hashes.SHA384())
    with pytest.raises(Exception):
        pub.verify(et.b64url_decode(s), f"{h}.{c}".encode(),
                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=20), hashes.SHA384())


def test_mint_raw_parts_are_exact(fake):
    raw_h = b'{"alg":"RS256","alg":"RS256","kid":"x"}'
    raw_c = b'["not","an","object"]'
    token = et.mint(fake.key("rsa1"), raw_header=raw_h, raw_claims=raw_c)
    h, c, s = token.split(".")
    assert et.b64url_decode(h) == raw_h and et.b64url_decode(c) == raw_c
    # The signature covers the segments exactly as sent, even non-canonical ones.
    padded = et.mint(fake.key("rsa1"), claims_segment="eyJhIjoxfQ==", header_segment=h)
    hh, cc, ss = padded.split(".")
    assert cc == "eyJhIjoxfQ=="
    fake.key("rsa1").public_key()  # key is usable
    assert "=" not in ss and "+" not in ss and "/" not in ss
    unsigned = et.mint(None, {"a": 1}, header={"alg": "none"}, alg="none")
    assert unsigned.endswith(".")
    der = et.mint(fake.key("ec256"), {"a": 1}, alg="ES256", ec_der=True)
    assert et.b64url_decode(der.split(".")[2])[0] == 0x30


def test_hs256_uses_public_key_pem_as_secret(fake):
    import hmac
    key = fake.key("rsa1")
    token = et.mint(key, {"a": 1}, alg="HS256", header={"alg": "HS256", "kid": key.kid})
    h, c, s = token.split(".")
    expect = hmac.new(key.public_pem(), f"{h}.{c}".encode(), hashlib.sha256).digest()
    assert et.b64url_decode(s) == expect


def test_claim_helpers():
    now = int(time.time())
    v2 = et.v2_claims(now=now)
    assert v2["iss"] == f"https://login.microsoftonline.com/{T}/v2.0"
    assert v2["ver"] == "2.0" and v2["idtyp"] == "app" and v2["tid"] == T
    assert v2["exp"] == now + 3600 and v2["nbf"] == v2["iat"] == now
    assert v2["aud"] == et.AUD_GUID and v2["azp"] == et.CLIENT_APP and v2["sub"] == v2["oid"]
    for c in ("aio", "azpacr", "idp", "rh", "roles", "uti"):
        assert c in v2
    v1 = et.v1_claims(now=now, roles=et.DROP, extra="x")
    assert v1["iss"] == f"https://sts.windows.net/{T}/" and v1["ver"] == "1.0"
    assert v1["appid"] == et.CLIENT_APP and v1["appidacr"] == "1"
    assert "roles" not in v1 and v1["extra"] == "x" and "azp" not in v1


def test_key_objects():
    k = et.gen_rsa(2048)
    assert isinstance(k.private, rsa.RSAPrivateKey) and k.kid == k.x5t
    e = et.gen_ec("P-384", kid="my-ec")
    assert isinstance(e.private, ec.EllipticCurvePrivateKey) and e.kid == "my-ec" and e.crv == "P-384"
    assert e.jwk(issuer="iss")["issuer"] == "iss"


# ------------------------------------------------------------------ modes

def test_error_mode_500(fake):
    fake.set_mode("jwks", "500")
    r = get(fake, f"/{T}/discovery/v2.0/keys")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "server_error" and body["error_codes"] == [50000]
    assert body["error_description"].startswith("AADSTS50000:")
    # discovery unaffected
    assert get(fake, f"/{T}/v2.0/.well-known/openid-configuration").status_code == 200


def test_error_modes_404_429_503(fake):
    fake.set_mode("discovery_v2", "404")
    assert get(fake, f"/{T}/v2.0/.well-known/openid-configuration").status_code == 404
    assert get(fake, f"/{T}/.well-known/openid-configuration").status_code == 200
    fake.set_mode("jwks_v2", "429")
    r = get(fake, f"/{T}/discovery/v2.0/keys")
    assert r.status_code == 429 and r.headers["Retry-After"] == "5"
    fake.set_mode("jwks_v1", "503")
    r = get(fake, f"/{T}/discovery/keys")
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"


def test_garbage_html_empty_modes(fake):
    fake.set_mode("jwks", "garbage")
    r = get(fake, f"/{T}/discovery/v2.0/keys")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)
    fake.set_mode("jwks", "html")
    assert get(fake, f"/{T}/discovery/v2.0/keys").text.startswith("<!DOCTYPE html>")
    fake.set_mode("jwks", "empty")
    assert get(fake, f"/{T}/discovery/v2.0/keys").content == b""


def test_shape_modes(fake):
    fake.set_mode("jwks", "invalid_shape")
    assert not isinstance(get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"], list)
    fake.set_mode("jwks", "empty_keys")
    assert get(fake, f"/{T}/discovery/v2.0/keys").json() == {"keys": []}
    fake.set_mode("discovery", "invalid_shape")
    assert "jwks_uri" not in get(fake, f"/{T}/v2.0/.well-known/openid-configuration").json()


def test_truncated_modes(fake):
    import http.client
    fake.set_mode("jwks", "truncated")
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("GET", f"/{T}/discovery/v2.0/keys")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    fake.set_mode("jwks", "truncated_json")
    r = get(fake, f"/{T}/discovery/v2.0/keys")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)


def test_slow_mode(fake):
    fake.set_mode("discovery", "slow", delay=1.0)
    t0 = time.monotonic()
    r = get(fake, f"/{T}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.95


def test_hang_mode(fake):
    fake.set_mode("jwks", "hang")
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        get(fake, f"/{T}/discovery/v2.0/keys", timeout=1.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("size,chunked", [(None, False), (10 * 1024 * 1024, True), (65536, False)])
def test_huge_mode(fake, size, chunked):
    fake.set_mode("jwks", "huge", size=size, chunked=chunked)
    r = get(fake, f"/{T}/discovery/v2.0/keys", timeout=30)
    assert len(r.content) == (size or 8 * 1024 * 1024)
    assert ("Content-Length" in r.headers) != chunked, r.headers
    assert len(r.json()["keys"]) == 7
    huge = fake.stats()["huge"]["jwks_v2"]
    assert huge == {"served": 1, "aborted": 0, "bytes": len(r.content)}, huge


def test_huge_mode_counts_a_client_that_hangs_up(fake):
    fake.set_mode("jwks", "huge", size=10 * 1024 * 1024, chunked=True)
    with socket.create_connection(("127.0.0.1", fake.port), timeout=30) as c:
        c.sendall(f"GET /{T}/discovery/v2.0/keys HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 256 * 1024:
            data = c.recv(65536)
            assert data, "the fake closed first"
            got += len(data)
    # closed with the rest unread
    deadline = time.monotonic() + 10
    while fake.stats()["huge"]["jwks_v2"]["aborted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    huge = fake.stats()["huge"]["jwks_v2"]
    assert huge["served"] == 1 and huge["aborted"] == 1, huge
    assert huge["bytes"] < 10 * 1024 * 1024, huge


def test_huge_mode_size_is_bounded(fake):
    for size in (10, 65 * 1024 * 1024):
        with pytest.raises(RuntimeError):
            fake.set_mode("jwks", "huge", size=size)


def test_mode_times_reverts(fake):
    fake.set_mode("jwks_v2", "500", times=2)
    assert get(fake, f"/{T}/discovery/v2.0/keys").status_code == 500
    assert get(fake, f"/{T}/discovery/v2.0/keys").status_code == 500
    assert get(fake, f"/{T}/discovery/v2.0/keys").status_code == 200


def test_bad_control_requests(fake):
    s = requests.Session()
    s.trust_env = False
    assert s.post(fake.url("/_control/mode"), json={"target": "jwks", "mode": "bogus"}).status_code == 400
    assert s.post(fake.url("/_control/nope"), json={}).status_code == 404


# ------------------------------------------------------------------ counters and keys

def test_counters_and_reset(fake):
    for _ in range(3):
        get(fake, f"/{T}/discovery/v2.0/keys")
    get(fake, f"/{T}/v2.0/.well-known/openid-configuration")
    get(fake, f"/{T}/.well-known/openid-configuration")
    get(fake, "/common/discovery/keys")
    get(fake, "/nowhere")
    st = fake.stats()
    assert st["jwks_v2"] == {T: 3}
    assert st["jwks_v1"] == {"common": 1}
    assert st["discovery_v2"] == {T: 1} and st["discovery_v1"] == {T: 1}
    assert st["jwks"] == {T: 3, "common": 1}
    assert st["paths"]["/nowhere"] == 1
    assert st["total"] == 7
    fake.reset()
    st = fake.stats()
    assert st["total"] == 0 and st["jwks_v2"] == {}


def test_rotate_add_remove(fake):
    before = {k["kid"] for k in get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"]}
    old = fake.key("rsa1").kid
    r = fake.rotate(drop=old)
    assert r["dropped"] == old
    jwks = get(fake, f"/{T}/discovery/v2.0/keys").json()
    after = {k["kid"] for k in jwks["keys"]}
    assert after == (before - {old}) | {r["added"]}
    # The test process can sign with the rotated-in key (shared keys dir).
    claims = et.v2_claims()
    assert et.verify(et.mint(fake.key(r["added"]), claims), jwks) == claims

    kid = fake.add_key(kty="EC", crv="P-256", issuer="https://login.microsoftonline.com/x/v2.0")
    jwk = [k for k in get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"] if k["kid"] == kid][0]
    assert jwk["issuer"] == "https://login.microsoftonline.com/x/v2.0"
    fake.remove_key(kid)
    assert kid not in {k["kid"] for k in get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"]}
    fake.reset(keys=True)
    assert {k["kid"] for k in get(fake, f"/{T}/discovery/v2.0/keys").json()["keys"]} == before


def test_static_documents(fake):
    fake.set_document("/_static/attacker/keys", json_body={"keys": []})
    r = get(fake, "/_static/attacker/keys")
    assert r.status_code == 200 and r.json() == {"keys": []}
    assert fake.stats()["paths"]["/_static/attacker/keys"] == 1


def test_tls_fake(test_root, master_keys):
    d = os.path.join(test_root, "selftest-tls")
    certs = make_ca_and_server_cert(os.path.join(d, "certs"))
    keys = os.path.join(d, "keys")
    shutil.copytree(master_keys, keys)
    f = FakeEntra(d, keys_dir=keys, tls_cert=certs["cert"], tls_key=certs["key"], ca_file=certs["ca"])
    with f:
        assert f.authority.startswith("https://127.0.0.1:")
        s = requests.Session()
        s.trust_env = False
        doc = s.get(f.url(f"/{T}/v2.0/.well-known/openid-configuration"), verify=certs["ca"], timeout=10).json()
        assert doc["jwks_uri"].startswith("https://127.0.0.1:")
        s2 = requests.Session()  # a fresh pool: requests reuses verified connections
        s2.trust_env = False
        with pytest.raises(requests.exceptions.SSLError):
            s2.get(f.url(f"/{T}/discovery/v2.0/keys"), verify=True, timeout=10)


# ------------------------------------------------------------------ the assertion helpers themselves

def test_checks_helpers():
    import checks
    scheme, p = checks.parse_challenge('Bearer realm="orders", error="invalid_token", '
                                       'error_description="token \\"expired\\""')
    assert scheme == "Bearer"
    assert p == {"realm": "orders", "error": "invalid_token", "error_description": 'token "expired"'}
    tok = et.mint(et.gen_ec("P-256"), et.v2_claims(), alg="ES256")
    with pytest.raises(AssertionError):
        checks.assert_log_has_no_tokens(f"[entra:info] rejected {tok}")
    with pytest.raises(AssertionError):
        checks.assert_no_token_part("bad token " + tok.split(".")[1][5:30], tok)
    checks.assert_no_token_part("token expired", tok)
    checks.assert_log_has_no_tokens("[entra:info] token rejected: token expired (token id 1a2b3c4d5e6f)")
    assert checks.child_crashes("[core:notice] AH00052: child pid 7 exit signal Segmentation fault (11)")
    assert checks.sanitizer_lines("x.c:1:2: runtime error: null pointer passed as argument 2")
