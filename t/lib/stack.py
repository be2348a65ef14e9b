"""One test stack: fake Entra + echo backend + apache2 with mod_entra, torn down together."""

import os
import shutil

import requests

import checks
import conformance
import entra_tokens as et
from echo_backend import EchoBackend
from fake_entra_client import FakeEntra
from httpd import Httpd

# Problems found at teardown by any stack (sanitizer reports, tokens in logs); conftest
# fails the session if this is not empty.
PROBLEMS: list[str] = []

DEFAULT_ALG = {"RSA": "RS256", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class Stack:
    def __init__(self, workdir: str, master_keys: str, tls: dict | None = None):
        self.workdir = workdir
        keys_dir = os.path.join(workdir, "keys")
        if not os.path.exists(keys_dir):
            shutil.copytree(master_keys, keys_dir)
            os.chmod(keys_dir, 0o700)
        tls = tls or {}
        self.fake = FakeEntra(os.path.join(workdir, "fake"), keys_dir=keys_dir, **tls)
        self.backend = None
        self.httpd = None
        self.session = requests.Session()
        self.session.trust_env = False

    def start(self, locations=None, server_conf=None, prepare=None, start_httpd: bool = True,
              files=None) -> "Stack":
        """Start fake + backend (+ httpd). locations/server_conf may be callables of the authority."""
        try:
            self.fake.start()
            if prepare:
                prepare(self)
            self.backend = EchoBackend().start()
            if locations is None:
                locations = conformance.locations
            if server_conf is None:
                server_conf = conformance.server_conf
            loc = locations(self.fake.authority) if callable(locations) else locations
            srv = server_conf(self.fake.authority) if callable(server_conf) else server_conf
            self.httpd = Httpd(os.path.join(self.workdir, "httpd"), server_conf=srv, locations=loc,
                               backend_port=self.backend.port)
            for p in (files or conformance.all_paths()):
                self.httpd.add_file(p.strip("/") + "/ok.txt", "ok\n")
            if start_httpd:
                self.httpd.start()
        except BaseException:
            self.close(check=False)
            raise
        return self

    def close(self, check: bool = True) -> list[str]:
        """Stop everything; return problems (sanitizer reports, tokens in the error log)."""
        problems = []
        self.session.close()  # no idle keep-alive connection holds the graceful stop
        if self.httpd is not None:
            problems += self.httpd.stop()
            if check:
                text = self.httpd.error_log_text()
                try:
                    checks.assert_log_has_no_tokens(text)
                except AssertionError as exc:
                    problems.append(str(exc))
                parent = checks.parent_crash(self.httpd.returncode)
                if parent:
                    problems.append(f"{parent} ({self.workdir})")
                crashes = checks.child_crashes(text)
                if crashes:
                    note = (" -- NOTE: the module file was rebuilt while apache2 was running"
                            if self.httpd.module_rebuilt() else "")
                    problems.append(f"apache2 children crashed ({self.workdir}){note}:\n" + "\n".join(crashes))
                san = checks.sanitizer_lines(text + "\n" + self.httpd.stderr_text())
                if san:
                    problems.append(f"sanitizer output in apache2's error log ({self.workdir}):\n" + "\n".join(san))
        if self.backend is not None:
            self.backend.stop()
            self.backend = None
        self.fake.stop()
        self.session.close()
        return problems

    # ---------------------------------------------------------------- requests
    def url(self, path: str) -> str:
        return self.httpd.url(path)

    def get(self, path: str, token: str | None = None, headers: dict | None = None,
            timeout: float = 30, **kw):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        resp = self.session.get(self.url(path), headers=h, timeout=timeout, allow_redirects=False, **kw)
        resp._stack = self
        return resp

    # ---------------------------------------------------------------- tokens
    def key(self, name: str) -> et.Key:
        return self.fake.key(name)

    def token(self, key="rsa1", alg: str | None = None, claims: dict | None = None,
              header: dict | None = None, v1: bool = False, **over) -> str:
        """A token signed by one of the fake's keys; default: valid v2 claims for /any."""
        k = self.key(key) if isinstance(key, str) else key
        if alg is None:
            alg = DEFAULT_ALG["RSA" if k.kty == "RSA" else k.crv]
        if claims is None:
            claims = et.v1_claims(**over) if v1 else et.v2_claims(**over)
        return et.mint(k, claims, header=header, alg=alg)


def finish_stack(s: Stack):
    """Close a stack; record and raise whatever problem its teardown found."""
    problems = s.close()
    if problems:
        PROBLEMS.extend(problems)
        raise AssertionError("\n".join(problems))
