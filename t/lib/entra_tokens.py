"""Test keys and JWT minting shaped like Microsoft Entra ID's.

Used by the end-to-end tests, by the fake Entra server (t/fakes/fake_entra.py)
and by benchmarks. Keys are generated at run time into a temporary directory;
nothing here is ever committed.

`mint()` signs whatever it is given, including malformed headers and claims,
so that negative tests can build exactly the bytes they need.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

# The tenant and audiences of the "conformance" layout every inbound test uses.
TENANT = "11111111-2222-3333-4444-555555555555"
OTHER_TENANT = "33333333-4444-5555-6666-777777777777"
ALLOWED_TENANT_2 = "9abcdef0-8888-4777-a666-5555bbbbcccc"
AUD_URI = "api://orders-api"
AUD_GUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CLIENT_APP = "c0ffee00-1234-4abc-8def-0123456789ab"

V2_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
V1_TEMPLATE = "https://sts.windows.net/{tenantid}/"

# Issuer templates (v2, v1) per cloud instance, as Microsoft documents them: Azure Government
# keeps sts.windows.net for v1; China (21Vianet) uses login.partner.microsoftonline.cn for v2.
CLOUD_ISSUERS = {
    "public": (V2_TEMPLATE, V1_TEMPLATE),
    "usgov": ("https://login.microsoftonline.us/{tenantid}/v2.0", V1_TEMPLATE),
    "china": ("https://login.partner.microsoftonline.cn/{tenantid}/v2.0",
              "https://sts.chinacloudapi.cn/{tenantid}/"),
}

_CURVES = {
    "P-256": (ec.SECP256R1, 32, hashes.SHA256, "ES256"),
    "P-384": (ec.SECP384R1, 48, hashes.SHA384, "ES384"),
    "P-521": (ec.SECP521R1, 66, hashes.SHA512, "ES512"),
}
_CURVE_BY_NAME = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}

ALL_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]

# Sentinel: pass as a claim value to v2_claims()/v1_claims() to drop that claim.
DROP = object()


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Lenient decoder for test-side use only (adds the padding back)."""
    text = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text.encode("ascii"))


def v2_issuer(tenant: str) -> str:
    return V2_TEMPLATE.replace("{tenantid}", tenant)


def v1_issuer(tenant: str) -> str:
    return V1_TEMPLATE.replace("{tenantid}", tenant)


def _int_b64(value: int, length: int | None = None) -> str:
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


class Key:
    """One signing key with an Entra-style kid and public JWK."""

    def __init__(self, private, kid: str | None = None, use: str = "sig",
                 issuer: str | None = None, cert_der: bytes | None = None):
        self.private = private
        self.use = use
        # None: the JWKS server fills in the tenant's own issuer.
        self.issuer = issuer
        if self.kty == "RSA" and cert_der is None:
            cert_der = _self_signed_cert(private)
        self.cert_der = cert_der
        self.x5t = b64url(hashlib.sha1(cert_der).digest()) if cert_der else None
        if kid is None:
            # Entra uses the certificate's SHA-1 thumbprint as kid for RSA keys.
            kid = self.x5t if self.x5t else b64url(secrets.token_bytes(20))
        self.kid = kid

    @property
    def kty(self) -> str:
        return "RSA" if isinstance(self.private, rsa.RSAPrivateKey) else "EC"

    @property
    def crv(self) -> str | None:
        if self.kty != "EC":
            return None
        return _CURVE_BY_NAME[self.private.curve.name]

    @property
    def bits(self) -> int:
        return self.private.key_size

    def public_key(self):
        return self.private.public_key()

    def jwk(self, issuer: str | None = None) -> dict:
        """The public JWK as Entra publishes it; `issuer` overrides the property."""
        iss = issuer if issuer is not None else self.issuer
        if self.kty == "RSA":
            nums = self.public_key().public_numbers()
            out = {"kty": "RSA", "use": self.use, "kid": self.kid, "x5t": self.x5t,
                   "n": _int_b64(nums.n), "e": _int_b64(nums.e),
                   "x5c": [base64.b64encode(self.cert_der).decode("ascii")]}
        else:
            nums = self.public_key().public_numbers()
            size = _CURVES[self.crv][1]
            out = {"kty": "EC", "use": self.use, "kid": self.kid, "crv": self.crv,
                   "x": _int_b64(nums.x, size), "y": _int_b64(nums.y, size)}
        if iss is not None:
            out["issuer"] = iss
        return out

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def meta(self) -> dict:
        return {"kid": self.kid, "use": self.use, "issuer": self.issuer, "kty": self.kty,
                "crv": self.crv, "bits": self.bits}

    def __repr__(self):
        return f"Key(kid={self.kid!r}, kty={self.kty}, bits={self.bits}, use={self.use})"


def _self_signed_cert(private) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.windows.net")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365 * 3))
            .sign(private, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def gen_rsa(bits: int = 2048, kid: str | None = None, use: str = "sig",
            issuer: str | None = None) -> Key:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return Key(priv, kid=kid, use=use, issuer=issuer)


def gen_ec(curve: str = "P-256", kid: str | None = None, use: str = "sig",
           issuer: str | None = None) -> Key:
    priv = ec.generate_private_key(_CURVES[curve][0]())
    return Key(priv, kid=kid, use=use, issuer=issuer)


def gen_key(spec: dict) -> Key:
    """Build a key from {"kty": "RSA"|"EC", "bits": n, "crv": "P-256", "kid", "use", "issuer"}."""
    kty = spec.get("kty", "RSA")
    if kty == "RSA":
        return gen_rsa(int(spec.get("bits", 2048)), spec.get("kid"), spec.get("use", "sig"),
                       spec.get("issuer"))
    if kty == "EC":
        return gen_ec(spec.get("crv", "P-256"), spec.get("kid"), spec.get("use", "sig"),
                      spec.get("issuer"))
    raise ValueError(f"unknown kty {kty!r}")


# Roles of the default key set the fake serves (role name -> generator spec).
DEFAULT_KEY_SPECS = {
    "rsa1": {"kty": "RSA", "bits": 2048},
    "rsa2": {"kty": "RSA", "bits": 2048},
    "ec256": {"kty": "EC", "crv": "P-256"},
    "ec384": {"kty": "EC", "crv": "P-384"},
    "ec521": {"kty": "EC", "crv": "P-521"},
    "enc": {"kty": "RSA", "bits": 2048, "use": "enc"},
    "weak": {"kty": "RSA", "bits": 1024},
}


class KeyStore:
    """Keys by kid, plus role names, persisted as PEM files + meta.json in a directory.

    Layout: DIR/<n>.pem (private PKCS#8) and DIR/meta.json:
      {"keys": [{"file", "kid", "use", "issuer", "published"}...], "roles": {role: kid}}
    The fake and the test process share this directory so both can sign.
    """

    def __init__(self, directory: str):
        self.dir = directory
        self.keys: dict[str, Key] = {}
        self.published: dict[str, bool] = {}
        self.roles: dict[str, str] = {}
        self._files: dict[str, str] = {}

    # -- building
    def add(self, key: Key, role: str | None = None, published: bool = True) -> Key:
        if key.kid in self.keys:
            raise ValueError(f"duplicate kid {key.kid}")
        self.keys[key.kid] = key
        self.published[key.kid] = published
        if role:
            self.roles[role] = key.kid
        return key

    @classmethod
    def generate_default(cls, directory: str) -> "KeyStore":
        store = cls(directory)
        for role, spec in DEFAULT_KEY_SPECS.items():
            store.add(gen_key(spec), role=role)
        return store

    # -- access
    def __getitem__(self, name: str) -> Key:
        """Key by role name or by kid."""
        if name in self.roles:
            return self.keys[self.roles[name]]
        return self.keys[name]

    def published_keys(self) -> list[Key]:
        return [k for kid, k in self.keys.items() if self.published.get(kid)]

    # -- persistence
    def save(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        entries = []
        for i, (kid, key) in enumerate(self.keys.items()):
            fname = self._files.get(kid) or f"key{i:03d}-{hashlib.sha1(kid.encode()).hexdigest()[:8]}.pem"
            self._files[kid] = fname
            path = os.path.join(self.dir, fname)
            if not os.path.exists(path):
                fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(key.private_pem())
                os.replace(path + ".tmp", path)
            entries.append({"file": fname, "kid": kid, "use": key.use, "issuer": key.issuer,
                            "published": self.published.get(kid, True)})
        tmp = os.path.join(self.dir, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"keys": entries, "roles": self.roles}, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "meta.json"))

    @classmethod
    def load(cls, directory: str) -> "KeyStore":
        with open(os.path.join(directory, "meta.json")) as f:
            meta = json.load(f)
        store = cls(directory)
        for e in meta["keys"]:
            with open(os.path.join(directory, e["file"]), "rb") as f:
                priv = serialization.load_pem_private_key(f.read(), password=None)
            key = Key(priv, kid=e["kid"], use=e.get("use", "sig"), issuer=e.get("issuer"))
            store.keys[key.kid] = key
            store.published[key.kid] = e.get("published", True)
            store._files[key.kid] = e["file"]
        store.roles = dict(meta.get("roles", {}))
        return store

    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.exists(os.path.join(directory, "meta.json"))


# ---------------------------------------------------------------- signing

def _private_of(key):
    return key.private if isinstance(key, Key) else key


def sign(key, alg: str, data: bytes, ec_der: bool = False) -> bytes:
    """Sign `data` as JWS `alg` would. `key` is a Key, a cryptography private key,
    or bytes (HMAC secret for HS*). ES* signatures are raw R||S unless ec_der."""
    if alg.lower() == "none":
        return b""
    family, size = alg[:2], alg[2:]
    if family == "HS":
        secret = key if isinstance(key, bytes) else key.public_pem()
        return hmac.new(secret, data, {"256": hashlib.sha256, "384": hashlib.sha384,
                                       "512": hashlib.sha512}[size]).digest()
    priv = _private_of(key)
    digest = _HASHES[size]()
    if family == "RS":
        return priv.sign(data, padding.PKCS1v15(), digest)
    if family == "PS":
        return priv.sign(data, padding.PSS(mgf=padding.MGF1(digest),
                                           salt_length=digest.digest_size), digest)
    if family == "ES":
        der = priv.sign(data, ec.ECDSA(digest))
        if ec_der:
            return der
        r, s = decode_dss_signature(der)
        n = (priv.curve.key_size + 7) // 8
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    raise ValueError(f"unsupported alg {alg!r}")


def default_header(key, alg: str = "RS256", **extra) -> dict:
    """The header Entra puts on v2 access tokens: typ, alg, kid (plus extras)."""
    h = {"typ": "JWT", "alg": alg}
    if isinstance(key, Key):
        h["kid"] = key.kid
    h.update(extra)
    return {k: v for k, v in h.items() if v is not DROP}


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def mint(key, claims: dict | None = None, header: dict | None = None, alg: str = "RS256",
         raw_header: bytes | None = None, raw_claims: bytes | None = None,
         signature: bytes | None = None, *, header_segment: str | None = None,
         claims_segment: str | None = None, signature_segment: str | None = None,
         ec_der: bool = False) -> str:
    """Return a compact JWS.

    header: the exact header dict (default: typ/alg/kid of `key`);
    raw_header / raw_claims: exact JSON bytes (e.g. duplicate keys, arrays);
    header_segment / claims_segment / signature_segment: exact encoded segments
      (e.g. padded or standard-alphabet base64); the signature is always computed
      over the segments as transmitted;
    signature: exact signature bytes instead of signing;
    alg: the algorithm used to sign (independent of what the header claims).
    """
    if header_segment is None:
        if raw_header is None:
            raw_header = json_bytes(header if header is not None else default_header(key, alg))
        header_segment = b64url(raw_header)
    if claims_segment is None:
        if raw_claims is None:
            raw_claims = json_bytes(claims if claims is not None else {})
        claims_segment = b64url(raw_claims)
    signing_input = f"{header_segment}.{claims_segment}".encode("ascii")
    if signature_segment is None:
        if signature is None:
            signature = sign(key, alg, signing_input, ec_der=ec_der)
        signature_segment = b64url(signature)
    return f"{header_segment}.{claims_segment}.{signature_segment}"


# ---------------------------------------------------------------- claims

def _rand_b64(n: int) -> str:
    return b64url(secrets.token_bytes(n))


def _finish(claims: dict, over: dict) -> dict:
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not DROP}


def v2_claims(tenant: str = TENANT, aud: str = AUD_GUID, now: int | None = None,
              lifetime: int = 3600, **over) -> dict:
    """Realistic Entra v2 app-only access token claims; keyword args override
    (DROP removes a claim)."""
    now = int(time.time()) if now is None else int(now)
    oid = str(uuid.uuid4())
    claims = {
        "aud": aud,
        "iss": v2_issuer(tenant),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": "E2" + _rand_b64(60),
        "azp": CLIENT_APP,
        "azpacr": "1",
        "idp": f"https://sts.windows.net/{tenant}/",
        "oid": oid,
        "rh": "0.A" + _rand_b64(48) + ".",
        "roles": ["Orders.Read"],
        "sub": oid,
        "tid": tenant,
        "uti": _rand_b64(16),
        "ver": "2.0",
        "idtyp": "app",
    }
    return _finish(claims, over)


def v1_claims(tenant: str = TENANT, aud: str = AUD_URI, now: int | None = None,
              lifetime: int = 3600, **over) -> dict:
    """Realistic Entra v1 app-only access token claims (sts.windows.net issuer)."""
    now = int(time.time()) if now is None else int(now)
    oid = str(uuid.uuid4())
    claims = {
        "aud": aud,
        "iss": v1_issuer(tenant),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": "E2" + _rand_b64(60),
        "appid": CLIENT_APP,
        "appidacr": "1",
        "idp": f"https://sts.windows.net/{tenant}/",
        "idtyp": "app",
        "oid": oid,
        "rh": "0.A" + _rand_b64(48) + ".",
        "roles": ["Orders.Read"],
        "sub": oid,
        "tid": tenant,
        "uti": _rand_b64(16),
        "ver": "1.0",
    }
    return _finish(claims, over)


def token_hashes(token: str) -> list[str]:
    """Plausible short-hash spellings of a token (hex / base64url SHA-256)."""
    d = hashlib.sha256(token.encode("ascii")).digest()
    return [d.hex(), b64url(d)]


# ---------------------------------------------------------------- verification
# A strict reference verifier used by the fake's self-test (not by the module).

class VerifyError(Exception):
    pass


def public_key_from_jwk(jwk: dict):
    if jwk["kty"] == "RSA":
        n = int.from_bytes(b64url_decode(jwk["n"]), "big")
        e = int.from_bytes(b64url_decode(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if jwk["kty"] == "EC":
        curve = _CURVES[jwk["crv"]][0]()
        x = int.from_bytes(b64url_decode(jwk["x"]), "big")
        y = int.from_bytes(b64url_decode(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    raise VerifyError(f"unsupported kty {jwk['kty']}")


def verify(token: str, jwks: dict, algorithms=ALL_ALGS) -> dict:
    """Verify a compact JWS against a JWKS document; return the claims or raise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise VerifyError("not three segments")
    header = json.loads(b64url_decode(parts[0]))
    alg = header.get("alg")
    if alg not in algorithms:
        raise VerifyError(f"alg {alg} not allowed")
    matches = [k for k in jwks["keys"] if k.get("kid") == header.get("kid") and k.get("use", "sig") == "sig"]
    if not matches:
        raise VerifyError("kid not found")
    pub = public_key_from_jwk(matches[0])
    sig = b64url_decode(parts[2])
    data = f"{parts[0]}.{parts[1]}".encode("ascii")
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("RS"):
            pub.verify(sig, data, padding.PKCS1v15(), digest)
        elif alg.startswith("PS"):
            pub.verify(sig, data, padding.PSS(mgf=padding.MGF1(digest),
                                              salt_length=digest.digest_size), digest)
        elif alg.startswith("ES"):
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise VerifyError("ES alg with non-EC key")
            n = (pub.curve.key_size + 7) // 8
            if len(sig) != 2 * n:
                raise VerifyError("bad ECDSA signature length")
            der = encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
            pub.verify(der, data, ec.ECDSA(digest))
    except InvalidSignature as exc:
        raise VerifyError("bad signature") from exc
    return json.loads(b64url_decode(parts[1]))
