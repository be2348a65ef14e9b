"""A graceful restart (what Debian's logrotate does every night with `apache2ctl graceful`)
keeps what the server knew: keys in their stale window, outbound tokens and fetch backoff,
even when the identity provider is unreachable at that moment."""

import re
import time
import uuid

import pytest

import conformance
from checks import expect_ok
from identity_client import SECRET_APP
from outbound import backend_headers, bearer, get, oenv, route, wait_until, www_file  # noqa: F401
from stack import finish_stack
from test_inbound_keys import fresh_get, wait_quiet

RESOURCE = "api://orders-api"


@pytest.fixture
def keys_stack(make_stack):
    stacks = []

    def _start(prepare=None):
        s = make_stack("graceful", prepare=prepare, locations=lambda a: conformance.location("/any"),
                       files=["/any"])
        stacks.append(s)
        return s

    yield _start
    for s in stacks:
        finish_stack(s)


def _after(text: str, mark: int) -> str:
    return text[mark:]


def test_keys_survive_graceful_while_idp_unreachable(keys_stack):
    s = keys_stack()
    expect_ok(s.get("/any/ok.txt", s.token()))
    # The cold fetch, then the upkeep's v1 follow-up (at its next round, within 5 s).
    wait_until(lambda: s.fake.stats()["jwks_v1"].get(conformance.TENANT), 15, what="v1 keys")
    before = wait_quiet(s.fake)
    oid = str(uuid.uuid4())
    seen = s.token(oid=oid)
    expect_ok(s.get("/any/ok.txt", seen))
    expect_ok(s.get("/any/ok.txt", seen))
    s.fake.set_mode("all", "503")
    mark = len(s.httpd.error_log_text())
    s.httpd.graceful()
    for _ in range(10):
        expect_ok(fresh_get(s.url("/any/ok.txt"), s.token()))
    # Pure caches start empty: the verdict of a token seen before is computed again.
    expect_ok(fresh_get(s.url("/any/ok.txt"), seen))
    lines = [x for x in _after(s.httpd.error_log_text(), mark).splitlines() if "ENTRA0207" in x and oid in x]
    assert lines and "(cached)" not in lines[0], lines
    time.sleep(6)                           # one upkeep round of the new children
    expect_ok(fresh_get(s.url("/any/ok.txt"), s.token()))
    after = s.fake.stats()
    assert after["total"] == before["total"], "no fetch after the graceful restart"
    log = _after(s.httpd.error_log_text(), mark)
    assert "ENTRA0505" in log, log[-2000:]
    assert not re.search(r"ENTRA010[45]", log), log[-2000:]


def test_graceful_with_another_cache_size_starts_afresh(keys_stack):
    s = keys_stack()
    expect_ok(s.get("/any/ok.txt", s.token()))
    wait_until(lambda: s.fake.stats()["jwks_v1"].get(conformance.TENANT), 15, what="v1 keys")
    n = wait_quiet(s.fake)["jwks_v2"][conformance.TENANT]
    s.httpd.server_conf += f"\nEntraCache shmcb:{s.httpd.workdir}/run/entra-other(2097152)\n"
    s.httpd.write_config()
    mark = len(s.httpd.error_log_text())
    s.httpd.graceful()
    expect_ok(fresh_get(s.url("/any/ok.txt"), s.token()))
    assert s.fake.stats()["jwks_v2"][conformance.TENANT] == n + 1
    assert "ENTRA0505" not in _after(s.httpd.error_log_text(), mark)


def test_key_backoff_survives_graceful(keys_stack):
    s = keys_stack(prepare=lambda st: st.fake.set_mode("discovery_v2", "500"))
    attempt = re.compile(r"ENTRA0105: key fetch failed \(attempt (\d+)\)")
    # Attempt 1 at start, attempt 2 five seconds later; then 10 s of backoff.
    wait_until(lambda: "2" in attempt.findall(s.httpd.error_log_text()), 20, what="second attempt")
    t2 = time.monotonic()
    n2 = s.fake.stats()["discovery_v2"].get(conformance.TENANT, 0)
    s.httpd.graceful()
    # Requests in the backoff window are answered from the backoff state, without a fetch.
    for _ in range(3):
        assert fresh_get(s.url("/any/ok.txt"), s.token()).status_code == 503
    while time.monotonic() - t2 < 8:
        time.sleep(0.5)
    assert s.fake.stats()["discovery_v2"].get(conformance.TENANT, 0) == n2, \
        "the new generation fetched during the backoff of the old one"
    # The next attempt counts on from the old generation's.
    wait_until(lambda: "3" in attempt.findall(s.httpd.error_log_text()), 20, what="third attempt")
    assert "1" not in attempt.findall(s.httpd.error_log_text())[2:]


# ------------------------------------------------------------------ outbound tokens

def test_outbound_token_survives_graceful_while_identity_endpoint_fails(oenv):
    fake = oenv.fake()
    server = f"EntraIdentity mi managed source=imds endpoint={fake.url('imds')}"
    h = oenv.httpd(server, route("mi", oenv.backend, f"EntraProxyToken {RESOURCE} identity=mi")).start()
    tok = bearer(get(h.url("/mi/echo")))
    n = fake.stats()["imds"]["requests"]
    fake.mode("imds", "500")
    h.graceful()
    for _ in range(5):
        assert bearer(get(h.url("/mi/echo"))) == tok
    time.sleep(6)
    assert bearer(get(h.url("/mi/echo"))) == tok
    assert fake.stats()["imds"]["requests"] == n, "no token fetch after the graceful restart"
    fake.mode("imds", None)
    oenv.stop_httpd(h)


def test_outbound_backoff_survives_graceful(oenv):
    fake = oenv.fake()
    fake.mode("entra", "503:60")            # Entra asks for 60 s; the module never retries then
    secret_file = www_file(oenv.path("graceful.secret"), fake.client_secret() + "\n")
    server = (f"EntraIdentity app secret tenant={fake.tenant} client_id={SECRET_APP} "
              f"secret_file={secret_file} authority={fake.url('entra_authority')}")
    h = oenv.httpd(server, route("app", oenv.backend, f"EntraProxyToken {RESOURCE}/.default identity=app"))
    h.start()
    wait_until(lambda: fake.stats()["entra"]["requests"] >= 1, 15, what="the warm-up fetch")
    r = get(h.url("/app/echo"))
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 30, (r.status_code, r.headers)
    n = fake.stats()["entra"]["requests"]
    h.graceful()
    r = get(h.url("/app/echo"))
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 20, (r.status_code, r.headers)
    time.sleep(6)
    assert get(h.url("/app/echo")).status_code == 503
    assert fake.stats()["entra"]["requests"] == n, "the backoff Entra asked for was forgotten"
    fake.mode("entra", None)
    oenv.stop_httpd(h)
