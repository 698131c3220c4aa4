"""Storage under S3 faults: a proxy between the client and the local S3 server answers 503 storms and outages
and cuts response bodies short, and the retry paths are exercised for real (botocore's for requests, ours for
bodies and for outages)."""

from __future__ import annotations

import pytest

from ptmrec.config import StorageConfig
from ptmrec.runtime.local_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from ptmrec.storage import Storage, StorageError
from tests.faulty_proxy import FaultyProxy


def through(proxy: FaultyProxy, outage_budget_s: float = 0.0, max_attempts: int = 4) -> Storage:
    return Storage(StorageConfig(endpoint_url=proxy.endpoint, access_key_id=ACCESS_KEY_ID,
                                 secret_access_key=SECRET_ACCESS_KEY, max_attempts=max_attempts, connect_timeout_s=2,
                                 outage_budget_s=outage_budget_s))


@pytest.fixture()
def faulty(s3_server, s3_storage):
    """(proxy, a Storage through it with no outage budget: botocore's and our attempts only, bucket)"""
    proxy = FaultyProxy(s3_server.endpoint_url)
    storage = through(proxy)
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


def test_an_outage_within_the_budget_only_pauses_the_call(faulty, caplog):
    import time

    proxy, _, bucket = faulty
    storage = through(proxy, outage_budget_s=20, max_attempts=1)  # no botocore retries: the outage is ours
    uri = f"s3://{bucket}/run/x.bin"
    storage.write_bytes(uri, b"before")  # the endpoint has answered: what follows is an outage
    proxy.outage(3)
    started = time.monotonic()
    storage.write_bytes(uri, b"after")
    assert time.monotonic() - started >= 2.5 and proxy.refused >= 3
    assert storage.read_bytes(uri) == b"after"
    assert "S3 endpoint unavailable (SlowDown); retrying for up to 20 s (storage.outage_budget_s)" in caplog.text


def test_an_outage_beyond_the_budget_fails_in_one_line_saying_how_long(faulty):
    proxy, _, bucket = faulty
    storage = through(proxy, outage_budget_s=3, max_attempts=1)
    uri = f"s3://{bucket}/run/x.bin"
    storage.write_bytes(uri, b"before")
    proxy.outage(60)
    with pytest.raises(StorageError, match=r"S3 error SlowDown from .* \(unavailable for [3-6] s, "
                                           r"storage.outage_budget_s\)"):
        storage.read_bytes(uri)


def test_an_endpoint_that_never_answered_fails_at_once(faulty):
    import time

    proxy, _, bucket = faulty
    storage = through(proxy, outage_budget_s=300)
    proxy.outage(60)
    started = time.monotonic()
    with pytest.raises(StorageError, match="SlowDown"):
        storage.read_bytes(f"s3://{bucket}/run/x.bin")
    assert time.monotonic() - started < 30  # botocore's attempts only, not the outage budget
