"""Shared pieces of the outbound (token acquisition) end-to-end tests: an Httpd that can be
given environment variables and bigger MPM limits, an echo backend with a deep accept queue,
the fake identity endpoints, and the end-of-module check that apache2's error log holds no
token, secret or assertion.

    env = OutboundEnv(test_root, "outbound-x")
    fake = env.fake()                                   # started FakeIdentity
    h = env.httpd(server_conf, locations, extra_env={"IDENTITY_HEADER": ...}).start()
    r = get(h.url("/sys/echo"))
    tok = bearer(r)                                     # the token the backend received
    claims = verify_token(tok, fake.jwks())
    env.close()                                         # raises if a log leaked something
"""

import concurrent.futures
import contextlib
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

import requests

import checks
from echo_backend import _Handler, headers_of
from httpd import MPM, RUN_USER, Httpd
from identity_client import FakeIdentity, jwt_parts, verify_token  # noqa: F401  (re-exported)

JWT_RE = checks.JWT_RE
FETCH_OK_RE = re.compile(r"ENTRA0302: token for identity (\S+), resource (\S+) from (\S+): status 200 in "
                         r"(\d+) ms, (\d+) retries")
FETCH_FAIL_RE = re.compile(r"ENTRA0303: token for identity (\S+), resource (\S+) from (\S+) failed: "
                           r"status (-?\d+) in (\d+) ms, (\d+) retries")

_MPM_RE = re.compile(r"^(StartServers|ServerLimit|ThreadLimit|ThreadsPerChild|MaxRequestWorkers|"
                     r"MinSpareThreads|MaxSpareThreads|MinSpareServers|MaxSpareServers) .*$", re.M)


# ---------------------------------------------------------------------------------- httpd

@contextlib.contextmanager
def environment(extra: dict | None):
    """os.environ with `extra` set (value None: removed) for the duration; Httpd copies
    os.environ when it runs apache2, so this is how apache2 gets IDENTITY_HEADER & co."""
    saved = {}
    for k, v in (extra or {}).items():
        saved[k] = os.environ.get(k)
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Variables that would make the module detect another managed identity source than the test means.
CLEAN_ENV = {k: None for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT", "MSI_ENDPOINT",
                               "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                               "AZURE_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                               "AZURE_FEDERATED_TOKEN_FILE", "http_proxy", "HTTP_PROXY", "https_proxy",
                               "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}


class OutboundHttpd(Httpd):
    """Httpd with environment variables for apache2 and optional MPM sizing."""

    def __init__(self, workdir: str, extra_env: dict | None = None, mpm: dict | None = None, **kw):
        super().__init__(workdir, **kw)
        self.extra_env = {**CLEAN_ENV, **(extra_env or {})}
        self.mpm = mpm

    def config_text(self, *a, **kw) -> str:
        text = super().config_text(*a, **kw)
        if self.mpm:
            text = _MPM_RE.sub("", text)
            want = dict(self.mpm)
            if MPM == "prefork":
                # One thread per process: the same number of workers as processes.
                workers = int(want.get("MaxRequestWorkers", 20))
                want = {"StartServers": want.get("StartServers", 2), "MinSpareServers": 2,
                        "MaxSpareServers": workers, "ServerLimit": workers,
                        "MaxRequestWorkers": workers}
            mpm = "\n".join(f"{k} {v}" for k, v in want.items())
            text = text.replace("TypesConfig /etc/mime.types", mpm + "\nTypesConfig /etc/mime.types", 1)
        return text

    def start(self, timeout: float = 30.0):
        with environment(self.extra_env):
            return super().start(timeout)

    def config_test(self, *a, **kw):
        with environment(self.extra_env):
            return super().config_test(*a, **kw)

    def fetch_lines(self) -> tuple[list, list]:
        """(successes, failures) of the ENTRA0302/0303 fetch log lines as regex matches."""
        text = self.error_log_text()
        return list(FETCH_OK_RE.finditer(text)), list(FETCH_FAIL_RE.finditer(text))


# ---------------------------------------------------------------------------------- backend

class _DeepServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512   # hundreds of proxied requests may connect at once


class EchoServer:
    """echo_backend's handler on a server with a deep accept queue."""

    def __init__(self):
        self.server = _DeepServer(("127.0.0.1", 0), _Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True)

    def start(self) -> "EchoServer":
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/echo/{name}/"


# ---------------------------------------------------------------------------------- requests

def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def get(url: str, headers: dict | None = None, timeout: float = 60) -> requests.Response:
    with session() as s:
        return s.get(url, headers=headers or {}, timeout=timeout, allow_redirects=False)


def timed_get(url: str, headers: dict | None = None, timeout: float = 60) -> tuple:
    """(response, start time, elapsed seconds)."""
    t0 = time.time()
    m0 = time.monotonic()
    r = get(url, headers, timeout)
    return r, t0, time.monotonic() - m0


def parallel_get(urls: list, headers: dict | None = None, workers: int = 32, timeout: float = 60) -> list:
    """GET every URL concurrently (bounded pool); [(response or exception, start, elapsed)] in order."""
    def one(u):
        try:
            return timed_get(u, headers, timeout)
        except requests.RequestException as exc:
            return exc, 0.0, 0.0
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(urls))) as pool:
        return list(pool.map(one, urls))


def backend_headers(resp) -> dict:
    """{lower-name: [values]} the echo backend received."""
    assert resp.status_code == 200, f"expected 200 from the backend, got {resp.status_code}: {resp.text[:300]}"
    return headers_of(resp)


def bearer(resp, header: str = "authorization") -> str:
    """The bearer token the backend received in `header` (exactly one such header)."""
    h = backend_headers(resp)
    values = h.get(header.lower(), [])
    assert len(values) == 1, f"backend got {header}: {values!r}"
    scheme, _, tok = values[0].partition(" ")
    assert scheme == "Bearer" and tok, f"backend got {header}: {values[0][:40]!r}..."
    return tok


def claims(tok: str) -> dict:
    return jwt_parts(tok)[1]


def wait_until(pred, timeout: float, step: float = 0.25, what: str = "condition"):
    """Poll pred() until truthy (returned) or raise after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def source_requests(fake: FakeIdentity, source: str) -> int:
    return fake.stats()[source]["requests"]


# ---------------------------------------------------------------------------------- files

def www_file(path: str, content: str, mode: int = 0o400) -> str:
    """Write a file only httpd's user (and root) can read: children read credentials at fetch time."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    pw = pwd.getpwnam(RUN_USER)
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- config

def managed(name: str, fake: FakeIdentity, source: str = "imds", selector: str | None = None) -> str:
    """An EntraIdentity line for a managed identity at the fake; selector e.g. 'client_id=...'."""
    parts = [f"EntraIdentity {name} managed"]
    if selector:
        parts.append(selector)
    parts += [f"source={source}", f"endpoint={fake.url(source)}"]
    return " ".join(parts)


def route(path: str, backend: EchoServer, directive: str, extra: str = "") -> str:
    """A <Location /path/> forwarding to the echo backend with one EntraProxyToken line."""
    name = path.strip("/")
    return (f"<Location /{name}/>\n"
            f"    ProxyPass {backend.url(name)}\n"
            f"    {directive}\n"
            + (f"    {extra}\n" if extra else "")
            + "</Location>\n")


# ---------------------------------------------------------------------------------- environment

class OutboundEnv:
    """Everything one test module starts; close() stops it all and checks every error log."""

    def __init__(self, test_root: str, name: str):
        self.dir = tempfile.mkdtemp(prefix=name + "-", dir=test_root)
        os.chmod(self.dir, 0o755)
        self.fakes: list[FakeIdentity] = []
        self.httpds: list[OutboundHttpd] = []
        self.backend = EchoServer().start()
        self.secrets: list[str] = []     # literal values that must never reach a log
        self._n = 0

    def path(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    def fake(self, **kw) -> FakeIdentity:
        self._n += 1
        f = FakeIdentity(self.path(f"fake{self._n}"), **kw).start()
        self.fakes.append(f)
        self.secrets.append(f.identity_header)
        for v in f._secrets()["clients"].values():
            self.secrets.append(v)
        return f

    def httpd(self, server_conf: str = "", locations: str = "", **kw) -> OutboundHttpd:
        self._n += 1
        h = OutboundHttpd(self.path(f"httpd{self._n}"), server_conf=server_conf, locations=locations, **kw)
        self.httpds.append(h)
        return h

    def stop_httpd(self, h: OutboundHttpd) -> list:
        reports = h.stop()
        assert not reports, "sanitizer reports:\n" + "\n".join(reports)
        return reports

    def _arc_secrets(self):
        for f in self.fakes:
            try:
                files = f.arc_info()["files"]
            except (requests.RequestException, KeyError, ValueError):
                continue
            for p in files:
                try:
                    with open(p) as fh:
                        v = fh.read().strip()
                except OSError:
                    continue
                if len(v) >= 8:
                    self.secrets.append(v)

    def problems(self) -> list[str]:
        out = []
        for h in self.httpds:
            text = h.error_log_text() + "\n" + h.stderr_text()
            m = JWT_RE.search(text)
            if m:
                line_start = text.rfind("\n", 0, m.start()) + 1
                out.append(f"{h.workdir}: error log contains a JWT-looking string: "
                           f"{text[line_start:m.start()]!r} + {m.group(0)[:12]!r}...")
            for s in set(self.secrets):
                if s and s in text:
                    out.append(f"{h.workdir}: error log contains a secret ({s[:4]}...)")
            crashes = checks.child_crashes(text)
            if crashes:
                out.append(f"{h.workdir}: apache2 children crashed:\n" + "\n".join(crashes))
            parent = checks.parent_crash(h.returncode)
            if parent:
                out.append(f"{h.workdir}: {parent}")
            san = checks.sanitizer_lines(text)
            if san:
                out.append(f"{h.workdir}: sanitizer output:\n" + "\n".join(san))
        return out

    def close(self):
        """Stop everything; raise AssertionError listing leaks/crashes found in error logs."""
        reports = []
        self._arc_secrets()
        for h in self.httpds:
            reports += h.stop()
        problems = self.problems() + reports
        for f in self.fakes:
            f.stop()
        self.backend.stop()
        if os.environ.get("ENTRA_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            raise AssertionError("outbound teardown found problems:\n" + "\n".join(problems))


# ---------------------------------------------------------------------------------- fixture

try:
    import pytest

    @pytest.fixture(scope="module")
    def oenv(request, test_root, module_so):
        """One OutboundEnv per test module; its teardown fails when an error log leaked a token,
        secret or assertion (or a child crashed)."""
        env = OutboundEnv(test_root, request.module.__name__.rsplit(".", 1)[-1].replace("test_", ""))
        yield env
        env.close()
except ImportError:   # used outside pytest (manual runs)
    pass
