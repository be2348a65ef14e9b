"""Start/stop t/fakes/fake_identity.py and drive its control API; helpers to build client
assertions and to verify the access tokens it issues.

    fake = FakeIdentity(workdir).start()
    fake.url("imds")                        # endpoint URLs, see ENDPOINTS
    fake.script("imds", ["410", "429:3", "ok"])
    fake.mode("imds", "down"); fake.mode("imds", "ok")
    fake.settings(lifetime={"imds": 30}, throttle={"imds": False})
    fake.stats()["imds"]["requests"]; fake.requests_log("imds")
    fake.stop()

Nothing here writes key material into the repository: keys and certificates are made at run
time into directories the caller chooses (normally a pytest temporary directory).
"""

import base64
import datetime
import hashlib
import json
import os
import subprocess
import time
import uuid

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_SCRIPT = os.path.join(HERE, "..", "fakes", "fake_identity.py")
PYTHON = "/usr/bin/python3"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Default registrations of the fake (also in its ready file).
SYSTEM = "system"
USERS = ("user1", "user2", "user3")
SECRET_APP = "c5c5c5c5-0000-4000-8000-000000000001"
CERT_APP = "cececece-0000-4000-8000-000000000002"
WORKLOAD_APP = "f1f1f1f1-0000-4000-8000-000000000003"
WORKLOAD_SUBJECT = "system:serviceaccount:default:workload"
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token: str) -> tuple:
    """(header, claims) of a compact JWS, without verifying anything."""
    h, c, _ = token.split(".")
    return json.loads(b64u_decode(h)), json.loads(b64u_decode(c))


class FakeIdentity:
    """One fake_identity.py process."""

    def __init__(self, workdir: str, state_dir: str | None = None, arc_key_dir: str | None = None,
                 identity_header: str | None = None, extra_args: list | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, ca_file: str | None = None):
        self.workdir = workdir
        self.state_dir = state_dir or os.path.join(workdir, "state")
        self.arc_key_dir = arc_key_dir
        self.identity_header_arg = identity_header
        self.extra_args = list(extra_args or [])
        self.tls_cert, self.tls_key, self.ca_file = tls_cert, tls_key, ca_file
        self.proc = None
        self.info: dict = {}
        self.session = requests.Session()
        self.session.trust_env = False   # never through a proxy
        self._log = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 20.0) -> "FakeIdentity":
        os.makedirs(self.workdir, exist_ok=True)
        ready = os.path.join(self.workdir, "fake_identity.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [PYTHON, FAKE_SCRIPT, "--port", "0", "--ready-file", ready, "--state-dir", self.state_dir,
               "--parent-pid", str(os.getpid())]
        if self.arc_key_dir:
            cmd += ["--arc-key-dir", self.arc_key_dir]
        if self.identity_header_arg:
            cmd += ["--identity-header", self.identity_header_arg]
        if self.tls_cert:
            cmd += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        cmd += self.extra_args
        self._log = open(os.path.join(self.workdir, "fake_identity.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake_identity exited with {self.proc.returncode}; see {self._log.name}")
            if os.path.exists(ready):
                with open(ready) as f:
                    self.info = json.load(f)
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("fake_identity did not become ready")
        return self

    def stop(self, timeout: float = 10.0):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.session.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------- addresses and secrets
    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def base_url(self) -> str:
        return self.info["base_url"]

    @property
    def tenant(self) -> str:
        return self.info["tenant"]

    def url(self, name: str, tls: bool = False) -> str:
        """imds | appservice | arc | arc_imds_endpoint | entra_authority | entra_token | imds_authority_host;
        tls=True: the same on the HTTPS listener (started with tls_cert/tls_key)."""
        return self.info["tls_endpoints" if tls else "endpoints"][name]

    def token_url(self, tenant: str | None = None, tls: bool = False) -> str:
        base = self.info["tls_base_url"] if tls else self.base_url
        return f"{base}/{tenant or self.tenant}/oauth2/v2.0/token"

    def _secrets(self) -> dict:
        with open(self.info["secrets_file"]) as f:
            return json.load(f)

    @property
    def identity_header(self) -> str:
        """The App Service X-IDENTITY-HEADER secret the fake started with."""
        return self._secrets()["identity_header"]

    def client_secret(self, client_id: str = SECRET_APP) -> str:
        return self._secrets()["clients"][client_id]

    def identity(self, name: str) -> dict:
        return self.info["identities"][name]

    # ---------------------------------------------------------------- control API
    def _post(self, name: str, body: dict | None = None) -> dict:
        r = self.session.post(f"{self.base_url}/_control/{name}", json=body or {}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"control {name} failed: {r.status_code} {r.text}")
        return r.json()

    def _get(self, name: str, params: dict | None = None):
        r = self.session.get(f"{self.base_url}/_control/{name}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def reset(self, **flags) -> dict:
        return self._post("reset", flags)

    def script(self, source: str, answers: list, append: bool = False) -> dict:
        return self._post("script", {"source": source, "answers": answers, "append": append})

    def mode(self, source: str, mode: str | None, resource: str | None = None) -> dict:
        """Persistent answer for a source (None: back to normal); with `resource`, only for
        requests for that resource."""
        body = {"source": source, "mode": mode}
        if resource is not None:
            body["resource"] = resource
        return self._post("mode", body)

    def release(self) -> dict:
        return self._post("release")

    def settings(self, **kw) -> dict:
        return self._post("settings", kw)

    def get_settings(self) -> dict:
        return self._get("settings")

    def stats(self) -> dict:
        return self._get("stats")

    def requests_log(self, source: str | None = None) -> list:
        return self._get("requests", {"source": source} if source else None)

    def add_identities(self, identities: list, replace: bool = False) -> list:
        return self._post("identities", {"identities": identities, "replace": replace})["added"]

    def remove_identities(self, names: list) -> list:
        return self._post("identities/remove", {"names": names})["removed"]

    def identities(self) -> list:
        return self._get("identities")["identities"]

    def add_client(self, **client) -> str:
        return self._post("clients", {"clients": [client]})["added"][0]

    def clients(self) -> list:
        return self._get("clients")["clients"]

    def register_certificate(self, client_id: str, pem: str, replace: bool = False) -> dict:
        return self._post("certificates", {"client_id": client_id, "pem": pem, "replace": replace})

    def add_federation(self, client_id: str, subject: str, audience: str = FEDERATION_AUDIENCE,
                       issuer: str | None = None, replace: bool = False) -> dict:
        return self._post("federations", {"client_id": client_id, "subject": subject, "audience": audience,
                                          "issuer": issuer, "replace": replace})

    def unknown_resources(self, resources: list) -> dict:
        return self._post("resources", {"unknown": resources})

    def mint_federated(self, **kw) -> str:
        return self._post("mint_federated", kw)["token"]

    def arc_info(self) -> dict:
        return self._get("arc")

    def jwks(self) -> dict:
        r = self.session.get(self.info["jwks_url"], timeout=10)
        r.raise_for_status()
        return r.json()


# -------------------------------------------------------------------- client-side helpers

def make_client_certificate(directory: str, name: str = "client", days: int = 30, bits: int = 2048) -> dict:
    """An RSA key and self-signed certificate for a certificate credential, written at run time into
    directory (0600 key). Returns {"key", "cert", "key_path", "cert_path", "pem"}."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fake-identity {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_path = os.path.join(directory, f"{name}.key")
    cert_path = os.path.join(directory, f"{name}.pem")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "w") as f:
        f.write(pem)
    return {"key": key, "cert": cert, "key_path": key_path, "cert_path": cert_path, "pem": pem}


def thumbprints(cert) -> dict:
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"x5t#S256": b64u(hashlib.sha256(der).digest()), "x5t": b64u(hashlib.sha1(der).digest())}


def client_assertion(key, cert, client_id: str, audience: str, alg: str = "PS256", lifetime: int = 600,
                     now: int | None = None, jti: str | None = None, header: dict | None = None,
                     claims: dict | None = None, pss_salt: int = 32) -> str:
    """A certificate client assertion shaped like MSAL's: PS256 with x5t#S256 (or RS256 with x5t)."""
    now = int(time.time()) if now is None else now
    tp = thumbprints(cert)
    h = {"alg": alg, "typ": "JWT"}
    if alg == "PS256":
        h["x5t#S256"] = tp["x5t#S256"]
    else:
        h["x5t"] = tp["x5t"]
    if header is not None:
        h = header
    c = {"aud": audience, "iss": client_id, "sub": client_id, "jti": jti or str(uuid.uuid4()),
         "nbf": now, "iat": now, "exp": now + lifetime}
    c.update(claims or {})
    si = (b64u(json.dumps(h, separators=(",", ":")).encode()) + "." +
          b64u(json.dumps(c, separators=(",", ":")).encode())).encode("ascii")
    if alg == "PS256":
        sig = key.sign(si, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=pss_salt), hashes.SHA256())
    else:
        sig = key.sign(si, padding.PKCS1v15(), hashes.SHA256())
    return si.decode("ascii") + "." + b64u(sig)


def verify_token(token: str, jwks: dict) -> dict:
    """Verify an RS256 access token issued by the fake against its JWKS; return the claims.
    Raises cryptography.exceptions.InvalidSignature or KeyError/ValueError."""
    h, c, s = token.split(".")
    header = json.loads(b64u_decode(h))
    if header.get("alg") != "RS256":
        raise ValueError(f"unexpected alg {header.get('alg')!r}")
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    pub = rsa.RSAPublicNumbers(int.from_bytes(b64u_decode(jwk["e"]), "big"),
                               int.from_bytes(b64u_decode(jwk["n"]), "big")).public_key()
    pub.verify(b64u_decode(s), f"{h}.{c}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return json.loads(b64u_decode(c))
