import os

import pytest

from ptmrec.storage import Storage, StorageError

from ptmrec.uris import absolute_uri, join, parse_uri


def test_parse_uri():
    assert parse_uri("s3://bucket/a/b/").key == "a/b"
    assert parse_uri("s3://bucket").bucket == "bucket"
    assert parse_uri("file:///tmp/x").path == "/tmp/x"
    assert parse_uri("rel/x").path == os.path.abspath("rel/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        parse_uri("s3:///key")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        parse_uri("gs://b/k")


def test_join_and_absolute():
    assert join("s3://b/p/", "/items/", "x.tar") == "s3://b/p/items/x.tar"
    assert absolute_uri("file://./runs/x") == f"file://{os.path.abspath('runs/x')}"
    assert absolute_uri("s3://b/p") == "s3://b/p"


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_round_trip(tmp_path, scheme):
    st = Storage()
    base = f"{scheme}{tmp_path}"
    st.write_bytes(join(base, "a/b.bin"), b"123")
    assert st.read_bytes(join(base, "a/b.bin")) == b"123"
    assert st.size(join(base, "a/b.bin")) == 3
    assert st.list(join(base, "a")) == ["b.bin"]
    assert not st.exists(join(base, "a/none"))
    with pytest.raises(StorageError, match="not found"):
        st.read_bytes(join(base, "a/none"))
    st.delete(join(base, "a/b.bin"))
    st.delete(join(base, "a/b.bin"))  # deleting twice is fine
    assert st.list(join(base, "a")) == []


def test_local_write_is_atomic_on_failure(tmp_path):
    """A writer that dies mid-write leaves the old file whole and no temp file behind."""
    st = Storage()
    target = tmp_path / "artifact.json"
    st.write_text(str(target), "old")

    class Boom(Exception):
        pass

    from ptmrec import storage as storage_mod

    with pytest.raises(Boom):
        with storage_mod._atomic_local(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new")
            raise Boom()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact.json"]


def test_listing_hides_temp_files(tmp_path):
    (tmp_path / ".x.json.tmp-123").write_text("partial")
    (tmp_path / "done.json").write_text("{}")
    assert Storage().list(str(tmp_path)) == ["done.json"]


def test_local_files_get_the_mode_a_plain_open_gives(tmp_path):
    import stat

    previous = os.umask(0o022)
    try:
        Storage().write_text(str(tmp_path / "metrics.json"), "{}")
        Storage().write_bytes(str(tmp_path / "model.pt"), b"x")
    finally:
        os.umask(previous)
    for name in ("metrics.json", "model.pt"):  # readable by the group and others, as on a shared file system
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_failed_local_write_is_one_line_and_replaces_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    target = tmp_path / "metrics.json"
    Storage().write_text(str(target), "old")

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(StorageError, match=r"metrics.json: cannot write: No space left on device \(nothing was replaced"):
        Storage().write_text(str(target), "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(StorageError, match="cannot write"):
        Storage().write_text(str(blocked / "sub" / "metrics.json"), "new")  # a file where a folder must be


def test_leftovers_of_killed_writes_are_cleaned_once_old(tmp_path):
    import os
    import time

    from ptmrec.storage import Storage

    old = tmp_path / "stage1" / ".metrics.json.tmp-0123456789ab"
    fresh = tmp_path / "features" / ".meta.json.tmp-ba9876543210"
    kept = tmp_path / "stage1" / "metrics.json"
    for path in (old, fresh, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    os.utime(kept, (hours_ago, hours_ago))
    assert Storage().clean_leftovers(str(tmp_path), older_than_s=3600) == 1
    assert not old.exists() and fresh.exists() and kept.exists()  # a write in progress is left alone
