"""Self-tests of t/fakes/fake_identity.py: IMDS, App Service, Azure Arc, the Entra token endpoint,
issued tokens, scripted failures, throttling and the control API. Needs no httpd and no module.
"""

import concurrent.futures
import datetime
import email.utils
import json
import os
import signal
import stat
import subprocess
import time

import pytest
import requests
from cryptography.exceptions import InvalidSignature

from identity_client import (CERT_APP, FEDERATION_AUDIENCE, JWT_BEARER, SECRET_APP, WORKLOAD_APP,
                             WORKLOAD_SUBJECT, FakeIdentity, b64u, b64u_decode, client_assertion, jwt_parts,
                             make_client_certificate, thumbprints, verify_token)

ARM = "https://management.azure.com/"
VAULT = "https://vault.azure.net"
API = "api://backend"


@pytest.fixture(scope="module")
def fake(test_root):
    d = os.path.join(test_root, "identity-selftest")
    f = FakeIdentity(d).start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.reset()
    yield


@pytest.fixture(scope="module")
def client_cert(test_root):
    return make_client_certificate(os.path.join(test_root, "identity-selftest-certs"), "cert-app")


@pytest.fixture(scope="module")
def other_cert(test_root):
    return make_client_certificate(os.path.join(test_root, "identity-selftest-certs"), "other")


def sess():
    s = requests.Session()
    s.trust_env = False
    return s


def imds(fake, resource=ARM, headers=None, timeout=10, **params):
    q = {"api-version": "2018-02-01"}
    if resource is not None:
        q["resource"] = resource
    q.update(params)
    h = {"Metadata": "true"} if headers is None else headers
    return sess().get(fake.url("imds"), params=q, headers=h, timeout=timeout)


def appsvc(fake, resource=VAULT, header=True, version="2019-08-01", headers=None, **params):
    q = {"api-version": version}
    if resource is not None:
        q["resource"] = resource
    q.update(params)
    if headers is None:
        headers = {}
        if header:
            headers["secret" if version == "2017-09-01" else "X-IDENTITY-HEADER"] = fake.identity_header
    return sess().get(fake.url("appservice"), params=q, headers=headers, timeout=10)


def arc(fake, resource=ARM, auth=None, headers=None, **params):
    q = {"api-version": "2020-06-01", "resource": resource}
    q.update(params)
    h = {"Metadata": "true"} if headers is None else dict(headers)
    if auth is not None:
        h["Authorization"] = "Basic " + auth
    return sess().get(fake.url("arc"), params=q, headers=h, timeout=10)


def realm_of(resp) -> str:
    www = resp.headers["WWW-Authenticate"]
    scheme, _, rest = www.partition(" ")
    assert scheme == "Basic" and rest.startswith("realm=")
    return rest[len("realm="):]


def arc_token(fake, **params):
    r = arc(fake, **params)
    assert r.status_code == 401
    with open(realm_of(r)) as f:
        secret = f.read()
    return arc(fake, auth=secret, **params)


def entra(fake, tenant=None, auth=None, **form):
    body = {"grant_type": "client_credentials", "scope": API + "/.default"}
    body.update(form)
    body = {k: v for k, v in body.items() if v is not None}
    return sess().post(fake.token_url(tenant), data=body, auth=auth, timeout=10)


def secret_token(fake, **kw):
    return entra(fake, client_id=SECRET_APP, client_secret=fake.client_secret(), **kw)


def assert_entra_error(r, status, error, code):
    assert r.status_code == status, r.text
    j = r.json()
    assert j["error"] == error
    assert j["error_codes"] == [code]
    assert j["error_description"].startswith(f"AADSTS{code}: ")
    for k in ("timestamp", "trace_id", "correlation_id"):
        assert j[k]
    assert j["trace_id"] in j["error_description"] and j["correlation_id"] in j["error_description"]
    return j


def with_cert(fake, cert, client_id=CERT_APP):
    fake.register_certificate(client_id, cert["pem"])


def assertion_request(fake, assertion, client_id=CERT_APP, **kw):
    return entra(fake, client_id=client_id, client_assertion_type=JWT_BEARER, client_assertion=assertion, **kw)


# ====================================================================== process, ready file, JWKS

def test_ready_file_and_endpoints(fake):
    info = fake.info
    assert info["pid"] == fake.proc.pid
    base = f"http://127.0.0.1:{info['port']}"
    assert info["base_url"] == base
    assert info["endpoints"]["imds"] == base + "/metadata/identity/oauth2/token"
    assert info["endpoints"]["appservice"] == base + "/msi/token"
    assert info["endpoints"]["arc"] == base + "/arc/metadata/identity/oauth2/token"
    assert info["endpoints"]["entra_token"] == f"{base}/{info['tenant']}/oauth2/v2.0/token"
    assert info["arc_key_dir"] == os.path.join(fake.state_dir, "azcmagent", "tokens")
    assert stat.S_IMODE(os.stat(info["secrets_file"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(fake.state_dir, "signing-key.pem")).st_mode) == 0o600


def test_jwks_and_unknown_path(fake):
    jwks = fake.jwks()
    (k,) = jwks["keys"]
    assert k["kty"] == "RSA" and k["use"] == "sig" and k["kid"] and k["x5t"] and k["x5c"]
    assert len(b64u_decode(k["n"])) == 256
    r = sess().get(fake.base_url + "/nope", timeout=10)
    assert r.status_code == 404


def test_only_loopback_is_bound(fake):
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, timeout=10).stdout
    lines = [l for l in out.splitlines() if f":{fake.port} " in l]
    assert lines and all("127.0.0.1:" in l for l in lines), lines


def test_signing_key_persists_across_restart(test_root):
    d = os.path.join(test_root, "identity-restart")
    with FakeIdentity(d) as f1:
        kid = f1.jwks()["keys"][0]["kid"]
    with FakeIdentity(d) as f2:
        assert f2.jwks()["keys"][0]["kid"] == kid


def test_sigterm_stops_and_temp_state_removed(tmp_path):
    ready = tmp_path / "ready"
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "fakes", "fake_identity.py"),
                          "--port", "0", "--ready-file", str(ready)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert os.path.isdir(info["state_dir"])
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        assert not os.path.exists(info["state_dir"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_exits_when_parent_pid_is_gone(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    ready = tmp_path / "ready"
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "fakes", "fake_identity.py"),
                          "--port", "0", "--ready-file", str(ready), "--state-dir", str(tmp_path / "s"),
                          "--parent-pid", str(sleeper.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists() and p.poll() is None
        sleeper.kill()
        sleeper.wait(timeout=10)
        assert p.wait(timeout=10) == 0
    finally:
        for proc in (sleeper, p):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


# ====================================================================== IMDS

def test_imds_token_shape_strings(fake):
    before = int(time.time())
    r = imds(fake)
    after = int(time.time())
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    j = r.json()
    for k in ("expires_in", "expires_on", "ext_expires_in", "not_before"):
        assert isinstance(j[k], str) and j[k].isdigit(), k
    assert j["token_type"] == "Bearer" and j["resource"] == ARM and j["refresh_token"] == ""
    assert j["client_id"] == fake.identity("system")["client_id"]
    claims = verify_token(j["access_token"], fake.jwks())
    assert int(j["expires_on"]) == claims["exp"] and int(j["not_before"]) == claims["nbf"]
    assert before + 86399 <= claims["exp"] <= after + 86399
    assert 86397 <= int(j["expires_in"]) <= 86399
    assert claims["aud"] == ARM and claims["ver"] == "1.0"
    assert claims["iss"] == f"https://sts.windows.net/{fake.tenant}/" and claims["tid"] == fake.tenant
    assert claims["appid"] == j["client_id"] and claims["oid"] == fake.identity("system")["object_id"]
    assert claims["xms_mirid"] == fake.identity("system")["resource_id"]
    assert claims["fake_source"] == "imds" and claims["fake_identity"] == "system"
    assert claims["idtyp"] == "app"


def test_imds_newer_api_version_has_no_refresh_token(fake):
    j = imds(fake, **{"api-version": "2019-08-01"}).json()
    assert "refresh_token" not in j and j["token_type"] == "Bearer"


def test_imds_numbers_mode(fake):
    fake.settings(number_format={"imds": "numbers"})
    j = imds(fake).json()
    for k in ("expires_in", "expires_on", "ext_expires_in", "not_before"):
        assert isinstance(j[k], int), k
    assert j["expires_on"] == jwt_parts(j["access_token"])[1]["exp"]


@pytest.mark.parametrize("headers", [{}, {"Metadata": "false"}, {"Metadata": ""}])
def test_imds_requires_metadata_header(fake, headers):
    r = imds(fake, headers=headers)
    assert r.status_code == 400
    assert r.json() == {"error": "bad_request_102", "error_description": "Required metadata header not specified"}
    assert fake.stats()["imds"]["tokens"] == 0


def test_imds_rejects_x_forwarded_for(fake):
    r = imds(fake, headers={"Metadata": "true", "X-Forwarded-For": "10.0.0.1"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_imds_missing_resource(fake):
    r = imds(fake, resource=None)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "audience" in r.json()["error_description"]


@pytest.mark.parametrize("resource", [ARM + ".default", "https://x.example/.default", "not a resource", "nohost",
                                      "https://unknown.example"])
def test_imds_invalid_resource(fake, resource):
    fake.unknown_resources(["https://unknown.example"])
    r = imds(fake, resource=resource)
    assert r.status_code == 400, r.text
    j = r.json()
    assert j["error"] == "invalid_resource" and j["error_description"].startswith("AADSTS500011:")


@pytest.mark.parametrize("version,code", [(None, 400), ("2099-01-01", 400)])
def test_imds_api_version(fake, version, code):
    q = {"resource": ARM}
    if version:
        q["api-version"] = version
    r = sess().get(fake.url("imds"), params=q, headers={"Metadata": "true"}, timeout=10)
    assert r.status_code == code and r.json()["error"] == "invalid_request"


@pytest.mark.parametrize("selector,field", [("client_id", "client_id"), ("object_id", "object_id"),
                                            ("msi_res_id", "resource_id")])
@pytest.mark.parametrize("name", ["user1", "user3"])
def test_imds_user_assigned_selectors(fake, selector, field, name):
    ident = fake.identity(name)
    r = imds(fake, **{selector: ident[field].upper() if selector != "msi_res_id" else ident[field]})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["client_id"] == ident["client_id"]
    c = verify_token(j["access_token"], fake.jwks())
    assert c["fake_identity"] == name and c["oid"] == ident["object_id"] and c["appid"] == ident["client_id"]
    assert c["xms_mirid"] == ident["resource_id"]
    assert fake.stats()["imds"]["by_identity"] == {name: 1}


@pytest.mark.parametrize("params", [{"client_id": "99999999-0000-4000-8000-000000000009"},
                                    {"object_id": "99999999-0000-4000-8000-000000000009"},
                                    {"msi_res_id": "/subscriptions/x/resourceGroups/y/providers/Microsoft."
                                                   "ManagedIdentity/userAssignedIdentities/nope"},
                                    {"client_id": ""}])
def test_imds_identity_not_found(fake, params):
    r = imds(fake, **params)
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_request", "error_description": "Identity not found"}


def test_imds_more_than_one_selector(fake):
    u = fake.identity("user1")
    r = imds(fake, client_id=u["client_id"], object_id=u["object_id"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "selector" in r.json()["error_description"]


def test_imds_without_system_identity(fake):
    fake.remove_identities(["system"])
    r = imds(fake)
    assert r.status_code == 400 and "Multiple user assigned identities" in r.json()["error_description"]
    fake.remove_identities(["user2", "user3"])
    r = imds(fake)
    assert r.status_code == 200 and r.json()["client_id"] == fake.identity("user1")["client_id"]
    fake.remove_identities(["user1"])
    assert imds(fake).json()["error_description"] == "Identity not found"


def test_imds_identity_registered_at_runtime(fake):
    added = fake.add_identities([{"name": "user4", "client_id": "a4a4a4a4-0000-4000-8000-000000000004"}])
    assert added[0]["resource_id"].endswith("/userAssignedIdentities/user4")
    r = imds(fake, client_id="a4a4a4a4-0000-4000-8000-000000000004")
    assert r.status_code == 200
    assert jwt_parts(r.json()["access_token"])[1]["fake_identity"] == "user4"
    assert {i["name"] for i in fake.identities()} == {"system", "user1", "user2", "user3", "user4"}


# ====================================================================== App Service

def test_appservice_2019_shape(fake):
    r = appsvc(fake)
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(j["expires_on"], str) and j["expires_on"].isdigit()
    c = verify_token(j["access_token"], fake.jwks())
    assert int(j["expires_on"]) == c["exp"] and c["fake_source"] == "appservice" and c["aud"] == VAULT
    assert c["xms_mirid"].endswith("/Microsoft.Web/sites/app-fake")
    assert j["client_id"] == fake.identity("system")["client_id"]


def test_appservice_numbers_mode(fake):
    fake.settings(number_format={"appservice": "numbers"})
    assert isinstance(appsvc(fake).json()["expires_on"], int)


@pytest.mark.parametrize("headers", [{}, {"X-IDENTITY-HEADER": "wrong"}, {"secret": "<real>"}])
def test_appservice_identity_header_checked(fake, headers):
    headers = {k: (fake.identity_header if v == "<real>" else v) for k, v in headers.items()}
    r = appsvc(fake, headers=headers)
    assert r.status_code == 401
    j = r.json()
    assert j["statusCode"] == 401 and "X-IDENTITY-HEADER" in j["message"] and j["correlationId"]
    fake.settings(appservice_auth_status=400)
    assert appsvc(fake, headers=headers).status_code == 400


def test_appservice_identity_header_configurable(fake):
    fake.settings(identity_header="s3cr3t-from-test")
    assert appsvc(fake).status_code == 401
    assert appsvc(fake, headers={"X-IDENTITY-HEADER": "s3cr3t-from-test"}).status_code == 200
    assert "identity_header" not in fake.get_settings()


@pytest.mark.parametrize("selector,field", [("client_id", "client_id"), ("principal_id", "object_id"),
                                            ("object_id", "object_id"), ("mi_res_id", "resource_id")])
def test_appservice_selectors(fake, selector, field):
    ident = fake.identity("user2")
    r = appsvc(fake, **{selector: ident[field]})
    assert r.status_code == 200, r.text
    assert r.json()["client_id"] == ident["client_id"]
    assert jwt_parts(r.json()["access_token"])[1]["fake_identity"] == "user2"


def test_appservice_errors(fake):
    r = appsvc(fake, client_id="99999999-0000-4000-8000-000000000009")
    assert r.status_code == 400 and r.json()["message"] == "Unable to load the proper Managed Identity."
    u = fake.identity("user1")
    r = appsvc(fake, client_id=u["client_id"], mi_res_id=u["resource_id"])
    assert r.status_code == 400 and r.json()["statusCode"] == 400
    assert appsvc(fake, resource=None).status_code == 400
    assert appsvc(fake, resource=VAULT + "/.default").status_code == 400
    assert appsvc(fake, version="2020-01-01").status_code == 400
    assert appsvc(fake, clientid=u["client_id"]).status_code == 400   # 2017 parameter on 2019


def test_appservice_legacy_2017(fake):
    u = fake.identity("user1")
    r = appsvc(fake, version="2017-09-01", clientid=u["client_id"])
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"access_token", "expires_on", "resource", "token_type"}
    when = datetime.datetime.strptime(j["expires_on"], "%m/%d/%Y %H:%M:%S %z")
    c = jwt_parts(j["access_token"])[1]
    assert int(when.timestamp()) == c["exp"] and c["fake_identity"] == "user1"
    # the 2019 header and parameter are not the 2017 ones
    assert appsvc(fake, version="2017-09-01",
                  headers={"X-IDENTITY-HEADER": fake.identity_header}).status_code == 401
    assert appsvc(fake, version="2017-09-01", client_id=u["client_id"]).status_code == 400


# ====================================================================== Azure Arc

def test_arc_challenge_then_token(fake):
    r = arc(fake)
    assert r.status_code == 401
    path = realm_of(r)
    assert os.path.dirname(path) == fake.info["arc_key_dir"] and path.endswith(".key")
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and 0 < st.st_size <= 4096
    with open(path) as f:
        secret = f.read()
    r = arc(fake, auth=secret)
    assert r.status_code == 200, r.text
    j = r.json()
    assert isinstance(j["expires_on"], str) and j["resource"] == ARM and j["token_type"] == "Bearer"
    c = verify_token(j["access_token"], fake.jwks())
    assert c["fake_source"] == "arc" and c["fake_identity"] == "system"
    assert c["xms_mirid"].endswith("/Microsoft.HybridCompute/machines/arc-fake")
    assert int(j["expires_on"]) == c["exp"]
    # the secret can be reused while it lives (unless arc_single_use)
    assert arc(fake, auth=secret).status_code == 200
    s = fake.stats()["arc_auth"]
    assert s["challenges"] == 1 and s["auth_ok"] == 2


def test_arc_wrong_secret_gets_new_challenge(fake):
    r1 = arc(fake)
    r2 = arc(fake, auth="not-the-secret")
    assert r2.status_code == 401 and r2.json()["error"] == "unauthorized_client"
    assert realm_of(r2) != realm_of(r1) and os.path.exists(realm_of(r2))
    assert arc(fake, auth="").status_code == 401
    assert fake.stats()["arc_auth"]["auth_bad"] >= 1


def test_arc_requires_metadata_and_version(fake):
    r = arc(fake, headers={})
    assert r.status_code == 400 and r.json()["error"] == "bad_request_102"
    r = arc(fake, **{"api-version": "2018-02-01"})
    assert r.status_code == 400
    assert fake.stats()["arc_auth"]["challenges"] == 0


def test_arc_single_use_and_ttl(fake):
    fake.settings(arc_single_use=True)
    r = arc(fake)
    with open(realm_of(r)) as f:
        secret = f.read()
    assert arc(fake, auth=secret).status_code == 200
    assert arc(fake, auth=secret).status_code == 401
    fake.settings(arc_single_use=False, arc_secret_ttl=0)
    r = arc(fake)
    path = realm_of(r)
    with open(path) as f:
        secret = f.read()
    time.sleep(0.05)
    assert arc(fake, auth=secret).status_code == 401
    assert not os.path.exists(path)   # expired key files are removed


def test_arc_user_assigned_not_supported(fake):
    r = arc_token(fake, client_id=fake.identity("user1")["client_id"])
    assert r.status_code == 400 and r.json()["error_description"] == "Identity not found"


def test_arc_reset_removes_key_files(fake):
    paths = [realm_of(arc(fake)) for _ in range(3)]
    assert all(os.path.exists(p) for p in paths)
    assert sorted(fake.arc_info()["files"]) == sorted(paths)
    fake.reset()
    assert not any(os.path.exists(p) for p in paths)


@pytest.mark.parametrize("mode", ["outside", "dotdot", "not_key", "too_big", "relative", "symlink", "prefix"])
def test_arc_hostile_realms(fake, mode):
    keydir = fake.info["arc_key_dir"]
    fake.settings(arc_realm=mode)
    r = arc(fake)
    assert r.status_code == 401
    realm = realm_of(r)
    if mode == "outside":
        assert os.path.isabs(realm) and os.path.dirname(realm) != keydir and realm.endswith(".key")
    elif mode == "dotdot":
        assert realm.startswith(keydir + "/../") and os.path.exists(realm)
        assert os.path.dirname(os.path.realpath(realm)) != keydir
    elif mode == "not_key":
        assert os.path.dirname(realm) == keydir and not realm.endswith(".key")
    elif mode == "too_big":
        assert os.path.dirname(realm) == keydir and os.lstat(realm).st_size == 4097
    elif mode == "relative":
        assert not os.path.isabs(realm) and realm.endswith(".key")
    elif mode == "symlink":
        assert os.path.dirname(realm) == keydir and os.path.islink(realm)
        assert os.path.dirname(os.path.realpath(realm)) != keydir
    elif mode == "prefix":
        assert os.path.dirname(realm) == keydir + "-evil"
    # a client that reads and sends such a file is caught and refused
    target = os.path.join(keydir, os.path.basename(realm)) if mode == "relative" else realm
    with open(target) as f:
        secret = f.read()
    assert arc(fake, auth=secret).status_code == 401
    assert fake.stats()["arc_auth"]["hostile_secret_sent"] == 1
    fake.reset()
    assert not os.path.lexists(target) and not os.path.lexists(realm)
    assert not os.path.exists(keydir + "-evil") and not os.path.exists(os.path.join(fake.state_dir, "arc-outside"))


@pytest.mark.parametrize("mode", ["missing_file", "directory", "fifo", "no_realm", "no_header", "quoted",
                                  "max_size"])
def test_arc_odd_challenges(fake, mode):
    keydir = fake.info["arc_key_dir"]
    fake.settings(arc_realm=mode)
    r = arc(fake)
    assert r.status_code == 401
    www = r.headers.get("WWW-Authenticate")
    if mode == "no_header":
        assert www is None
        return
    if mode == "no_realm":
        assert www == "Basic"
        return
    if mode == "quoted":
        assert www.startswith('Basic realm="') and www.endswith('.key"')
        return
    realm = realm_of(r)
    assert os.path.dirname(realm) == keydir and realm.endswith(".key")
    if mode == "missing_file":
        assert not os.path.lexists(realm)
    elif mode == "directory":
        assert os.path.isdir(realm)
    elif mode == "fifo":
        assert stat.S_ISFIFO(os.lstat(realm).st_mode)
    elif mode == "max_size":
        assert os.lstat(realm).st_size == 4096
        with open(realm) as f:
            assert arc(fake, auth=f.read()).status_code == 200


def test_custom_arc_key_dir(test_root):
    d = os.path.join(test_root, "identity-arcdir")
    keydir = os.path.join(d, "var", "opt", "azcmagent", "tokens")
    with FakeIdentity(d, arc_key_dir=keydir) as f:
        r = arc(f)
        assert os.path.dirname(realm_of(r)) == keydir
        with open(realm_of(r)) as fh:
            assert arc(f, auth=fh.read()).status_code == 200
        arc(f)
        assert len(os.listdir(keydir)) == 2
    assert os.listdir(keydir) == []   # key files are removed when the fake exits


# ====================================================================== Entra: client secret

def test_entra_client_secret(fake):
    r = secret_token(fake)
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert j["token_type"] == "Bearer" and j["expires_in"] == 3599 and j["ext_expires_in"] == 3599
    assert "no-store" in r.headers["Cache-Control"]
    c = verify_token(j["access_token"], fake.jwks())
    assert c["aud"] == API and c["ver"] == "2.0" and c["azp"] == SECRET_APP and c["azpacr"] == "1"
    assert c["iss"] == f"https://login.microsoftonline.com/{fake.tenant}/v2.0" and c["tid"] == fake.tenant
    assert c["oid"] == "c5c5c5c5-0000-4000-8000-0000000000a1" and c["idtyp"] == "app"
    assert c["fake_source"] == "entra" and c["fake_identity"] == "secret-app" and "xms_mirid" not in c
    assert time.time() + 3590 < c["exp"] <= time.time() + 3600


def test_entra_client_secret_basic(fake):
    r = entra(fake, auth=(SECRET_APP, fake.client_secret()))
    assert r.status_code == 200, r.text
    r = entra(fake, auth=(SECRET_APP, "wrong"))
    assert_entra_error(r, 401, "invalid_client", 7000215)


def test_entra_wrong_and_expired_secret(fake):
    r = entra(fake, client_id=SECRET_APP, client_secret="wrong")
    j = assert_entra_error(r, 401, "invalid_client", 7000215)
    assert "Invalid client secret provided" in j["error_description"]
    fake.add_client(client_id=SECRET_APP, expired_secrets=["old-secret"])
    assert_entra_error(entra(fake, client_id=SECRET_APP, client_secret="old-secret"), 401, "invalid_client", 7000222)


def test_entra_registered_client_with_roles(fake):
    cid = fake.add_client(client_id="12121212-0000-4000-8000-000000000012", name="caller", secrets=["pw-1"],
                          roles=["Orders.Read"])
    r = entra(fake, client_id=cid, client_secret="pw-1", scope="https://orders.example/.default")
    assert r.status_code == 200
    c = jwt_parts(r.json()["access_token"])[1]
    assert c["roles"] == ["Orders.Read"] and c["aud"] == "https://orders.example" and c["fake_identity"] == "caller"
    # the trailing-slash resource keeps its slash: exactly one /.default is stripped
    r = entra(fake, client_id=cid, client_secret="pw-1", scope=ARM + "/.default")
    assert jwt_parts(r.json()["access_token"])[1]["aud"] == ARM


def test_entra_unknown_and_disabled_client(fake):
    r = entra(fake, client_id="99999999-0000-4000-8000-000000000009", client_secret="x")
    assert_entra_error(r, 400, "unauthorized_client", 700016)
    fake.add_client(client_id=SECRET_APP, disabled=True)
    assert_entra_error(secret_token(fake), 400, "unauthorized_client", 7000112)


def test_entra_client_in_other_tenant(fake):
    other = "22222222-3333-4444-5555-666666666666"
    fake.add_client(client_id="13131313-0000-4000-8000-000000000013", tenant=other, secrets=["pw"])
    assert entra(fake, tenant=other, client_id="13131313-0000-4000-8000-000000000013",
                 client_secret="pw").status_code == 200
    r = entra(fake, client_id="13131313-0000-4000-8000-000000000013", client_secret="pw")
    assert_entra_error(r, 400, "unauthorized_client", 700016)
    c = jwt_parts(entra(fake, tenant=other, client_id="13131313-0000-4000-8000-000000000013",
                        client_secret="pw").json()["access_token"])[1]
    assert c["tid"] == other and other in c["iss"]


@pytest.mark.parametrize("form,status,error,code", [
    ({"grant_type": None}, 400, "invalid_request", 900144),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ({"scope": None}, 400, "invalid_request", 900144),
    ({"scope": API}, 400, "invalid_scope", 70011),
    ({"scope": API + "/.default " + VAULT + "/.default"}, 400, "invalid_scope", 70011),
    ({"scope": "/.default"}, 400, "invalid_scope", 70011),
    ({"client_secret": None}, 401, "invalid_client", 7000218),
    ({"client_assertion": "x.y.z", "client_assertion_type": JWT_BEARER}, 400, "invalid_request", 9002313),
])
def test_entra_request_errors(fake, form, status, error, code):
    body = {"client_id": SECRET_APP, "client_secret": fake.client_secret()}
    body.update(form)
    assert_entra_error(entra(fake, **body), status, error, code)


def test_entra_missing_client_id_and_duplicates(fake):
    assert_entra_error(entra(fake, client_secret="x"), 400, "invalid_request", 900144)
    body = (f"grant_type=client_credentials&client_id={SECRET_APP}&client_secret={fake.client_secret()}"
            f"&scope=a%2F.default&scope=b%2F.default")
    r = sess().post(fake.token_url(), data=body, headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=10)
    assert_entra_error(r, 400, "invalid_request", 9000411)
    r = sess().post(fake.token_url(), json={"grant_type": "client_credentials"}, timeout=10)
    assert_entra_error(r, 400, "invalid_request", 900144)


def test_entra_unknown_resource(fake):
    fake.unknown_resources(["api://nobody"])
    r = secret_token(fake, scope="api://nobody/.default")
    assert_entra_error(r, 400, "invalid_resource", 500011)


@pytest.mark.parametrize("tenant,status,error,code", [
    ("99999999-0000-4000-8000-000000000009", 400, "invalid_tenant", 90002),
    ("nobody.example.com", 400, "invalid_tenant", 90002),
    ("common", 400, "invalid_request", 50194),
    ("organizations", 400, "invalid_request", 50194),
    ("not_a_tenant!", 400, "invalid_request", 900023),
])
def test_entra_tenant_errors(fake, tenant, status, error, code):
    assert_entra_error(secret_token(fake, tenant=tenant), status, error, code)


def test_entra_get_is_rejected(fake):
    r = sess().get(fake.token_url(), timeout=10)
    assert_entra_error(r, 400, "invalid_request", 900561)


# ====================================================================== Entra: certificate assertions

def test_entra_certificate_ps256_accepted(fake, client_cert):
    with_cert(fake, client_cert)
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url())
    r = assertion_request(fake, a)
    assert r.status_code == 200, r.text
    c = verify_token(r.json()["access_token"], fake.jwks())
    assert c["azp"] == CERT_APP and c["azpacr"] == "2" and c["fake_identity"] == "cert-app"
    entry = fake.requests_log("entra")[-1]
    assert entry["credential"] == "certificate" and entry["form"]["client_assertion"] == "<redacted>"
    assert entry["assertion"]["header"]["x5t#S256"] == thumbprints(client_cert["cert"])["x5t#S256"]
    assert entry["assertion"]["claims"]["aud"] == fake.token_url()


def test_entra_certificate_rs256_x5t_accepted(fake, client_cert):
    with_cert(fake, client_cert)
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url(), alg="RS256")
    assert jwt_parts(a)[0].get("x5t") and "x5t#S256" not in jwt_parts(a)[0]
    assert assertion_request(fake, a).status_code == 200


def test_entra_assertion_aud_may_use_localhost(fake, client_cert):
    with_cert(fake, client_cert)
    aud = f"http://localhost:{fake.port}/{fake.tenant}/oauth2/v2.0/token"
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, aud)
    r = sess().post(aud, data={"grant_type": "client_credentials", "client_id": CERT_APP,
                               "scope": API + "/.default", "client_assertion_type": JWT_BEARER,
                               "client_assertion": a}, timeout=10)
    assert r.status_code == 200, r.text


def test_entra_tampered_assertion_rejected(fake, client_cert):
    with_cert(fake, client_cert)
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url())
    h, c, s = a.split(".")
    claims = json.loads(b64u_decode(c))
    claims["sub"] = claims["iss"] = CERT_APP.upper()   # same client, different bytes
    forged = h + "." + b64u(json.dumps(claims).encode()) + "." + s
    j = assert_entra_error(assertion_request(fake, forged), 401, "invalid_client", 700027)
    assert "invalid signature" in j["error_description"]
    sig = bytearray(b64u_decode(s))
    sig[-1] ^= 1
    assert_entra_error(assertion_request(fake, h + "." + c + "." + b64u(bytes(sig))), 401, "invalid_client", 700027)


def test_entra_pss_salt_must_be_digest_length(fake, client_cert):
    with_cert(fake, client_cert)
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url(), pss_salt=222)
    assert_entra_error(assertion_request(fake, a), 401, "invalid_client", 700027)


def test_entra_unregistered_certificate(fake, client_cert, other_cert):
    with_cert(fake, client_cert)
    a = client_assertion(other_cert["key"], other_cert["cert"], CERT_APP, fake.token_url())
    j = assert_entra_error(assertion_request(fake, a), 401, "invalid_client", 700027)
    assert "not registered" in j["error_description"]
    # right thumbprint, wrong key: signature invalid
    hdr = {"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprints(client_cert["cert"])["x5t#S256"]}
    a = client_assertion(other_cert["key"], other_cert["cert"], CERT_APP, fake.token_url(), header=hdr)
    assert_entra_error(assertion_request(fake, a), 401, "invalid_client", 700027)
    # unsupported algorithm
    hdr = {"alg": "HS256", "typ": "JWT", "x5t#S256": thumbprints(client_cert["cert"])["x5t#S256"]}
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url(), header=hdr)
    assert_entra_error(assertion_request(fake, a), 401, "invalid_client", 700027)


def test_entra_assertion_claim_checks(fake, client_cert):
    with_cert(fake, client_cert)
    key, cert, url = client_cert["key"], client_cert["cert"], fake.token_url()
    bad_aud = client_assertion(key, cert, CERT_APP, "https://login.microsoftonline.com/common/oauth2/v2.0/token")
    assert_entra_error(assertion_request(fake, bad_aud), 401, "invalid_client", 700023)
    bad_sub = client_assertion(key, cert, CERT_APP, url, claims={"sub": SECRET_APP})
    assert_entra_error(assertion_request(fake, bad_sub), 401, "invalid_client", 700021)
    expired = client_assertion(key, cert, CERT_APP, url, now=int(time.time()) - 1500)
    assert_entra_error(assertion_request(fake, expired), 401, "invalid_client", 700024)
    future = client_assertion(key, cert, CERT_APP, url, now=int(time.time()) + 900)
    assert_entra_error(assertion_request(fake, future), 401, "invalid_client", 700024)
    too_long = client_assertion(key, cert, CERT_APP, url, lifetime=601)
    assert_entra_error(assertion_request(fake, too_long), 401, "invalid_client", 700024)
    no_jti = client_assertion(key, cert, CERT_APP, url, claims={"jti": None})
    assert_entra_error(assertion_request(fake, no_jti), 401, "invalid_client", 50027)
    assert_entra_error(assertion_request(fake, "not-a-jwt"), 401, "invalid_client", 50027)
    exactly_ten = client_assertion(key, cert, CERT_APP, url, lifetime=600)
    assert assertion_request(fake, exactly_ten).status_code == 200


def test_entra_assertion_jti_not_reused(fake, client_cert):
    with_cert(fake, client_cert)
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url())
    assert assertion_request(fake, a).status_code == 200
    assert_entra_error(assertion_request(fake, a), 401, "invalid_client", 50012)
    b = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url())
    assert assertion_request(fake, b).status_code == 200


def test_entra_certificate_registered_with_client(fake, client_cert):
    cid = fake.add_client(client_id="14141414-0000-4000-8000-000000000014", certificates=[client_cert["pem"]])
    listed = next(c for c in fake.clients() if c["client_id"] == cid)
    assert listed["certificates"] == [thumbprints(client_cert["cert"])]
    a = client_assertion(client_cert["key"], client_cert["cert"], cid, fake.token_url())
    assert assertion_request(fake, a, client_id=cid).status_code == 200


# ====================================================================== Entra: workload identity federation

def test_workload_identity_federated_token(fake):
    fed = fake.mint_federated()
    h, c = jwt_parts(fed)
    assert c["sub"] == WORKLOAD_SUBJECT and c["aud"] == [FEDERATION_AUDIENCE]
    r = assertion_request(fake, fed, client_id=WORKLOAD_APP)
    assert r.status_code == 200, r.text
    claims = verify_token(r.json()["access_token"], fake.jwks())
    assert claims["azp"] == WORKLOAD_APP and claims["fake_identity"] == "workload-app"
    # the projected token is read again and again: reuse is fine
    assert assertion_request(fake, fed, client_id=WORKLOAD_APP).status_code == 200
    assert fake.requests_log("entra")[-1]["credential"] == "federated"


def test_workload_identity_any_wellformed_jwt(fake):
    # signature is not checked: any well-formed JWT whose sub/aud match a federation
    now = int(time.time())
    claims = {"iss": "https://oidc.example/cluster", "sub": WORKLOAD_SUBJECT, "aud": FEDERATION_AUDIENCE,
              "exp": now + 3600, "iat": now}
    tok = (b64u(json.dumps({"alg": "RS256", "kid": "k"}).encode()) + "." + b64u(json.dumps(claims).encode())
           + "." + b64u(b"sig"))
    assert assertion_request(fake, tok, client_id=WORKLOAD_APP).status_code == 200


@pytest.mark.parametrize("kw,code", [({"sub": "system:serviceaccount:other:sa"}, 70021),
                                     ({"aud": ["api://somethingelse"]}, 70021),
                                     ({"lifetime": -1000}, 700024)])
def test_workload_identity_mismatch(fake, kw, code):
    fed = fake.mint_federated(**kw)
    j = assert_entra_error(assertion_request(fake, fed, client_id=WORKLOAD_APP), 401, "invalid_client", code)
    if code == 70021:
        assert "No matching federated identity record found" in j["error_description"]


def test_workload_identity_issuer_constraint(fake):
    fake.add_federation(WORKLOAD_APP, subject="system:serviceaccount:ns:sa", issuer="https://oidc.example/c1",
                        replace=True)
    ok = fake.mint_federated(sub="system:serviceaccount:ns:sa", iss="https://oidc.example/c1")
    bad = fake.mint_federated(sub="system:serviceaccount:ns:sa", iss="https://oidc.example/c2")
    assert assertion_request(fake, ok, client_id=WORKLOAD_APP).status_code == 200
    assert_entra_error(assertion_request(fake, bad, client_id=WORKLOAD_APP), 401, "invalid_client", 70021)
    # no federation on the secret app at all
    assert_entra_error(assertion_request(fake, ok, client_id=SECRET_APP), 401, "invalid_client", 70021)


# ====================================================================== token lifetimes and versions

def test_short_lived_tokens_everywhere(fake):
    fake.settings(lifetime=30)
    now = time.time()
    j = imds(fake).json()
    assert j["expires_in"] == "30" and abs(int(j["expires_on"]) - (now + 30)) <= 2
    assert int(j["expires_on"]) == jwt_parts(j["access_token"])[1]["exp"]
    j = appsvc(fake).json()
    assert abs(int(j["expires_on"]) - (now + 30)) <= 2
    j = arc_token(fake).json()
    assert j["expires_in"] == "30"
    j = secret_token(fake).json()
    assert j["expires_in"] == 30 and abs(jwt_parts(j["access_token"])[1]["exp"] - (now + 30)) <= 2


def test_lifetime_per_source(fake):
    fake.settings(lifetime={"imds": 120, "entra": 45})
    assert imds(fake).json()["expires_in"] == "120"
    assert secret_token(fake).json()["expires_in"] == 45
    assert arc_token(fake).json()["expires_in"] == "86399"


def test_platform_cache_returns_same_token(fake):
    fake.settings(platform_cache=True)
    a = imds(fake).json()
    time.sleep(1.1)
    b = imds(fake).json()
    assert a["access_token"] == b["access_token"] and a["expires_on"] == b["expires_on"]
    assert int(b["expires_in"]) < int(a["expires_in"])
    c = imds(fake, resource=VAULT).json()
    assert c["access_token"] != a["access_token"]
    fake.settings(platform_cache=False)
    assert imds(fake).json()["access_token"] != a["access_token"]


def test_token_version_override(fake):
    fake.settings(token_versions={ARM: "2.0", API: "1.0"})
    c = jwt_parts(imds(fake).json()["access_token"])[1]
    assert c["ver"] == "2.0" and c["azp"] and c["iss"].endswith("/v2.0")
    c = jwt_parts(secret_token(fake).json()["access_token"])[1]
    assert c["ver"] == "1.0" and c["appid"] == SECRET_APP and c["iss"].startswith("https://sts.windows.net/")


def test_tokens_from_every_source_verify(fake):
    jwks = fake.jwks()
    toks = {"imds": imds(fake).json()["access_token"], "appservice": appsvc(fake).json()["access_token"],
            "arc": arc_token(fake).json()["access_token"], "entra": secret_token(fake).json()["access_token"]}
    for src, tok in toks.items():
        c = verify_token(tok, jwks)
        assert c["fake_source"] == src and c["iat"] <= time.time() <= c["exp"]
        with pytest.raises(InvalidSignature):
            h, p, s = tok.split(".")
            verify_token(h + "." + b64u(json.dumps({**c, "aud": "x"}).encode()) + "." + s, jwks)


# ====================================================================== scripted answers and modes

def test_scripted_statuses_then_normal(fake):
    fake.script("imds", ["404", "410", "429", "429:3", "500", "503", "ok"])
    got = []
    for _ in range(8):
        r = imds(fake)
        got.append((r.status_code, r.headers.get("Retry-After")))
        if r.status_code != 200:
            assert r.headers["Content-Type"].startswith("application/json") and "error" in r.json()
    assert got == [(404, None), (410, None), (429, None), (429, "3"), (500, None), (503, None),
                   (200, None), (200, None)]
    s = fake.stats()["imds"]
    assert s["scripted"] == 6 and s["tokens"] == 2
    assert s["by_status"] == {"404": 1, "410": 1, "429": 2, "500": 1, "503": 1, "200": 2}


def test_scripted_answer_object(fake):
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    fake.script("imds", [{"status": 429, "retry_after": date, "body": {"error": "custom"}}])
    r = imds(fake)
    assert r.status_code == 429 and r.headers["Retry-After"] == date and r.json() == {"error": "custom"}


def test_scripted_answers_per_source_shapes(fake):
    fake.script("all", ["500"])
    r = appsvc(fake)
    assert r.status_code == 500 and r.json()["statusCode"] == 500
    r = secret_token(fake)
    assert_entra_error(r, 500, "server_error", 50000)
    r = arc(fake)
    assert r.status_code == 500 and r.json()["error"] == "unknown"
    assert imds(fake).status_code == 500
    assert imds(fake).status_code == 200
    fake.script("entra", ["429", "503:7"])
    assert_entra_error(secret_token(fake), 429, "temporarily_unavailable", 50196)
    r = secret_token(fake)
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"


def test_script_is_per_source(fake):
    fake.script("appservice", ["503", "503"])
    assert imds(fake).status_code == 200
    assert appsvc(fake).status_code == 503
    fake.script("appservice", ["404"], append=True)
    assert [appsvc(fake).status_code for _ in range(3)] == [503, 404, 200]


@pytest.mark.parametrize("kind", ["garbage", "empty", "html", "truncated", "close"])
def test_broken_bodies(fake, kind):
    fake.script("imds", [kind])
    if kind == "close":
        with pytest.raises(requests.exceptions.ConnectionError):
            imds(fake)
        assert imds(fake).status_code == 200
        return
    if kind == "truncated":
        # Content-Length promises more than is sent, then the connection closes
        try:
            r = imds(fake)
        except requests.exceptions.RequestException:
            pass
        else:
            assert len(r.content) < int(r.headers["Content-Length"])
            with pytest.raises(ValueError):
                json.loads(r.content)
        assert imds(fake).status_code == 200
        return
    r = imds(fake)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)
    if kind == "html":
        assert r.headers["Content-Type"].startswith("text/html")


def test_hang_then_release(fake):
    fake.script("imds", ["hang"])
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        imds(fake, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert fake.stats()["imds"]["in_flight"] == 1   # still hanging inside the fake
    fake.release()
    for _ in range(50):
        if fake.stats()["imds"]["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert fake.stats()["imds"]["in_flight"] == 0
    assert imds(fake).status_code == 200


def test_hang_with_seconds_closes_without_answer(fake):
    fake.script("imds", ["hang:0.3"])
    with pytest.raises(requests.exceptions.ConnectionError):
        imds(fake, timeout=5)


def test_slow_then_normal(fake):
    fake.script("entra", ["slow:0.6"])
    t0 = time.monotonic()
    r = secret_token(fake)
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.55


def test_down_mode_until_cleared(fake):
    fake.mode("imds", "down")
    assert [imds(fake).status_code for _ in range(4)] == [500] * 4
    assert appsvc(fake).status_code == 200
    fake.mode("imds", "ok")
    assert imds(fake).status_code == 200
    fake.mode("all", "503:2")
    r = secret_token(fake)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    # a scripted answer takes precedence over the persistent mode, then the mode resumes
    fake.script("entra", ["ok"])
    assert secret_token(fake).status_code == 200
    assert secret_token(fake).status_code == 503


def test_mode_for_one_resource(fake):
    other = "api://only-this-one"
    fake.mode("imds", "410", resource=other)
    assert imds(fake, resource=other).status_code == 410
    assert imds(fake).status_code == 200            # other resources answer normally
    fake.mode("imds", "down")
    assert imds(fake, resource=other).status_code == 410   # the resource's mode comes first
    fake.mode("imds", None)
    fake.mode("imds", None, resource=other)
    assert imds(fake, resource=other).status_code == 200
    fake.mode("imds", "404", resource=other)
    fake.reset(counters=False, settings=False, registrations=False, arc=False)
    assert imds(fake, resource=other).status_code == 200   # a reset of scripts clears it


def test_down_during_refresh_by_flipping_at_runtime(fake):
    fake.settings(lifetime={"imds": 2})
    first = imds(fake).json()
    fake.mode("imds", "down")
    assert imds(fake).status_code == 500
    fake.mode("imds", None)
    second = imds(fake).json()
    assert second["access_token"] != first["access_token"]


@pytest.mark.parametrize("bad", [["600"], ["200"], ["slow"], ["hang:9999"], ["banana"], [{"retry_after": 1}]])
def test_bad_scripts_rejected(fake, bad):
    r = sess().post(fake.base_url + "/_control/script", json={"source": "imds", "answers": bad}, timeout=10)
    assert r.status_code == 400


@pytest.mark.parametrize("bad", [{"nope": 1}, {"lifetime": 0}, {"number_format": {"entra": "numbers"}},
                                 {"arc_realm": "weird"}, {"throttle": {"nosource": True}},
                                 {"appservice_auth_status": 500}])
def test_bad_settings_rejected(fake, bad):
    r = sess().post(fake.base_url + "/_control/settings", json=bad, timeout=10)
    assert r.status_code == 400


def test_reset_restores_defaults(fake):
    fake.settings(lifetime=30, throttle=False, arc_realm="outside", identity_header="x")
    fake.remove_identities(["system"])
    fake.add_client(client_id=SECRET_APP, disabled=True)
    fake.mode("imds", "down")
    imds(fake)
    fake.reset()
    s = fake.get_settings()
    assert s["lifetime"] == {"imds": 86399, "appservice": 86399, "arc": 86399, "entra": 3599}
    assert s["throttle"] == {"imds": True, "arc": True, "appservice": False, "entra": False}
    assert s["arc_realm"] == "normal"
    assert fake.stats()["total"] == 0 and fake.requests_log() == []
    assert imds(fake).status_code == 200 and appsvc(fake).status_code == 200
    assert secret_token(fake).status_code == 200


# ====================================================================== counters, log, secrets

def test_counters_by_resource_and_identity(fake):
    u1 = fake.identity("user1")
    imds(fake)
    imds(fake, resource=VAULT)
    imds(fake, resource=VAULT, client_id=u1["client_id"])
    imds(fake, client_id="99999999-0000-4000-8000-000000000009")
    secret_token(fake)
    s = fake.stats()
    assert s["imds"]["requests"] == 4 and s["imds"]["tokens"] == 3
    assert s["imds"]["by_resource"] == {ARM: 2, VAULT: 2}
    assert s["imds"]["by_identity"] == {"system": 2, "user1": 1,
                                        "client_id=99999999-0000-4000-8000-000000000009": 1}
    assert s["entra"]["by_resource"] == {API: 1} and s["entra"]["by_identity"] == {"secret-app": 1}
    assert s["total"] == 5


def test_request_log_has_no_secrets(fake, client_cert):
    with_cert(fake, client_cert)
    appsvc(fake)
    appsvc(fake, version="2017-09-01")
    r = arc(fake)
    with open(realm_of(r)) as f:
        arc_secret = f.read()
    arc(fake, auth=arc_secret)
    secret_token(fake)
    entra(fake, auth=(SECRET_APP, fake.client_secret()))
    a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, fake.token_url())
    assertion_request(fake, a)
    log = fake.requests_log()
    text = json.dumps(log)
    for secret in (fake.identity_header, arc_secret, fake.client_secret(), a, a.split(".")[2]):
        assert secret not in text
    by_src = {e["source"] for e in log}
    assert by_src == {"appservice", "arc", "entra"}
    e = [x for x in log if x["source"] == "appservice"][0]
    assert e["headers"]["x-identity-header"] == "<redacted>" and e["secret_ok"] is True
    e = [x for x in log if x["source"] == "arc"][-1]
    assert e["headers"]["authorization"] == "Basic <redacted>" and e["arc_auth"] == "ok" and e["status"] == 200
    assert e["query"] == {"api-version": "2020-06-01", "resource": ARM}
    assert fake.requests_log("arc") == [x for x in log if x["source"] == "arc"]


# ====================================================================== throttling and concurrency

def _parallel(fn, n):
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def test_throttle_more_than_five_in_flight(fake):
    fake.mode("imds", "slow:1")
    rs = _parallel(lambda: imds(fake), 12)
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 5 and codes.count(429) == 7, codes
    for r in rs:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1" and r.json()["error"] == "too_many_requests"
    s = fake.stats()["imds"]
    assert s["max_serving"] == 5 and s["max_in_flight"] >= 6 and s["throttled"] == 7
    assert s["in_flight"] == 0


def test_throttle_more_than_twenty_per_second(fake):
    s = sess()
    codes = [s.get(fake.url("imds"), params={"api-version": "2018-02-01", "resource": ARM},
                   timeout=10).status_code for _ in range(25)]   # no Metadata header: cheap 400s
    assert codes[:20] == [400] * 20
    assert 429 in codes[20:]
    assert imds(fake).status_code == 429
    time.sleep(1.05)
    assert imds(fake).status_code == 200


def test_throttle_can_be_switched_off_and_tuned(fake):
    fake.settings(throttle={"imds": False})
    fake.mode("imds", "slow:0.5")
    rs = _parallel(lambda: imds(fake), 10)
    assert all(r.status_code == 200 for r in rs)
    assert fake.stats()["imds"]["max_in_flight"] >= 6
    fake.reset()
    fake.settings(throttle={"entra": True}, max_in_flight=2, throttle_retry_after=None)
    fake.mode("entra", "slow:0.5")
    rs = _parallel(lambda: secret_token(fake), 4)
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 429, 429]
    assert all("Retry-After" not in r.headers for r in rs)


def test_concurrency_counted_per_source(fake):
    fake.mode("appservice", "slow:0.5")
    rs = _parallel(lambda: appsvc(fake), 8)   # App Service is not throttled by default
    assert all(r.status_code == 200 for r in rs)
    s = fake.stats()
    assert s["appservice"]["max_in_flight"] >= 6 and s["imds"]["max_in_flight"] == 0


# ====================================================================== optional HTTPS listener

def test_tls_listener(test_root, client_cert):
    from tls_certs import make_ca_and_server_cert
    d = os.path.join(test_root, "identity-tls")
    paths = make_ca_and_server_cert(os.path.join(d, "tls"))
    with FakeIdentity(d, tls_cert=paths["cert"], tls_key=paths["key"]) as f:
        assert f.info["tls_base_url"].startswith("https://127.0.0.1:") and f.info["tls_port"] != f.port
        s = sess()
        s.verify = paths["ca"]
        r = s.get(f.url("imds", tls=True), params={"api-version": "2018-02-01", "resource": ARM},
                  headers={"Metadata": "true"}, timeout=10)
        assert r.status_code == 200
        f.register_certificate(CERT_APP, client_cert["pem"])
        url = f.token_url(tls=True)
        a = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, url)
        form = {"grant_type": "client_credentials", "client_id": CERT_APP, "scope": API + "/.default",
                "client_assertion_type": JWT_BEARER, "client_assertion": a}
        assert s.post(url, data=form, timeout=10).status_code == 200
        # an assertion made for the https URL is not good on the http listener, and vice versa
        form["client_assertion"] = client_assertion(client_cert["key"], client_cert["cert"], CERT_APP, url)
        r = sess().post(f.token_url(), data=form, timeout=10)
        assert r.status_code == 401 and r.json()["error_codes"] == [700023]
        # plain HTTP on the TLS port does not get an answer
        with pytest.raises(requests.exceptions.ConnectionError):
            sess().get(f.info["tls_base_url"].replace("https:", "http:") + "/_fake/jwks", timeout=5)
        assert s.get(f.info["tls_base_url"] + "/_fake/jwks", timeout=10).status_code == 200


def test_invalid_settings_change_nothing(fake):
    r = sess().post(fake.base_url + "/_control/settings", json={"lifetime": 30, "arc_realm": "weird"}, timeout=10)
    assert r.status_code == 400
    assert fake.get_settings()["lifetime"]["imds"] == 86399
