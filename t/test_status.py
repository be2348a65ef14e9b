"""The status page (SetHandler entra-status) in HTML, JSON and Prometheus formats, and the
"Entra" section of mod_status: counters exact over a known mix of requests spread over two
children and across a graceful restart, key sources and outbound tokens as they are, and
no token or key material anywhere."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

import conformance
import entra_tokens as et
from checks import expect_insufficient_scope, expect_invalid_request, expect_invalid_token, \
    expect_no_token, expect_ok
from outbound import bearer, managed, oenv  # noqa: F401
from stack import finish_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUD_OUT = "api://status-backend"
MODS = "/usr/lib/apache2/modules"


def _server_conf(fake, dead_port):
    def conf(authority: str) -> str:
        return conformance.server_conf(authority, extra=(
            # Two children after a graceful restart too (10 threads each): httpd only starts
            # the second new child when fewer than this many threads are idle.
            "MinSpareThreads 15\n"
            f"LoadModule status_module {MODS}/mod_status.so\n"
            + managed("sys", fake) + "\n"
            "<Location /entra-status>\n  SetHandler entra-status\n  Require local\n</Location>\n"
            "<Location /server-status>\n  SetHandler server-status\n  Require local\n</Location>\n"))
    return conf


def _locations(backend, dead_port):
    def locs(authority: str) -> str:
        return "\n".join([
            conformance.location("/a"),
            conformance.location("/role", require="Require entra-role Orders.Read"),
            # Keys that cannot be had: a metadata URL on a port nobody listens on.
            conformance.location("/nokeys", tenant_lines=(
                f"EntraMetadataURL http://127.0.0.1:{dead_port}/nokeys/.well-known/openid-configuration")),
            f"<Location /out/>\n  ProxyPass {backend.url('out')}\n"
            f"  EntraProxyToken {AUD_OUT} identity=sys\n</Location>\n",
        ])
    return locs


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def st(make_stack, oenv):  # noqa: F811
    fake = oenv.fake()
    dead = _free_port()
    s = make_stack("status", server_conf=_server_conf(fake, dead),
                   locations=_locations(oenv.backend, dead), files=["/a", "/role", "/nokeys"])
    s.identity = fake
    # Counters start at zero when httpd starts.
    j = status_json(s)
    assert not any(j["authn"].values()) and not any(j["authz"].values()), j
    assert not any(j["rejections"].values()) and j["verdict_cache"]["hits"] == 0
    yield s
    finish_stack(s)


def _conn_get(stack, path, token=None, headers=None, test_id="", raw_auth=None):
    h = {"Connection": "close", "X-Test-Id": test_id, **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if raw_auth is not None:
        h["Authorization"] = raw_auth
    with requests.Session() as sess:
        sess.trust_env = False
        return sess.get(stack.url(path), headers=h, timeout=30)


def status_json(stack) -> dict:
    r = _conn_get(stack, "/entra-status?format=json")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (-?[0-9.e+]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict, dict]:
    """{(name, frozenset(labels)): value} and {name: type}; fails on any malformed line."""
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert typ in ("counter", "gauge", "histogram"), line
            types[name] = typ
            continue
        m = PROM_LINE.match(line)
        assert m, f"not exposition format: {line!r}"
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        key = (m.group(1), labels)
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(m.group(4))
    assert set(types) <= helps, "every TYPE has a HELP"
    return samples, types


def prom(stack):
    r = _conn_get(stack, "/entra-status?format=prometheus")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_prometheus(r.text)


def pv(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def _pids(stack, test_id):
    return set(re.findall(rf"pid=(\d+) test={re.escape(test_id)}$", stack.httpd.access_log_text(), re.M))


def _batch(stack, test_id):
    """The known mix; returns nothing, asserts each answer."""
    good = stack.token()
    no_role = stack.token(roles=["Other.Role"])
    for _ in range(3):
        expect_ok(_conn_get(stack, "/a/ok.txt", good, test_id=test_id))
    expect_no_token(_conn_get(stack, "/a/ok.txt", test_id=test_id))
    expect_invalid_token(_conn_get(stack, "/a/ok.txt", stack.token(exp=int(time.time()) - 3600,
                                                                   iat=int(time.time()) - 7200,
                                                                   nbf=int(time.time()) - 7200),
                                   test_id=test_id))
    expect_invalid_token(_conn_get(stack, "/a/ok.txt", stack.token(aud="api://someone-else"),
                                   test_id=test_id))
    other = stack.token()
    h, c, _ = good.split(".")
    expect_invalid_token(_conn_get(stack, "/a/ok.txt", f"{h}.{c}.{other.split('.')[2]}", test_id=test_id))
    expect_invalid_request(_conn_get(stack, "/a/ok.txt", raw_auth=f"Bearer {good}, Bearer {other}",
                                     test_id=test_id))
    expect_invalid_token(_conn_get(stack, "/a/ok.txt", "not-a-jwt", test_id=test_id))
    expect_invalid_request(_conn_get(stack, "/a/ok.txt", raw_auth="Bearer abc def", test_id=test_id))
    expect_invalid_token(_conn_get(stack, "/a/ok.txt", stack.token(oid=et.DROP), test_id=test_id))
    for _ in range(2):
        expect_insufficient_scope(_conn_get(stack, "/role/ok.txt", no_role, test_id=test_id))
    expect_ok(_conn_get(stack, "/role/ok.txt", good, test_id=test_id))
    r = _conn_get(stack, "/nokeys/ok.txt", good, test_id=test_id)
    assert r.status_code == 503, r.status_code


MIX = {
    ("authn", "valid"): 6, ("authn", "invalid"): 7, ("authn", "missing"): 1, ("authn", "error"): 1,
    ("authz", "granted"): 4, ("authz", "denied"): 2,
    ("rejections", "missing_token"): 1, ("rejections", "expired"): 1,
    ("rejections", "bad_audience"): 1, ("rejections", "bad_signature"): 1,
    ("rejections", "multiple_tokens"): 1, ("rejections", "malformed"): 1,
    ("rejections", "no_keys"): 1, ("rejections", "malformed_header"): 1,
    ("rejections", "missing_user_claim"): 1,
}
VALIDATIONS = 12  # tokens that reached the verifier: 6 valid, 5 invalid, 1 without keys


def _flat(j):
    out = {}
    for grp in ("authn", "authz", "rejections"):
        for k, v in j[grp].items():
            out[(grp, k)] = v
    return out


def _spread_batches(stack, tag):
    """Batches of the mix until two children have served them (at most 10); returns the count.
    After a graceful restart httpd starts the second new child up to a second or two later."""
    test_id = f"{tag}-{time.monotonic_ns()}"
    for n in range(1, 11):
        _batch(stack, test_id)
        if len(_pids(stack, test_id)) >= 2:
            return n
        time.sleep(0.5)
    pytest.fail(f"10 batches on new connections were all served by one child: {_pids(stack, test_id)}")


def _check_deltas(before, after, n):
    b, a = _flat(before), _flat(after)
    for key in a:
        assert a[key] - b[key] == MIX.get(key, 0) * n, (key, b[key], a[key], n)
    vb, va = before["verdict_cache"], after["verdict_cache"]
    assert (va["hits"] + va["misses"]) - (vb["hits"] + vb["misses"]) == VALIDATIONS * n
    assert va["hits"] > vb["hits"], "the repeated token was answered from the caches"
    db, da = before["validation_duration"], after["validation_duration"]
    assert da["count"] - db["count"] == VALIDATIONS * n
    assert da["buckets"]["+Inf"] - db["buckets"]["+Inf"] == VALIDATIONS * n


def test_json_counts_a_known_mix_exactly_over_two_children(st):
    before = status_json(st)
    n = _spread_batches(st, "mix")
    after = status_json(st)
    _check_deltas(before, after, n)


def test_prometheus_matches_json_and_the_mix(st):
    s0, types = prom(st)
    n = _spread_batches(st, "prom")
    s1, _ = prom(st)
    j = status_json(st)
    for name, typ in (("entra_authn_total", "counter"), ("entra_authz_total", "counter"),
                      ("entra_rejections_total", "counter"), ("entra_key_fetches_total", "counter"),
                      ("entra_keys_age_seconds", "gauge"), ("entra_token_fetches_total", "counter"),
                      ("entra_token_expires_in_seconds", "gauge"),
                      ("entra_verdict_cache_total", "counter"),
                      ("entra_validation_duration_seconds", "histogram")):
        assert types.get(name) == typ, name
    for (grp, k), v in MIX.items():
        metric = {"authn": ("entra_authn_total", "result"), "authz": ("entra_authz_total", "result"),
                  "rejections": ("entra_rejections_total", "reason")}[grp]
        d = pv(s1, metric[0], **{metric[1]: k}) - pv(s0, metric[0], **{metric[1]: k})
        assert d == v * n, (grp, k, d, n)
    # Nothing was requested between the last scrape and the JSON: both say the same.
    for res in ("valid", "invalid", "missing", "error"):
        assert pv(s1, "entra_authn_total", result=res) == j["authn"][res]
    assert pv(s1, "entra_verdict_cache_total", result="hit") == j["verdict_cache"]["hits"]
    assert pv(s1, "entra_verdict_cache_entries") == j["verdict_cache"]["entries"] == 8192
    assert pv(s1, "entra_key_fetches_total", outcome="ok") == j["key_fetches"]["ok"] >= 1
    assert pv(s1, "entra_key_fetches_total", outcome="error") == j["key_fetches"]["error"] >= 1
    # The histogram is cumulative and ends in +Inf == count.
    buckets = sorted(((float(dict(lb)["le"]), v) for (nm, lb), v in s1.items()
                      if nm == "entra_validation_duration_seconds_bucket"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][0] == float("inf")
    les = [dict(lb)["le"] for (nm, lb) in s1 if nm == "entra_validation_duration_seconds_bucket"]
    assert all(re.fullmatch(r"\d+(\.\d+)?(e-\d+)?|\+Inf", le) for le in les), les
    assert set(les) == set(j["validation_duration"]["buckets"])
    assert buckets[-1][1] == pv(s1, "entra_validation_duration_seconds_count") == \
        j["validation_duration"]["count"]
    assert pv(s1, "entra_validation_duration_seconds_sum") > 0


def test_key_sources_and_outbound_tokens(st):
    expect_ok(_conn_get(st, "/a/ok.txt", st.token()))
    r = _conn_get(st, "/out/echo")
    assert r.status_code == 200, r.text
    tok = bearer(r)
    j = status_json(st)
    good = [k for k in j["key_sources"] if k["issuer"] == et.v2_issuer(et.TENANT)]
    assert len(good) == 1, j["key_sources"]
    k = good[0]
    published = {key.kid for key in st.fake.store.published_keys()}
    assert st.key("rsa1").kid in k["kids"] and set(k["kids"]) <= published, (k["kids"], published)
    assert 0 <= k["age_seconds"] < 600 and k["next_refresh"] > j["time"]
    assert k["last_error"] is None
    dead = [k for k in j["key_sources"] if "/nokeys/" in k["metadata"]]
    assert len(dead) == 1 and dead[0]["issuer"] is None and dead[0]["kids"] == []
    assert "Connection refused" in dead[0]["last_error"] or "connect" in dead[0]["last_error"].lower(), dead
    (t,) = j["outbound_tokens"]
    assert (t["identity"], t["resource"], t["source"]) == ("sys", AUD_OUT, "imds")
    assert 3000 < t["expires_in_seconds"] <= 86400 and t["failures"] == 0
    assert t["last_fetch"] <= j["time"]
    assert j["token_fetches"]["sys"]["ok"] == 1 and j["token_fetches"]["sys"]["error"] == 0
    samples, _ = prom(st)
    assert pv(samples, "entra_token_fetches_total", identity="sys", outcome="ok") == 1
    exp_in = pv(samples, "entra_token_expires_in_seconds", identity="sys", resource=AUD_OUT)
    assert abs(exp_in - t["expires_in_seconds"]) <= 5
    assert 0 <= pv(samples, "entra_keys_age_seconds", issuer=et.v2_issuer(et.TENANT)) < 600
    # No token, assertion or key material in any format.
    for fmt in ("json", "prometheus", "html"):
        text = _conn_get(st, f"/entra-status?format={fmt}").text
        assert tok not in text and tok.split(".")[2] not in text
        assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text), fmt
        for key in st.fake.store.published_keys():
            material = key.jwk().get("n") or key.jwk().get("x")
            assert material[:24] not in text, (fmt, key.kid)


def test_html_escapes_and_refuses_other_formats(st):
    r = _conn_get(st, "/entra-status")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    # Self-contained: no scripts, nothing loaded from elsewhere.
    low = r.text.lower()
    assert "<script" not in low and "<link" not in low and "src=" not in low and "@import" not in low
    assert "url(" not in low
    assert _conn_get(st, "/entra-status?format=xml").status_code == 400
    with requests.Session() as sess:
        sess.trust_env = False
        assert sess.post(st.url("/entra-status"), timeout=30).status_code == 405


def test_server_status_has_an_entra_section(st):
    j = status_json(st)
    r = _conn_get(st, "/server-status?auto")
    assert r.status_code == 200
    lines = dict(line.split(": ", 1) for line in r.text.splitlines() if line.startswith("Entra"))
    for name in ("EntraAuthnValid", "EntraAuthnInvalid", "EntraAuthnMissing", "EntraAuthnError",
                 "EntraAuthzGranted", "EntraAuthzDenied", "EntraVerdictHits", "EntraVerdictMisses",
                 "EntraKeyFetchesOK", "EntraKeyFetchesError", "EntraTokenFetchesOK",
                 "EntraTokenFetchesError", "EntraKeySources", "EntraKeysOldestAge"):
        assert re.fullmatch(r"\d+", lines.get(name, "")), (name, r.text)
    assert int(lines["EntraAuthnValid"]) == j["authn"]["valid"]
    assert int(lines["EntraAuthzDenied"]) == j["authz"]["denied"]
    assert int(lines["EntraKeySources"]) == len(j["key_sources"])
    html = _conn_get(st, "/server-status").text
    assert "<h2>Entra</h2>" in html and f"{j['authn']['valid']} valid" in html


def _graceful(stack):
    h = stack.httpd
    with open(os.path.join(h.workdir, "run", "httpd.pid")) as f:
        pid = int(f.read().strip())
    marks = h.error_log_text().count("resuming normal operations")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if h.error_log_text().count("resuming normal operations") > marks:
            return
        time.sleep(0.1)
    pytest.fail("no graceful restart within 30 s")


def test_counters_survive_graceful_restarts(st):
    before = status_json(st)
    n = 0
    for _ in range(2):
        n += _spread_batches(st, "graceful")
        _graceful(st)
    n += _spread_batches(st, "graceful")
    after = status_json(st)
    _check_deltas(before, after, n)


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(args, url, timeout=120):
    exe = _chromium()
    with tempfile.TemporaryDirectory() as prof:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={prof}", *args, url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    return p


def test_html_in_a_real_browser(st):
    if not _chromium():
        pytest.fail("chromium is needed: apt-get install -y chromium")
    expect_ok(_conn_get(st, "/a/ok.txt", st.token()))
    _conn_get(st, "/out/echo")
    j = status_json(st)
    p = _browser(["--dump-dom"], st.url("/entra-status"))
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    assert "<h1>mod_entra status</h1>" in dom
    assert et.v2_issuer(et.TENANT) in dom and st.key("rsa1").kid in dom
    assert "sys" in dom and AUD_OUT in dom and "imds" in dom
    # Counters as the browser rendered them, as the JSON says (nothing ran in between).
    for name, val in (("valid", j["authn"]["valid"]), ("invalid", j["authn"]["invalid"]),
                      ("missing", j["authn"]["missing"]), ("granted", j["authz"]["granted"]),
                      ("denied", j["authz"]["denied"])):
        m = re.search(rf'id="{name}"[^>]*>(\d+)<', dom)
        assert m and int(m.group(1)) == val, (name, val, m and m.group(0))
    for reason, count in j["rejections"].items():
        if count:
            assert f"<code>{reason}</code>" in dom
    if os.environ.get("ENTRA_STATUS_SCREENSHOT"):
        out = os.environ["ENTRA_STATUS_SCREENSHOT"]
        p = _browser([f"--screenshot={out}", "--window-size=1200,1150", "--hide-scrollbars"],
                     st.url("/entra-status"))
        assert p.returncode == 0 and os.path.getsize(out) > 10000, p.stderr[-2000:]
