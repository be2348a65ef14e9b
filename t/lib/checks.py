"""Assertions on mod_entra's answers (RFC 6750 challenges) and logs."""

import re
import signal

# Anything that looks like a JWT/JWS: a base64url JSON header followed by a dot.
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.")
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)')


def parse_challenge(value: str) -> tuple[str, dict]:
    """Parse one `Bearer k="v", k2="v2"` challenge into (scheme, params)."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m:
            raise AssertionError(f"unparseable WWW-Authenticate params: {value!r}")
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        name = m.group(1).lower()
        if name in params:
            raise AssertionError(f"duplicate parameter {name} in {value!r}")
        params[name] = v
        if m.end() == pos:
            break
        pos = m.end()
    return scheme, params


def _diag(resp) -> str:
    stack = getattr(resp, "_stack", None)
    tail = stack.httpd.error_log_tail(15) if stack is not None else ""
    body = (resp.text or "")[:300]
    return (f"\n  status={resp.status_code}\n  www-authenticate={resp.headers.get('WWW-Authenticate')!r}"
            f"\n  body={body!r}\n  error log tail:\n{tail}")


def challenge(resp) -> dict:
    """The Bearer challenge's params; asserts there is exactly one Bearer challenge."""
    value = resp.headers.get("WWW-Authenticate")
    assert value, "no WWW-Authenticate header" + _diag(resp)
    scheme, params = parse_challenge(value)
    assert scheme.lower() == "bearer", f"challenge scheme {scheme!r}" + _diag(resp)
    return params


def expect_status(resp, status, what: str = ""):
    if isinstance(status, int):
        status = (status,)
    assert resp.status_code in status, f"expected {status} {what}" + _diag(resp)


def expect_ok(resp, what: str = ""):
    expect_status(resp, 200, what)


def expect_no_token(resp, realm: str = "orders"):
    """401 with `Bearer realm="..."` and no error parameter (RFC 6750 3.1)."""
    expect_status(resp, 401, "(no token)")
    p = challenge(resp)
    assert p.get("realm") == realm, f"realm {p.get('realm')!r}" + _diag(resp)
    assert "error" not in p and "error_description" not in p, \
        "a request without a token must not get an error param" + _diag(resp)


def expect_invalid_token(resp, token: str | None = None, realm: str = "orders", desc_contains=None):
    """401 with error="invalid_token" and a short error_description not leaking the token."""
    expect_status(resp, 401, "(invalid token)")
    p = challenge(resp)
    assert p.get("realm") == realm, f"realm {p.get('realm')!r}" + _diag(resp)
    assert p.get("error") == "invalid_token", f"error param {p.get('error')!r}" + _diag(resp)
    desc = p.get("error_description", "")
    assert desc.strip(), "missing error_description" + _diag(resp)
    assert len(desc) <= 300, f"error_description too long ({len(desc)})" + _diag(resp)
    if token:
        assert_no_token_part(desc, token)
    if desc_contains:
        words = [desc_contains] if isinstance(desc_contains, str) else desc_contains
        assert any(w.lower() in desc.lower() for w in words), \
            f"error_description {desc!r} should mention one of {words}" + _diag(resp)
    return desc


def expect_insufficient_scope(resp, realm: str = "orders"):
    expect_status(resp, 403, "(insufficient scope)")
    p = challenge(resp)
    assert p.get("error") == "insufficient_scope", f"error param {p.get('error')!r}" + _diag(resp)
    assert p.get("realm") == realm, f"realm {p.get('realm')!r}" + _diag(resp)


def expect_invalid_request(resp, realm: str = "orders"):
    expect_status(resp, 400, "(invalid request)")
    p = challenge(resp)
    assert p.get("error") == "invalid_request", f"error param {p.get('error')!r}" + _diag(resp)


def assert_no_token_part(text: str, token: str, window: int = 16):
    """No 16-character piece of the token (nor any whole segment) appears in text."""
    for seg in token.split("."):
        if len(seg) >= 8:
            assert seg not in text, f"text contains a token segment: {text!r}"
    for i in range(0, max(0, len(token) - window + 1)):
        piece = token[i:i + window]
        if piece in text:
            raise AssertionError(f"text contains part of the token ({piece!r}): {text!r}")


def assert_log_has_no_tokens(text: str, where: str = "error log"):
    m = JWT_RE.search(text)
    if m:
        start = max(0, m.start() - 200)
        raise AssertionError(f"{where} contains a JWT-looking string near: {text[start:m.end() + 40]!r}")


_CRASH_RE = re.compile(r"AH00052: child pid \d+ exit signal .*|AH00051: .*")


def child_crashes(error_log: str) -> list[str]:
    """Lines where the httpd parent reports a child killed by a signal (segfault, abort)."""
    return [line for line in error_log.splitlines() if _CRASH_RE.search(line)]


def parent_crash(returncode) -> str | None:
    """What went wrong if apache2's own exit status says a signal killed it (not SIGKILL,
    which Httpd.stop sends to a parent that does not exit in time)."""
    if returncode is not None and returncode < 0 and -returncode != signal.SIGKILL:
        return f"the apache2 parent was killed by {signal.Signals(-returncode).name} at stop"
    return None


_SANITIZER_RE = re.compile(r"runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer|"
                           r"SUMMARY: (Address|UndefinedBehavior)Sanitizer|UndefinedBehaviorSanitizer")


def sanitizer_lines(text: str) -> list[str]:
    """Sanitizer output that went to stderr (apache2's error log) instead of log_path files.

    GCC's UBSan, preloaded beside ASan, ignores UBSAN_OPTIONS=log_path and writes to stderr."""
    return [line for line in text.splitlines() if _SANITIZER_RE.search(line)]
