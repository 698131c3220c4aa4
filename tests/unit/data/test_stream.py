import collections

import pytest
import torch

from ptmrec.config import DataConfig
from ptmrec.encoders.images import ImageTransform
from ptmrec.data.epochs import plan_epoch
from ptmrec.data.shards import ManifestError, load_manifest, shard_counts, write_shards
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


def epoch_pipeline(uri, *, rank, world_size, workers, seed=0, batch_size=4, **kwargs):
    manifest = load_manifest(Storage(), uri)
    plan = plan_epoch(shard_counts(manifest, uri, "items"), batch_size=batch_size, world_size=world_size,
                      workers=workers, seed=seed)
    pipe = items_from_manifest(Storage(), uri, batch_size=batch_size, rank=rank, world_size=world_size,
                               plan=plan, seed=seed, **kwargs)
    return plan, pipe


@pytest.mark.parametrize(("world_size", "workers"), [(1, 0), (1, 2), (2, 0), (2, 2), (3, 1)])
def test_an_epoch_covers_every_item_with_the_same_steps_on_every_rank(prepared, world_size, workers):
    data, uri, _ = prepared  # 50 items in 5 shards of 10
    seen, steps = collections.Counter(), []
    for rank in range(world_size):
        plan, pipe = epoch_pipeline(uri, rank=rank, world_size=world_size, workers=workers)
        batches = [b.item.tolist() for b in make_loader(pipe, num_workers=workers)]
        assert all(len(b) == 4 for b in batches)  # full chunks only
        steps.append(len(batches))
        seen.update(i for b in batches for i in b)
    assert steps == [plan.steps] * world_size
    assert set(seen) == set(range(data.num_items))
    if world_size == 1:  # one rank: each item once, bar the last chunk's fill-up
        assert sum(seen.values()) - data.num_items < 4


def test_each_epoch_draws_a_new_order(prepared):
    _, uri, _ = prepared
    orders = [[i for b in epoch_pipeline(uri, rank=0, world_size=1, workers=0, seed=s)[1] for i in b.item.tolist()]
              for s in (0, 0, 1)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    # chunks mix the catalogue: not runs of consecutive ids
    assert max(orders[0][:4]) - min(orders[0][:4]) > 4


def test_an_epoch_pipeline_needs_its_plans_workers(prepared):
    _, uri, _ = prepared
    _, pipe = epoch_pipeline(uri, rank=0, world_size=1, workers=2)
    with pytest.raises(ValueError, match=r"epoch plan is for 2 loader worker\(s\) per rank, not 1"):
        make_loader(pipe, num_workers=1)
    with pytest.raises(ValueError, match="epoch plan is for 2 loader worker"):
        list(pipe)  # iterated in this process: one reader, not two


def test_prepare_writes_items_in_a_seeded_random_order(prepared):
    _, uri, _ = prepared
    first = next(iter(items_from_manifest(Storage(), uri, batch_size=10))).item.tolist()
    assert sorted(first) != first and max(first) - min(first) > 10


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
                               tokenize=tiny.text_tokenizer())
    again = pickle.loads(pickle.dumps(pipe))
    assert sum(1 for _ in again) == 13
    _, epoch = epoch_pipeline(uri, rank=0, world_size=1, workers=0, tokenize=tiny.text_tokenizer())
    assert sum(1 for _ in pickle.loads(pickle.dumps(epoch))) == 13
