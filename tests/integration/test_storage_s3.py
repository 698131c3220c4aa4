"""Storage against a real S3-compatible server (moto's, as its own process on 127.0.0.1)."""

import json
import multiprocessing as mp
import pickle

import pytest

from ptmrec.config import StorageConfig
from ptmrec.runtime.local_s3 import LocalS3Server, free_port
from ptmrec.storage import Storage, StorageError


def test_round_trip_list_delete(s3_storage, tmp_path):
    st, b = s3_storage, s3_storage.bucket
    st.write_bytes(f"s3://{b}/run/a.bin", b"abc")
    st.write_text(f"s3://{b}/run/sub/m.json", "{}")
    assert st.read_bytes(f"s3://{b}/run/a.bin") == b"abc"
    assert st.size(f"s3://{b}/run/a.bin") == 3
    assert st.list(f"s3://{b}/run") == ["a.bin"]  # like ls: direct children only
    assert st.list(f"s3://{b}/run/sub") == ["m.json"]
    assert not st.exists(f"s3://{b}/run/none")
    local = tmp_path / "big.bin"
    local.write_bytes(b"x" * 100_000)
    st.upload(local, f"s3://{b}/run/big.bin")
    st.download(f"s3://{b}/run/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    st.delete(f"s3://{b}/run/a.bin")
    assert st.list(f"s3://{b}/run") == ["big.bin"]
    with pytest.raises(StorageError, match="not found"):
        st.read_bytes(f"s3://{b}/run/a.bin")


def test_missing_bucket_is_one_clear_line(s3_storage):
    for call in (lambda: s3_storage.read_bytes("s3://no-such-bucket/x"),
                 lambda: s3_storage.exists("s3://no-such-bucket/x"),
                 lambda: s3_storage.write_bytes("s3://no-such-bucket/x", b"1")):
        with pytest.raises(StorageError, match=r"^s3://no-such-bucket/x: bucket does not exist at http://127\.0\.0\.1"):
            call()


def test_unreachable_endpoint():
    st = Storage(StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a",
                               secret_access_key="b", max_attempts=2, connect_timeout_s=0.5))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:"):
        st.read_bytes("s3://bucket/x")


def test_wrong_credentials_are_refused():
    """moto with IAM auth on: real keys work, a wrong key id or secret gets one clear line."""
    import boto3

    with LocalS3Server(auth=True, free_actions=3) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="ptmrec")
        iam.put_user_policy(UserName="ptmrec", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ptmrec")["AccessKey"]
        good = Storage(StorageConfig(endpoint_url=server.endpoint_url, access_key_id=key["AccessKeyId"],
                                     secret_access_key=key["SecretAccessKey"]))
        good.ensure_bucket("s3://secure")
        good.write_bytes("s3://secure/x", b"1")
        for key_id, secret in (("WRONGKEY", "nope"), (key["AccessKeyId"], "wrong-secret")):
            bad = Storage(StorageConfig(endpoint_url=server.endpoint_url, access_key_id=key_id,
                                        secret_access_key=secret))
            with pytest.raises(StorageError, match=r"^s3://secure/x: access denied .*check the S3 credentials"):
                bad.read_bytes("s3://secure/x")


def _child_reads(storage, uri, queue):
    queue.put(storage.read_bytes(uri))


def test_client_is_per_process(s3_storage):
    """The client is created lazily and never crosses a fork or a pickle: a child makes its own."""
    uri = f"s3://{s3_storage.bucket}/fork.bin"
    s3_storage.write_bytes(uri, b"parent")
    parent_client = s3_storage.client()
    assert pickle.loads(pickle.dumps(s3_storage))._client is None
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(s3_storage, uri, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == b"parent"
    assert s3_storage.client() is parent_client


def test_credentials_from_environment(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    st = Storage()  # nothing in the config: the standard AWS variables apply
    st.ensure_bucket("s3://from-env")
    st.write_bytes("s3://from-env/k", b"v")
    assert st.read_bytes("s3://from-env/k") == b"v"


def test_conditional_create_and_the_run_lease_on_s3(s3_storage):
    from ptmrec.lease import RunLease, RunLeased

    uri = f"s3://{s3_storage.bucket}/run/leases/stage1.json"
    assert s3_storage.create_exclusive(uri, b"one") and not s3_storage.create_exclusive(uri, b"two")
    assert s3_storage.read_bytes(uri) == b"one"
    s3_storage.delete(uri)
    with RunLease(s3_storage, uri, what="stage1 of run demo"):
        with pytest.raises(RunLeased, match="stage1 of run demo is running on this run"):
            RunLease(s3_storage, uri, what="stage1 of run demo").acquire()
    assert not s3_storage.exists(uri)


def test_unfinished_multipart_uploads_are_aborted(s3_storage):
    b = s3_storage.bucket
    client = s3_storage.client()
    client.create_multipart_upload(Bucket=b, Key="run/ray/checkpoint_x/model.pt")
    client.create_multipart_upload(Bucket=b, Key="elsewhere/big.bin")
    # (moto dates every upload 2010-11-10, so its age cannot be tested here; the local test covers the cut-off)
    assert s3_storage.clean_leftovers(f"s3://{b}/run", older_than_s=0) == 1
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=b).get("Uploads", [])]
    assert left == ["elsewhere/big.bin"]
