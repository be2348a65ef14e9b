"""Graceful restarts under load: three `apachectl -k graceful` (SIGUSR1 to the parent) while a
constant load runs cause no failed request and no non-2xx answer, on an inbound-authenticated
route (AuthType Entra, a valid bearer token) and on a proxied route that attaches a
managed-identity token (EntraProxyToken), and no child crashes.

Client: `ab` (Debian apache2-utils), two processes at once, one per route, 4 concurrent
requests each (8 in all), for LOAD_SECONDS. Without keep-alive (no `-k`): every request opens a
new connection, which is what an operator cares about -- whether httpd accepts and answers
every request across the restarts. With keep-alive, a graceful restart closes the idle
keep-alive connections of the old generation, and a client that sends its next request on one
at that moment sees a reset that httpd never saw as a request (a client-side race that HTTP
clients must handle by retrying, RFC 9112 9.3.1); counting it would measure the client.
`-r` makes ab count a receive error instead of stopping, `-l` accepts the echo backend's
answers of varying length (a length difference is not a failure), `-s` bounds every request.
"""

import re
import shutil
import subprocess
import threading
import time

import pytest

import checks
import conformance
from outbound import bearer, get, managed, oenv, route, verify_token  # noqa: F401
from stack import finish_stack

AB = shutil.which("ab")
LOAD_SECONDS = 12
GRACEFUL_AT = (3, 6, 9)        # seconds into the load
CONCURRENCY = 4                # per ab process; two processes
AUD = "api://graceful-load"
MARKER = "resuming normal operations"

_AB_FIELDS = {"complete": r"Complete requests:\s+(\d+)", "failed": r"Failed requests:\s+(\d+)",
              "non2xx": r"Non-2xx responses:\s+(\d+)", "write_errors": r"Write errors:\s+(\d+)"}


def parse_ab(out: str) -> dict:
    got = {}
    for k, rx in _AB_FIELDS.items():
        m = re.search(rx, out)
        got[k] = int(m.group(1)) if m else 0   # ab prints Non-2xx only when there were any
    assert re.search(_AB_FIELDS["complete"], out), f"ab gave no summary:\n{out[-2000:]}"
    return got


def run_ab(url: str, headers: dict, out: dict, key: str):
    cmd = [AB, "-q", "-r", "-l", "-s", "20", "-t", str(LOAD_SECONDS), "-n", "1000000",
           "-c", str(CONCURRENCY)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    p = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=LOAD_SECONDS + 60)
    out[key] = (p.returncode, p.stdout + p.stderr)


@pytest.mark.skipif(AB is None, reason="ab (Debian apache2-utils) is not installed")
def test_three_gracefuls_under_load_fail_no_request(make_stack, oenv):
    ident = oenv.fake()
    s = make_stack("graceful-load", files=["/any"],
                   server_conf=lambda a: conformance.server_conf(a, extra=managed("mi", ident) + "\n"),
                   locations=lambda a: conformance.location("/any")
                   + route("api", oenv.backend, f"EntraProxyToken {AUD} identity=mi"))
    try:
        h = s.httpd
        token = s.token()
        # Both routes work before the load: the token is cached, the inbound keys are loaded.
        assert verify_token(bearer(get(h.url("/api/echo"))), ident.jwks())["aud"] == AUD
        assert get(h.url("/any/ok.txt"), {"Authorization": f"Bearer {token}"}).status_code == 200
        assert get(h.url("/any/ok.txt")).status_code == 401
        h.session.close()
        mark = h.error_log_text().count(MARKER)

        results: dict = {}
        load = [threading.Thread(target=run_ab, args=(h.url("/any/ok.txt"), {"Authorization": f"Bearer {token}"},
                                                      results, "inbound")),
                threading.Thread(target=run_ab, args=(h.url("/api/echo"), {}, results, "proxied"))]
        t0 = time.monotonic()
        for t in load:
            t.start()
        sent, done = [], []
        for at in GRACEFUL_AT:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            sent.append(round(time.monotonic() - t0, 1))
            h.graceful(timeout=20)          # SIGUSR1, then waits until the new generation answers
            h.session.close()
            done.append(round(time.monotonic() - t0, 1))
        for t in load:
            t.join(timeout=LOAD_SECONDS + 90)
            assert not t.is_alive(), "ab did not finish"

        figures = {k: parse_ab(v[1]) for k, v in results.items()}
        print(f"\n[graceful load] gracefuls sent at {sent} s (new generation answering at {done} s) of "
              f"{LOAD_SECONDS} s; ab -c {CONCURRENCY} x2, "
              f"no keep-alive: {figures}")
        for k, (rc, text) in results.items():
            f = figures[k]
            assert rc == 0, f"ab ({k}) exited {rc}:\n{text[-2000:]}"
            assert f["complete"] > 0, f"{k}: no request completed"
            assert f["failed"] == 0 and f["non2xx"] == 0 and f["write_errors"] == 0, f"{k}: {f}\n{text[-1500:]}"
        assert all(a <= LOAD_SECONDS - 1 for a in sent), f"a graceful was sent after the load: {sent}"
        log = h.error_log_text()
        assert log.count(MARKER) - mark == len(GRACEFUL_AT), "not every graceful restart happened"
        assert not checks.child_crashes(log), checks.child_crashes(log)
        # The token survived the restarts: no fetch beyond the warm-up's.
        assert ident.stats()["imds"]["requests"] == 1, ident.stats()["imds"]
    finally:
        finish_stack(s)
