"""`make demo` (t/demo.py): what it prints works as it says (item 6 of the operability issue):
the inbound answers, a proxied route whose backend shows the claims of the attached token,
a route guarded by a Lua rule, and the status page."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import requests

from httpd import sanitize_enabled, sanitizer_env

HERE = os.path.dirname(os.path.abspath(__file__))


def _port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    pytest.fail("no two free neighbouring ports")


@pytest.fixture(scope="module")
def demo(test_root, module_so):
    port = _port_pair()
    run = os.path.join(test_root, "demo")
    env = {**os.environ, "DEMO_PORT": str(port), "DEMO_RUN": run, "ENTRA_MODULE": module_so}
    san = os.path.join(test_root, "demo-sanitizer")
    if sanitize_enabled():
        os.makedirs(san, exist_ok=True)
        os.chmod(san, 0o777)
        env["DEMO_APACHE_ENV"] = json.dumps(sanitizer_env(san))
    p = subprocess.run([sys.executable, os.path.join(HERE, "demo.py"), "start"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=os.path.dirname(HERE))
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        yield {"port": port, "out": p.stdout, "run": run}
    finally:
        subprocess.run([sys.executable, os.path.join(HERE, "demo.py"), "stop"], env=env,
                       capture_output=True, text=True, timeout=60)
        reports = os.listdir(san) if os.path.isdir(san) else []
        assert not reports, f"sanitizer reports from the demo's apache2 in {san}: {reports}"


def _get(url, **kw):
    with requests.Session() as s:
        s.trust_env = False
        return s.request(kw.pop("method", "GET"), url, timeout=30, **kw)


def test_demo_prints_what_it_shows(demo):
    out, port = demo["out"], demo["port"]
    shown = re.findall(r"^# (.*) \(now: (\d+)\)$", out, re.M)
    assert [code for _, code in shown] == ["200", "401", "401", "403", "200", "200", "403"], out
    for what, code in shown:
        assert what.startswith(code), (what, code)
    assert any("Lua rule" in w for w, _ in shown) and any("attached" in w for w, _ in shown)
    assert f"Status page: http://127.0.0.1:{port}/entra-status" in out


def test_demo_backend_shows_the_attached_token(demo):
    r = _get(f"http://127.0.0.1:{demo['port']}/inventory/items",
             headers={"Authorization": "Bearer client-sent-this"})
    assert r.status_code == 200, r.text
    body = r.json()
    claims = body["attached_token_claims"]
    assert claims["aud"] == "api://inventory-api" and claims["fake_source"] == "imds"
    assert "client-sent-this" not in r.text


def test_demo_lua_route_and_status_page(demo):
    with open(os.path.join(demo["run"], "reader.jwt")) as f:
        tok = f.read().strip()
    base = f"http://127.0.0.1:{demo['port']}"
    h = {"Authorization": f"Bearer {tok}"}
    assert _get(base + "/lua-orders/7", headers=h).status_code == 200
    r = _get(base + "/lua-orders/7", headers=h, method="POST")
    assert r.status_code == 403 and "insufficient_scope" in r.headers["WWW-Authenticate"]
    j = _get(base + "/entra-status?format=json").json()
    assert j["token_fetches"]["demo"]["ok"] >= 1
    assert [t["identity"] for t in j["outbound_tokens"]] == ["demo"]
    assert j["authz"]["denied"] >= 2 and j["authn"]["valid"] >= 3
    assert tok not in json.dumps(j)
