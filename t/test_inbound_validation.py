"""Every rule of token validation, each with an accepted and a rejected case.

Runs against the conformance layout (t/lib/conformance.py). Before apache2 starts, the
fake publishes two extra keys: one whose JWKS `issuer` property names another tenant,
and one whose `issuer` names ours explicitly.
"""

import base64
import json
import time

import pytest

import conformance
import entra_tokens as et
from checks import assert_log_has_no_tokens, expect_invalid_token, expect_no_token, expect_ok, expect_status
from stack import finish_stack

T = et.TENANT
T2 = et.ALLOWED_TENANT_2
OTHER = et.OTHER_TENANT
V2 = et.v2_issuer(T)
V1 = et.v1_issuer(T)


def _prepare(s):
    s.fake.add_key(kty="RSA", bits=2048, role="foreign", issuer=et.v2_issuer(OTHER))
    s.fake.add_key(kty="RSA", bits=2048, role="explicit", issuer=et.v2_issuer(T))


@pytest.fixture(scope="module")
def stack(make_stack):
    s = make_stack("validation", prepare=_prepare,
                   server_conf=lambda a: conformance.server_conf(a, extra="LimitRequestFieldSize 131072\n"
                                                                         "LimitRequestLine 262144\n"))
    yield s
    finish_stack(s)


@pytest.fixture(scope="module")
def attacker():
    return et.gen_rsa(2048)


def ok(stack, token, path="/any/ok.txt"):
    expect_ok(stack.get(path, token), "(token should be accepted)")


def bad(stack, token, path="/any/ok.txt", **kw):
    return expect_invalid_token(stack.get(path, token), token, **kw)


def segs(token):
    return token.split(".")


# ------------------------------------------------------------------ Authorization header syntax

@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(stack, scheme):
    expect_ok(stack.get("/any/ok.txt", headers={"Authorization": f"{scheme} {stack.token()}"}))


@pytest.mark.parametrize("spaces", [1, 2, 5])
def test_one_or_more_spaces_before_token(stack, spaces):
    expect_ok(stack.get("/any/ok.txt", headers={"Authorization": "Bearer" + " " * spaces + stack.token()}))


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag",
                                   "Digest username=\"x\""])
def test_other_scheme_is_no_token(stack, value):
    expect_no_token(stack.get("/any/ok.txt", headers={"Authorization": value}))


# ------------------------------------------------------------------ strict base64url

def _claims_with_padding():
    """Claims whose JSON length is not a multiple of 3 (so standard base64 pads)."""
    c = et.v2_claims()
    c["xx"] = ""
    while len(et.json_bytes(c)) % 3 == 0:
        c["xx"] += "a"
    return c


def test_unpadded_base64url_accepted(stack):
    c = _claims_with_padding()
    ok(stack, et.mint(stack.key("rsa1"), c))


def test_padded_claims_segment_rejected(stack):
    c = _claims_with_padding()
    seg = base64.urlsafe_b64encode(et.json_bytes(c)).decode()
    assert seg.endswith("=")
    # Signed over the padded segment, so only the encoding is wrong.
    bad(stack, et.mint(stack.key("rsa1"), claims_segment=seg))


def test_padded_header_segment_rejected(stack):
    k = stack.key("rsa1")
    h = et.default_header(k, "RS256")
    h["xx"] = ""
    while len(et.json_bytes(h)) % 3 == 0:
        h["xx"] += "a"
    seg = base64.urlsafe_b64encode(et.json_bytes(h)).decode()
    assert seg.endswith("=")
    bad(stack, et.mint(k, et.v2_claims(), header_segment=seg))


def test_standard_alphabet_claims_segment_rejected(stack):
    c = et.v2_claims(note="???>>>???>>>")  # encodes to '+' and '/' in standard base64
    raw = et.json_bytes(c)
    seg = base64.b64encode(raw).decode().rstrip("=")
    assert "+" in seg or "/" in seg
    bad(stack, et.mint(stack.key("rsa1"), claims_segment=seg))
    # The same claims in base64url are fine.
    ok(stack, et.mint(stack.key("rsa1"), c))


def test_padded_signature_rejected(stack):
    tok = stack.token()
    assert len(segs(tok)[2]) % 4 != 0
    bad(stack, tok + "=" * (-len(segs(tok)[2]) % 4))


def test_standard_alphabet_signature_rejected(stack):
    for _ in range(50):
        tok = stack.token()
        if "-" in segs(tok)[2] or "_" in segs(tok)[2]:
            break
    h, c, s = segs(tok)
    bad(stack, f"{h}.{c}.{s.replace('-', '+').replace('_', '/')}")


def test_whitespace_inside_token_rejected(stack):
    h, c, s = segs(stack.token())
    bad(stack, f"{h}.{c[:20]}\t{c[20:]}.{s}")


# ------------------------------------------------------------------ JSON

def test_pretty_printed_json_accepted(stack):
    k = stack.key("rsa1")
    raw_h = json.dumps(et.default_header(k), indent=2).encode()
    raw_c = json.dumps(et.v2_claims(), indent=2).encode()
    ok(stack, et.mint(k, raw_header=raw_h, raw_claims=raw_c))


@pytest.mark.parametrize("raw", [b'["typ","JWT"]', b'"RS256"', b"42", b"null", b"", b"{", b'{"alg":"RS256"} x'])
def test_header_must_be_a_json_object(stack, raw):
    bad(stack, et.mint(stack.key("rsa1"), et.v2_claims(), raw_header=raw))


@pytest.mark.parametrize("raw", [b"[1,2,3]", b'"claims"', b"3.14", b"null", b"true", b"", b"{\"aud\":",
                                 b'{"a":1}{"b":2}'])
def test_claims_must_be_a_json_object(stack, raw):
    bad(stack, et.mint(stack.key("rsa1"), raw_claims=raw))


def test_duplicate_header_key_rejected(stack):
    k = stack.key("rsa1")
    raw = ('{"typ":"JWT","alg":"RS256","alg":"RS256","kid":"%s"}' % k.kid).encode()
    bad(stack, et.mint(k, et.v2_claims(), raw_header=raw))
    raw = ('{"typ":"JWT","alg":"RS256","kid":"%s","kid":"%s"}' % (k.kid, k.kid)).encode()
    bad(stack, et.mint(k, et.v2_claims(), raw_header=raw))


@pytest.mark.parametrize("dup", ["aud", "oid", "exp", "roles"])
def test_duplicate_claim_rejected(stack, dup):
    c = et.v2_claims()
    raw = et.json_bytes(c)[:-1] + b"," + json.dumps(dup).encode() + b":" + json.dumps(c[dup]).encode() + b"}"
    json.loads(raw)  # Python accepts it (last one wins): the module must not
    bad(stack, et.mint(stack.key("rsa1"), raw_claims=raw))


def test_invalid_utf8_in_claims_rejected(stack):
    raw = et.json_bytes(et.v2_claims())[:-1] + b',"name":"\xff\xfe"}'
    bad(stack, et.mint(stack.key("rsa1"), raw_claims=raw))


# ------------------------------------------------------------------ segments and alg "none"

def test_two_segments_rejected(stack):
    h, c, _ = segs(stack.token())
    bad(stack, f"{h}.{c}")


def test_four_segments_rejected(stack):
    bad(stack, stack.token() + ".AAAA")


def test_jwe_five_segments_rejected(stack):
    k = stack.key("rsa1")
    h = et.b64url(et.json_bytes({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": k.kid, "typ": "JWT"}))
    parts = [h] + [et.b64url(b"x" * n) for n in (256, 12, 100, 16)]
    bad(stack, ".".join(parts))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_rejected(stack, alg):
    k = stack.key("rsa1")
    bad(stack, et.mint(None, et.v2_claims(), header={"typ": "JWT", "alg": alg, "kid": k.kid}, alg="none"))


def test_empty_signature_rejected(stack):
    h, c, _ = segs(stack.token())
    bad(stack, f"{h}.{c}.")


# ------------------------------------------------------------------ algorithms

@pytest.mark.parametrize("alg,role", [("RS256", "rsa1"), ("PS256", "rsa2"), ("ES256", "ec256")])
def test_allowed_algorithms_accepted(stack, alg, role):
    ok(stack, stack.token(key=role, alg=alg))


@pytest.mark.parametrize("alg,role", [("ES384", "ec384"), ("ES512", "ec521"), ("RS384", "rsa1"),
                                      ("RS512", "rsa1"), ("PS384", "rsa2"), ("PS512", "rsa2")])
def test_algorithm_not_in_allowlist_rejected(stack, alg, role):
    bad(stack, stack.token(key=role, alg=alg))


def test_hs256_with_public_key_as_secret_rejected(stack):
    k = stack.key("rsa1")
    h = {"typ": "JWT", "alg": "HS256", "kid": k.kid}
    bad(stack, et.mint(k.public_pem(), et.v2_claims(), header=h, alg="HS256"))
    n = et.b64url_decode(k.jwk()["n"])
    bad(stack, et.mint(n, et.v2_claims(), header=h, alg="HS256"))
    bad(stack, et.mint(et.json_bytes(k.jwk()), et.v2_claims(), header=h, alg="HS256"))


def test_es256_header_with_rsa_kid_rejected(stack):
    h = {"typ": "JWT", "alg": "ES256", "kid": stack.key("rsa1").kid}
    bad(stack, et.mint(stack.key("ec256"), et.v2_claims(), header=h, alg="ES256"))


def test_rs256_header_with_ec_kid_rejected(stack):
    h = {"typ": "JWT", "alg": "RS256", "kid": stack.key("ec256").kid}
    bad(stack, et.mint(stack.key("rsa1"), et.v2_claims(), header=h, alg="RS256"))


def test_es256_with_p384_key_rejected(stack):
    """ES256 means P-256: a P-384 key signing with SHA-256 must not verify."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    k = stack.key("ec384")
    h = et.b64url(et.json_bytes({"typ": "JWT", "alg": "ES256", "kid": k.kid}))
    c = et.b64url(et.json_bytes(et.v2_claims()))
    r, s = decode_dss_signature(k.private.sign(f"{h}.{c}".encode(), ec.ECDSA(hashes.SHA256())))
    bad(stack, f"{h}.{c}." + et.b64url(r.to_bytes(48, "big") + s.to_bytes(48, "big")))


def test_ps256_header_with_pkcs1_signature_rejected(stack):
    k = stack.key("rsa1")
    bad(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, "PS256"), alg="RS256"))


def test_rs256_header_with_pss_signature_rejected(stack):
    k = stack.key("rsa1")
    bad(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, "RS256"), alg="PS256"))


def test_der_encoded_ecdsa_signature_rejected(stack):
    k = stack.key("ec256")
    bad(stack, et.mint(k, et.v2_claims(), alg="ES256", ec_der=True))


def test_ecdsa_signature_of_wrong_length_rejected(stack):
    h, c, s = segs(stack.token(key="ec256"))
    sig = et.b64url_decode(s)
    bad(stack, f"{h}.{c}.{et.b64url(sig[:63])}")
    longer = et.b64url(b"\x00" + sig)
    bad(stack, f"{h}.{c}.{longer}")


@pytest.mark.parametrize("alg", ["rs256", "RS256 ", None, 256])
def test_malformed_alg_rejected(stack, alg):
    k = stack.key("rsa1")
    h = {"typ": "JWT", "kid": k.kid}
    if alg is not None:
        h["alg"] = alg
    bad(stack, et.mint(k, et.v2_claims(), header=h, alg="RS256"))


# ------------------------------------------------------------------ kid

def test_second_rsa_key_accepted(stack):
    ok(stack, stack.token(key="rsa2"))


def test_missing_kid_rejected(stack):
    k = stack.key("rsa1")
    bad(stack, et.mint(k, et.v2_claims(), header={"typ": "JWT", "alg": "RS256"}))


@pytest.mark.parametrize("kid", ["unknown-kid-xyz", "", 12345, None])
def test_unknown_or_malformed_kid_rejected(stack, kid):
    k = stack.key("rsa1")
    bad(stack, et.mint(k, et.v2_claims(), header={"typ": "JWT", "alg": "RS256", "kid": kid}))


def test_encryption_key_not_used_for_signatures(stack):
    bad(stack, stack.token(key="enc"))


def test_rsa_1024_key_refused(stack):
    bad(stack, stack.token(key="weak"))


def test_kid_matching_is_exact(stack):
    k = stack.key("rsa1")
    for kid in (k.kid.lower() if k.kid.lower() != k.kid else k.kid.upper(), k.kid + " ", " " + k.kid):
        bad(stack, et.mint(k, et.v2_claims(), header={"typ": "JWT", "alg": "RS256", "kid": kid}))


# ------------------------------------------------------------------ crit and key-carrying headers

def test_crit_header_rejected(stack):
    k = stack.key("rsa1")
    bad(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, crit=["exp"], exp=1)))
    bad(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, crit=["b64"], b64=True)))
    bad(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, crit=[])))
    ok(stack, et.mint(k, et.v2_claims(), header=et.default_header(k, exp=1)))


def test_x5t_header_is_harmless(stack):
    """v1 tokens carry x5t next to kid; it must not stop a good token."""
    k = stack.key("rsa1")
    ok(stack, et.mint(k, et.v1_claims(), header=et.default_header(k, x5t=k.x5t)))


def test_embedded_jwk_is_never_trusted(stack, attacker):
    h = {"typ": "JWT", "alg": "RS256", "kid": attacker.kid, "jwk": attacker.jwk()}
    bad(stack, et.mint(attacker, et.v2_claims(), header=h))
    # Even when the kid names a real key.
    h = {"typ": "JWT", "alg": "RS256", "kid": stack.key("rsa1").kid, "jwk": attacker.jwk()}
    bad(stack, et.mint(attacker, et.v2_claims(), header=h))


def test_embedded_x5c_is_never_trusted(stack, attacker):
    x5c = [base64.b64encode(attacker.cert_der).decode()]
    h = {"typ": "JWT", "alg": "RS256", "kid": attacker.kid, "x5c": x5c, "x5t": attacker.x5t}
    bad(stack, et.mint(attacker, et.v2_claims(), header=h))
    h["kid"] = stack.key("rsa1").kid
    bad(stack, et.mint(attacker, et.v2_claims(), header=h))


def test_jku_and_x5u_are_never_fetched(stack, attacker):
    stack.fake.set_document("/_static/attacker/keys", json_body={"keys": [attacker.jwk()]})
    stack.fake.set_document("/_static/attacker/cert.pem", body=attacker.public_pem().decode())
    jku = stack.fake.url("/_static/attacker/keys")
    x5u = stack.fake.url("/_static/attacker/cert.pem")
    bad(stack, et.mint(attacker, et.v2_claims(), header={"typ": "JWT", "alg": "RS256", "kid": attacker.kid,
                                                         "jku": jku}))
    bad(stack, et.mint(attacker, et.v2_claims(), header={"typ": "JWT", "alg": "RS256", "kid": attacker.kid,
                                                         "x5u": x5u}))
    k = stack.key("rsa1")
    bad(stack, et.mint(attacker, et.v2_claims(), header={"typ": "JWT", "alg": "RS256", "kid": k.kid,
                                                         "jku": jku}))
    time.sleep(1.0)  # let any background fetch show up in the counters
    paths = stack.fake.stats()["paths"]
    assert paths.get("/_static/attacker/keys", 0) == 0, paths
    assert paths.get("/_static/attacker/cert.pem", 0) == 0, paths


# ------------------------------------------------------------------ signature

def test_tampered_payload_rejected(stack):
    claims = et.v2_claims()
    h, c, s = segs(stack.token(claims=claims))
    forged = et.b64url(et.json_bytes({**claims, "roles": ["Orders.Admin"]}))
    bad(stack, f"{h}.{forged}.{s}")


def test_tampered_signature_rejected(stack):
    h, c, s = segs(stack.token())
    sig = bytearray(et.b64url_decode(s))
    sig[100] ^= 0x01
    bad(stack, f"{h}.{c}.{et.b64url(bytes(sig))}")
    bad(stack, f"{h}.{c}.{et.b64url(bytes(sig[:-1]))}")


def test_signature_by_another_published_key_rejected(stack):
    k1, k2 = stack.key("rsa1"), stack.key("rsa2")
    bad(stack, et.mint(k2, et.v2_claims(), header=et.default_header(k1)))


def test_es256_tampered_rejected(stack):
    claims = et.v2_claims()
    h, c, s = segs(stack.token(key="ec256", claims=claims))
    bad(stack, f"{h}.{et.b64url(et.json_bytes({**claims, 'oid': 'x'}))}.{s}")


# ------------------------------------------------------------------ exp / nbf / lifetime

def test_exp_required(stack):
    bad(stack, stack.token(exp=et.DROP))


EXP_NOT_NUMERIC = {
    "string": lambda t: str(t),
    "string-float": lambda t: f"{t}.0",
    "null": lambda t: None,
    "bool": lambda t: True,
    "array": lambda t: [t],
    "object": lambda t: {"v": t},
}


@pytest.mark.parametrize("kind", list(EXP_NOT_NUMERIC))
def test_exp_must_be_numeric(stack, kind):
    now = int(time.time())
    bad(stack, stack.token(exp=EXP_NOT_NUMERIC[kind](now + 3600)))


def test_nbf_must_be_numeric(stack):
    now = int(time.time())
    bad(stack, stack.token(nbf=str(now)))
    bad(stack, stack.token(nbf=None))


def test_exp_within_skew_accepted(stack):
    now = int(time.time())
    ok(stack, stack.token(iat=now - 3630, nbf=now - 3630, exp=now - 30))


def test_exp_beyond_skew_rejected(stack):
    now = int(time.time())
    bad(stack, stack.token(iat=now - 3720, nbf=now - 3720, exp=now - 120))


def test_nbf_within_skew_accepted(stack):
    now = int(time.time())
    ok(stack, stack.token(iat=now + 30, nbf=now + 30, exp=now + 3630))


def test_nbf_beyond_skew_rejected(stack):
    now = int(time.time())
    bad(stack, stack.token(iat=now + 120, nbf=now + 120, exp=now + 3720))


def test_lifetime_below_max_accepted(stack):
    now = int(time.time())
    ok(stack, stack.token(iat=now - 100, nbf=now - 100, exp=now + 89800))


def test_lifetime_above_max_rejected(stack):
    now = int(time.time())
    bad(stack, stack.token(iat=now - 100, nbf=now - 100, exp=now + 90000))


def test_lifetime_from_nbf_when_no_iat(stack):
    now = int(time.time())
    ok(stack, stack.token(iat=et.DROP, nbf=now - 100, exp=now + 3600))
    bad(stack, stack.token(iat=et.DROP, nbf=now - 100, exp=now + 90000))


def test_float_times_accepted(stack):
    """NumericDate may be a JSON number with a fraction (RFC 7519 section 2)."""
    now = time.time()
    ok(stack, stack.token(iat=now, nbf=now, exp=now + 3600.5))


# ------------------------------------------------------------------ iss / tid

def test_v2_issuer_accepted(stack):
    ok(stack, stack.token(claims=et.v2_claims(aud=et.AUD_GUID)))


def test_v1_issuer_accepted(stack):
    ok(stack, stack.token(claims=et.v1_claims(aud=et.AUD_URI)))


@pytest.mark.parametrize("iss", [
    et.v2_issuer(OTHER),
    V2 + "/",
    V1.rstrip("/"),
    V1 + "/",
    f"https://LOGIN.microsoftonline.com/{T}/v2.0",
    f"https://login.microsoftonline.com/{T}/V2.0",
    f"http://login.microsoftonline.com/{T}/v2.0",
    f"https://sts.windows.net/{T}/v2.0",
    f"https://login.microsoftonline.com/{T}/",
    "https://login.microsoftonline.com/{tenantid}/v2.0",
    "https://login.microsoftonline.com/common/v2.0",
    V2 + " ",
    " " + V2,
    f"https://login.microsoftonline.us/{T}/v2.0",
])
def test_issuer_must_match_exactly(stack, iss):
    bad(stack, stack.token(iss=iss))


def test_issuer_missing_or_not_a_string(stack):
    bad(stack, stack.token(iss=et.DROP))
    bad(stack, stack.token(iss=[V2]))


def test_token_from_other_tenant_rejected(stack):
    bad(stack, stack.token(claims=et.v2_claims(tenant=OTHER)))
    bad(stack, stack.token(claims=et.v1_claims(tenant=OTHER)))


def test_tid_must_match_issuer_tenant(stack):
    bad(stack, stack.token(tid=OTHER))
    bad(stack, stack.token(v1=True, tid=OTHER))


def test_token_without_tid_accepted(stack):
    ok(stack, stack.token(tid=et.DROP))


def test_key_with_foreign_issuer_not_usable(stack):
    bad(stack, stack.token(key="foreign"))
    bad(stack, stack.token(key="foreign", v1=True))


def test_key_with_own_issuer_usable(stack):
    ok(stack, stack.token(key="explicit"))
    ok(stack, stack.token(key="explicit", v1=True))


# ------------------------------------------------------------------ aud

@pytest.mark.parametrize("aud", [et.AUD_URI, et.AUD_GUID, ["api://other", et.AUD_URI], [et.AUD_GUID],
                                 ["x", "y", et.AUD_GUID]])
def test_audience_accepted(stack, aud):
    ok(stack, stack.token(aud=aud))


@pytest.mark.parametrize("aud", ["api://orders-api/", "API://orders-api", " api://orders-api", "api://orders-api ",
                                 et.AUD_GUID.upper(), "api://orders", ["api://other"], [], [[et.AUD_URI]],
                                 42, None, {"aud": et.AUD_URI}, "", "api://orders-api,api://x"])
def test_audience_rejected(stack, aud):
    bad(stack, stack.token(aud=aud))


def test_audience_missing_rejected(stack):
    bad(stack, stack.token(aud=et.DROP))


# ------------------------------------------------------------------ Microsoft Graph style tokens

def test_nonce_header_token_rejected_with_audience_hint(stack):
    k = stack.key("rsa1")
    h = {"typ": "JWT", "nonce": "AQABAAAAAAD--DLA3VO7QrddgJg7WevrR1tS", "alg": "RS256", "x5t": k.x5t, "kid": k.kid}
    graph = et.v1_claims(aud="00000003-0000-0000-c000-000000000000")
    tok = et.mint(k, graph, header=h)
    bad(stack, tok, desc_contains="audience")
    tok = et.mint(k, et.v2_claims(), header=h)
    bad(stack, tok, desc_contains="audience")


# ------------------------------------------------------------------ sizes and shapes that must not hurt

def test_oversized_token_refused_cleanly(stack):
    tok = stack.token(pad="A" * 60000)
    t0 = time.monotonic()
    r = stack.get("/any/ok.txt", tok)
    assert time.monotonic() - t0 < 10
    expect_status(r, (400, 401, 413, 431), "(oversized token)")
    ok(stack, stack.token())


def test_oversized_query_token_refused_cleanly(stack):
    tok = stack.token(pad="A" * 150000)
    r = stack.get("/queryonly/ok.txt", params={"access_token": tok})
    expect_status(r, (400, 401, 413, 414, 431), "(oversized query token)")


def test_oversized_header_refused_cleanly(stack):
    r = stack.get("/any/ok.txt", headers={"Authorization": "Bearer " + "A" * 200000})
    expect_status(r, (400, 401, 413, 431), "(oversized header)")
    ok(stack, stack.token())


def test_deeply_nested_claims_refused_cleanly(stack):
    raw = et.json_bytes(et.v2_claims())[:-1] + b',"deep":' + b"[" * 5000 + b"]" * 5000 + b"}"
    bad(stack, et.mint(stack.key("rsa1"), raw_claims=raw))
    ok(stack, stack.token())


def test_many_dots_refused_cleanly(stack):
    bad(stack, "a." * 3000 + "a")
    bad(stack, "." * 5000)


def test_control_characters_refused_cleanly(stack):
    h, c, s = segs(stack.token())
    r = stack.get("/any/ok.txt", headers={"Authorization": f"Bearer {h}.{c}\x01.{s}"})
    expect_status(r, (400, 401))


# ------------------------------------------------------------------ multi-tenant (/multi)

def test_multi_tenant_allowed_tenants_accepted(stack):
    ok(stack, stack.token(claims=et.v2_claims(tenant=T)), "/multi/ok.txt")
    ok(stack, stack.token(claims=et.v2_claims(tenant=T2)), "/multi/ok.txt")
    ok(stack, stack.token(claims=et.v1_claims(tenant=T2)), "/multi/ok.txt")


def test_multi_tenant_other_tenant_rejected(stack):
    bad(stack, stack.token(claims=et.v2_claims(tenant=OTHER)), "/multi/ok.txt")
    bad(stack, stack.token(claims=et.v1_claims(tenant=OTHER)), "/multi/ok.txt")


def test_multi_tenant_non_guid_tid_rejected(stack):
    for tid in ("contoso.onmicrosoft.com", "common", "{tenantid}", T2.upper(), T2 + "x", T2[:-1], "{" + T2 + "}"):
        bad(stack, stack.token(claims=et.v2_claims(tenant=tid)), "/multi/ok.txt")


def test_multi_tenant_iss_inconsistent_with_tid_rejected(stack):
    bad(stack, stack.token(claims=et.v2_claims(tenant=T2, tid=T)), "/multi/ok.txt")
    bad(stack, stack.token(claims=et.v2_claims(tenant=T, tid=T2)), "/multi/ok.txt")
    bad(stack, stack.token(claims=et.v2_claims(tenant=T2, iss="https://login.microsoftonline.com/{tenantid}/v2.0")),
        "/multi/ok.txt")


def test_multi_tenant_requires_tid(stack):
    bad(stack, stack.token(claims=et.v2_claims(tenant=T2, tid=et.DROP)), "/multi/ok.txt")


def test_multi_tenant_key_with_foreign_issuer_rejected(stack):
    bad(stack, stack.token(key="foreign", claims=et.v2_claims(tenant=T2)), "/multi/ok.txt")


def test_single_tenant_location_rejects_allowed_tenant_of_multi(stack):
    bad(stack, stack.token(claims=et.v2_claims(tenant=T2)))


# ------------------------------------------------------------------ EntraMetadataURL (/meta)

def test_metadata_url_location(stack):
    ok(stack, stack.token(), "/meta/ok.txt")
    bad(stack, stack.token(claims=et.v2_claims(tenant=OTHER)), "/meta/ok.txt")


def test_error_log_has_no_tokens(stack):
    assert_log_has_no_tokens(stack.httpd.error_log_text())
