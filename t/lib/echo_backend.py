"""A tiny loopback HTTP backend that answers every request with the request it saw, as JSON
(after X-Test-Sleep seconds, if the request has that header).

httpd proxies /<location>/echo here so tests can assert which headers (X-Entra-*,
X-Test-*) reached the application.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _answer(self):
        # X-Test-Sleep: seconds (at most 60) to hold the request before answering.
        delay = min(float(self.headers.get("X-Test-Sleep") or 0), 60.0)
        if delay > 0:
            time.sleep(delay)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(min(n, 1024 * 1024))
        parts = urlsplit(self.path)
        body = json.dumps({
            "method": self.command,
            "path": parts.path,
            "query": parts.query,
            "headers": [[k, v] for k, v in self.headers.items()],
        }).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True   # the client (httpd stopping) went away meanwhile

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class EchoBackend:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True)

    def start(self) -> "EchoBackend":
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def headers_of(response) -> dict:
    """Backend-seen headers from an echo response, as {lower-name: [values...]}."""
    out: dict[str, list[str]] = {}
    for k, v in response.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out
