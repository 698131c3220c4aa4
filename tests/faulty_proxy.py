"""An S3 proxy for fault tests: forwards to the local S3 server, and on demand answers 503 SlowDown (for a
number of requests or for a stretch of time) or cuts response bodies short."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
import urllib.parse

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


class FaultyProxy:
    """Forwards to `upstream`; the next `storm` requests (and every request before `outage_until`, a
    `time.monotonic()` value) get 503 SlowDown, and the next `cut` GETs of an object get half their body before
    the connection closes. `refused` counts the 503s sent."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.storm = self.cut = self.requests = self.refused = 0
        self.outage_until = 0.0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy.handle(self)

            do_PUT = do_HEAD = do_DELETE = do_POST = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outage(self, seconds: float) -> None:
        """Answer every request with 503 for the next `seconds`."""
        self.outage_until = time.monotonic() + seconds

    def handle(self, h) -> None:
        self.requests += 1
        body = _read_body(h)
        if self.storm > 0 or time.monotonic() < self.outage_until:
            self.storm = max(0, self.storm - 1)
            self.refused += 1
            h.send_response(503)
            h.send_header("Content-Length", str(len(SLOW_DOWN)))
            h.end_headers()
            if h.command != "HEAD":  # a HEAD answer has no body (S3's error code then goes unsaid)
                h.wfile.write(SLOW_DOWN)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        # The body goes on de-chunked, with its length: pyarrow's uploads come chunked (aws-chunked inside, which
        # the server decodes itself) and announce `Expect: 100-continue`, which http.server has answered.
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "transfer-encoding", "expect")}
        conn.request(h.command, h.path, body=body, headers=headers | {"Host": self.upstream.netloc})
        reply = conn.getresponse()
        data = reply.read()
        cut = h.command == "GET" and self.cut > 0 and len(data) > 100 and "list-type" not in h.path
        h.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection"):
                h.send_header(key, value)
        h.end_headers()
        if cut:
            self.cut -= 1
            h.wfile.write(data[: len(data) // 2])
            h.close_connection = True
            return
        h.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_body(h) -> bytes:
    """The request body, by Content-Length or, for `Transfer-Encoding: chunked`, chunk by chunk (trailers
    skipped)."""
    if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))
    data = b""
    while True:
        size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return data
        data += h.rfile.read(size)
        h.rfile.readline()
