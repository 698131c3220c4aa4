"""Shards → batches: WebDataset pipelines over local or S3 shards, split by Ray worker rank.

Shards are opened through `Storage` (one persistent boto3 client per process), not through WebDataset's
`pipe:` subprocesses, and each shard is checked against the sha256 the manifest lists before a single
sample is used: a corrupt, truncated or replaced shard fails naming the shard.

Two reading modes:
- `resample=False`: every shard once, split by rank then by DataLoader worker (feature extraction,
  evaluation). Ranks may get different sample counts: use it where no collective op runs per batch.
- `resample=True`: shards drawn at random per rank with a fixed number of batches per epoch, so every
  rank runs the same number of steps (unequal counts hang the gradient all-reduce).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys

from ptmrec.data.shards import load_manifest, shard_hashes
from ptmrec.storage import Storage


class ShardError(ValueError):
    """A shard that cannot be used as it is; the message names the shard and what was expected."""


# ---------------------------------------------------------------------------------- pipeline stages


def split_by_rank(rank: int, world_size: int):
    """Stage: keep every `world_size`-th shard starting at `rank` (ranks come from Ray Train)."""

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        for i, sample in enumerate(src):
            if i % world_size == rank:
                yield sample

    return stage


def open_shards(storage: Storage, expected_sha256: Optional[dict[str, str]] = None):
    """Stage: {"url"} → the shard's files as {"fname", "data", "__url__"}, after the sha256 check.

    A shard is read whole with one GET (shards are tens of MB), which also makes the hash check free.
    """

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        for source in src:
            url = source["url"]
            data = storage.read_bytes(url)
            if expected_sha256 is not None:
                want = expected_sha256.get(url)
                got = hashlib.sha256(data).hexdigest()
                if want is not None and got != want:
                    raise ShardError(f"{url}: sha256 {got[:12]}… differs from the manifest's {want[:12]}…; "
                                     "the shard was changed or damaged after `ptmrec prepare` (re-run it)")
            yield from _tar_members(url, data)
            yield {}  # end-of-shard marker, so that group_by_keys never joins two shards' samples

    return stage


def _tar_members(url: str, data: bytes) -> Iterator[dict]:
    def broken(why: str) -> ShardError:
        return ShardError(f"{url}: corrupt or truncated tar shard ({why}); expected WebDataset samples "
                          "written by `ptmrec prepare`")

    end = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                end = info.offset_data + info.size
                if end > len(data):
                    raise broken(f"{info.name} needs {info.size} bytes, the file ends first")
                if info.isreg():
                    yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
    except (tarfile.TarError, EOFError) as exc:
        raise broken(str(exc)) from None
    # tarfile stops quietly at a header cut short; a whole archive ends with two zero blocks.
    tail = data[-(-end // 512) * 512:]
    if len(tail) < 1024 or tail[:1024].strip(b"\0"):
        raise broken("no end-of-archive marker")


# ------------------------------------------------------------------------------------------ items


@dataclass
class ItemBatch:
    item: torch.Tensor  # int64 [B]
    text: Optional[list[str]]  # [B] or None when the data set has no text
    image: Optional[torch.Tensor]  # float [B, 3, H, W] or None when it has no images


# An encoder's image preprocessing: PIL images → Tensor[B, 3, S, S] (`TwoTowerEncoder.image_transform`).
ImageBatchTransform = Callable[[list[Image.Image]], torch.Tensor]


def decode_jpeg(data: bytes, size_hint: Optional[int] = None) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        if size_hint:
            im.draft("RGB", (size_hint, size_hint))  # JPEG: decode at a reduced scale when it can
        return im.convert("RGB")


def decode_item(transform: Optional[ImageBatchTransform]) -> Callable[[dict], dict]:
    """Stage: raw sample → {"item", "text"?, "image"? (PIL, only when a transform will use it)}."""
    size_hint = getattr(transform, "size", None)

    def decode(sample: dict) -> dict:
        url = sample.get("__url__", "?")
        try:
            meta = json.loads(sample["json"])
            out = {"item": int(meta["item"])}
        except (KeyError, ValueError) as exc:
            raise ShardError(f"{url}: sample {sample.get('__key__')!r} has no valid .json with an 'item' id "
                             f"({exc})") from None
        if "txt" in sample:
            out["text"] = sample["txt"].decode("utf-8")
        if "jpg" in sample and transform is not None:
            try:
                out["image"] = decode_jpeg(sample["jpg"], size_hint)
            except OSError as exc:
                raise ShardError(f"{url}: sample {sample['__key__']!r}: .jpg is not a readable image ({exc})") from None
        return out

    return decode


def collate_items(transform: Optional[ImageBatchTransform]) -> Callable[[list[dict]], ItemBatch]:
    def collate(samples: list[dict]) -> ItemBatch:
        return ItemBatch(
            item=torch.tensor([s["item"] for s in samples], dtype=torch.long),
            text=[s["text"] for s in samples] if "text" in samples[0] else None,
            image=transform([s["image"] for s in samples]) if "image" in samples[0] else None,
        )

    return collate


def item_pipeline(urls: list[str], storage: Storage, *, batch_size: int, rank: int = 0, world_size: int = 1,
                  transform: Optional[ImageBatchTransform] = None, shuffle_buffer: int = 0, seed: int = 0,
                  resample: bool = False, batches_per_epoch: Optional[int] = None,
                  expected_sha256: Optional[dict[str, str]] = None, partial: bool = True) -> wds.DataPipeline:
    """A WebDataset pipeline yielding `ItemBatch`es; see the module docstring for the two modes.

    With `resample`, `batches_per_epoch` is per rank (and is split over DataLoader workers by
    `make_loader`).
    """
    if resample:
        stages = [wds.ResampledShards(urls, seed=seed + 7919 * rank, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls), split_by_rank(rank, world_size)]
    stages += [wds.split_by_worker, open_shards(storage, expected_sha256), group_by_keys]
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + rank))
    stages += [wds.map(decode_item(transform)),
               wds.batched(batch_size, collation_fn=collate_items(transform), partial=partial and not resample)]
    pipeline = wds.DataPipeline(*stages)
    if resample:
        if not batches_per_epoch:
            raise ValueError("resample=True needs batches_per_epoch (the same for every rank)")
        pipeline = pipeline.with_epoch(nbatches=batches_per_epoch)
    return pipeline


def make_loader(pipeline: wds.DataPipeline, num_workers: int = 0) -> Iterable:
    """Wrap a pipeline in a DataLoader (batches are already formed by the pipeline)."""
    if num_workers == 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False)


def items_from_manifest(storage: Storage, data_uri: str, **kwargs) -> wds.DataPipeline:
    """`item_pipeline` over the item shards a manifest lists, with their hashes checked."""
    manifest = load_manifest(storage, data_uri)
    sha = shard_hashes(manifest, data_uri, "items")
    return item_pipeline(list(sha), storage, expected_sha256=sha, **kwargs)


# ----------------------------------------------------------------------------------- interactions


@dataclass
class Interactions:
    """Every user's items per split, as flat arrays (interactions are small: read them whole)."""

    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    valid: dict[int, list[int]]
    test: dict[int, list[int]]


def read_interactions(storage: Storage, data_uri: str) -> Interactions:
    """Read all interaction shards of a prepared data set (hash-checked) into memory."""
    manifest = load_manifest(storage, data_uri)
    sha = shard_hashes(manifest, data_uri, "interactions")
    pipeline = wds.DataPipeline(wds.SimpleShardList(list(sha)), open_shards(storage, sha), group_by_keys)
    tu, ti, valid, test = [], [], {}, {}
    seen = 0
    for sample in pipeline:
        try:
            rec = json.loads(sample["json"])
            u = int(rec["user"])
            train, va, te = rec["train"], rec["valid"], rec["test"]
        except (KeyError, ValueError, TypeError) as exc:
            raise ShardError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: expected .json "
                             f"with user, train, valid, test ({exc})") from None
        tu += [u] * len(train)
        ti += train
        if va:
            valid[u] = va
        if te:
            test[u] = te
        seen += len(train) + len(va) + len(te)
    if seen != manifest["num_interactions"]:
        raise ShardError(f"{data_uri}: interaction shards hold {seen} interactions, the manifest says "
                         f"{manifest['num_interactions']}")
    return Interactions(manifest["num_users"], manifest["num_items"], np.asarray(tu, dtype=np.int64),
                        np.asarray(ti, dtype=np.int64), valid, test)
