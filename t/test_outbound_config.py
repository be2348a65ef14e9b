"""Outbound: configuration mistakes make `apache2 -t` fail with a message naming the problem
(and never echoing a secret)."""

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from identity_client import CERT_APP, SECRET_APP, make_client_certificate
from outbound import oenv, www_file  # noqa: F401

TENANT = "11111111-2222-3333-4444-555555555555"
CID = "a1a1a1a1-0000-4000-8000-000000000001"
OID = "a1a1a1a1-0000-4000-8000-0000000000a1"
IMDS = "http://127.0.0.1:9/metadata/identity/oauth2/token"
AUTH = "http://127.0.0.1:9/"
INLINE_SECRET = "s3cr3t-inline-value-Qx7"


@pytest.fixture(scope="module")
def files(oenv):
    d = oenv.path("cfg")
    os.makedirs(d, exist_ok=True)
    cert = make_client_certificate(d, "good")
    out = {"cert": cert["cert_path"], "key": cert["key_path"],
           "secret": www_file(os.path.join(d, "client.secret"), "a-secret\n")}

    def write_key(name, key):
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return p
    out["ec_key"] = write_key("ec.key", ec.generate_private_key(ec.SECP256R1()))
    out["small_key"] = write_key("small.key", rsa.generate_private_key(65537, 1024))
    out["garbage_key"] = os.path.join(d, "garbage.key")
    with open(out["garbage_key"], "w") as f:
        f.write("-----BEGIN " + "PRIVATE KEY-----\nbm90IGEga2V5\n-----END " + "PRIVATE KEY-----\n")  # not a key
    out["missing"] = os.path.join(d, "does-not-exist.key")
    return out


@pytest.fixture(scope="module")
def httpd(oenv):
    return oenv.httpd()


def check(httpd, server_conf: str, locations: str = "", extra_env=None):
    if extra_env is not None:
        saved = httpd.extra_env
        httpd.extra_env = {**saved, **extra_env}
    try:
        return httpd.config_test(locations=locations, server_conf=server_conf)
    finally:
        if extra_env is not None:
            httpd.extra_env = saved


def expect_error(httpd, server_conf, words, locations="", extra_env=None):
    rc, out = check(httpd, server_conf, locations, extra_env)
    assert rc != 0, f"apache2 -t accepted:\n{server_conf}\n{locations}\n--- output:\n{out}"
    low = out.lower()
    missing = [w for w in words if w.lower() not in low]
    assert not missing, f"apache2 -t output does not mention {missing}:\n{out}"
    return out


def test_valid_configuration_is_accepted(httpd, files):
    rc, out = check(httpd, "\n".join([
        f"EntraIdentity mi managed client_id={CID} source=imds endpoint={IMDS}",
        f"EntraIdentity sec secret tenant={TENANT} client_id={SECRET_APP} secret_file={files['secret']} "
        f"authority={AUTH}",
        f"EntraIdentity crt certificate tenant={TENANT} client_id={CERT_APP} cert={files['cert']} "
        f"key={files['key']} authority={AUTH}",
        "EntraTokenTimeout 3",
    ]), "<Location /x/>\n ProxyPass http://127.0.0.1:9/\n EntraProxyToken api://x/.default identity=mi\n"
        " EntraProxyTokenOnError pass\n</Location>\n")
    assert rc == 0, out


def test_two_selectors(httpd):
    expect_error(httpd, f"EntraIdentity twosel managed client_id={CID} object_id={OID} endpoint={IMDS}",
                 ["twosel", "client_id", "object_id"])


def test_unknown_kind(httpd):
    expect_error(httpd, "EntraIdentity oddkind wizard", ["oddkind", "unknown kind", "wizard"])


def test_inline_secret_refused(httpd):
    out = expect_error(httpd, f"EntraIdentity inl secret tenant={TENANT} client_id={SECRET_APP} "
                              f"secret={INLINE_SECRET} authority={AUTH}", ["inl", "secret_file"])
    assert INLINE_SECRET not in out, "the inline secret was echoed"


def test_missing_secret_file_option(httpd):
    expect_error(httpd, f"EntraIdentity nosf secret tenant={TENANT} client_id={SECRET_APP} authority={AUTH}",
                 ["nosf", "secret_file"])


def test_secret_file_that_does_not_exist(httpd, files):
    expect_error(httpd, f"EntraIdentity badsf secret tenant={TENANT} client_id={SECRET_APP} "
                        f"secret_file={files['missing']} authority={AUTH}", ["badsf", files["missing"]])


@pytest.mark.parametrize("key,words", [
    ("missing", ["does-not-exist.key"]),
    ("garbage_key", ["garbage.key", "private key"]),
    ("ec_key", ["ec.key", "RSA"]),
    ("small_key", ["small.key", "2048"]),
])
def test_unusable_certificate_key(httpd, files, key, words):
    expect_error(httpd, f"EntraIdentity badkey certificate tenant={TENANT} client_id={CERT_APP} "
                        f"cert={files['cert']} key={files[key]} authority={AUTH}", ["badkey"] + words)


UNKNOWN_ID = ("<Location /x/>\n ProxyPass http://127.0.0.1:9/\n"
              " EntraProxyToken api://x identity=nosuchid\n</Location>\n")
NO_ID_TWO_IDENTITIES = ("<Location /y/>\n ProxyPass http://127.0.0.1:9/\n"
                        " EntraProxyToken api://y\n</Location>\n")
TWO_IDENTITIES = (f"EntraIdentity known managed endpoint={IMDS} source=imds\n"
                  f"EntraIdentity other managed client_id={CID} endpoint={IMDS} source=imds")


@pytest.mark.parametrize("locations", [UNKNOWN_ID, NO_ID_TWO_IDENTITIES], ids=["unknown-name", "ambiguous"])
def test_proxy_token_identity_checked_by_config_test(httpd, locations):
    """`apache2 -t` must catch an EntraProxyToken whose identity cannot be resolved."""
    expect_error(httpd, TWO_IDENTITIES, ["EntraProxyToken", "identity"], locations)


@pytest.mark.parametrize("locations,words", [
    (UNKNOWN_ID, ["/x/", "no EntraIdentity"]),
    (NO_ID_TWO_IDENTITIES, ["/y/", "identity=<name>"]),
], ids=["unknown-name", "ambiguous"])
def test_proxy_token_identity_checked_at_startup(oenv, locations, words):
    h = oenv.httpd(TWO_IDENTITIES, locations)
    with pytest.raises(RuntimeError) as exc:
        h.start(timeout=15)
    msg = str(exc.value)
    assert "ENTRA0009" in msg and all(w in msg for w in words), msg[-800:]


def test_arc_with_selector(httpd):
    expect_error(httpd, f"EntraIdentity arcu managed client_id={CID} source=arc endpoint={IMDS}",
                 ["arcu", "system-assigned"])


def test_appservice_without_identity_header(httpd):
    expect_error(httpd, "EntraIdentity asnh managed source=appservice endpoint=http://127.0.0.1:9/msi/token",
                 ["asnh", "IDENTITY_HEADER"])


def test_plain_http_authority_off_loopback(httpd, files):
    expect_error(httpd, f"EntraIdentity farauth secret tenant={TENANT} client_id={SECRET_APP} "
                        f"secret_file={files['secret']} authority=http://login.example.com/",
                 ["farauth", "authority"])


def test_unknown_option(httpd):
    expect_error(httpd, f"EntraIdentity opt managed colour=blue endpoint={IMDS}", ["opt", "colour"])


@pytest.mark.parametrize("value", ["0", "abc", "1000"])
def test_bad_token_timeout(httpd, value):
    expect_error(httpd, f"EntraTokenTimeout {value}", ["EntraTokenTimeout"])


def test_bad_on_error_value(httpd):
    expect_error(httpd, "", ["EntraProxyTokenOnError"],
                 "<Location /x/>\n EntraProxyTokenOnError maybe\n</Location>\n")
