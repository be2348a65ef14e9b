"""The "conformance" httpd layout shared by the inbound end-to-end tests.

Server level: EntraAuthority (the fake), EntraAlgorithms RS256 PS256 ES256, EntraClockSkew 60.
Every protected <Location> repeats AuthType/AuthName/EntraTenant/EntraAudience so that no
test depends on how <Location> blocks merge. Each location has an ok.txt (static 200) and
an /echo route proxied to the echo backend.
"""

from entra_tokens import (ALLOWED_TENANT_2, AUD_GUID, AUD_URI, CLIENT_APP, TENANT)

REALM = "orders"
OTHER_APP = "deadbeef-0000-4000-8000-000000000bad"
GROUP_1 = "0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071"

# location -> (Require block, extra directives)
LOCATIONS = {
    "/any": ("Require valid-user", ""),
    "/role": ("Require entra-role Orders.Read", ""),
    "/role2": ("Require entra-role Orders.Write Orders.Admin", ""),
    "/scope": ("Require entra-scope Orders.Read", ""),
    "/scope2": ("Require entra-scope Orders.Write Orders.Admin", ""),
    "/app": (f"Require entra-app {CLIENT_APP}", ""),
    "/claim": ("Require entra-claim department Sales Engineering", ""),
    "/claimarr": (f"Require entra-claim groups {GROUP_1}", ""),
    "/all": ("<RequireAll>\n    Require entra-role Orders.Read\n"
             f"    Require entra-app {CLIENT_APP}\n  </RequireAll>", ""),
    "/anyof": ("<RequireAny>\n    Require entra-role Orders.Admin\n"
               "    Require entra-scope Orders.Admin\n  </RequireAny>", ""),
    "/not": ("<RequireAll>\n    Require valid-user\n"
             f"    Require not entra-app {OTHER_APP}\n  </RequireAll>", ""),
    "/query": ("Require valid-user", "EntraAcceptTokenIn header query"),
    "/queryonly": ("Require valid-user", "EntraAcceptTokenIn query"),
    "/cookie": ("Require valid-user", "EntraAcceptTokenIn cookie=entra_at"),
    "/pass": ("Require valid-user", "EntraPassClaims oid azp roles tid"),
    "/sub": ("Require valid-user", "EntraRemoteUserClaim sub\n  EntraPassClaims oid"),
}


def server_conf(authority: str, algorithms: str = "RS256 PS256 ES256", extra: str = "") -> str:
    return (f"EntraAuthority {authority}\n"
            f"EntraAlgorithms {algorithms}\n"
            "EntraClockSkew 60\n" + extra)


def location(path: str, require: str = "Require valid-user", extra: str = "",
             tenant_lines: str | None = None, audiences: str = f"{AUD_URI} {AUD_GUID}") -> str:
    if tenant_lines is None:
        tenant_lines = f"EntraTenant {TENANT}"
    body = [
        "  AuthType Entra",
        f'  AuthName "{REALM}"',
        f"  {tenant_lines}",
        f"  EntraAudience {audiences}",
    ]
    if extra:
        body.append("  " + extra)
    body.append("  " + require)
    return f"<Location {path}>\n" + "\n".join(body) + "\n</Location>\n"


def locations(authority: str) -> str:
    out = [location(p, req, extra) for p, (req, extra) in LOCATIONS.items()]
    out.append(location("/multi", tenant_lines=f"EntraTenant common\n  EntraAllowedTenants {TENANT} "
                                               f"{ALLOWED_TENANT_2}"))
    out.append(location("/meta", tenant_lines=f"EntraMetadataURL {authority}{TENANT}/v2.0/"
                                              ".well-known/openid-configuration"))
    return "\n".join(out)


def all_paths() -> list[str]:
    return list(LOCATIONS) + ["/multi", "/meta"]
