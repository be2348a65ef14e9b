#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer harnesses: t/fuzz/corpus/<harness>/.

Real-shaped inputs: Entra v1/v2 access tokens, discovery documents, JWKS (RSA with n/e and
with x5c only, EC P-256/384/521), managed-identity and token endpoint answers in all the
expires_on forms, Arc challenges. Keys are generated afresh on every run and only public
keys are written: t/fuzz/verify_jwks.json is the key set fuzz_verify checks signatures with,
and the fuzz_verify seeds are tokens signed by its (discarded) private keys.

Usage: /usr/bin/python3 t/fuzz/make_seeds.py    (rewrites the corpora)
"""

import base64
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import entra_tokens as et  # noqa: E402

# Must match t/fuzz/fuzz_verify.c.
NOW = 1767225600  # 2026-01-01T00:00:00Z
TENANT = "11111111-2222-3333-4444-555555555555"
AUD = "api://fuzz-api"
AUD_GUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SEP = b"\n--\n"


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def write(name: str, seeds: list) -> None:
    # regress-* files are inputs that once failed a harness: kept as they are.
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith("seed-"):
            os.remove(os.path.join(d, old))
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:03d}"), "wb") as f:
            f.write(s if isinstance(s, bytes) else s.encode())


def main() -> None:
    rsa = et.gen_rsa(2048)
    rsa2 = et.gen_rsa(2048)
    ec256, ec384, ec521 = et.gen_ec("P-256"), et.gen_ec("P-384"), et.gen_ec("P-521")
    weak = et.gen_rsa(1024)
    keys = [rsa, rsa2, ec256, ec384, ec521]
    v2iss = et.v2_issuer(TENANT)
    jwks = {"keys": [k.jwk() for k in keys]}
    x5c_only = dict(rsa.jwk())
    del x5c_only["n"], x5c_only["e"]

    # ---- tokens signed by the verify key set
    c2 = et.v2_claims(tenant=TENANT, aud=AUD_GUID, now=NOW - 60)
    c1 = et.v1_claims(tenant=TENANT, aud=AUD, now=NOW - 60)
    good = [
        et.mint(rsa, c2, alg="RS256"),
        et.mint(rsa2, c1, alg="RS256"),
        et.mint(rsa, c2, alg="PS256"),
        et.mint(rsa, c1, alg="RS384"),
        et.mint(rsa, c2, alg="PS512"),
        et.mint(ec256, c2, alg="ES256"),
        et.mint(ec384, c1, alg="ES384"),
        et.mint(ec521, c2, alg="ES512"),
    ]
    bad = [
        et.mint(rsa, et.v2_claims(tenant=TENANT, aud=AUD_GUID, now=NOW - 7200)),  # expired
        et.mint(rsa, et.v2_claims(tenant=TENANT, aud="api://other", now=NOW - 60)),
        et.mint(rsa, dict(c2, tid="33333333-4444-5555-6666-777777777777")),
        et.mint(rsa, c2, header={"typ": "JWT", "alg": "RS256", "kid": "unknown-kid"}),
        et.mint(rsa, c2, alg="RS256", header=et.default_header(rsa, "ES256")),
        et.mint(rsa, c2, header=et.default_header(rsa, "RS256", nonce="abc")),
        et.mint(weak, c2, header=et.default_header(rsa, "RS256")),  # bad signature
        good[0][:-4] + "AAAA",
        "eyJhbGciOiJub25lIn0.e30.",
        "a.b",
        "",
    ]
    with open(os.path.join(HERE, "verify_jwks.json"), "w") as f:
        json.dump(jwks, f, indent=1)
        f.write("\n")
    write("verify", good + bad)
    write("jws", good[:4] + bad + [
        et.mint(rsa, c2, header_segment="eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ=="),
        et.mint(rsa, c2, raw_claims=b'{"a":1,"a":2}'),
        et.mint(rsa, c2, header={"alg": "RS256", "kid": "k", "crit": ["exp"]}),
        et.mint(rsa, c2, header={"alg": "RS256", "kid": "k", "enc": "A128GCM"}),
    ])
    write("lua_decode", good[:3] + bad[7:] + [
        et.mint(rsa, dict(c2, nested={"a": [1, 2.5, None, True, {"b": "é"}]})),
        et.mint(rsa, c2, signature_segment=""),
    ])

    # ---- JSON documents
    docs = [dumps(c2), dumps(c1), dumps(jwks)[:4000],
            b'{"a":[1,-0,2.5e-3,1E+2,9223372036854775807,-9223372036854775808,1e-400]}',
            b'{"s":"\\u00e9t\\u00e9 \\ud83d\\ude00 \\/ \\" \\\\ \\n","t":true,"f":false,"n":null}',
            b'{"a":{"b":{"c":[[[{}]]]}}}', b'  {"k\\u00e9" : "\xc3\xa9\xf0\x9f\x98\x80"}  ',
            b'{"aud":"x","\\u0061ud":"y"}', b'{"a":"\\u0000"}', b'[1,2]', b'{"a":01}',
            b'{"a":"\xed\xa0\x80"}', b'{' * 300 + b'}' * 300]
    write("json", docs)

    # ---- JWK / JWKS
    write("jwk", [
        dumps(jwks), dumps({"keys": [x5c_only]}), dumps(rsa.jwk()), dumps(ec256.jwk()),
        dumps({"keys": [weak.jwk(), et.gen_rsa(2048, use="enc").jwk(), ec384.jwk(issuer=v2iss)]}),
        dumps({"keys": [dict(ec256.jwk(), crv="P-192"), dict(ec256.jwk(), x="AAAA"),
                        dict(rsa.jwk(), kty="oct"), {"kid": "x", "kty": "RSA"}, 5, "s"]}),
        dumps({"keys": [rsa.jwk(), rsa.jwk()]}),  # duplicate kid
        dumps({"keys": [dict(x5c_only, x5c=["TUlJ"])]}),
        dumps({"keys": {}}),
    ])

    # ---- discovery: v2 doc, v2 JWKS, v1 doc, v1 JWKS
    def doc(iss, uri):
        return dumps({"token_endpoint": "https://login.example.test/t/oauth2/v2.0/token",
                      "jwks_uri": uri, "issuer": iss,
                      "id_token_signing_alg_values_supported": ["RS256"],
                      "response_types_supported": ["code", "id_token"]})
    u2 = "https://login.example.test/t/discovery/v2.0/keys"
    u1 = "https://login.example.test/t/discovery/keys"
    small = dumps({"keys": [rsa.jwk(), ec256.jwk()]})
    small1 = dumps({"keys": [rsa2.jwk(), rsa.jwk()]})
    write("discovery", [
        SEP.join([doc(v2iss, u2), small, doc(et.v1_issuer(TENANT), u1), small1]),
        SEP.join([doc(et.V2_TEMPLATE, u2), small]),
        SEP.join([doc(v2iss, u2), small, b"", b""]),
        SEP.join([doc(v2iss, u2), small, doc(et.v1_issuer(TENANT), u1), small1, b"evict"]),
        SEP.join([doc(v2iss, "http://evil.example/keys"), small]),
        SEP.join([doc(v2iss, "http://127.0.0.1:8443/keys"), dumps({"keys": [x5c_only]})]),
        SEP.join([doc(v2iss, u2), dumps({"keys": []})]),
        SEP.join([dumps({"issuer": v2iss}), small]),
        SEP.join([doc(v2iss, u2), b"<html>"]),
    ])

    # ---- credential responses: ctrl (kind, status, second status), body, Retry-After,
    # WWW-Authenticate, second body. Kinds: 0 IMDS, 1 App Service, 2 Arc, 3 workload,
    # 4 secret. Statuses: 0 200, 1 400, 2 401, 3 404, 4 410, 5 429, 6 500, 7 503.
    # fuzz_cred runs at the real time: these answers expire in 2033.
    exp = 2000000000
    at = et.mint(rsa, et.v2_claims(tenant=TENANT, aud=AUD_GUID, now=exp - 3600))

    def cred(ctrl, body, retry=b"", www=b"", body2=b""):
        return SEP.join([ctrl.encode(), body, retry, www, body2])
    imds = {"access_token": at, "client_id": AUD_GUID, "expires_in": "3599",
            "expires_on": str(exp), "ext_expires_in": "3599", "not_before": str(exp - 3600),
            "resource": "https://vault.azure.net", "token_type": "Bearer"}
    err = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
           "secret provided. Trace ID: 0000 token eyJ0eXAiOiJKV1QifQ.abc.def",
           "error_codes": [7000215], "timestamp": "2026-01-01 00:00:00Z",
           "trace_id": "1", "correlation_id": "2"}
    write("cred", [
        cred("000", dumps(imds)),
        cred("100", dumps(dict(imds, expires_on=exp))),
        cred("100", dumps(dict(imds, expires_on="05/18/2033 03:33:20 +00:00"))),
        cred("100", dumps(dict(imds, expires_on="05/17/2033 19:33:20 -08:00"))),
        cred("100", dumps({"access_token": at, "expires_in": 3600})),
        cred("200", dumps(imds)),
        cred("22", b"", b"", b'Basic realm=/var/opt/azcmagent/tokens/0a1b2c3d.key', dumps(imds)),
        cred("300", dumps({"access_token": at, "token_type": "Bearer", "expires_in": 3599,
                           "ext_expires_in": 3599})),
        cred("410", dumps({"access_token": at, "token_type": "Bearer", "expires_in": "3599"})),
        cred("41", dumps(err)),
        cred("45", dumps({"error": "temporarily_unavailable"}), b"30"),
        cred("06", b'{"error":"invalid_request","error_description":"Identity not found"}'),
        cred("03", b"<html>not found</html>"),
        cred("17", b"", b"5"),
        cred("000", dumps({"access_token": "", "expires_in": 3600})),
        cred("000", dumps({"access_token": at})),
    ])

    # ---- Arc challenges (the WWW-Authenticate value of its 401)
    write("arc_challenge", [
        "Basic realm=/var/opt/azcmagent/tokens/8a3b7c0e-4f1d.key",
        'Basic realm="/var/opt/azcmagent/tokens/abc.key"',
        "basic realm=/var/opt/azcmagent/tokens/abc.key, charset=UTF-8",
        "Basic realm=/var/opt/azcmagent/tokens/../../../etc/shadow.key",
        "Basic realm=/var/opt/azcmagent/tokens/sub/abc.key",
        "Basic realm=/var/opt/azcmagent/tokensX/abc.key",
        "Basic realm=/etc/passwd",
        'Bearer realm="x"',
        "Basic",
    ])


if __name__ == "__main__":
    main()
