"""Stage 2 with the layer cache, for real (Ray tasks build it, 2 DeepSpeed workers read it): the features it
trains and evaluates on are the full encoder's, and an interrupted build resumes; on the local S3 server, the
shards stream back to the full features and a damaged one is refused by name. (Which settings key a cache:
tests/unit/stages/test_layer_cache.py.)"""

import json

import numpy as np
import pytest

from tests.integration.conftest import ptmrec
from tests.integration.test_stage2 import reencode

pytestmark = pytest.mark.slow


def cache_folders(run):
    return sorted(p.parent for p in (run / "features").glob("layers-*/*/cache.json"))


@pytest.mark.slower
def test_layer_cache_trains_on_the_full_features_and_an_interrupted_build_resumes(repo, smoke_data, smoke_stage1,
                                                                                   tmp_path):
    import shutil

    from ptmrec.config import load_config
    from ptmrec.stages.features import load_features
    from ptmrec.storage import Storage

    run = tmp_path / "run"
    sets = ["--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}", "--set", "stage2.layer_cache=true",
            "--set", "stage2.adapter={name: lora, rank: 4, top_layers: 1}"]
    shutil.copytree(smoke_stage1, run)  # the smoke config's own stage 1
    proc = ptmrec(repo, "stage2", "--config", "configs/smoke.yaml", *sets, "--set", "stage2.epochs=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "built the layer cache of 120 items" in proc.stderr

    (folder,) = cache_folders(run)
    assert folder.parent.name == "layers-image1-text1"  # tiny-clip has 2 layers per tower, LoRA in the top one
    meta = json.loads((folder / "cache.json").read_text())
    metrics = json.loads((run / "stage2" / "metrics.json").read_text())
    assert metrics["layer_cache"]["total_bytes"] == sum(e["bytes"] for e in meta["shards"]["items"]) > 0
    assert metrics["layer_cache"]["frozen_layers"] == {"image": 1, "text": 1}
    # The start (epoch 0, through the cache) is stage 1's model exactly, and the adapter trained through the
    # cache gives, through the full encoder, the features the stage saved (computed from the cache).
    stage1 = json.loads((run / "stage1" / "metrics.json").read_text())
    assert metrics["history"][0]["valid/recall@20"] == stage1["valid"]["recall@20"]
    cfg = load_config("configs/smoke.yaml", [f"data.uri={smoke_data}", f"run.uri={run}",
                                             "stage2.adapter={name: lora, rank: 4, top_layers: 1}"])
    saved = load_features(Storage(cfg.storage), str(next((run / "features" / "adapted-stage2").iterdir())))
    full = reencode(cfg, run / "stage2" / "adapter.pt", world_size=2)
    for m in ("image", "text"):
        np.testing.assert_allclose(saved[m].numpy(), full[m], rtol=1e-4, atol=1e-5)

    shard = folder / "items-000001.tar"
    original = shard.read_bytes()
    # After a kill mid-build (no cache.json, one shard cut short, one never written) the next run encodes
    # what is missing, keeps what is whole, and ends with the same cache.
    (folder / "cache.json").unlink()
    shard.write_bytes(original[: len(original) // 2])
    (folder / "items-000002.tar").unlink()
    proc = ptmrec(repo, "stage2", "--config", "configs/smoke.yaml", *sets, "--set", "stage2.output=resumed")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "items-000001.tar: an unfinished cache shard" in proc.stderr
    assert json.loads((folder / "cache.json").read_text())["shards"] == meta["shards"]


def test_cache_shards_are_written_to_and_streamed_from_s3(repo, s3_server, s3_storage, monkeypatch):
    """The build's task and the stage's reader against the local S3 server: shards written there, read back
    hash-checked and split over 2 ranks to the full encoder's features; a missing shard is rebuilt alone."""
    import torch

    from ptmrec.config import load_config
    from ptmrec.data.prepare import prepare
    from ptmrec.data.shards import load_manifest
    from ptmrec.data.stream import ShardError
    from ptmrec.stages.common import build_configured_encoder
    from ptmrec.stages.features import encode_items
    from ptmrec.stages.layer_cache import build_cache_shards, cache_dir, cache_sources, finish_cache

    monkeypatch.chdir(repo)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # credentials come from the environment, never the config
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    b = s3_storage.bucket
    cfg = load_config("configs/smoke.yaml", [f"data.uri=s3://{b}/data", f"run.uri=s3://{b}/run",
                                             f"storage.endpoint_url={s3_server.endpoint_url}",
                                             "stage2.adapter={name: lora, rank: 4, top_layers: 1}"])
    prepare(cfg, progress=False)
    manifest = load_manifest(s3_storage, cfg.data.uri)
    encoder = build_configured_encoder(cfg, manifest["modalities"], "lora").eval()
    frozen = encoder.applied_adapter.frozen_layers
    uri = cache_dir(cfg, manifest, frozen)
    assert uri.startswith(f"s3://{b}/run/features/layers-image1-text1/")
    sources = cache_sources(cfg, manifest, uri)
    entries = build_cache_shards(cfg, "lora", sources, progress=False)
    assert sorted(s3_storage.list(uri)) == ["items-000000.tar", "items-000001.tar", "items-000002.tar"]

    s3_storage.delete(sources[1][2])  # as after a kill: the others are kept, this one is encoded again
    assert build_cache_shards(cfg, "lora", sources, progress=False) == entries
    cache = finish_cache(cfg, s3_storage, uri, frozen, sources, entries, build_s=1.0)

    with torch.no_grad():
        full = {r: encode_items(cfg, r, 2, encoder=encoder, progress=False) for r in range(2)}
        cached = {r: encode_items(cfg, r, 2, encoder=encoder, progress=False, cache=cache) for r in range(2)}
    for r in range(2):
        assert cached[r][0].tolist() == full[r][0].tolist()  # the same items per rank
        for m in ("image", "text"):
            np.testing.assert_allclose(cached[r][1][m], full[r][1][m], rtol=1e-5, atol=1e-6)

    # A damaged shard of a finished cache is refused, naming it.
    damaged = s3_storage.read_bytes(sources[1][2])
    s3_storage.write_bytes(sources[1][2], damaged[:100] + b"\xff" * 50 + damaged[150:])
    with pytest.raises(ShardError, match=r"items-000001.tar: sha256 .* differs from the manifest's"):
        encode_items(cfg, 0, 1, encoder=encoder, progress=False, cache=cache)
