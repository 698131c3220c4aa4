"""One writer per stage of a run: the lease object, its conditional create, heartbeat and lapse."""

from __future__ import annotations

import json
import os
import time

import pytest

from ptmrec.lease import RunLease, RunLeased
from ptmrec.storage import Storage


def test_create_exclusive_writes_once_and_leaves_no_temporary_file(tmp_path):
    storage, uri = Storage(), str(tmp_path / "leases" / "stage1.json")
    assert storage.create_exclusive(uri, b"first")
    assert not storage.create_exclusive(uri, b"second")
    assert storage.read_bytes(uri) == b"first"
    assert os.listdir(tmp_path / "leases") == ["stage1.json"]


def test_a_second_writer_is_stopped_naming_the_first(tmp_path):
    storage, uri = Storage(), str(tmp_path / "stage1.json")
    with RunLease(storage, uri, what="stage1 of run demo"):
        with pytest.raises(RunLeased, match=rf"stage1 of run demo is running on this run \(pid {os.getpid()} on "):
            RunLease(storage, uri, what="stage1 of run demo").acquire()
    assert not storage.exists(uri)  # released on exit
    with RunLease(storage, uri, what="stage1 of run demo"):  # and free for the next one
        assert storage.exists(uri)


def test_a_lapsed_lease_is_taken_over(tmp_path, caplog):
    storage, uri = Storage(), str(tmp_path / "stage1.json")
    storage.write_bytes(uri, json.dumps({"owner": "gone", "what": "stage1 of run demo", "host": "h", "pid": 1,
                                         "heartbeat": time.time() - 500}).encode())
    with RunLease(storage, uri, what="stage2", stale_s=120) as lease:
        assert json.loads(storage.read_bytes(uri))["owner"] == lease.owner
    assert "taking over the lease of stage1 of run demo" in caplog.text


def test_the_heartbeat_keeps_the_lease_fresh_and_notices_a_takeover(tmp_path, caplog):
    storage, uri = Storage(), str(tmp_path / "stage1.json")

    def until(condition) -> None:  # polled: a loaded machine may delay the heartbeat thread
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    with RunLease(storage, uri, what="a", heartbeat_s=0.05) as lease:
        first = json.loads(storage.read_bytes(uri))["heartbeat"]
        until(lambda: json.loads(storage.read_bytes(uri))["heartbeat"] > first)
        other = {"owner": "other", "what": "b", "host": "h", "pid": 2, "heartbeat": time.time()}

        def takeover_noticed() -> bool:
            # the other holder beats too: a beat of ours that read the file just before its write overwrites it once
            storage.write_bytes(uri, json.dumps(other).encode())
            return "lease was taken over by another" in caplog.text

        until(takeover_noticed)
        time.sleep(0.3)  # six beats: none comes
        assert json.loads(storage.read_bytes(uri))["owner"] == "other"  # never written over since
        assert lease.owner != "other"
    assert storage.exists(uri)  # not ours any more: left to its holder


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage, uri = Storage(), str(tmp_path / "stage1.json")
    storage.write_bytes(uri, json.dumps({"owner": "killed", "what": "stage1 of run demo", "pid": int(dead.stdout),
                                         "host": socket.gethostname(), "heartbeat": time.time()}).encode())
    with RunLease(storage, uri, what="stage1 of run demo") as lease:
        assert json.loads(storage.read_bytes(uri))["owner"] == lease.owner
    assert "no longer running" in caplog.text
