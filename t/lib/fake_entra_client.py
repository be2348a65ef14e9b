"""Start/stop t/fakes/fake_entra.py in a subprocess and drive its control API."""

import json
import os
import subprocess
import time

import requests

import entra_tokens as et

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_SCRIPT = os.path.join(HERE, "..", "fakes", "fake_entra.py")
PYTHON = "/usr/bin/python3"


class FakeEntra:
    """One fake Entra process. `authority` is what EntraAuthority should be set to."""

    def __init__(self, workdir: str, keys_dir: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, ca_file: str | None = None):
        self.workdir = workdir
        self.keys_dir = keys_dir or os.path.join(workdir, "keys")
        self.tls_cert, self.tls_key, self.ca_file = tls_cert, tls_key, ca_file
        self.proc = None
        self.port = None
        self.scheme = "https" if tls_cert else "http"
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or CA bundles from the environment
        self._store = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30.0, port: int = 0) -> "FakeEntra":
        """port: 0 for any free one; the old port to bring a stopped fake back where it was."""
        os.makedirs(self.workdir, exist_ok=True)
        ready = os.path.join(self.workdir, "fake_entra.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [PYTHON, FAKE_SCRIPT, "--port", str(port), "--ready-file", ready, "--keys-dir", self.keys_dir,
               "--parent-pid", str(os.getpid())]
        if self.tls_cert:
            cmd += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        self._log = open(os.path.join(self.workdir, "fake_entra.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake_entra exited with {self.proc.returncode}; see {self._log.name}")
            if os.path.exists(ready):
                with open(ready) as f:
                    info = json.load(f)
                self.port = info["port"]
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("fake_entra did not become ready")
        if self.ca_file:
            self.session.verify = self.ca_file
        self._store = None
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
            self._log.close()
        self.session.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------- addresses
    @property
    def authority(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def url(self, path: str) -> str:
        return self.authority + path.lstrip("/")

    # ---------------------------------------------------------------- control API
    def _post(self, name: str, body: dict | None = None) -> dict:
        r = self.session.post(self.url("/_control/" + name), json=body or {}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"control {name} failed: {r.status_code} {r.text}")
        return r.json()

    def _get(self, name: str):
        r = self.session.get(self.url("/_control/" + name), timeout=30)
        r.raise_for_status()
        return r.json()

    def set_mode(self, target: str, mode: str, delay: float | None = None, times: int | None = None,
                 size: int | None = None, chunked: bool = False):
        """size/chunked: the body of mode "huge" (bytes; chunked without Content-Length)."""
        body = {"target": target, "mode": mode, "chunked": chunked}
        for k, v in (("delay", delay), ("times", times), ("size", size)):
            if v is not None:
                body[k] = v
        return self._post("mode", body)

    def reset(self, counters=True, modes=True, keys=False, documents=True, tenants=True):
        self._store = None
        return self._post("reset", {"counters": counters, "modes": modes, "keys": keys,
                                    "documents": documents, "tenants": tenants})

    def stats(self) -> dict:
        return self._get("stats")

    def requests_log(self) -> list:
        return self._get("requests")

    def key_list(self) -> dict:
        return self._get("keys")

    def rotate(self, **body) -> dict:
        self._store = None
        return self._post("rotate", body)

    def add_key(self, **spec) -> str:
        self._store = None
        return self._post("keys/add", spec)["kid"]

    def remove_key(self, kid: str) -> str:
        self._store = None
        return self._post("keys/remove", {"kid": kid})["removed"]

    def mint_remote(self, kid: str, claims: dict, alg: str = "RS256", header: dict | None = None) -> str:
        body = {"kid": kid, "alg": alg, "claims": claims}
        if header is not None:
            body["header"] = header
        return self._post("mint", body)["token"]

    def set_document(self, path: str, json_body=None, status: int = 200, body: str | None = None,
                     content_type: str | None = None):
        req = {"path": path, "status": status}
        if json_body is not None:
            req["json"] = json_body
        else:
            req["body"] = body or ""
        if content_type:
            req["content_type"] = content_type
        return self._post("document", req)

    def set_unknown_tenants(self, tenants: list[str]):
        return self._post("tenants", {"unknown": tenants})

    # ---------------------------------------------------------------- keys for signing
    @property
    def store(self) -> et.KeyStore:
        if self._store is None:
            self._store = et.KeyStore.load(self.keys_dir)
        return self._store

    def key(self, name: str) -> et.Key:
        """A signing key by role name (rsa1, rsa2, ec256, ec384, ec521, enc, weak) or kid."""
        try:
            return self.store[name]
        except KeyError:
            self._store = None
            return self.store[name]

    def count(self, category: str, tenant: str) -> int:
        return self.stats()[category].get(tenant, 0)


def ensure_keys(keys_dir: str) -> et.KeyStore:
    """Generate the default key set into keys_dir once (reused by several fakes)."""
    if et.KeyStore.exists(keys_dir):
        return et.KeyStore.load(keys_dir)
    store = et.KeyStore.generate_default(keys_dir)
    store.save()
    return store

