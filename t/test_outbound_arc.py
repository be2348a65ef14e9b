"""Outbound: Azure Arc managed identity. The endpoint answers 401 with a Basic realm naming a
root-only key file; httpd's unprivileged children get its contents through the module's root
helper and repeat the request with it. Key files outside the agent's directory are refused."""

import os
import signal
import socket
import stat
import threading
import time

import pytest

import procs
from outbound import bearer, get, managed, oenv, route, verify_token, wait_until  # noqa: F401

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


@pytest.mark.parametrize("realm", ["fifo", "directory"])
def test_key_path_that_is_not_a_regular_file_is_refused_at_once(oenv, fake, realm):
    """A FIFO named like a key must not stall the helper (it opens with O_NONBLOCK and checks
    the opened file with fstat); a directory is refused the same way."""
    fake.reset()
    fake.settings(arc_realm=realm)
    h = oenv.httpd(arc_conf(fake, timeout=3),
                   route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    try:
        t0 = time.monotonic()
        r = get(h.url("/arc/echo"))
        assert r.status_code == 503, f"{realm}: {r.status_code} {r.text[:200]}"
        assert time.monotonic() - t0 < 3.5
        assert "Arc key file is not a regular file" in h.error_log_text(), h.error_log_tail(10)
        # The helper still answers: a normal challenge now succeeds.
        fake.settings(arc_realm="normal")
        fake.reset(counters=True, scripts=False, settings=False, registrations=False, arc=False)
        wait_until(lambda: get(h.url("/arc/echo")).status_code == 200, 15, 0.5, "a token after the refusal")
    finally:
        oenv.stop_httpd(h)
        fake.settings(arc_realm="normal")


def _helper_pid(h) -> int:
    """The Arc helper: the one child of apache2 that still runs as root."""
    def find():
        for pid in procs.children(h.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    uid = next(ln.split()[1] for ln in f if ln.startswith("Uid:"))
            except OSError:
                continue
            if uid == "0":
                return pid
        return None
    return wait_until(find, 10, 0.1, "the Arc helper process")


def _socket_inodes(pid: int) -> set:
    return {t[len("socket:["):-1] for t in procs.open_fds(pid).values() if t.startswith("socket:[")}


def test_helper_holds_only_its_own_socket(oenv, fake):
    fake.reset()
    h = oenv.httpd(arc_conf(fake), route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    try:
        helper = _helper_pid(h)
        listening = procs.socket_inodes_listening(h.proc.pid) & _socket_inodes(h.proc.pid)
        assert listening, "found no listening socket of apache2 to compare with"
        fds = procs.open_fds(helper)
        assert not (_socket_inodes(helper) & listening), f"the helper holds httpd's listening sockets: {fds}"
        # stdin, stdout, stderr and its own Unix socket: nothing else of the parent's.
        extra = {fd: t for fd, t in fds.items() if fd > 2}
        assert len(extra) == 1 and next(iter(extra.values())).startswith("socket:["), fds
    finally:
        oenv.stop_httpd(h)


def test_helper_dies_with_its_parent(oenv, fake):
    fake.reset()
    h = oenv.httpd(arc_conf(fake), route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    try:
        helper = _helper_pid(h)
        os.kill(h.proc.pid, signal.SIGKILL)
        h.proc.wait(timeout=10)
        elapsed = procs.wait_gone([helper], timeout=10)
        print(f"[arc helper] gone {elapsed:.2f} s after its parent was SIGKILLed")
        assert elapsed <= 1.0, f"the root helper outlived its parent by {elapsed:.2f} s"
    finally:
        oenv.stop_httpd(h)   # also kills the orphaned children of the group


def _ask_helper(sock_path: str, line: bytes, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(line)
        out = b""
        while True:
            chunk = s.recv(8192)
            if not chunk:
                return out
            out += chunk


def test_helper_gives_each_client_a_deadline(oenv, fake):
    """A client that trickles its request one byte at a time cannot hold the helper: each
    client has 1 s in all, and the next one is answered."""
    fake.reset()
    h = oenv.httpd(arc_conf(fake), route("arc", oenv.backend, f"EntraProxyToken {AUD} identity=arc")).start()
    sock_path = os.path.join(h.workdir, "run", "mod_entra_arc.sock")
    stop = threading.Event()

    def trickle():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_path)
            for _ in range(16):
                if stop.is_set():
                    return
                try:
                    s.send(b"/")
                except OSError:
                    return
                time.sleep(0.4)

    try:
        _helper_pid(h)
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        time.sleep(0.3)   # the trickling client is being served
        t0 = time.monotonic()
        answer = _ask_helper(sock_path, fake.info["arc_key_dir"].encode() + b"/missing.key\n")
        elapsed = time.monotonic() - t0
        assert answer.startswith(b"ERR "), answer[:80]
        assert elapsed <= 1.5, f"the next client waited {elapsed:.2f} s behind a trickling one"
    finally:
        stop.set()
        oenv.stop_httpd(h)
