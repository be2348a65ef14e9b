#!/usr/bin/python3
"""A local fake of Microsoft Entra ID's OpenID discovery and JWKS endpoints.

Authority: http://127.0.0.1:PORT/ (or https:// with --tls-cert/--tls-key).

  GET /{tenant}/v2.0/.well-known/openid-configuration   v2 discovery
  GET /{tenant}/.well-known/openid-configuration        v1 discovery
  GET /{tenant}/discovery/v2.0/keys                      v2 JWKS
  GET /{tenant}/discovery/keys                           v1 JWKS
  GET .../keys?appid=<id>                                the app's own signing keys (keys added
                                                         with "appid"), then the tenant's
  GET /usgov/{tenant}/... and /china/{tenant}/...        the same routes as that national
                                                         cloud's instance: its issuers (point
                                                         EntraAuthority at <base>/china/)
  GET /_static/...                                       documents set via the control API
  /_control/...                                          test control API (JSON), see below

Control API (POST bodies are JSON; t/lib/fake_entra_client.py wraps it):
  GET  /_control/stats      request counts: {"discovery_v1"|"discovery_v2"|"jwks_v1"|"jwks_v2":
                            {tenant: n}, "discovery"/"jwks": v1+v2 summed, "paths": {path: n},
                            "total": n, "max_in_flight": {category: n},
                            "huge": {category: {"served", "aborted", "bytes"}}: huge bodies begun,
                            those the client hung up on before their end, body bytes written}
  GET  /_control/requests   the last 500 requests (path, tenant, headers)
  GET  /_control/keys       keys with kid/kty/bits/use/issuer/published, and role names
  POST /_control/reset      {"counters", "modes", "keys", "documents", "tenants": bool}
  POST /_control/mode       {"target": discovery|discovery_v1|discovery_v2|jwks|jwks_v1|jwks_v2|all,
                             "mode": ok|slow|hang|500|502|503|429|404|400|401|403|garbage|html|empty|
                                     truncated|truncated_json|huge|invalid_shape|empty_keys,
                             "delay": seconds (slow, hang), "times": n (then back to ok),
                             "size": bytes (huge; 1 KiB..64 MiB, default 8 MiB),
                             "chunked": bool (huge: chunked, no Content-Length)}
  POST /_control/rotate     {"kty", "bits", "crv", "kid", "drop": kid|role|"oldest"} -> {added, dropped}
  POST /_control/keys/add   {"kty", "bits", "crv", "kid", "use", "issuer", "role", "published",
                             "appid"} -> {kid}   (appid: served only at jwks_uri?appid=<appid>)
                            ({"kid": existing} publishes a removed key again;
                             {"kid": existing, "replace": true, ...} gives it new key material)
  POST /_control/keys/remove {"kid": kid|role}   (unpublish; the private key stays usable)
  POST /_control/mint       {"kid"|"role", "alg", "header", "claims"} -> {"token"}
  POST /_control/document   {"path": "/_static/...", "json"|"body", "status", "content_type"}
  POST /_control/tenants    {"unknown": [guid...]}  (answer invalid_tenant for these GUIDs)

Modes: slow waits `delay` (default 3 s) then answers; hang holds the connection `delay` (default
60 s) and closes it unanswered; truncated sends half the body of a larger Content-Length; huge
sends a valid JSON document of `size` bytes (default 8 MiB; with `chunked`, in chunks of 64 KiB
and no Content-Length, so the client learns the size only as it reads); 5xx/4xx send Entra-shaped JSON errors (404: an HTML page).

Tenants: a GUID, or common / organizations / consumers. Anything else answers
400 invalid_tenant (AADSTS90002) as Entra does; a name that is not even a DNS
name answers 400 invalid_request (AADSTS900023).

Private keys live in --keys-dir (PEM + meta.json, see entra_tokens.KeyStore) so
that the test process can sign with the same keys; /_control/mint signs too.
Only loopback addresses are ever bound.
"""

import argparse
import collections
import json
import os
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import entra_tokens as et  # noqa: E402

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DNS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
MULTI_TENANTS = {"common", "organizations"}
CONSUMERS_TID = "9188040d-6c67-4c5b-b112-36a304b66dad"

CATEGORIES = ("discovery_v1", "discovery_v2", "jwks_v1", "jwks_v2")
TARGETS = {
    "discovery": ("discovery_v1", "discovery_v2"),
    "jwks": ("jwks_v1", "jwks_v2"),
    "all": CATEGORIES,
    **{c: (c,) for c in CATEGORIES},
}
MODES = {"ok", "slow", "hang", "garbage", "html", "empty", "truncated", "truncated_json",
         "huge", "invalid_shape", "empty_keys", "400", "401", "403", "404", "429", "500", "502", "503"}
HUGE_BYTES = 8 * 1024 * 1024
HUGE_MIN, HUGE_MAX = 1024, 64 * 1024 * 1024
HANG_SECONDS = 60.0
OK_MODE = {"mode": "ok", "delay": 0.0, "times": None, "size": HUGE_BYTES, "chunked": False}


def _now_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def entra_error(error: str, code: int, text: str) -> dict:
    """An error body shaped like login.microsoftonline.com's."""
    trace, corr, stamp = str(uuid.uuid4()), str(uuid.uuid4()), _now_stamp()
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


class State:
    def __init__(self, store: et.KeyStore, log_requests: bool):
        self.lock = threading.Lock()
        self.store = store
        self.initial_published = dict(store.published)
        self.initial_kids = list(store.keys)
        self.log_requests = log_requests
        self.shutdown = threading.Event()
        self.base_url = ""
        self.reset()

    def reset(self, counters=True, modes=True, keys=False, documents=True, tenants=True):
        with self.lock:
            if counters:
                self.counters = {c: collections.Counter() for c in CATEGORIES}
                self.paths = collections.Counter()
                self.total = 0
                self.max_in_flight = {c: 0 for c in CATEGORIES}
                self.huge = {c: {"served": 0, "aborted": 0, "bytes": 0} for c in CATEGORIES}
                self.requests = collections.deque(maxlen=500)
            if not hasattr(self, "in_flight"):
                self.in_flight = {c: 0 for c in CATEGORIES}
            if modes:
                self.modes = {c: dict(OK_MODE) for c in CATEGORIES}
            if keys:
                for kid in list(self.store.keys):
                    if kid not in self.initial_published:
                        self.store.published[kid] = False
                    else:
                        self.store.published[kid] = self.initial_published[kid]
                self.store.save()
            if documents:
                self.documents = {}
            if tenants:
                self.unknown_tenants = set()
            if not hasattr(self, "app_keys"):
                self.app_keys = {}

    def stats(self) -> dict:
        with self.lock:
            out = {c: dict(self.counters[c]) for c in CATEGORIES}
            out["discovery"] = {}
            out["jwks"] = {}
            for c in CATEGORIES:
                agg = out[c.split("_")[0]]
                for t, n in self.counters[c].items():
                    agg[t] = agg.get(t, 0) + n
            out["totals"] = {c: sum(self.counters[c].values()) for c in CATEGORIES}
            out["paths"] = dict(self.paths)
            out["total"] = self.total
            out["max_in_flight"] = dict(self.max_in_flight)
            out["huge"] = {c: dict(v) for c, v in self.huge.items()}
            return out

    def take_mode(self, category: str) -> dict:
        with self.lock:
            m = dict(self.modes[category])
            if m["times"] is not None:
                left = self.modes[category]["times"] - 1
                if left <= 0:
                    self.modes[category] = dict(OK_MODE)
                else:
                    self.modes[category]["times"] = left
            return m


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-entra/1.0"
    sys_version = ""

    @property
    def state(self) -> State:
        return self.server.state

    def log_message(self, fmt, *args):
        if self.state.log_requests:
            sys.stderr.write("fake_entra: " + (fmt % args) + "\n")

    # -------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes, ctype: str = "application/json; charset=utf-8",
              headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400, private")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode("utf-8"), headers=headers)

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1024 * 1024:
            raise ValueError("control body too large")
        return self.rfile.read(n) if n else b""

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        path = urlsplit(self.path).path
        if path.startswith("/_control/"):
            return self._control(path, "POST")
        self._read_body()
        self._count(None, None, path)
        self._json(405, {"error": "invalid_request"})

    def do_GET(self):
        path = urlsplit(self.path).path
        if path.startswith("/_control/"):
            return self._control(path, "GET")
        self.cloud = "public"
        cm = re.match(r"^/(usgov|china)(/.*)$", path)
        if cm:
            self.cloud, path = cm.group(1), cm.group(2)
        m = re.match(r"^/([^/]+)/(v2\.0/\.well-known/openid-configuration|\.well-known/openid-configuration"
                     r"|discovery/v2\.0/keys|discovery/keys)$", path)
        if not m:
            self._count(None, None, path)
            doc = self.state.documents.get(path)
            if doc is not None:
                return self._send(doc["status"], doc["body"], doc["content_type"])
            return self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>",
                              "text/html; charset=utf-8")
        tenant, route = m.group(1), m.group(2)
        category = {
            "v2.0/.well-known/openid-configuration": "discovery_v2",
            ".well-known/openid-configuration": "discovery_v1",
            "discovery/v2.0/keys": "jwks_v2",
            "discovery/keys": "jwks_v1",
        }[route]
        self._count(category, tenant, path)
        with self.state.lock:
            self.state.in_flight[category] += 1
            self.state.max_in_flight[category] = max(self.state.max_in_flight[category],
                                                     self.state.in_flight[category])
        try:
            self._serve(category, tenant)
        finally:
            with self.state.lock:
                self.state.in_flight[category] -= 1

    def _count(self, category, tenant, path):
        st = self.state
        with st.lock:
            st.total += 1
            st.paths[path] += 1
            if category:
                st.counters[category][tenant] += 1
            st.requests.append({"t": time.time(), "path": self.path, "category": category,
                                "tenant": tenant, "headers": dict(self.headers.items())})

    # -------------------------------------------------------------- Entra routes
    def _tenant_error(self, tenant: str):
        if GUID_RE.match(tenant) or tenant in MULTI_TENANTS or tenant == "consumers":
            if tenant.lower() in self.state.unknown_tenants:
                return 400, entra_error("invalid_tenant", 90002,
                                        f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                                        "tenant ID and are signing into the correct cloud. Check with your "
                                        "subscription administrator, this may happen if there are no active "
                                        "subscriptions for the tenant.")
            return None
        if DNS_RE.match(tenant):
            return 400, entra_error("invalid_tenant", 90002,
                                    f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                                    "tenant ID and are signing into the correct cloud. Check with your "
                                    "subscription administrator, this may happen if there are no active "
                                    "subscriptions for the tenant.")
        return 400, entra_error("invalid_request", 900023,
                                f"Specified tenant identifier '{tenant}' is neither a valid DNS name, "
                                "nor a valid external domain.")

    @staticmethod
    def _issuer_tenant(tenant: str) -> str:
        if tenant in MULTI_TENANTS:
            return "{tenantid}"
        if tenant == "consumers":
            return CONSUMERS_TID
        return tenant.lower()

    def _document(self, category: str, tenant: str) -> dict:
        cloud = getattr(self, "cloud", "public")
        base = self.state.base_url + ("" if cloud == "public" else cloud + "/")
        v2_template, v1_template = et.CLOUD_ISSUERS[cloud]
        it = self._issuer_tenant(tenant)
        region = None if tenant in MULTI_TENANTS else "EU"
        common = {
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "kerberos_endpoint": f"{base}{tenant}/kerberos",
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        if category == "discovery_v2":
            doc = {
                "token_endpoint": f"{base}{tenant}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                          "client_secret_basic"],
                "jwks_uri": f"{base}{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": v2_template.replace("{tenantid}", it),
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}{tenant}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}{tenant}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                                     "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat",
                                     "auth_time", "acr", "nonce", "preferred_username", "name", "tid",
                                     "ver", "at_hash", "c_hash", "email"],
            }
        elif category == "discovery_v1":
            doc = {
                "token_endpoint": f"{base}{tenant}/oauth2/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                          "client_secret_basic"],
                "jwks_uri": f"{base}{tenant}/discovery/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
                "scopes_supported": ["openid"],
                "issuer": v1_template.replace("{tenantid}", it),
                "microsoft_multi_refresh_token": True,
                "authorization_endpoint": f"{base}{tenant}/oauth2/authorize",
                "device_authorization_endpoint": f"{base}{tenant}/oauth2/devicecode",
                "end_session_endpoint": f"{base}{tenant}/oauth2/logout",
                "check_session_iframe": f"{base}{tenant}/oauth2/checksession",
                "userinfo_endpoint": f"{base}{tenant}/openid/userinfo",
                "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                                     "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat",
                                     "auth_time", "acr", "amr", "nonce", "email", "given_name",
                                     "family_name", "nickname"],
            }
        else:
            issuer = v2_template.replace("{tenantid}", it)
            appid = (parse_qs(urlsplit(self.path).query).get("appid") or [None])[0]
            with self.state.lock:
                own = [self.state.store.keys[kid] for kid in self.state.app_keys.get(appid, [])]
                keys = [k.jwk(issuer=k.issuer if k.issuer is not None else issuer)
                        for k in own + self.state.store.published_keys()]
            return {"keys": keys}
        doc.update(common)
        return doc

    def _serve(self, category: str, tenant: str):
        err = self._tenant_error(tenant)
        if err:
            return self._json(err[0], err[1])
        m = self.state.take_mode(category)
        mode = m["mode"]
        if mode == "slow":
            if self.state.shutdown.wait(m["delay"]):
                return
            mode = "ok"
        if mode == "hang":
            self.state.shutdown.wait(m["delay"] or HANG_SECONDS)
            self.close_connection = True
            return
        if mode == "ok":
            return self._json(200, self._document(category, tenant))
        if mode == "empty_keys":
            return self._json(200, {"keys": []} if category.startswith("jwks")
                              else self._document(category, tenant))
        if mode == "invalid_shape":
            if category.startswith("jwks"):
                return self._json(200, {"keys": {"kid": "not-an-array"}})
            doc = self._document(category, tenant)
            doc.pop("jwks_uri", None)
            return self._json(200, doc)
        if mode == "garbage":
            return self._send(200, b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe{{{not json",
                              "application/json; charset=utf-8")
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
                              b"<body>Captive portal</body></html>", "text/html; charset=utf-8")
        if mode == "empty":
            return self._send(200, b"")
        if mode == "truncated_json":
            body = json.dumps(self._document(category, tenant)).encode()
            return self._send(200, body[: len(body) // 2])
        if mode == "truncated":
            body = json.dumps(self._document(category, tenant)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "huge":
            return self._send_huge(category, tenant, m["size"], m["chunked"])
        if mode == "404":
            return self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>",
                              "text/html; charset=utf-8")
        if mode == "429":
            return self._json(429, entra_error("temporarily_unavailable", 50196,
                                               "The server terminated an operation because it encountered "
                                               "a client request loop."), headers={"Retry-After": "5"})
        if mode == "503":
            return self._json(503, entra_error("temporarily_unavailable", 90033,
                                               "A transient error has occurred. Please try again."),
                              headers={"Retry-After": "5"})
        status = int(mode)
        return self._json(status, entra_error("server_error" if status >= 500 else "invalid_request", 50000,
                                              "There was an error issuing a token or an issue with our "
                                              "sign-in service."))

    def _send_huge(self, category: str, tenant: str, size: int, chunked: bool):
        """A valid JSON document of `size` bytes (the category's document plus padding), written
        in 64 KiB pieces; counts how much of it the client took before it hung up."""
        doc = self._document(category, tenant)
        head = json.dumps(doc)[:-1].encode() + b', "padding": "'
        tail = b'"}'
        pad = max(0, size - len(head) - len(tail))
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(head) + pad + len(tail)))
        self.end_headers()
        huge = self.state.huge[category]
        with self.state.lock:
            huge["served"] += 1

        def write(data: bytes):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            with self.state.lock:
                huge["bytes"] += len(data)

        try:
            write(head)
            chunk = b"A" * 65536
            left = pad
            while left > 0:
                write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
            write(tail)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with self.state.lock:
                huge["aborted"] += 1
            self.close_connection = True

    # -------------------------------------------------------------- control API
    def _control(self, path: str, method: str):
        st = self.state
        try:
            body = self._read_body() if method == "POST" else b""
            req = json.loads(body) if body.strip() else {}
            name = path[len("/_control/"):]
            if name == "stats" and method == "GET":
                return self._json(200, st.stats())
            if name == "requests" and method == "GET":
                with st.lock:
                    return self._json(200, list(st.requests))
            if name == "keys" and method == "GET":
                with st.lock:
                    keys = [{**k.meta(), "published": st.store.published.get(k.kid, False)}
                            for k in st.store.keys.values()]
                    return self._json(200, {"keys": keys, "roles": st.store.roles, "dir": st.store.dir})
            if method != "POST":
                return self._json(405, {"error": "use POST"})
            if name == "reset":
                st.reset(counters=req.get("counters", True), modes=req.get("modes", True),
                         keys=req.get("keys", False), documents=req.get("documents", True),
                         tenants=req.get("tenants", True))
                return self._json(200, {"ok": True})
            if name == "mode":
                mode = str(req.get("mode", "ok"))
                target = req.get("target", "all")
                if mode not in MODES or target not in TARGETS:
                    return self._json(400, {"error": f"bad mode {mode!r} or target {target!r}"})
                delay = float(req.get("delay", 3.0 if mode == "slow" else 0.0))
                times = req.get("times")
                size = int(req.get("size", HUGE_BYTES))
                if not HUGE_MIN <= size <= HUGE_MAX:
                    return self._json(400, {"error": f"size {size} not in {HUGE_MIN}..{HUGE_MAX}"})
                with st.lock:
                    for c in TARGETS[target]:
                        st.modes[c] = {"mode": mode, "delay": delay,
                                       "times": int(times) if times is not None else None,
                                       "size": size, "chunked": bool(req.get("chunked", False))}
                return self._json(200, {"ok": True, "modes": st.modes})
            if name == "keys/add":
                with st.lock:
                    if "kid" in req and req["kid"] in st.store.keys and len(req) <= 2:
                        key = st.store.keys[req["kid"]]
                        st.store.published[key.kid] = req.get("published", True)
                    elif req.get("replace") and req.get("kid") in st.store.keys:
                        key = et.gen_key(req)
                        st.store.keys[key.kid] = key
                        st.store.published[key.kid] = req.get("published", True)
                    elif req.get("appid"):
                        # An app's own signing key (claims-mapping policy): only at ?appid=.
                        key = et.gen_key(req)
                        st.store.add(key, role=req.get("role"), published=False)
                        st.app_keys.setdefault(req["appid"], []).append(key.kid)
                    else:
                        key = et.gen_key(req)
                        st.store.add(key, role=req.get("role"), published=req.get("published", True))
                    st.store.save()
                return self._json(200, {"kid": key.kid})
            if name == "keys/remove":
                with st.lock:
                    kid = st.store[req["kid"]].kid
                    st.store.published[kid] = False
                    st.store.save()
                return self._json(200, {"removed": kid})
            if name == "rotate":
                with st.lock:
                    key = et.gen_key({"kty": req.get("kty", "RSA"), "bits": req.get("bits", 2048),
                                      "crv": req.get("crv", "P-256"), "kid": req.get("kid")})
                    st.store.add(key, role=req.get("role"))
                    drop = req.get("drop", "oldest")
                    dropped = None
                    if drop == "oldest":
                        for kid, k in st.store.keys.items():
                            if (st.store.published.get(kid) and k.kty == key.kty and k.use == "sig"
                                    and kid != key.kid and k.bits >= 2048):
                                dropped = kid
                                break
                    elif drop:
                        dropped = st.store[drop].kid
                    if dropped:
                        st.store.published[dropped] = False
                    st.store.save()
                return self._json(200, {"added": key.kid, "dropped": dropped})
            if name == "mint":
                with st.lock:
                    key = st.store[req.get("kid") or req.get("role") or "rsa1"]
                alg = req.get("alg", "RS256")
                header = req.get("header")
                if header is None:
                    header = et.default_header(key, alg)
                token = et.mint(key, req.get("claims", {}), header=header, alg=alg)
                return self._json(200, {"token": token})
            if name == "document":
                p = req["path"]
                if not p.startswith("/_static/"):
                    return self._json(400, {"error": "path must start with /_static/"})
                if "json" in req:
                    data, ctype = json.dumps(req["json"]).encode(), "application/json; charset=utf-8"
                else:
                    data, ctype = str(req.get("body", "")).encode(), req.get("content_type", "text/plain")
                with st.lock:
                    st.documents[p] = {"status": int(req.get("status", 200)), "body": data,
                                       "content_type": req.get("content_type", ctype)}
                return self._json(200, {"ok": True})
            if name == "tenants":
                with st.lock:
                    st.unknown_tenants = {t.lower() for t in req.get("unknown", [])}
                return self._json(200, {"ok": True})
            return self._json(404, {"error": f"unknown control {name!r}"})
        except (KeyError, ValueError, TypeError) as exc:
            return self._json(400, {"error": f"{type(exc).__name__}: {exc}"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--keys-dir", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="exit when this process is gone (so a crashed test run leaves nothing behind)")
    ap.add_argument("--max-lifetime", type=float, default=3600.0)
    ap.add_argument("--log-requests", action="store_true")
    args = ap.parse_args(argv)

    if et.KeyStore.exists(args.keys_dir):
        store = et.KeyStore.load(args.keys_dir)
    else:
        store = et.KeyStore.generate_default(args.keys_dir)
        store.save()

    state = State(store, args.log_requests)
    httpd = Server(("127.0.0.1", args.port), Handler)
    httpd.state = state
    scheme = "http"
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    port = httpd.server_address[1]
    state.base_url = f"{scheme}://127.0.0.1:{port}/"

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": port, "pid": os.getpid(), "scheme": scheme, "base_url": state.base_url}, f)
    os.replace(tmp, args.ready_file)

    deadline = time.monotonic() + args.max_lifetime
    while not stop.wait(1.0):
        if time.monotonic() > deadline:
            break
        if args.parent_pid and os.getppid() != args.parent_pid:
            break
    state.shutdown.set()
    httpd.shutdown()
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
