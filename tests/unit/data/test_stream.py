import collections

import pytest
import torch

from ptmrec.config import DataConfig
from ptmrec.encoders.images import ImageTransform
from ptmrec.data.shards import ManifestError, write_shards
from ptmrec.data.sources.synthetic import make_synthetic
from ptmrec.data.stream import (ItemBatch, ShardError, item_pipeline, items_from_manifest,
                                make_loader, read_interactions)
from ptmrec.encoders import build_encoder
from ptmrec.storage import Storage


@pytest.fixture()
def prepared(tmp_path):
    data = make_synthetic(num_users=40, num_items=50, seed=4)
    cfg = DataConfig(source="synthetic", uri=str(tmp_path / "data"), shard_items=10, shard_users=15)
    manifest = write_shards(data, cfg, Storage(), progress=False)
    return data, cfg.uri, manifest


def test_every_item_once_across_ranks_and_workers(prepared):
    data, uri, _ = prepared
    seen = []
    for rank in range(2):
        pipe = items_from_manifest(Storage(), uri, batch_size=4, rank=rank, world_size=2)
        for batch in make_loader(pipe, num_workers=2):
            seen += batch.item.tolist()
            assert batch.text is not None and batch.image is None  # no transform: images not decoded
    assert sorted(seen) == list(range(50))


def test_batches_carry_text_and_uint8_pixels(prepared):
    data, uri, _ = prepared
    transform = ImageTransform(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batch = next(iter(items_from_manifest(Storage(), uri, batch_size=8, transform=transform)))
    assert batch.image.shape == (8, 3, 32, 32) and batch.image.dtype == torch.uint8
    assert batch.tokens is None  # no tokenize given
    assert batch.text == [data.item_texts[i] for i in batch.item.tolist()]
    # The items' own pictures, up to JPEG's losses.
    drawn = transform.pixels([data.item_image(i) for i in batch.item.tolist()])
    assert (batch.image.float() - drawn.float()).abs().mean() < 8
    torch.testing.assert_close(transform.normalize(batch.image), (batch.image.float() / 255 - 0.5) / 0.5)


def test_resampling_gives_every_rank_the_same_number_of_batches(prepared):
    _, uri, _ = prepared
    counts = [sum(1 for _ in items_from_manifest(Storage(), uri, batch_size=4, rank=r, world_size=3,
                                                  resample=True, batches_per_epoch=7, shuffle_buffer=20))
              for r in range(3)]
    assert counts == [7, 7, 7]


def test_shuffle_changes_order_but_not_content(prepared):
    _, uri, _ = prepared
    plain = [i for b in items_from_manifest(Storage(), uri, batch_size=50) for i in b.item.tolist()]
    mixed = [i for b in items_from_manifest(Storage(), uri, batch_size=50, shuffle_buffer=30, seed=1)
             for i in b.item.tolist()]
    assert sorted(plain) == sorted(mixed) and plain != mixed


def test_sha_mismatch_names_the_shard(prepared, tmp_path):
    _, uri, manifest = prepared
    path = tmp_path / "data" / manifest["shards"]["items"][1]["name"]
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # one flipped bit inside a sample
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"items-000001\.tar: sha256 .* differs from the manifest"):
        list(items_from_manifest(Storage(), uri, batch_size=4))


def test_truncated_shard_names_the_shard(prepared, tmp_path):
    _, uri, manifest = prepared
    path = tmp_path / "data" / manifest["shards"]["items"][0]["name"]
    path.write_bytes(path.read_bytes()[:1500])
    urls = [str(path)]
    with pytest.raises(ShardError, match=r"items-000000\.tar: corrupt or truncated tar shard"):
        list(item_pipeline(urls, Storage(), batch_size=4))  # without the hash check, tar parsing catches it
    with pytest.raises(ShardError, match=r"items-000000\.tar: sha256"):
        list(items_from_manifest(Storage(), uri, batch_size=4))


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        items_from_manifest(Storage(), str(tmp_path / "nothing"), batch_size=4)


def test_read_interactions_matches_the_source(prepared):
    data, uri, _ = prepared
    inter = read_interactions(Storage(), uri)
    assert (inter.num_users, inter.num_items) == (40, 50)
    assert len(inter.train_users) == (data.splits == 0).sum()
    want = collections.defaultdict(list)
    for u, i, s in zip(data.users, data.items, data.splits):
        if s == 2:
            want[int(u)].append(int(i))
    assert inter.test == dict(want)


# ------------------------------------------------------------------- DataLoader workers, tokens, pinning


@pytest.fixture(scope="module")
def tiny():
    return build_encoder("tiny-clip")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_resampled_loader_yields_exactly_the_epoch_with_workers(prepared, workers):
    _, uri, _ = prepared
    counts = []
    for rank in range(2):
        # 7 batches over 2 workers: 4 each, cut at 7 (not 2 x 7, as epochs counted per worker would give).
        pipe = items_from_manifest(Storage(), uri, batch_size=4, rank=rank, world_size=2, resample=True,
                                   batches_per_epoch=7, shuffle_buffer=8, loader_workers=workers)
        loader = make_loader(pipe, num_workers=workers)
        counts.append([sum(1 for _ in loader) for _epoch in range(2)])
    assert counts == [[7, 7], [7, 7]]


def test_make_loader_adjusts_a_pipeline_built_for_other_workers(prepared):
    _, uri, _ = prepared
    pipe = items_from_manifest(Storage(), uri, batch_size=4, resample=True, batches_per_epoch=5)
    assert sum(1 for _ in make_loader(pipe, num_workers=2)) == 5
    assert sum(1 for _ in pipe) == 5  # the pipeline passed in is unchanged
    built_for_two = items_from_manifest(Storage(), uri, batch_size=4, resample=True, batches_per_epoch=5,
                                        loader_workers=2)
    assert sum(1 for _ in built_for_two) == 3  # one worker's share, ceil(5 / 2)
    assert sum(1 for _ in make_loader(built_for_two, num_workers=0)) == 5
    assert sum(1 for _ in make_loader(built_for_two, num_workers=1)) == 5


def test_workers_deliver_uint8_pixels_and_tokens_every_item_once(prepared, tiny):
    data, uri, _ = prepared
    tokenize = tiny.text_tokenizer()
    seen = []
    pipe = items_from_manifest(Storage(), uri, batch_size=4, transform=tiny.image_transform, tokenize=tokenize)
    for batch in make_loader(pipe, num_workers=2, pin_memory=True):
        seen += batch.item.tolist()
        assert batch.image.dtype == torch.uint8 and batch.image.shape == (len(batch.item), 3, 32, 32)
        assert batch.text == [data.item_texts[i] for i in batch.item.tolist()]
        want = tiny.tokenize(batch.text)
        assert set(batch.tokens) == set(want)
        for key in want:
            assert torch.equal(batch.tokens[key], want[key])
    assert sorted(seen) == list(range(50))


def test_item_batch_pin_memory_and_to():
    batch = ItemBatch(item=torch.arange(3), text=["a", "b", "c"], image=torch.zeros(3, 3, 4, 4, dtype=torch.uint8),
                      tokens={"input_ids": torch.ones(3, 5, dtype=torch.long),
                              "attention_mask": torch.ones(3, 5, dtype=torch.long)})
    pinned = batch.pin_memory()
    assert pinned is not batch and pinned.text == batch.text
    if torch.accelerator.is_available():
        assert pinned.item.is_pinned() and pinned.image.is_pinned() and pinned.tokens["input_ids"].is_pinned()
    moved = pinned.to("cpu")
    assert moved.image.dtype == torch.uint8 and moved.text == batch.text
    assert torch.equal(moved.tokens["attention_mask"], batch.tokens["attention_mask"])
    bare = ItemBatch(item=torch.arange(2), text=None, image=None)
    assert bare.pin_memory().to("cpu", non_blocking=False).tokens is None


def test_pipelines_pickle(prepared, tiny):
    # Every stage is picklable, so workers also start under spawn / forkserver.
    import pickle

    _, uri, _ = prepared
    pipe = items_from_manifest(Storage(), uri, batch_size=4, transform=tiny.image_transform,
                               tokenize=tiny.text_tokenizer(), resample=True, batches_per_epoch=3)
    again = pickle.loads(pickle.dumps(pipe))
    assert sum(1 for _ in again) == 3
