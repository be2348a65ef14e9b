#!/usr/bin/python3
"""`make demo`: httpd with mod_entra in front of a small echo backend, keys from a local
fake Entra ID, and tokens minted by that issuer; a proxied route to which mod_entra attaches
a token from a local managed-identity fake, a route guarded by a Lua rule, and the status
page. Everything listens on 127.0.0.1 only.

  demo.py start      start (or restart) the demo and show 200 / 401 / 403 with curl
  demo.py token ...  mint another token (--role NAME, --aud AUD, --expired)
  demo.py stop       stop everything the demo started
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))
import entra_tokens as et  # noqa: E402

RUN = os.environ.get("DEMO_RUN", os.path.join(ROOT, "t", "run", "demo"))
PORT = int(os.environ.get("DEMO_PORT", "8080"))
BACKEND_PORT = PORT + 1
TENANT = et.TENANT
AUD_URI = "api://orders-api"
AUD_GUID = et.AUD_GUID
MODULE = os.environ.get("ENTRA_MODULE", os.path.join(ROOT, "mod_entra", ".libs", "mod_entra.so"))
MODS = "/usr/lib/apache2/modules"

BACKEND = r'''
import base64, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
def claims_of(auth):
    # The claims of the token mod_entra attached (decoded, not verified: this is a demo).
    try:
        part = auth.split(" ", 1)[1].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.do_GET()
    def do_GET(self):
        seen = {k: v for k, v in self.headers.items() if k.lower().startswith("x-entra-")}
        out = {"backend": self.path.split("/")[1], "method": self.command, "path": self.path, "caller": seen}
        if self.headers.get("Authorization"):
            out["attached_token_claims"] = claims_of(self.headers["Authorization"])
        body = json.dumps(out, indent=1).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''

CONF = """ServerRoot {run}
DefaultRuntimeDir {run}
PidFile {run}/httpd.pid
ErrorLog {run}/error.log
LogLevel warn entra:info
LogFormat "%h %u \\"%r\\" %>s token=%{{ENTRA_TOKEN_ID}}e app=%{{ENTRA_AZP}}e" entra
CustomLog {run}/access.log entra
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authn_core_module {mods}/mod_authn_core.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule authz_user_module {mods}/mod_authz_user.so
LoadModule headers_module {mods}/mod_headers.so
LoadModule authz_host_module {mods}/mod_authz_host.so
LoadModule socache_shmcb_module {mods}/mod_socache_shmcb.so
LoadModule proxy_module {mods}/mod_proxy.so
LoadModule proxy_http_module {mods}/mod_proxy_http.so
LoadModule entra_module {module}
StartServers 2
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32

EntraAuthority http://127.0.0.1:{fake}/
EntraTenant {tenant}
EntraAudience {aud_uri} {aud_guid}

ProxyPass /orders/ http://127.0.0.1:{backend}/orders/
<Location /orders/>
    AuthType Entra
    AuthName "orders"
    EntraPassClaims oid azp roles
    Require entra-role Orders.Read
</Location>

# Outbound: every request forwarded to /inventory/ carries a token of the managed identity
# "demo" (here from the local managed-identity fake); whatever the client sent is dropped.
EntraIdentity demo managed source=imds endpoint={imds}
ProxyPass /inventory/ http://127.0.0.1:{backend}/inventory/
<Location /inventory/>
    EntraProxyToken api://inventory-api identity=demo
</Location>

# A Lua rule: GET needs Orders.Read, anything else Orders.Write (conf/rules.lua).
ProxyPass /lua-orders/ http://127.0.0.1:{backend}/lua-orders/
<Location /lua-orders/>
    AuthType Entra
    AuthName "orders"
    EntraLuaRules {rules}
    Require entra-lua orders
</Location>

<Location /entra-status>
    SetHandler entra-status
    Require local
</Location>
"""


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stop():
    conf = os.path.join(RUN, "httpd.conf")
    if os.path.exists(os.path.join(RUN, "httpd.pid")):
        subprocess.run(["/usr/sbin/apache2", "-f", conf, "-k", "stop"], capture_output=True)
    for name in ("fake.pid", "backend.pid", "identity.pid"):
        path = os.path.join(RUN, name)
        if os.path.exists(path):
            pid = int(open(path).read().strip() or 0)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
            os.unlink(path)
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(os.path.join(RUN, "httpd.pid")):
        time.sleep(0.1)


def wait_for(url, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"demo: {url} did not answer within {seconds} s")


def mint(role=None, aud=AUD_GUID, expired=False):
    store = et.KeyStore.load(os.path.join(RUN, "keys"))
    now = int(time.time())
    claims = et.v2_claims(TENANT, aud, roles=[role] if role else et.DROP)
    if expired:
        claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    return et.mint(store["rsa1"], claims, alg="RS256")


def start():
    if not os.path.exists(MODULE):
        sys.exit(f"demo: {MODULE} is missing: run make first")
    stop()
    os.makedirs(RUN, exist_ok=True)
    ready = os.path.join(RUN, "fake.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    log = open(os.path.join(RUN, "fake.log"), "ab")
    fake = subprocess.Popen([sys.executable, os.path.join(HERE, "fakes", "fake_entra.py"), "--port", "0",
                             "--ready-file", ready, "--keys-dir", os.path.join(RUN, "keys")],
                            stdout=log, stderr=log, start_new_session=True)
    open(os.path.join(RUN, "fake.pid"), "w").write(str(fake.pid))
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(BACKEND_PORT)], stdout=log, stderr=log,
                               start_new_session=True)
    open(os.path.join(RUN, "backend.pid"), "w").write(str(backend.pid))
    id_ready = os.path.join(RUN, "identity.ready")
    if os.path.exists(id_ready):
        os.unlink(id_ready)
    ident = subprocess.Popen([sys.executable, os.path.join(HERE, "fakes", "fake_identity.py"), "--port", "0",
                              "--ready-file", id_ready, "--state-dir", os.path.join(RUN, "identity")],
                             stdout=log, stderr=log, start_new_session=True)
    open(os.path.join(RUN, "identity.pid"), "w").write(str(ident.pid))
    deadline = time.time() + 30
    while not (os.path.exists(ready) and os.path.exists(id_ready)) and time.time() < deadline:
        time.sleep(0.1)
    if not os.path.exists(ready):
        sys.exit("demo: the local token issuer did not start; see t/run/demo/fake.log")
    if not os.path.exists(id_ready):
        sys.exit("demo: the local managed-identity fake did not start; see t/run/demo/fake.log")
    fake_port = json.load(open(ready))["port"]
    imds = json.load(open(id_ready))["endpoints"]["imds"]
    conf = os.path.join(RUN, "httpd.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(run=RUN, port=PORT, mods=MODS, module=MODULE, fake=fake_port, tenant=TENANT,
                            aud_uri=AUD_URI, aud_guid=AUD_GUID, backend=BACKEND_PORT, imds=imds,
                            rules=os.path.join(ROOT, "conf", "rules.lua")))
    # Tests of a sanitizer build pass the runtime's preload settings for apache2 alone.
    env = {**os.environ, **json.loads(os.environ.get("DEMO_APACHE_ENV", "{}"))}
    r = subprocess.run(["/usr/sbin/apache2", "-f", conf, "-k", "start"], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        sys.exit("demo: apache2 failed to start:\n" + r.stdout + r.stderr)
    wait_for(f"http://127.0.0.1:{PORT}/orders/")

    for name, tok in (("reader", mint("Orders.Read")), ("norole", mint(None)), ("expired", mint("Orders.Read", expired=True))):
        with open(os.path.join(RUN, name + ".jwt"), "w") as f:
            f.write(tok)
    rel = os.path.relpath(RUN, os.getcwd())
    url = f"http://127.0.0.1:{PORT}/orders/42"
    cmds = [
        ("200, the backend sees X-Entra-Oid/Azp/Roles", f'curl -i -H "Authorization: Bearer $(cat {rel}/reader.jwt)" {url}'),
        ("401, no token", f"curl -i {url}"),
        ("401 invalid_token, expired", f'curl -i -H "Authorization: Bearer $(cat {rel}/expired.jwt)" {url}'),
        ("403 insufficient_scope, no Orders.Read role", f'curl -i -H "Authorization: Bearer $(cat {rel}/norole.jwt)" {url}'),
        ("200, the backend shows the claims of the token mod_entra attached (identity demo)",
         f"curl -i http://127.0.0.1:{PORT}/inventory/items"),
        ("200, the Lua rule `orders` lets a GET with Orders.Read through",
         f'curl -i -H "Authorization: Bearer $(cat {rel}/reader.jwt)" http://127.0.0.1:{PORT}/lua-orders/7'),
        ("403, the Lua rule `orders` wants Orders.Write for a POST",
         f'curl -i -X POST -H "Authorization: Bearer $(cat {rel}/reader.jwt)" http://127.0.0.1:{PORT}/lua-orders/7'),
    ]
    print(f"mod_entra demo: httpd on http://127.0.0.1:{PORT}/orders/ (tenant {TENANT}, audience {AUD_URI})")
    print(f"local Entra ID fake on http://127.0.0.1:{fake_port}/, backend on 127.0.0.1:{BACKEND_PORT}\n")
    for what, cmd in cmds:
        status = subprocess.run(cmd.replace("curl -i", "curl -s -o /dev/null -w %{http_code}"), shell=True,
                                capture_output=True, text=True).stdout
        print(f"# {what} (now: {status})\n{cmd}\n")
    print(f"Status page: http://127.0.0.1:{PORT}/entra-status  (also ?format=json and ?format=prometheus;"
          " from this machine only)\n")
    print(f"More tokens: {sys.executable} t/demo.py token --role Orders.Read")
    print(f"Logs: {rel}/error.log and {rel}/access.log.  Stop: make demo-stop")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("start")
    sub.add_parser("stop")
    tk = sub.add_parser("token")
    tk.add_argument("--role")
    tk.add_argument("--aud", default=AUD_GUID)
    tk.add_argument("--expired", action="store_true")
    a = ap.parse_args()
    if a.cmd == "stop":
        stop()
    elif a.cmd == "token":
        print(mint(a.role, a.aud, a.expired))
    else:
        start()


if __name__ == "__main__":
    main()
