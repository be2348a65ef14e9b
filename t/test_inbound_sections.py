"""Sections of every kind, and how the issuer source merges between them.

- EntraTenant and EntraMetadataURL are one setting with two spellings: a section's own one
  wins over whichever its parent had, and one section may not say both (apachectl -t).
- The key source of every AuthType Entra section is fetched at startup, before any request,
  whatever kind of section it is in: <Location>, <Directory>, <Files>, <If>, a virtual host.
"""

import os
import time
import uuid

import pytest

import entra_tokens as et
from checks import expect_ok
from httpd import free_port
from stack import finish_stack

T = et.TENANT
AUD = f"{et.AUD_URI} {et.AUD_GUID}"


def _block(tag: str, arg: str, source: str, close: str | None = None) -> str:
    close = close or tag
    return (f"<{tag} {arg}>\n  AuthType Entra\n  AuthName \"orders\"\n  {source}\n"
            f"  EntraAudience {AUD}\n  Require valid-user\n</{close}>\n")


@pytest.fixture
def stacks(make_stack):
    made = []

    def _make(name, locations_of_workdir, files):
        s = make_stack(name, start_httpd=False, files=files)
        s.httpd.locations = locations_of_workdir(s.httpd.workdir, s.fake.authority)
        s.httpd.start()
        made.append(s)
        return s

    yield _make
    for s in made:
        finish_stack(s)


def _wait_for(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def test_own_tenant_wins_over_inherited_metadata_url(stacks):
    """The parent names a metadata URL that cannot serve; the child names the tenant."""
    def locs(workdir, authority):
        broken = f"{authority}00000000-dead-4bad-8bad-000000000000x/.well-known/openid-configuration"
        return (_block("Location", "/m", f"EntraMetadataURL {broken}") +
                f"<Location /m/t>\n  EntraTenant {T}\n</Location>\n")
    s = stacks("own-tenant", locs, files=["/m/t"])
    expect_ok(s.get("/m/t/ok.txt", s.token()))


def test_own_metadata_url_wins_over_inherited_tenant(stacks):
    """The parent names a tenant this token is not from; the child names a metadata URL."""
    other = str(uuid.uuid4())
    def locs(workdir, authority):
        meta = f"{authority}{T}/v2.0/.well-known/openid-configuration"
        return (_block("Location", "/t", f"EntraTenant {other}") +
                f"<Location /t/m>\n  EntraMetadataURL {meta}\n</Location>\n")
    s = stacks("own-meta", locs, files=["/t/m", "/t"])
    expect_ok(s.get("/t/m/ok.txt", s.token()))
    r = s.get("/t/ok.txt", s.token())
    assert r.status_code == 401, r.status_code


def test_tenant_and_metadata_url_in_one_section_fail_config_test(stacks, make_stack):
    s = make_stack("both", start_httpd=False, files=["/p"])
    try:
        body = _block("Location", "/p", f"EntraTenant {T}\n  EntraMetadataURL "
                      f"{s.fake.authority}{T}/v2.0/.well-known/openid-configuration")
        rc, out = s.httpd.config_test(body)
        assert rc > 0 and "Syntax OK" not in out, out
        assert "EntraTenant" in out and "EntraMetadataURL" in out, out
    finally:
        finish_stack(s)


def test_sources_of_every_section_kind_are_warmed_at_start(stacks):
    tenants = {k: str(uuid.uuid4()) for k in ("dir", "files", "if", "vhost", "nested")}
    vport = free_port()

    def locs(workdir, authority):
        htdocs = os.path.join(workdir, "htdocs")
        return (
            _block("Directory", f'"{htdocs}/d"', f"EntraTenant {tenants['dir']}") +
            _block("Files", '"secret.txt"', f"EntraTenant {tenants['files']}") +
            _block("If", "\"%{QUERY_STRING} == 'x'\"", f"EntraTenant {tenants['if']}") +
            f'<Directory "{htdocs}/n">\n' +
            _block("Files", '"n.txt"', f"EntraTenant {tenants['nested']}") +
            "</Directory>\n" +
            f"Listen 127.0.0.1:{vport}\n<VirtualHost 127.0.0.1:{vport}>\n" +
            _block("Location", "/v", f"EntraTenant {tenants['vhost']}") +
            "</VirtualHost>\n")

    s = stacks("sections", locs, files=["/d"])
    # No request is sent: every tenant's discovery and keys are fetched by the upkeep alone.
    def all_warm():
        st = s.fake.stats()
        return all(st["jwks_v2"].get(t, 0) >= 1 for t in tenants.values())
    assert _wait_for(all_warm), (tenants, s.fake.stats())
    # And the sections work: the <Directory> one answers with and without a token.
    assert s.get("/d/ok.txt").status_code == 401
    expect_ok(s.get("/d/ok.txt", s.token(tenant=tenants["dir"])))
