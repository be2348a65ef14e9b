"""Outbound: Azure Arc managed identity. The endpoint answers 401 with a Basic realm naming a
root-only key file; httpd's unprivileged children get its contents through the module's root
helper and repeat the request with it. Key files outside the agent's directory are refused."""

import os
import stat

import pytest

from outbound import bearer, get, managed, oenv, route, verify_token  # noqa: F401

AUD = "https://management.azure.com/"


def arc_conf(fake, timeout=None) -> str:
    lines = [f"EntraArcKeyDirectory {fake.info['arc_key_dir']}", managed("arc", fake, source="arc")]
    if timeout:
        lines.append(f"EntraTokenTimeout {timeout}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def fake(oenv):
    return oenv.fake()


def test_arc_challenge_answered_through_the_helper(oenv, fake):
    fake.reset()
    key_dir = fake.info["arc_key_dir"]
    h = oenv.httpd(arc_conf(fake), route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    try:
        c = verify_token(bearer(get(h.url("/arc/echo"))), fake.jwks())
        assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("arc", "system", AUD)
        auth = fake.stats()["arc_auth"]
        assert auth["challenges"] >= 1 and auth["auth_ok"] >= 1 and auth["hostile_secret_sent"] == 0, auth
        log = fake.requests_log("arc")
        assert log[0]["status"] == 401 and "authorization" not in log[0]["headers"], log[0]
        ok = [e for e in log if e.get("arc_auth") == "ok"]
        assert ok and ok[0]["headers"]["authorization"] == "Basic <redacted>" and ok[0]["status"] == 200
        assert ok[0]["headers"].get("metadata") == "true"
        # The key file is readable by root only and the children run as another user,
        # so the key can only have come through the privileged helper.
        st = os.stat(key_dir)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)
        for p in fake.arc_info()["files"]:
            fst = os.stat(p)
            assert fst.st_uid == 0 and stat.S_IMODE(fst.st_mode) & 0o077 == 0
        uids = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    st_text = f.read()
            except OSError:
                continue
            ppid = next((ln.split()[1] for ln in st_text.splitlines() if ln.startswith("PPid:")), None)
            if ppid == str(h.proc.pid):
                uids.add(next(ln.split()[1] for ln in st_text.splitlines() if ln.startswith("Uid:")))
        assert "33" in uids, f"children of apache2 run as uids {uids}, expected www-data (33)"
    finally:
        oenv.stop_httpd(h)


@pytest.mark.parametrize("realm", ["outside", "symlink", "dotdot", "too_big"])
def test_hostile_realm_is_refused(oenv, fake, realm):
    fake.reset()
    fake.settings(arc_realm=realm)
    h = oenv.httpd(arc_conf(fake, timeout=3),
                   route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    try:
        r = get(h.url("/arc/echo"))
        assert r.status_code == 503, f"{realm}: {r.status_code} {r.text[:200]}"
        assert r.headers.get("Retry-After", "").isdigit()
        auth = fake.stats()["arc_auth"]
        assert auth["hostile_secret_sent"] == 0 and auth["auth_ok"] == 0, auth
        _, fail = h.fetch_lines()
        assert fail, h.error_log_tail(10)
    finally:
        oenv.stop_httpd(h)
        fake.settings(arc_realm="normal")
