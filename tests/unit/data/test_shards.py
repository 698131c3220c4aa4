import io
import json
import tarfile

import pytest
from PIL import Image

from ptmrec.config import DataConfig
from ptmrec.data.shards import MANIFEST_KEYS, ManifestError, load_manifest, write_shards
from ptmrec.data.sources.synthetic import make_synthetic
from ptmrec.storage import Storage


@pytest.fixture()
def small():
    return make_synthetic(num_users=30, num_items=25, seed=1)


def cfg_for(tmp_path, **kw):
    return DataConfig(source="synthetic", uri=str(tmp_path / "data"), shard_items=10, shard_users=12,
                      image_size=48, **kw)


def test_layout_and_manifest(tmp_path, small):
    cfg = cfg_for(tmp_path)
    manifest = write_shards(small, cfg, Storage(), progress=False)
    assert tuple(manifest) == (*MANIFEST_KEYS, "ids")  # exactly these keys
    assert manifest["num_items"] == 25 and manifest["num_users"] == 30
    assert [e["count"] for e in manifest["shards"]["items"]] == [10, 10, 5]
    assert [e["count"] for e in manifest["shards"]["interactions"]] == [12, 12, 6]
    assert sum(manifest["splits"].values()) == manifest["num_interactions"] == len(small.users)
    assert load_manifest(Storage(), cfg.uri) == manifest

    with tarfile.open(tmp_path / "data/items/items-000000.tar") as tar:
        names = tar.getnames()
        first = names[0].split(".")[0]  # items are in a seeded random order
        assert names[:3] == [f"{first}.txt", f"{first}.jpg", f"{first}.json"] and first != "0000000"
        image = Image.open(io.BytesIO(tar.extractfile(f"{first}.jpg").read()))
        assert min(image.size) == 48  # stored resized to the configured short side
        assert json.loads(tar.extractfile(f"{first}.json").read())["item"] == int(first)
    with tarfile.open(tmp_path / "data/interactions/users-000000.tar") as tar:
        rec = json.loads(tar.extractfile("0000003.json").read())
        assert rec["user"] == 3 and set(rec) == {"user", "train", "valid", "test"}


def test_rerun_rewrites_nothing_already_correct(tmp_path, small):
    cfg = cfg_for(tmp_path)
    write_shards(small, cfg, Storage(), progress=False)
    files = sorted((tmp_path / "data").rglob("*"))
    before = {p: p.stat().st_mtime_ns for p in files if p.is_file()}
    write_shards(small, cfg, Storage(), progress=False)
    after = {p: p.stat().st_mtime_ns for p in files if p.is_file()}
    assert before == after


def test_changed_input_rewrites_changed_shards_and_drops_stale_ones(tmp_path, small):
    cfg = cfg_for(tmp_path)
    write_shards(small, cfg, Storage(), progress=False)
    smaller = make_synthetic(num_users=30, num_items=12, seed=1)
    manifest = write_shards(smaller, cfg, Storage(), progress=False)
    assert len(manifest["shards"]["items"]) == 2
    assert sorted(p.name for p in (tmp_path / "data/items").iterdir()) == ["items-000000.tar", "items-000001.tar"]


def test_failed_prepare_leaves_no_manifest(tmp_path, small):
    """A crash mid-way must not leave a manifest that points at missing or partial shards."""
    cfg = cfg_for(tmp_path)
    write_shards(small, cfg, Storage(), progress=False)

    class CrashingStorage(Storage):
        writes = 0

        def write_bytes(self, uri, data):
            CrashingStorage.writes += 1
            if CrashingStorage.writes == 2:
                raise OSError("disk full")
            super().write_bytes(uri, data)

    changed = make_synthetic(num_users=30, num_items=25, seed=2)
    with pytest.raises(OSError):
        write_shards(changed, cfg, CrashingStorage(), progress=False)
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(Storage(), cfg.uri)
    assert not [p for p in (tmp_path / "data").rglob("*tmp*")]
    # and the next run completes it
    write_shards(changed, cfg, Storage(), progress=False)
    load_manifest(Storage(), cfg.uri)


def test_manifest_errors_name_the_uri(tmp_path):
    st = Storage()
    with pytest.raises(ManifestError, match=r"manifest\.json: no manifest .*run `ptmrec prepare"):
        load_manifest(st, str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(st, str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"dataset": "x"}')
    with pytest.raises(ManifestError, match="missing key 'num_users'"):
        load_manifest(st, str(tmp_path))


def test_the_sources_ids_travel_with_the_shards(tmp_path):
    from ptmrec.data.shards import read_ids

    data = make_synthetic(num_users=6, num_items=4, seed=0)
    data.user_ids = [f"u-{i}" for i in range(6)]
    data.item_ids = ["apple", "pear", "fig", "kiwi"]
    cfg = cfg_for(tmp_path)
    manifest = write_shards(data, cfg, Storage(), progress=False)
    assert read_ids(Storage(), cfg.uri, manifest) == {"users": data.user_ids, "items": data.item_ids}
    (tmp_path / "data" / "ids.json").write_text('{"users": [], "items": []}')
    with pytest.raises(ManifestError, match=r"ids.json: sha256 differs from the manifest's"):
        read_ids(Storage(), cfg.uri, manifest)
    del manifest["ids"]  # data prepared before ids were kept: the dense index is the id
    assert read_ids(Storage(), cfg.uri, manifest)["items"] == ["0", "1", "2", "3"]
