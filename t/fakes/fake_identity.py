#!/usr/bin/python3
"""A local fake of the Azure token-issuing endpoints mod_entra acquires tokens from.

One process, one loopback port (plus an optional HTTPS port with the same routes), sources told
apart by path:

  GET  /metadata/identity/oauth2/token        IMDS                     source "imds"
  GET  /msi/token                             App Service / Functions  source "appservice"
  GET  /arc/metadata/identity/oauth2/token    Azure Arc (HIMDS)        source "arc"
  POST /{tenant}/oauth2/v2.0/token            Entra client credentials source "entra"
  GET  /_fake/jwks                            JWKS of the RS256 key that signs every issued token
  GET|POST /_control/<name>                   test control API (JSON), below

CLI: fake_identity.py --port 0 --ready-file F [--state-dir DIR] [--arc-key-dir DIR]
     [--arc-key-mode 0600] [--identity-header SECRET] [--tenant GUID] [--parent-pid PID]
     [--max-lifetime 3600] [--log-requests] [--tls-cert PEM --tls-key PEM [--tls-port 0]]
The ready file (written atomically once listening) holds port, pid, base_url, tenant, state_dir,
arc_key_dir, secrets_file, jwks_url, endpoints{imds, imds_authority_host, appservice, arc,
arc_imds_endpoint, entra_authority, entra_token}, identities{name: client_id/object_id/resource_id},
clients{name: client_id}, and with TLS tls_port, tls_base_url, tls_endpoints.
<state-dir>/secrets.json (0600): {"identity_header": .., "clients": {client_id: secret}}.
The signing key (signing-key.pem, 0600) and its certificate persist in the state directory; with
no --state-dir a temporary one is used and removed at exit. Arc key files are removed at exit.

Control API (POST bodies and answers are JSON; errors answer 400 {"error": ..}):
  GET  health | stats | requests[?source=S] | settings | identities | clients | arc
  POST reset {counters,scripts,settings,registrations,arc: bool, all default true}
  POST script {"source": S|"all", "answers": [..], "append": false}   one-shot answers, in order
  POST mode {"source": S|"all", "mode": ANSWER|"down"|"ok"|null, "resource": R}  persistent until
                cleared; with "resource", only for requests for that resource (before the source's mode)
  POST release {}                                   frees requests held by hang/slow answers
  POST settings {..}                                partial update, see default_settings()
  POST identities {"identities": [{name, kind, client_id, object_id, resource_id}], "replace": false}
  POST identities/remove {"names": [..]}
  POST clients {"clients": [{client_id, name, object_id, tenant, secrets, expired_secrets,
                certificates: [PEM], federations: [{subject, audience, issuer}], roles, disabled}]}
  POST clients/remove {"client_ids": [..]}
  POST certificates {client_id, pem, replace}       -> {"x5t#S256", "x5t"}
  POST federations {client_id, subject, audience=api://AzureADTokenExchange, issuer=null(any), replace}
  POST resources {"unknown": [resource, ..]}        answered as invalid_resource (AADSTS500011)
  POST tenants {"known": [guid, ..]}                extra tenants the token endpoint knows
  POST mint_federated {sub, aud, iss, lifetime, claims} -> {"token"}  a projected-token look-alike
ANSWER: "404" "410" "429" "500" "503" (any 300..599), "<status>:<seconds>" (adds Retry-After),
{"status": N, "retry_after": "<any text>", "body": <object or text>} (N may be 200 with a body), "garbage", "empty", "html",
"truncated", "close", "hang" (60 s) / "hang:<s>" (then close, no answer), "slow:<s>" (then normal),
"ok"; "down" = "500". Order per request: count it, throttle check, scripted answer (else mode),
then the source's own checks.
Throttling (settings.throttle, on for imds and arc): 429 + Retry-After (throttle_retry_after, 1)
when max_in_flight (5) requests are already being served or more than max_per_second (20) arrived
in the last second.

Keys, certificates and secrets are generated at run time; nothing is written into the repository.
Only 127.0.0.1 is bound. The process ends on SIGTERM/SIGINT, when --parent-pid is gone, or after
--max-lifetime seconds; every wait inside it is bounded.
"""

import argparse
import base64
import binascii
import collections
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SOURCES = ("imds", "appservice", "arc", "entra")
MI_SOURCES = ("imds", "appservice", "arc")

TENANT = "11111111-2222-3333-4444-555555555555"
SUBSCRIPTION = "0f0f0f0f-0000-4000-8000-00000000a11e"
RG = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-fake/providers"

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"
WORKLOAD_SUBJECT = "system:serviceaccount:default:workload"

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DNS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")

IMDS_VERSIONS = {"2017-12-01", "2018-02-01", "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11",
                 "2019-04-30", "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01",
                 "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01",
                 "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01",
                 "2021-11-15", "2021-12-13", "2023-07-01", "2023-11-15", "2024-03-15"}
ARC_VERSIONS = {"2019-11-01", "2020-06-01"}
APPSERVICE_V2019 = "2019-08-01"
APPSERVICE_V2017 = "2017-09-01"

ARC_MAX_KEY = 4096
HANG_SECONDS = 60.0
MAX_FORM = 64 * 1024
ARC_REALM_MODES = ("normal", "outside", "dotdot", "not_key", "too_big", "max_size", "relative", "symlink",
                   "missing_file", "prefix", "directory", "fifo", "no_realm", "no_header", "quoted")
HOSTILE_MODES = {"outside", "dotdot", "not_key", "too_big", "relative", "symlink", "prefix"}

DEFAULT_IDENTITIES = [
    {"name": "system", "kind": "system",
     "client_id": "51515151-0000-4000-8000-000000000001",
     "object_id": "51515151-0000-4000-8000-0000000000a1",
     "resource_id": f"{RG}/Microsoft.Compute/virtualMachines/vm-fake",
     "resource_ids": {"appservice": f"{RG}/Microsoft.Web/sites/app-fake",
                      "arc": f"{RG}/Microsoft.HybridCompute/machines/arc-fake"}},
    {"name": "user1", "kind": "user",
     "client_id": "a1a1a1a1-0000-4000-8000-000000000001",
     "object_id": "a1a1a1a1-0000-4000-8000-0000000000a1",
     "resource_id": f"{RG}/Microsoft.ManagedIdentity/userAssignedIdentities/uami-one"},
    {"name": "user2", "kind": "user",
     "client_id": "a2a2a2a2-0000-4000-8000-000000000002",
     "object_id": "a2a2a2a2-0000-4000-8000-0000000000a2",
     "resource_id": f"{RG}/Microsoft.ManagedIdentity/userAssignedIdentities/uami-two"},
    {"name": "user3", "kind": "user",
     "client_id": "a3a3a3a3-0000-4000-8000-000000000003",
     "object_id": "a3a3a3a3-0000-4000-8000-0000000000a3",
     "resource_id": f"{RG}/Microsoft.ManagedIdentity/userAssignedIdentities/uami-three"},
]

DEFAULT_CLIENTS = [
    {"name": "secret-app", "client_id": "c5c5c5c5-0000-4000-8000-000000000001",
     "object_id": "c5c5c5c5-0000-4000-8000-0000000000a1", "secrets": ["<generated>"]},
    {"name": "cert-app", "client_id": "cececece-0000-4000-8000-000000000002",
     "object_id": "cececece-0000-4000-8000-0000000000a2"},
    {"name": "workload-app", "client_id": "f1f1f1f1-0000-4000-8000-000000000003",
     "object_id": "f1f1f1f1-0000-4000-8000-0000000000a3",
     "federations": [{"issuer": None, "subject": WORKLOAD_SUBJECT, "audience": FEDERATION_AUDIENCE}]},
]


def default_settings() -> dict:
    return {
        "throttle": {"imds": True, "arc": True, "appservice": False, "entra": False},
        "max_in_flight": 5,
        "max_per_second": 20,
        "throttle_retry_after": 1,
        "lifetime": {"imds": 86399, "appservice": 86399, "arc": 86399, "entra": 3599},
        "number_format": {"imds": "strings", "appservice": "strings", "arc": "strings"},
        "platform_cache": False,
        "platform_cache_min_remaining": 300,
        "arc_realm": "normal",
        "arc_secret_ttl": 300,
        "arc_single_use": False,
        "appservice_auth_status": 401,
        "assertion_skew": 300,
        "max_assertion_lifetime": 600,
        "token_versions": {},
        "reject_forwarded": True,
    }


# ---------------------------------------------------------------------------------- helpers

def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    if not B64URL_RE.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jdump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def now_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_jwt(token: str):
    """(header, claims, signing_input, signature) of a compact JWS; ValueError when malformed."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise ValueError("a JWT has three dot-separated parts")
    header = json.loads(b64u_decode(parts[0]))
    claims = json.loads(b64u_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("JWT header and claims must be JSON objects")
    return header, claims, (parts[0] + "." + parts[1]).encode("ascii"), b64u_decode(parts[2])


def entra_error(error: str, code: int, text: str) -> dict:
    """An error body shaped like login.microsoftonline.com's."""
    trace, corr, stamp = str(uuid.uuid4()), str(uuid.uuid4()), now_stamp()
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


def resource_not_found(resource: str, tenant: str) -> str:
    return (f"The resource principal named {resource} was not found in the tenant named {tenant}. This can "
            "happen if the application has not been installed by the administrator of the tenant or consented "
            "to by any user in the tenant. You might have sent your authentication request to the wrong tenant.")


def valid_resource_syntax(resource: str) -> bool:
    if not resource or len(resource) > 2048 or any(c.isspace() for c in resource):
        return False
    if GUID_RE.match(resource):
        return True
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]+)", resource)
    return bool(m)


def parse_answer(a) -> dict:
    """A scripted answer: "404", "429:5" (status with Retry-After), "ok", "garbage", "empty", "html",
    "close", "truncated", "hang", "hang:<s>", "slow:<s>", or {"status":N,"retry_after":"..","body":..}."""
    if isinstance(a, int):
        a = str(a)
    if isinstance(a, dict):
        if "status" not in a:
            raise ValueError(f"scripted answer object needs a status: {a!r}")
        status = int(a["status"])
        # 200 only with a body: a success the test writes itself (e.g. a hostile access_token).
        if not (300 <= status <= 599 or (status == 200 and "body" in a)):
            raise ValueError(f"scripted status {status} out of range")
        out = {"kind": "status", "status": status}
        if a.get("retry_after") is not None:
            out["retry_after"] = str(a["retry_after"])
        if "body" in a:
            out["body"] = a["body"]
        return out
    if not isinstance(a, str):
        raise ValueError(f"bad scripted answer {a!r}")
    if a == "down":
        return {"kind": "status", "status": 500}
    m = re.match(r"^(\d{3})(?::(\d+))?$", a)
    if m:
        status = int(m.group(1))
        if not 300 <= status <= 599:
            raise ValueError(f"scripted status {status} out of range")
        out = {"kind": "status", "status": status}
        if m.group(2) is not None:
            out["retry_after"] = m.group(2)
        return out
    if a in ("ok", "garbage", "empty", "html", "close", "truncated"):
        return {"kind": a}
    m = re.match(r"^(hang|slow)(?::(\d+(?:\.\d+)?))?$", a)
    if m:
        if m.group(1) == "slow" and m.group(2) is None:
            raise ValueError("slow needs seconds: slow:<s>")
        secs = float(m.group(2)) if m.group(2) is not None else HANG_SECONDS
        if secs > 600:
            raise ValueError("at most 600 seconds")
        return {"kind": m.group(1), "seconds": secs}
    raise ValueError(f"bad scripted answer {a!r}")


def answer_name(ans: dict) -> str:
    if ans["kind"] == "status":
        return str(ans["status"]) + (f":{ans['retry_after']}" if "retry_after" in ans else "")
    if ans["kind"] in ("hang", "slow"):
        return f"{ans['kind']}:{ans['seconds']:g}"
    return ans["kind"]


# ---------------------------------------------------------------------------------- keys

class Signer:
    """The RSA key that signs issued access tokens, kept in the state directory."""

    def __init__(self, state_dir: str):
        path = os.path.join(state_dir, "signing-key.pem")
        if os.path.exists(path):
            with open(path, "rb") as f:
                self.key = serialization.load_pem_private_key(f.read(), password=None)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            data = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        cert_path = os.path.join(state_dir, "signing-cert.pem")
        cert = None
        if os.path.exists(cert_path):
            with open(cert_path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            if cert.public_key().public_numbers() != self.key.public_key().public_numbers():
                cert = None
        if cert is None:
            now = datetime.datetime.now(datetime.timezone.utc)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-identity token signing")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=365))
                    .sign(self.key, hashes.SHA256()))
            with open(cert_path + ".tmp", "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM))
            os.replace(cert_path + ".tmp", cert_path)
        der = cert.public_bytes(serialization.Encoding.DER)
        self.x5t = b64u(hashlib.sha1(der).digest())
        self.kid = self.x5t
        pub = self.key.public_key().public_numbers()
        self.jwk = {
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.x5t,
            "n": b64u(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")),
            "e": b64u(pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")),
            "x5c": [base64.b64encode(der).decode("ascii")],
            "alg": "RS256",
        }

    def sign(self, claims: dict, header_extra: dict | None = None) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        header.update(header_extra or {})
        si = b64u(jdump(header)) + "." + b64u(jdump(claims))
        sig = self.key.sign(si.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return si + "." + b64u(sig)


def cert_info(pem: str) -> dict:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii") if isinstance(pem, str) else pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    pub = cert.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise ValueError("only RSA certificates are supported for client assertions")
    return {"cert": cert, "public_key": pub,
            "x5t#S256": b64u(hashlib.sha256(der).digest()), "x5t": b64u(hashlib.sha1(der).digest()),
            "sha1_hex": hashlib.sha1(der).hexdigest().upper()}


# ---------------------------------------------------------------------------------- state

class State:
    def __init__(self, args, signer: Signer, state_dir: str, arc_key_dir: str):
        self.lock = threading.Lock()
        self.signer = signer
        self.state_dir = state_dir
        self.arc_key_dir = arc_key_dir
        self.arc_key_mode = args.arc_key_mode
        self.tenant = args.tenant.lower()
        self.base_url = ""
        self.port = 0
        self.shutdown = threading.Event()
        self.release = threading.Event()
        self.initial_identity_header = args.identity_header or secrets.token_urlsafe(24)
        self.initial_client_secret = secrets.token_urlsafe(30)
        self.log_requests = args.log_requests
        self.arc_files: set[str] = set()
        self.in_flight = {s: 0 for s in SOURCES}
        self.serving = {s: 0 for s in SOURCES}
        self.reset()

    # -------------------------------------------------------------- reset / defaults
    def reset(self, counters=True, scripts=True, settings=True, registrations=True, arc=True):
        with self.lock:
            if counters:
                self.stats = {s: self._empty_stats() for s in SOURCES}
                self.arc_stats = collections.Counter()
                self.log = collections.deque(maxlen=2000)
                self.arrivals = {s: collections.deque() for s in SOURCES}
                self.max_in_flight = {s: self.in_flight[s] for s in SOURCES}
                self.max_serving = {s: self.serving[s] for s in SOURCES}
            if scripts:
                self.scripts = {s: collections.deque() for s in SOURCES}
                self.modes = {s: None for s in SOURCES}
                self.resource_modes = {}     # (source, resource) -> answer
                old = self.release
                self.release = threading.Event()
                old.set()   # frees every request hanging or slow under the old script
            if settings:
                self.settings = default_settings()
                self.identity_header = self.initial_identity_header
                self.platform_cache = {}
            if registrations:
                self.identities = {}
                for ident in DEFAULT_IDENTITIES:
                    self._add_identity(json.loads(json.dumps(ident)))
                self.clients = {}
                for c in DEFAULT_CLIENTS:
                    c = json.loads(json.dumps(c))
                    if c.get("secrets") == ["<generated>"]:
                        c["secrets"] = [self.initial_client_secret]
                    self._add_client(c)
                self.unknown_resources = set()
                self.extra_tenants = set()
                self.used_jti = {}
                self.platform_cache = {}
            if arc:
                self._arc_clear()

    @staticmethod
    def _empty_stats() -> dict:
        return {"requests": 0, "tokens": 0, "throttled": 0, "scripted": 0,
                "by_status": collections.Counter(), "by_resource": collections.Counter(),
                "by_identity": collections.Counter()}

    def write_secrets_file(self):
        path = os.path.join(self.state_dir, "secrets.json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identity_header": self.initial_identity_header,
                       "clients": {c["client_id"]: self.initial_client_secret
                                   for c in DEFAULT_CLIENTS if c.get("secrets")}}, f)
        os.replace(tmp, path)
        return path

    # -------------------------------------------------------------- registrations
    def _add_identity(self, ident: dict) -> dict:
        name = str(ident.get("name") or "")
        if not name:
            raise ValueError("an identity needs a name")
        kind = ident.get("kind", "system" if name == "system" else "user")
        if kind not in ("system", "user"):
            raise ValueError("kind is system or user")
        for k in ("client_id", "object_id"):
            ident[k] = str(ident.get(k) or uuid.uuid4()).lower()
            if not GUID_RE.match(ident[k]):
                raise ValueError(f"{k} must be a GUID")
        if not ident.get("resource_id"):
            ident["resource_id"] = f"{RG}/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        ident["kind"] = kind
        ident["name"] = name
        ident.setdefault("resource_ids", {})
        if kind == "system":
            for other in list(self.identities.values()):
                if other["kind"] == "system" and other["name"] != name:
                    del self.identities[other["name"]]
        self.identities[name] = ident
        return ident

    def _add_client(self, c: dict) -> dict:
        cid = str(c.get("client_id") or "").lower()
        if not GUID_RE.match(cid):
            raise ValueError("client_id must be a GUID")
        old = self.clients.get(cid, {})
        client = {
            "name": c.get("name") or old.get("name") or cid,
            "client_id": cid,
            "object_id": str(c.get("object_id") or old.get("object_id") or uuid.uuid4()).lower(),
            "tenant": str(c.get("tenant") or old.get("tenant") or self.tenant).lower(),
            "secrets": list(c.get("secrets", old.get("secrets", []))),
            "expired_secrets": list(c.get("expired_secrets", old.get("expired_secrets", []))),
            "certificates": list(old.get("certificates", [])),
            "federations": list(old.get("federations", [])),
            "roles": list(c.get("roles", old.get("roles", []))),
            "disabled": bool(c.get("disabled", old.get("disabled", False))),
        }
        for pem in c.get("certificates", []):
            client["certificates"].append(self._cert_entry(pem))
        for fed in c.get("federations", []):
            client["federations"].append(self._fed_entry(fed))
        self.clients[cid] = client
        return client

    @staticmethod
    def _cert_entry(pem) -> dict:
        info = cert_info(pem)
        return {"pem": pem, **info}

    @staticmethod
    def _fed_entry(fed: dict) -> dict:
        if not fed.get("subject"):
            raise ValueError("a federation needs a subject")
        return {"issuer": fed.get("issuer"), "subject": str(fed["subject"]),
                "audience": str(fed.get("audience") or FEDERATION_AUDIENCE), "name": fed.get("name")}

    def identity_by(self, field: str, value: str, pool) -> dict | None:
        v = value.lower()
        for ident in pool:
            if field == "resource_id":
                ids = [ident["resource_id"]] + list(ident.get("resource_ids", {}).values())
                if any(x.lower() == v for x in ids):
                    return ident
            elif ident[field] == v:
                return ident
        return None

    def pool(self, source: str) -> list:
        idents = list(self.identities.values())
        if source == "arc":
            return [i for i in idents if i["kind"] == "system"]
        return idents

    def public_clients(self) -> list:
        out = []
        for c in self.clients.values():
            out.append({"name": c["name"], "client_id": c["client_id"], "object_id": c["object_id"],
                        "tenant": c["tenant"], "secrets": len(c["secrets"]),
                        "expired_secrets": len(c["expired_secrets"]),
                        "certificates": [{"x5t#S256": e["x5t#S256"], "x5t": e["x5t"]} for e in c["certificates"]],
                        "federations": [{k: f[k] for k in ("issuer", "subject", "audience")}
                                        for f in c["federations"]],
                        "roles": c["roles"], "disabled": c["disabled"]})
        return out

    # -------------------------------------------------------------- settings
    def update_settings(self, req: dict):
        """Validate and apply a partial update; nothing changes when any part is invalid."""
        s = json.loads(json.dumps(self.settings))
        header = self.identity_header
        for k, v in req.items():
            if k == "identity_header":
                if not isinstance(v, str) or not v:
                    raise ValueError("identity_header must be a non-empty string")
                header = v
            elif k in ("throttle", "lifetime", "number_format"):
                if isinstance(v, dict):
                    items = v.items()
                else:
                    items = [("all", v)]
                for src, val in items:
                    targets = (SOURCES if k != "number_format" else MI_SOURCES) if src == "all" else (src,)
                    for t in targets:
                        if t not in s[k]:
                            raise ValueError(f"{k}: unknown source {t!r}")
                        if k == "throttle":
                            s[k][t] = bool(val)
                        elif k == "lifetime":
                            val = int(val)
                            if not 1 <= val <= 7 * 86400:
                                raise ValueError("lifetime is 1 s .. 7 days")
                            s[k][t] = val
                        else:
                            if val not in ("strings", "numbers"):
                                raise ValueError("number_format is strings or numbers")
                            s[k][t] = val
            elif k == "arc_realm":
                if v not in ARC_REALM_MODES:
                    raise ValueError(f"arc_realm is one of {', '.join(ARC_REALM_MODES)}")
                s[k] = v
            elif k == "token_versions":
                if not isinstance(v, dict) or any(x not in ("1.0", "2.0") for x in v.values()):
                    raise ValueError("token_versions maps resource -> \"1.0\" | \"2.0\"")
                s[k] = dict(v)
            elif k in ("platform_cache", "arc_single_use", "reject_forwarded"):
                s[k] = bool(v)
            elif k == "throttle_retry_after":
                s[k] = None if v is None else int(v)
            elif k in ("max_in_flight", "max_per_second", "platform_cache_min_remaining", "arc_secret_ttl",
                       "assertion_skew", "max_assertion_lifetime"):
                s[k] = int(v)
            elif k == "appservice_auth_status":
                if int(v) not in (400, 401, 403):
                    raise ValueError("appservice_auth_status is 400, 401 or 403")
                s[k] = int(v)
            else:
                raise ValueError(f"unknown setting {k!r}")
        self.settings = s
        self.identity_header = header

    # -------------------------------------------------------------- arrivals, throttling, scripts
    def admit(self, source: str, resource, identity) -> tuple:
        """Count an arrival; return (throttled, answer) and mark the request in flight."""
        now = time.monotonic()
        with self.lock:
            st = self.stats[source]
            st["requests"] += 1
            if resource is not None:
                st["by_resource"][resource] += 1
            if identity is not None:
                st["by_identity"][identity] += 1
            arr = self.arrivals[source]
            while arr and now - arr[0] > 1.0:
                arr.popleft()
            arr.append(now)
            self.in_flight[source] += 1
            self.max_in_flight[source] = max(self.max_in_flight[source], self.in_flight[source])
            throttled = False
            if self.settings["throttle"][source]:
                if (self.serving[source] >= self.settings["max_in_flight"]
                        or len(arr) > self.settings["max_per_second"]):
                    throttled = True
            if throttled:
                st["throttled"] += 1
                return True, None, self.release
            self.serving[source] += 1
            self.max_serving[source] = max(self.max_serving[source], self.serving[source])
            answer = None
            if self.scripts[source]:
                answer = self.scripts[source].popleft()
            elif (source, resource) in self.resource_modes:
                answer = self.resource_modes[(source, resource)]
            elif self.modes[source] is not None:
                answer = self.modes[source]
            if answer is not None and answer["kind"] != "ok":
                st["scripted"] += 1
            return False, answer, self.release

    def leave(self, source: str, admitted: bool):
        with self.lock:
            self.in_flight[source] -= 1
            if admitted:
                self.serving[source] -= 1

    # -------------------------------------------------------------- Arc key files
    def _arc_clear(self):
        for p in list(getattr(self, "arc_files", ())):
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    os.rmdir(p)
                else:
                    os.unlink(p)
            except OSError:
                pass
        for p in sorted(getattr(self, "arc_dirs", ()), key=len, reverse=True):
            try:
                os.rmdir(p)
            except OSError:
                pass
        self.arc_files = set()
        self.arc_dirs = set()
        self.arc_secrets = {}

    def _mkdir(self, path: str):
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700)
            self.arc_dirs.add(path)

    def arc_expire(self):
        now = time.time()
        with self.lock:
            for secret, info in list(self.arc_secrets.items()):
                if info["expires"] < now:
                    del self.arc_secrets[secret]
                    for p in info["files"]:
                        try:
                            os.unlink(p)
                        except OSError:
                            pass
                        self.arc_files.discard(p)

    def _write_file(self, path: str, data: bytes):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, self.arc_key_mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.arc_files.add(path)

    def arc_challenge(self) -> tuple:
        """Create a key file per the arc_realm setting; return (www_authenticate or None, path)."""
        mode = self.settings["arc_realm"]
        ident = secrets.token_hex(16)
        secret = secrets.token_hex(32)
        d = self.arc_key_dir
        files = []
        hostile = mode in HOSTILE_MODES
        realm = None
        with self.lock:
            if mode in ("normal", "no_realm", "no_header", "quoted"):
                realm = os.path.join(d, ident + ".key")
                self._write_file(realm, secret.encode())
                files.append(realm)
            elif mode == "max_size":
                secret = secrets.token_hex(ARC_MAX_KEY // 2)[:ARC_MAX_KEY]
                realm = os.path.join(d, ident + ".key")
                self._write_file(realm, secret.encode())
                files.append(realm)
            elif mode == "too_big":
                secret = secrets.token_hex(ARC_MAX_KEY // 2 + 1)[:ARC_MAX_KEY + 1]
                realm = os.path.join(d, ident + ".key")
                self._write_file(realm, secret.encode())
                files.append(realm)
            elif mode == "not_key":
                realm = os.path.join(d, ident + ".txt")
                self._write_file(realm, secret.encode())
                files.append(realm)
            elif mode in ("outside", "symlink"):
                out_dir = os.path.join(self.state_dir, "arc-outside")
                self._mkdir(out_dir)
                target = os.path.join(out_dir, ident + ".key")
                self._write_file(target, secret.encode())
                files.append(target)
                if mode == "outside":
                    realm = target
                else:
                    realm = os.path.join(d, ident + ".key")
                    os.symlink(target, realm)
                    self.arc_files.add(realm)
                    files.append(realm)
            elif mode == "dotdot":
                parent = os.path.dirname(d.rstrip("/"))
                target = os.path.join(parent, ident + ".key")
                self._write_file(target, secret.encode())
                files.append(target)
                realm = d.rstrip("/") + "/../" + ident + ".key"
            elif mode == "prefix":
                evil = d.rstrip("/") + "-evil"
                self._mkdir(evil)
                realm = os.path.join(evil, ident + ".key")
                self._write_file(realm, secret.encode())
                files.append(realm)
            elif mode == "relative":
                realm = os.path.join(os.path.basename(d.rstrip("/")), ident + ".key")
                target = os.path.join(d, ident + ".key")
                self._write_file(target, secret.encode())
                files.append(target)
            elif mode == "missing_file":
                realm = os.path.join(d, ident + ".key")
                secret = None
            elif mode == "directory":
                realm = os.path.join(d, ident + ".key")
                os.mkdir(realm, 0o700)
                self.arc_files.add(realm)
                secret = None
            elif mode == "fifo":
                realm = os.path.join(d, ident + ".key")
                os.mkfifo(realm, 0o600)
                self.arc_files.add(realm)
                secret = None
            if secret is not None:
                self.arc_secrets[secret] = {"expires": time.time() + self.settings["arc_secret_ttl"],
                                            "files": files, "hostile": hostile, "mode": mode}
            self.arc_stats["challenges"] += 1
        if mode == "no_header":
            return None, realm
        if mode == "no_realm":
            return "Basic", realm
        if mode == "quoted":
            return f'Basic realm="{realm}"', realm
        return f"Basic realm={realm}", realm

    def arc_check(self, presented: str) -> str:
        """'ok', 'hostile' or 'bad' for the secret a client presented."""
        with self.lock:
            for secret, info in self.arc_secrets.items():
                if hmac.compare_digest(secret.encode(), presented.encode()):
                    if info["expires"] < time.time():
                        return "bad"
                    if info["hostile"]:
                        self.arc_stats["hostile_secret_sent"] += 1
                        return "hostile"
                    if self.settings["arc_single_use"]:
                        del self.arc_secrets[secret]
                    self.arc_stats["auth_ok"] += 1
                    return "ok"
            self.arc_stats["auth_bad"] += 1
            return "bad"

    # -------------------------------------------------------------- tokens
    def token_version(self, source: str, resource: str) -> str:
        v = self.settings["token_versions"].get(resource)
        if v:
            return v
        return "2.0" if source == "entra" else "1.0"

    def issue(self, source: str, subject: dict, resource: str, name: str, tenant: str,
              is_client: bool, azpacr: str = "2") -> tuple:
        """Sign an access token; return (token, iat, nbf, exp)."""
        now = int(time.time())
        with self.lock:
            lifetime = self.settings["lifetime"][source]
            key = (source, name, resource)
            if not is_client and self.settings["platform_cache"]:
                hit = self.platform_cache.get(key)
                if hit and hit[3] - now > self.settings["platform_cache_min_remaining"]:
                    self.stats[source]["tokens"] += 1
                    return hit
            version = self.token_version(source, resource)
        iat = nbf = now - 300
        exp = now + lifetime
        cid = subject["client_id"]
        claims = {"aud": resource}
        if version == "2.0":
            claims["iss"] = f"https://login.microsoftonline.com/{tenant}/v2.0"
        else:
            claims["iss"] = f"https://sts.windows.net/{tenant}/"
        claims.update({"iat": iat, "nbf": nbf, "exp": exp, "aio": b64u(secrets.token_bytes(24))})
        if version == "2.0":
            claims.update({"azp": cid, "azpacr": azpacr})
        else:
            claims.update({"appid": cid, "appidacr": azpacr, "idp": claims["iss"]})
        claims.update({"idtyp": "app", "oid": subject["object_id"], "rh": "0." + b64u(secrets.token_bytes(18)),
                       "sub": subject["object_id"], "tid": tenant, "uti": b64u(secrets.token_bytes(16)),
                       "ver": version})
        if is_client and subject.get("roles"):
            claims["roles"] = list(subject["roles"])
        if not is_client:
            rid = subject.get("resource_ids", {}).get(source) or subject["resource_id"]
            claims["xms_mirid"] = rid
        claims["fake_source"] = source
        claims["fake_identity"] = name
        extra = {"x5t": self.signer.x5t} if version == "1.0" else None
        token = self.signer.sign(claims, extra)
        out = (token, iat, nbf, exp)
        with self.lock:
            self.stats[source]["tokens"] += 1
            if not is_client and self.settings["platform_cache"]:
                self.platform_cache[key] = out
        return out

    def jti_seen(self, client_id: str, jti: str, exp: int) -> bool:
        now = time.time()
        with self.lock:
            for k, until in list(self.used_jti.items()):
                if until < now:
                    del self.used_jti[k]
            k = (client_id, jti)
            if k in self.used_jti:
                return True
            self.used_jti[k] = max(exp, now) + self.settings["assertion_skew"] + 60
            return False


# ---------------------------------------------------------------------------------- HTTP

LOG_HEADERS = ("host", "metadata", "x-identity-header", "secret", "authorization", "content-type", "user-agent",
               "x-forwarded-for", "accept", "connection", "x-ms-client-request-id", "client-request-id",
               "return-client-request-id", "x-client-sku", "x-client-ver", "proxy-authorization")
SECRET_HEADERS = ("x-identity-header", "secret", "authorization", "proxy-authorization")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-identity/1.0"
    sys_version = ""
    disable_nagle_algorithm = True   # headers and body go out in separate writes

    def version_string(self):
        return self.server_version

    @property
    def state(self) -> State:
        return self.server.state

    def log_message(self, fmt, *args):
        if self.state.log_requests:
            sys.stderr.write("fake_identity: %s %s -> %s\n" % (self.command, urlsplit(self.path).path,
                                                              getattr(self, "_status", "-")))

    # -------------------------------------------------------------- plumbing
    def send_response(self, code, message=None):
        self._status = code
        # Counted before the answer leaves: a client reading the stats right after its
        # answer must see it counted.
        source = getattr(self, "_counting", None)
        if source:
            with self.state.lock:
                self.state.stats[source]["by_status"][str(code)] += 1
            self._counting = None
        super().send_response(code, message)

    def _send(self, status: int, body: bytes, ctype: str = "application/json; charset=utf-8",
              headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, jdump(obj), headers=headers)

    def _read_body(self, limit: int) -> bytes | None:
        te = self.headers.get("Transfer-Encoding")
        if te:
            self.close_connection = True
            return None
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return None
        if n < 0 or n > limit:
            self.close_connection = True
            return None
        return self.rfile.read(n) if n else b""

    def _drain(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if 0 < n <= MAX_FORM:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def _not_found(self):
        self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html; charset=utf-8")

    # -------------------------------------------------------------- routing
    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def _route(self, method: str):
        self._status = None
        self._counting = None
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/_control/"):
            return self._control(path[len("/_control/"):], method, parts.query)
        if path == "/_fake/jwks" and method == "GET":
            return self._json(200, {"keys": [self.state.signer.jwk]},
                              headers={"Cache-Control": "max-age=86400, private"})
        if path == "/metadata/identity/oauth2/token":
            return self._source("imds", method, parts)
        if path == "/arc/metadata/identity/oauth2/token":
            return self._source("arc", method, parts)
        if path.lower() in ("/msi/token", "/msi/token/"):
            return self._source("appservice", method, parts)
        m = re.match(r"^/([^/]+)/oauth2/v2\.0/token$", path)
        if m:
            return self._source("entra", method, parts, tenant=m.group(1))
        self._drain()
        self._not_found()

    # -------------------------------------------------------------- per-source frame
    def _source(self, source: str, method: str, parts, tenant: str | None = None):
        st = self.state
        self._counting = source
        self._log = {"t": time.time(), "source": source, "method": method, "path": parts.path,
                     "query": dict(parse_qsl(parts.query, keep_blank_values=True)),
                     "headers": self._log_headers()}
        form = None
        if source == "entra":
            body = self._read_body(MAX_FORM) if method == "POST" else (self._drain() or b"")
            form = self._parse_form(body)
            self._log["form"] = self._log_form(form)
            resource, ident = self._entra_keys(form)
            self._log["tenant"] = tenant
        else:
            self._drain()
            resource, ident = self._mi_keys(source, self._log["query"])
        self._log["resource"] = resource
        self._log["identity"] = ident
        throttled, answer, release = st.admit(source, resource, ident)
        try:
            if throttled:
                self._log["answer"] = "throttled"
                return self._throttled(source)
            if answer is not None:
                self._log["answer"] = answer_name(answer)
                if answer["kind"] == "slow":
                    release.wait(answer["seconds"])
                    if st.shutdown.is_set():
                        self.close_connection = True
                        return
                elif answer["kind"] != "ok":
                    return self._scripted(source, answer, release)
            if source == "imds":
                return self._imds(method, parts)
            if source == "arc":
                return self._arc(method, parts)
            if source == "appservice":
                return self._appservice(method, parts)
            return self._entra(method, tenant, form)
        finally:
            st.leave(source, not throttled)
            self._log["status"] = self._status
            self._counting = None
            with st.lock:
                st.log.append(self._log)

    def _log_headers(self) -> dict:
        out = {}
        for name in LOG_HEADERS:
            v = self.headers.get(name)
            if v is None:
                continue
            if name in SECRET_HEADERS:
                scheme = v.split(" ", 1)[0] if " " in v and name.endswith("authorization") else ""
                v = (scheme + " <redacted>").strip()
            out[name] = v
        return out

    # -------------------------------------------------------------- generic answers
    def _error_body(self, source: str, status: int) -> dict:
        if source == "entra":
            table = {429: ("temporarily_unavailable", 50196, "The server terminated an operation because it "
                           "encountered a client request loop. Please contact your app vendor."),
                     503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
                     }
            err = table.get(status, ("server_error" if status >= 500 else "invalid_request", 50000,
                                     "There was an error issuing a token or an issue with our sign-in service."))
            return entra_error(*err)
        if source == "appservice":
            return {"statusCode": status, "message": {
                404: "Not found.", 410: "Gone.", 429: "Too many requests.", 500: "Internal server error.",
                503: "Service unavailable."}.get(status, f"HTTP {status}"), "correlationId": str(uuid.uuid4())}
        table = {404: ("not_found", "The managed identity endpoint is being updated."),
                 410: ("gone", "The managed identity endpoint is being updated; available within 70 seconds."),
                 429: ("too_many_requests", "Too many requests."),
                 500: ("unknown", "Failed to retrieve token from the Active directory."),
                 503: ("service_unavailable", "The managed identity endpoint is unavailable.")}
        err, desc = table.get(status, ("unknown", f"HTTP {status}"))
        return {"error": err, "error_description": desc}

    def _throttled(self, source: str):
        ra = self.state.settings["throttle_retry_after"]
        headers = {"Retry-After": str(ra)} if ra is not None else {}
        if source == "entra":
            body = self._error_body(source, 429)
        elif source == "appservice":
            body = {"statusCode": 429, "message": "Too many requests.", "correlationId": str(uuid.uuid4())}
        else:
            body = {"error": "too_many_requests",
                    "error_description": "The managed identity endpoint is throttling: at most "
                                         f"{self.state.settings['max_in_flight']} requests in flight and "
                                         f"{self.state.settings['max_per_second']} per second."}
        self._json(429, body, headers=headers)

    def _scripted(self, source: str, ans: dict, release: threading.Event):
        kind = ans["kind"]
        if kind == "hang":
            release.wait(ans["seconds"])
            self.close_connection = True
            return
        if kind == "close":
            self.close_connection = True
            return
        if kind == "garbage":
            return self._send(200, b"\x89PNG\r\n\x1a\n\x00garbage\xff\xfe{{{not json",
                              "application/json; charset=utf-8")
        if kind == "empty":
            return self._send(200, b"")
        if kind == "html":
            return self._send(200, b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
                                   b"<body>Captive portal</body></html>", "text/html; charset=utf-8")
        if kind == "truncated":
            body = b'{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln","expires_'
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body) * 2))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        status = ans["status"]
        headers = {}
        if "retry_after" in ans:
            headers["Retry-After"] = ans["retry_after"]
        if "body" in ans:
            b = ans["body"]
            data = b.encode("utf-8") if isinstance(b, str) else jdump(b)
            return self._send(status, data, headers=headers)
        self._json(status, self._error_body(source, status), headers=headers)

    # -------------------------------------------------------------- MI request parsing
    SELECTORS = {"imds": ("client_id", "object_id", "msi_res_id"),
                 "arc": ("client_id", "object_id", "msi_res_id"),
                 "appservice": ("client_id", "principal_id", "object_id", "mi_res_id", "clientid")}
    FIELD = {"client_id": "client_id", "clientid": "client_id", "object_id": "object_id",
             "principal_id": "object_id", "msi_res_id": "resource_id", "mi_res_id": "resource_id"}

    def _selectors(self, source: str, q: dict) -> list:
        return [(k, q[k]) for k in self.SELECTORS[source] if k in q]

    def _mi_keys(self, source: str, q: dict) -> tuple:
        """(resource, identity label) for counters, without validating anything."""
        resource = q.get("resource")
        sels = self._selectors(source, q)
        st = self.state
        with st.lock:
            pool = st.pool(source)
            if not sels:
                label = next((i["name"] for i in pool if i["kind"] == "system"), "system")
            elif len(sels) == 1:
                k, v = sels[0]
                ident = st.identity_by(self.FIELD[k], v, pool)
                label = ident["name"] if ident else f"{k}={v}"
            else:
                label = "&".join(f"{k}={v}" for k, v in sels)
        return resource, label

    def _resolve(self, source: str, sels: list):
        """(identity, None) or (None, (status, kind, message)) where kind is notfound|multiple|ambiguous."""
        st = self.state
        with st.lock:
            pool = st.pool(source)
            if len(sels) > 1:
                return None, "multiple"
            if not sels:
                system = [i for i in pool if i["kind"] == "system"]
                if system:
                    return system[0], None
                users = [i for i in pool if i["kind"] == "user"]
                if len(users) == 1:
                    return users[0], None
                return None, ("ambiguous" if users else "notfound")
            k, v = sels[0]
            ident = st.identity_by(self.FIELD[k], v, pool)
            return (ident, None) if ident else (None, "notfound")

    def _imds_error(self, status: int, error: str, desc: str, headers=None):
        self._json(status, {"error": error, "error_description": desc}, headers=headers)

    def _mi_common_checks(self, source: str, method: str, q: dict, versions) -> bool:
        """Method, Metadata header, X-Forwarded-For, api-version, resource presence. True when answered."""
        if method != "GET":
            self._imds_error(405, "invalid_request", f"The HTTP method {method} is not allowed; use GET.")
            return True
        if self.state.settings["reject_forwarded"] and self.headers.get("X-Forwarded-For") is not None:
            self._imds_error(400, "invalid_request",
                             "Requests with an X-Forwarded-For header are not accepted by this endpoint.")
            return True
        if (self.headers.get("Metadata") or "").strip().lower() != "true":
            self._imds_error(400, "bad_request_102", "Required metadata header not specified")
            return True
        ver = q.get("api-version")
        if not ver:
            self._imds_error(400, "invalid_request", "Required query variable 'api-version' is missing")
            return True
        if ver not in versions:
            self._imds_error(400, "invalid_request", f"Invalid api-version '{ver}'. Supported versions: "
                             + ", ".join(sorted(versions)))
            return True
        if not q.get("resource"):
            self._imds_error(400, "invalid_request", "Required audience parameter not specified")
            return True
        return False

    def _mi_token(self, source: str, q: dict):
        """After request-level checks: selectors, identity, resource, then the 200 answer."""
        st = self.state
        sels = self._selectors(source, q)
        ident, err = self._resolve(source, sels)
        if err == "multiple":
            return self._imds_error(400, "invalid_request",
                                    "Multiple identity selectors specified: use at most one of client_id, "
                                    "object_id, msi_res_id.")
        if err == "ambiguous":
            return self._imds_error(400, "invalid_request",
                                    "Multiple user assigned identities exist, please specify the clientId / "
                                    "resourceId of the identity in the token request")
        if err:
            return self._imds_error(400, "invalid_request", "Identity not found")
        resource = q["resource"]
        if (not valid_resource_syntax(resource) or resource.endswith("/.default")
                or resource.lower() in st.unknown_resources):
            return self._imds_error(400, "invalid_resource", "AADSTS500011: " + resource_not_found(
                resource, st.tenant) + f" Trace ID: {uuid.uuid4()} Correlation ID: {uuid.uuid4()} "
                f"Timestamp: {now_stamp()}")
        token, iat, nbf, exp = st.issue(source, ident, resource, ident["name"], st.tenant, is_client=False)
        now = int(time.time())
        fmt = st.settings["number_format"][source]
        conv = (lambda n: str(n)) if fmt == "strings" else (lambda n: n)
        body = {"access_token": token, "client_id": ident["client_id"], "expires_in": conv(exp - now),
                "expires_on": conv(exp), "ext_expires_in": conv(exp - now), "not_before": conv(nbf),
                "resource": resource, "token_type": "Bearer"}
        if q.get("api-version") == "2018-02-01":
            body = {"access_token": token, "refresh_token": "", **{k: v for k, v in body.items()
                                                                  if k != "access_token"}}
        self._log["issued_to"] = ident["name"]
        self._json(200, body)

    # -------------------------------------------------------------- IMDS
    def _imds(self, method: str, parts):
        q = self._log["query"]
        if self._mi_common_checks("imds", method, q, IMDS_VERSIONS):
            return
        self._mi_token("imds", q)

    # -------------------------------------------------------------- Arc
    def _arc(self, method: str, parts):
        st = self.state
        q = self._log["query"]
        if self._mi_common_checks("arc", method, q, ARC_VERSIONS):
            return
        st.arc_expire()
        auth = self.headers.get("Authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            verdict = st.arc_check(value) if scheme.lower() == "basic" and value else "bad"
            self._log["arc_auth"] = verdict
            if verdict == "ok":
                return self._mi_token("arc", q)
        www, realm = st.arc_challenge()
        self._log["arc_realm"] = realm
        headers = {"WWW-Authenticate": www} if www is not None else {}
        self._imds_error(401, "unauthorized_client" if auth is not None else "invalid_request",
                         "Invalid or missing authorization: read the file named by the WWW-Authenticate realm "
                         "and send its contents as Authorization: Basic <contents>.", headers=headers)

    # -------------------------------------------------------------- App Service
    def _as_error(self, status: int, message: str):
        self._json(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})

    def _appservice(self, method: str, parts):
        st = self.state
        q = self._log["query"]
        if method != "GET":
            return self._as_error(405, f"The HTTP method {method} is not allowed.")
        ver = q.get("api-version")
        if ver not in (APPSERVICE_V2019, APPSERVICE_V2017):
            return self._as_error(400, f"Unsupported or missing api-version '{ver or ''}'. Use "
                                       f"{APPSERVICE_V2019} (or the legacy {APPSERVICE_V2017}).")
        legacy = ver == APPSERVICE_V2017
        hname = "secret" if legacy else "X-IDENTITY-HEADER"
        presented = self.headers.get(hname)
        ok = presented is not None and hmac.compare_digest(presented.encode(), st.identity_header.encode())
        self._log["secret_ok"] = ok
        if not ok:
            return self._as_error(st.settings["appservice_auth_status"],
                                  f"Unauthorized: the {hname} header is missing or does not match.")
        if not q.get("resource"):
            return self._as_error(400, "The resource parameter is required.")
        sels = self._selectors("appservice", q)
        if legacy:
            bad = [k for k, _ in sels if k != "clientid"]
        else:
            bad = [k for k, _ in sels if k == "clientid"]
        if bad:
            return self._as_error(400, f"The parameter {bad[0]} is not supported with api-version {ver}.")
        ident, err = self._resolve("appservice", sels)
        if err == "multiple":
            return self._as_error(400, "Only one of client_id, principal_id (object_id) and mi_res_id may be "
                                       "specified.")
        if err:
            return self._as_error(400, "Unable to load the proper Managed Identity.")
        resource = q["resource"]
        if (not valid_resource_syntax(resource) or resource.endswith("/.default")
                or resource.lower() in st.unknown_resources):
            return self._as_error(400, "AADSTS500011: " + resource_not_found(resource, st.tenant))
        token, iat, nbf, exp = st.issue("appservice", ident, resource, ident["name"], st.tenant, is_client=False)
        self._log["issued_to"] = ident["name"]
        if legacy:
            when = datetime.datetime.fromtimestamp(exp, datetime.timezone.utc)
            body = {"access_token": token, "expires_on": when.strftime("%m/%d/%Y %H:%M:%S +00:00"),
                    "resource": resource, "token_type": "Bearer"}
        else:
            fmt = st.settings["number_format"]["appservice"]
            body = {"access_token": token, "expires_on": str(exp) if fmt == "strings" else exp,
                    "resource": resource, "token_type": "Bearer", "client_id": ident["client_id"]}
        self._json(200, body)

    # -------------------------------------------------------------- Entra token endpoint
    @staticmethod
    def _parse_form(body) -> list | None:
        if body is None:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return parse_qsl(text, keep_blank_values=True)

    def _log_form(self, form) -> dict:
        if form is None:
            return {}
        out = {}
        for k, v in form:
            if k == "client_secret":
                out[k] = "<redacted>"
            elif k == "client_assertion":
                out[k] = "<redacted>"
                try:
                    h, c, _, _ = parse_jwt(v)
                    self._log["assertion"] = {"header": h, "claims": c}
                except (ValueError, UnicodeDecodeError):
                    self._log["assertion"] = {"malformed": True}
            else:
                out[k] = v
        return out

    def _entra_keys(self, form) -> tuple:
        if not form:
            return None, None
        d = dict(form)
        scope = d.get("scope")
        resource = scope[:-len("/.default")] if scope and scope.endswith("/.default") else scope
        cid = (d.get("client_id") or "").lower() or None
        if cid is None:
            basic = self._basic_client()
            cid = basic[0] if basic else None
        with self.state.lock:
            c = self.state.clients.get(cid) if cid else None
        return resource, (c["name"] if c else cid)

    def _basic_client(self):
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        user, sep, pw = raw.partition(":")
        if not sep:
            return None
        return unquote_plus(user).lower(), unquote_plus(pw)

    def _e(self, status: int, error: str, code: int, text: str):
        self._log["aadsts"] = code
        self._json(status, entra_error(error, code, text),
                   headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _token_urls(self, tenant: str) -> set:
        """The token URLs a client assertion's aud may name: this listener's, by address or Host."""
        scheme, port = self.server.scheme, self.server.server_address[1]
        hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        if self.headers.get("Host"):
            hosts.add(self.headers["Host"])
        out = set()
        for h in hosts:
            for p in (f"/{tenant}/oauth2/v2.0/token", f"/{tenant}/oauth2/token"):
                out.add(f"{scheme}://{h}{p}")
        return out

    def _entra(self, method: str, tenant: str, form):
        st = self.state
        if method != "POST":
            return self._e(400, "invalid_request", 900561,
                           f"The endpoint only accepts POST, OPTIONS requests. Received a {method} request.")
        t = tenant.lower()
        if t in ("common", "organizations", "consumers"):
            return self._e(400, "invalid_request", 50194,
                           "Application is not configured as a multi-tenant application. Usage of the /common "
                           "endpoint is not supported for such applications. Use a tenant-specific endpoint.")
        with st.lock:
            known = {st.tenant} | st.extra_tenants | {c["tenant"] for c in st.clients.values()}
        if not GUID_RE.match(t):
            if DNS_RE.match(t):
                return self._e(400, "invalid_tenant", 90002,
                               f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                               "and are signing into the correct cloud.")
            return self._e(400, "invalid_request", 900023,
                           f"Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid "
                           "external domain.")
        if t not in known:
            return self._e(400, "invalid_tenant", 90002,
                           f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
                           "are signing into the correct cloud.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if form is None or ctype != "application/x-www-form-urlencoded":
            form = []
        seen = set()
        for k, _ in form:
            if k in seen:
                return self._e(400, "invalid_request", 9000411,
                               f"The request is not properly formatted. The parameter '{k}' is duplicated.")
            seen.add(k)
        d = dict(form)
        if not d.get("grant_type"):
            return self._e(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'grant_type'.")
        if d["grant_type"] != "client_credentials":
            return self._e(400, "unsupported_grant_type", 70003,
                           f"The app requested an unsupported grant type '{d['grant_type']}'.")
        basic = self._basic_client()
        cid = (d.get("client_id") or "").lower()
        if not cid and basic:
            cid = basic[0]
        if not cid:
            return self._e(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'client_id'.")
        with st.lock:
            client = st.clients.get(cid)
            if client is not None:
                client = {**client, "secrets": list(client["secrets"]),
                          "expired_secrets": list(client["expired_secrets"]),
                          "certificates": list(client["certificates"]), "federations": list(client["federations"]),
                          "roles": list(client["roles"])}
        if client is None or client["tenant"] != t:
            return self._e(400, "unauthorized_client", 700016,
                           f"Application with identifier '{cid}' was not found in the directory '{tenant}'. This "
                           "can happen if the application has not been installed by the administrator of the "
                           "tenant or consented to by any user in the tenant. You may have sent your "
                           "authentication request to the wrong tenant.")
        if client["disabled"]:
            return self._e(400, "unauthorized_client", 7000112,
                           f"Application '{cid}'({client['name']}) is disabled.")
        scope = d.get("scope")
        if not scope:
            return self._e(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'scope'.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default") or len(scopes[0]) <= len("/.default"):
            return self._e(400, "invalid_scope", 70011,
                           f"The provided request must include a 'scope' input parameter. The provided value for "
                           f"the input parameter 'scope' is not valid. The scope {scope} is not valid. Client "
                           "credential flows must have one scope value with /.default suffixed to the resource "
                           "identifier (application ID URI).")
        resource = scopes[0][:-len("/.default")]
        secret = d.get("client_secret")
        if secret is None and basic and basic[0] == cid:
            secret = basic[1]
        assertion = d.get("client_assertion")
        atype = d.get("client_assertion_type")
        if secret is not None and (assertion is not None or atype is not None):
            return self._e(400, "invalid_request", 9002313,
                           "Invalid request. Request is malformed or invalid: send either client_secret or "
                           "client_assertion, not both.")
        if secret is None and assertion is None:
            return self._e(401, "invalid_client", 7000218,
                           "The request body must contain the following parameter: 'client_assertion' or "
                           "'client_secret'.")
        azpacr = "1"
        if secret is not None:
            if any(hmac.compare_digest(secret.encode(), s.encode()) for s in client["secrets"]):
                self._log["credential"] = "secret"
            elif any(hmac.compare_digest(secret.encode(), s.encode()) for s in client["expired_secrets"]):
                return self._e(401, "invalid_client", 7000222,
                               f"The provided client secret keys for app '{cid}' are expired. Visit the Azure "
                               "portal to create new keys for your app, or consider using certificate "
                               "credentials for added security.")
            else:
                return self._e(401, "invalid_client", 7000215,
                               "Invalid client secret provided. Ensure the secret being sent in the request is "
                               f"the client secret value, not the client secret ID, for a secret added to app "
                               f"'{cid}'.")
        else:
            if atype != JWT_BEARER:
                return self._e(400, "invalid_request", 9002313,
                               f"Invalid request. Request is malformed or invalid: client_assertion_type must be "
                               f"'{JWT_BEARER}'.")
            azpacr = "2"
            if not self._check_assertion(client, tenant, assertion or ""):
                return
        with st.lock:
            unknown = resource.lower() in st.unknown_resources
        if unknown or not valid_resource_syntax(resource):
            return self._e(400, "invalid_resource", 500011, resource_not_found(resource, tenant))
        token, iat, nbf, exp = st.issue("entra", client, resource, client["name"], t, is_client=True,
                                        azpacr=azpacr)
        now = int(time.time())
        self._log["issued_to"] = client["name"]
        self._json(200, {"token_type": "Bearer", "expires_in": exp - now, "ext_expires_in": exp - now,
                         "access_token": token},
                   headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _check_assertion(self, client: dict, tenant: str, assertion: str) -> bool:
        """Verify a client assertion; answer the error and return False when it fails."""
        st = self.state
        cid = client["client_id"]
        try:
            header, claims, signing_input, sig = parse_jwt(assertion)
        except (ValueError, UnicodeDecodeError):
            self._e(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
            return False
        iss, sub = claims.get("iss"), claims.get("sub")
        now = time.time()
        skew = st.settings["assertion_skew"]
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        for v in (exp, nbf, iat):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                self._e(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
                return False
        self_signed = (isinstance(iss, str) and iss.lower() == cid) or (isinstance(sub, str) and sub.lower() == cid)
        if not self_signed:
            return self._check_federated(client, claims, now, skew)
        self._log["credential"] = "certificate"
        alg = header.get("alg")
        if alg not in ("PS256", "RS256"):
            self._e(401, "invalid_client", 700027,
                    f"Client assertion contains an invalid signature. [Reason - The algorithm '{alg}' is not "
                    "supported; use PS256 (or RS256).]")
            return False
        t256, t1 = header.get("x5t#S256"), header.get("x5t")
        entry = None
        for c in client["certificates"]:
            if (t256 is not None and c["x5t#S256"] == t256) or (t256 is None and t1 is not None and c["x5t"] == t1):
                entry = c
                break
        if entry is None:
            self._e(401, "invalid_client", 700027,
                    "The certificate with identifier used to sign the client assertion is not registered on "
                    f"application. [Reason - The key was not found., Thumbprint of key used by client: "
                    f"'{t256 or t1}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see "
                    f"configured keys for app Id '{cid}'.]")
            return False
        try:
            if alg == "PS256":
                entry["public_key"].verify(sig, signing_input,
                                           padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                                           hashes.SHA256())
            else:
                entry["public_key"].verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            self._e(401, "invalid_client", 700027,
                    "Client assertion contains an invalid signature. [Reason - The key was found but the "
                    f"signature is invalid., Thumbprint of key used by client: '{entry['sha1_hex']}']")
            return False
        if not (isinstance(iss, str) and isinstance(sub, str) and iss.lower() == cid and sub.lower() == cid):
            self._e(401, "invalid_client", 700021,
                    "Client assertion application identifier doesn't match 'client_id' parameter. Review the "
                    "documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
            return False
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a in self._token_urls(tenant) for a in auds):
            self._e(401, "invalid_client", 700023,
                    "Client assertion audience claim does not match Realm issuer. Review the documentation at "
                    "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
            return False
        start = nbf if nbf is not None else iat
        if exp is None or start is None or now > exp + skew or now < start - skew \
                or exp - start > st.settings["max_assertion_lifetime"]:
            self._e(401, "invalid_client", 700024,
                    f"Client assertion is not within its valid time range. Current time: {now_stamp()}, "
                    f"assertion valid from {start}, expiry time of assertion {exp} (at most "
                    f"{st.settings['max_assertion_lifetime']} s).")
            return False
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            self._e(401, "invalid_client", 50027, "JWT token is invalid or malformed: the jti claim is missing.")
            return False
        if st.jti_seen(cid, jti, int(exp)):
            self._e(401, "invalid_client", 50012,
                    "Authentication failed: the client assertion's jti has already been used.")
            return False
        return True

    def _check_federated(self, client: dict, claims: dict, now: float, skew: int) -> bool:
        self._log["credential"] = "federated"
        iss, sub, aud = claims.get("iss"), claims.get("sub"), claims.get("aud")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(sub, str) or not isinstance(iss, str) or exp is None:
            self._e(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
            return False
        if now > exp + skew or (nbf is not None and now < nbf - skew):
            self._e(401, "invalid_client", 700024,
                    f"Client assertion is not within its valid time range. Current time: {now_stamp()}, "
                    f"expiry time of assertion {exp}.")
            return False
        auds = aud if isinstance(aud, list) else [aud]
        for fed in client["federations"]:
            if (fed["issuer"] is None or fed["issuer"] == iss) and fed["subject"] == sub and fed["audience"] in auds:
                return True
        self._e(401, "invalid_client", 70021,
                f"No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. "
                f"Assertion Subject: '{sub}'. Assertion Audience: '{aud if not isinstance(aud, list) else ','.join(map(str, aud))}'.")
        return False

    # -------------------------------------------------------------- control API
    def _control(self, name: str, method: str, query: str):
        try:
            body = self._read_body(4 * 1024 * 1024) if method == "POST" else (self._drain() or b"")
            if body is None:
                return self._json(413, {"error": "control body too large or unreadable"})
            req = json.loads(body) if body.strip() else {}
            if not isinstance(req, dict):
                raise ValueError("control bodies are JSON objects")
            q = dict(parse_qsl(query))
            if method == "GET":
                return self._control_get(name, q)
            if method != "POST":
                return self._json(405, {"error": "use GET or POST"})
            return self._control_post(name, req)
        except (KeyError, ValueError, TypeError) as exc:
            return self._json(400, {"error": f"{type(exc).__name__}: {exc}"})

    def _control_get(self, name: str, q: dict):
        st = self.state
        if name == "health":
            return self._json(200, {"ok": True, "pid": os.getpid()})
        if name == "stats":
            with st.lock:
                out = {}
                for s in SOURCES:
                    d = st.stats[s]
                    out[s] = {k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in d.items()}
                    out[s]["in_flight"] = st.in_flight[s]
                    out[s]["max_in_flight"] = st.max_in_flight[s]
                    out[s]["serving"] = st.serving[s]
                    out[s]["max_serving"] = st.max_serving[s]
                out["arc_auth"] = {k: st.arc_stats.get(k, 0) for k in
                                   ("challenges", "auth_ok", "auth_bad", "hostile_secret_sent")}
                out["arc_auth"]["live_secrets"] = len(st.arc_secrets)
                out["total"] = sum(st.stats[s]["requests"] for s in SOURCES)
            return self._json(200, out)
        if name == "requests":
            with st.lock:
                items = [e for e in st.log if not q.get("source") or e["source"] == q["source"]]
            return self._json(200, items)
        if name == "settings":
            with st.lock:
                return self._json(200, json.loads(json.dumps(st.settings)))
        if name == "identities":
            with st.lock:
                return self._json(200, {"identities": list(st.identities.values())})
        if name == "clients":
            with st.lock:
                return self._json(200, {"clients": st.public_clients()})
        if name == "arc":
            with st.lock:
                return self._json(200, {"key_dir": st.arc_key_dir, "files": sorted(st.arc_files),
                                        "realm_mode": st.settings["arc_realm"]})
        return self._json(404, {"error": f"unknown control GET {name!r}"})

    def _control_post(self, name: str, req: dict):
        st = self.state
        if name == "reset":
            st.reset(counters=req.get("counters", True), scripts=req.get("scripts", True),
                     settings=req.get("settings", True), registrations=req.get("registrations", True),
                     arc=req.get("arc", True))
            return self._json(200, {"ok": True})
        if name == "script":
            answers = [parse_answer(a) for a in req.get("answers", [])]
            targets = SOURCES if req.get("source", "all") == "all" else (req["source"],)
            with st.lock:
                for t in targets:
                    if t not in SOURCES:
                        raise ValueError(f"unknown source {t!r}")
                    if not req.get("append", False):
                        st.scripts[t].clear()
                    st.scripts[t].extend(answers)
                left = {t: [answer_name(a) for a in st.scripts[t]] for t in SOURCES}
            return self._json(200, {"ok": True, "queued": left})
        if name == "mode":
            mode = req.get("mode")
            ans = None if mode in (None, "ok", "up", "") else parse_answer(mode)
            targets = SOURCES if req.get("source", "all") == "all" else (req["source"],)
            resource = req.get("resource")
            with st.lock:
                for t in targets:
                    if t not in SOURCES:
                        raise ValueError(f"unknown source {t!r}")
                    if resource is None:
                        st.modes[t] = ans
                    elif ans is None:
                        st.resource_modes.pop((t, str(resource)), None)
                    else:
                        st.resource_modes[(t, str(resource))] = ans
                modes = {t: (answer_name(st.modes[t]) if st.modes[t] else "ok") for t in SOURCES}
                by_resource = {f"{t} {r}": answer_name(a) for (t, r), a in st.resource_modes.items()}
            return self._json(200, {"ok": True, "modes": modes, "resource_modes": by_resource})
        if name == "release":
            with st.lock:
                old = st.release
                st.release = threading.Event()
            old.set()
            return self._json(200, {"ok": True})
        if name == "settings":
            with st.lock:
                st.update_settings(req)
                st.platform_cache = {} if not st.settings["platform_cache"] else st.platform_cache
                return self._json(200, json.loads(json.dumps(st.settings)))
        if name == "identities":
            with st.lock:
                if req.get("replace"):
                    st.identities = {}
                added = [st._add_identity(dict(i)) for i in req.get("identities", [])]
            return self._json(200, {"added": added})
        if name == "identities/remove":
            with st.lock:
                removed = [n for n in req.get("names", []) if st.identities.pop(n, None) is not None]
            return self._json(200, {"removed": removed})
        if name == "clients":
            with st.lock:
                added = [st._add_client(dict(c))["client_id"] for c in req.get("clients", [])]
            return self._json(200, {"added": added})
        if name == "clients/remove":
            with st.lock:
                removed = [c for c in req.get("client_ids", []) if st.clients.pop(c.lower(), None) is not None]
            return self._json(200, {"removed": removed})
        if name == "certificates":
            with st.lock:
                client = st.clients[str(req["client_id"]).lower()]
                entry = st._cert_entry(req["pem"])
                if req.get("replace"):
                    client["certificates"] = []
                client["certificates"].append(entry)
            return self._json(200, {"x5t#S256": entry["x5t#S256"], "x5t": entry["x5t"]})
        if name == "federations":
            with st.lock:
                client = st.clients[str(req["client_id"]).lower()]
                entry = st._fed_entry(req)
                if req.get("replace"):
                    client["federations"] = []
                client["federations"].append(entry)
            return self._json(200, {"ok": True})
        if name == "resources":
            with st.lock:
                st.unknown_resources = {str(r).lower() for r in req.get("unknown", [])}
            return self._json(200, {"ok": True})
        if name == "tenants":
            with st.lock:
                st.extra_tenants = {str(t).lower() for t in req.get("known", [])}
            return self._json(200, {"ok": True})
        if name == "mint_federated":
            now = int(time.time())
            lifetime = int(req.get("lifetime", 3600))
            claims = {"aud": req.get("aud", [FEDERATION_AUDIENCE]),
                      "iss": req.get("iss", f"{st.base_url}/oidc-issuer"),
                      "sub": req.get("sub", WORKLOAD_SUBJECT),
                      "iat": now, "nbf": now, "exp": now + lifetime,
                      "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "workload"}}}
            claims.update(req.get("claims", {}))
            return self._json(200, {"token": st.signer.sign(claims)})
        return self._json(404, {"error": f"unknown control POST {name!r}"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    scheme = "http"
    tls_context = None

    def finish_request(self, request, client_address):
        # TLS handshakes happen here, in the connection's own thread, never in the accept loop
        if self.tls_context is not None:
            request.settimeout(30)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--state-dir", help="keys, secrets.json and (by default) the Arc key directory; "
                                        "a temporary directory removed at exit when not given")
    ap.add_argument("--arc-key-dir", help="where Arc key files are written (default <state-dir>/azcmagent/tokens)")
    ap.add_argument("--arc-key-mode", type=lambda s: int(s, 8), default=0o600)
    ap.add_argument("--identity-header", help="the App Service IDENTITY_HEADER secret (random when not given)")
    ap.add_argument("--tenant", default=TENANT)
    ap.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    ap.add_argument("--max-lifetime", type=float, default=3600.0, help="exit after this many seconds")
    ap.add_argument("--log-requests", action="store_true", help="one line per request on stderr (no secrets)")
    ap.add_argument("--tls-cert", help="also serve everything over HTTPS on a second port (PEM chain)")
    ap.add_argument("--tls-key", help="the key of --tls-cert")
    ap.add_argument("--tls-port", type=int, default=0)
    args = ap.parse_args(argv)
    if not GUID_RE.match(args.tenant):
        ap.error("--tenant must be a GUID")
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    temp_state = None
    if args.state_dir:
        state_dir = os.path.abspath(args.state_dir)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    else:
        temp_state = state_dir = tempfile.mkdtemp(prefix="fake-identity-")
    arc_key_dir = os.path.abspath(args.arc_key_dir or os.path.join(state_dir, "azcmagent", "tokens"))
    os.makedirs(arc_key_dir, mode=0o700, exist_ok=True)

    signer = Signer(state_dir)
    state = State(args, signer, state_dir, arc_key_dir)
    secrets_file = state.write_secrets_file()
    httpd = Server(("127.0.0.1", args.port), Handler)
    httpd.state = state
    port = httpd.server_address[1]
    state.port = port
    base = f"http://127.0.0.1:{port}"
    state.base_url = base

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    servers = [httpd]
    tls_base = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        tls = Server(("127.0.0.1", args.tls_port), Handler)
        tls.state, tls.scheme, tls.tls_context = state, "https", ctx
        servers.append(tls)
        tls_base = f"https://127.0.0.1:{tls.server_address[1]}"
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def endpoints(b):
        return {
            "imds": f"{b}/metadata/identity/oauth2/token",
            "imds_authority_host": b,
            "appservice": f"{b}/msi/token",
            "arc": f"{b}/arc/metadata/identity/oauth2/token",
            "arc_imds_endpoint": f"{b}/arc",
            "entra_authority": f"{b}/",
            "entra_token": f"{b}/{state.tenant}/oauth2/v2.0/token",
        }

    info = {
        "port": port, "pid": os.getpid(), "base_url": base, "tenant": state.tenant,
        "state_dir": state_dir, "arc_key_dir": arc_key_dir, "secrets_file": secrets_file,
        "jwks_url": f"{base}/_fake/jwks",
        "endpoints": endpoints(base),
        "identities": {i["name"]: {k: i[k] for k in ("client_id", "object_id", "resource_id")}
                       for i in DEFAULT_IDENTITIES},
        "clients": {c["name"]: c["client_id"] for c in DEFAULT_CLIENTS},
    }
    if tls_base:
        info.update({"tls_port": servers[1].server_address[1], "tls_base_url": tls_base,
                     "tls_endpoints": endpoints(tls_base)})
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, args.ready_file)

    deadline = time.monotonic() + args.max_lifetime
    while not stop.wait(0.5):
        if time.monotonic() > deadline:
            break
        if args.parent_pid and not _pid_alive(args.parent_pid):
            break
        state.arc_expire()
    state.shutdown.set()
    state.release.set()
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    with state.lock:
        state._arc_clear()
    if temp_state:
        shutil.rmtree(temp_state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
