"""Storage under S3 faults: a proxy between the client and the local S3 server answers 503 storms and cuts
response bodies short, and the retry paths are exercised for real (botocore's for requests, ours for bodies)."""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse

import pytest

from ptmrec.config import StorageConfig
from ptmrec.runtime.local_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from ptmrec.storage import Storage, StorageError

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


class FaultyProxy:
    """Forwards to `upstream`; the next `storm` requests get 503 SlowDown, and the next `cut` GETs of an object
    get half their body before the connection closes."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.storm = self.cut = self.requests = 0
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

    def handle(self, h) -> None:
        self.requests += 1
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if self.storm > 0:
            self.storm -= 1
            h.send_response(503)
            h.send_header("Content-Length", str(len(SLOW_DOWN)))
            h.end_headers()
            h.wfile.write(SLOW_DOWN)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        conn.request(h.command, h.path, body=body, headers={k: v for k, v in h.headers.items() if k != "Host"} |
                     {"Host": self.upstream.netloc})
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


@pytest.fixture()
def faulty(s3_server, s3_storage):
    proxy = FaultyProxy(s3_server.endpoint_url)
    storage = Storage(StorageConfig(endpoint_url=proxy.endpoint, access_key_id=ACCESS_KEY_ID,
                                    secret_access_key=SECRET_ACCESS_KEY, max_attempts=4, connect_timeout_s=2))
    try:
        yield proxy, storage, s3_storage.bucket
    finally:
        proxy.stop()


def test_a_short_503_storm_is_ridden_out(faulty):
    proxy, storage, bucket = faulty
    uri = f"s3://{bucket}/run/x.bin"
    proxy.storm = 2
    storage.write_bytes(uri, b"payload" * 100)
    proxy.storm = 3  # max_attempts 4: the fourth attempt gets through
    assert storage.read_bytes(uri) == b"payload" * 100


def test_a_storm_longer_than_the_retries_fails_in_one_line_naming_the_object(faulty):
    proxy, storage, bucket = faulty
    uri = f"s3://{bucket}/run/x.bin"
    storage.write_bytes(uri, b"payload")
    proxy.storm = 100
    before = proxy.requests
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/run/x.bin: S3 error SlowDown from {proxy.endpoint}"):
        storage.read_bytes(uri)
    assert proxy.requests - before == 1 + 4  # the request and its max_attempts retries, then the error


def test_a_body_cut_short_is_read_again(faulty):
    proxy, storage, bucket = faulty
    uri = f"s3://{bucket}/run/shard.tar"
    data = bytes(range(256)) * 4096  # 1 MiB
    storage.write_bytes(uri, data)
    proxy.cut = 2
    assert storage.read_bytes(uri) == data
    assert proxy.cut == 0


def test_bodies_cut_on_every_attempt_fail_in_one_line(faulty):
    proxy, storage, bucket = faulty
    uri = f"s3://{bucket}/run/shard.tar"
    storage.write_bytes(uri, bytes(4096))
    proxy.cut = 100
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/run/shard.tar: read failed after 4 attempts"):
        storage.read_bytes(uri)
