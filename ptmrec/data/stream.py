"""Shards → batches: WebDataset pipelines over local or S3 shards, split by Ray worker rank.

Shards are opened through `Storage` (one persistent boto3 client per process), not through WebDataset's
`pipe:` subprocesses, and each shard is checked against the sha256 the manifest lists before a single
sample is used: a corrupt, truncated or replaced shard fails naming the shard.

Two reading modes:
- once (`plan=None`): every shard once, split by rank then by DataLoader worker (feature extraction,
  evaluation): every item of the rank's shards exactly once, whatever `num_workers`. Ranks may get
  different sample counts: use it where no collective op runs per batch.
- training epochs (`plan=plan_epoch(...)`, see `ptmrec.data.epochs`): each rank's DataLoader workers
  read the shards the plan deals them, each shard's items in a shuffled order, and together yield
  exactly `plan.steps` full batches, the same on every rank (unequal counts hang the gradient
  all-reduce), covering every item of the catalogue. Build the loader with `make_loader(pipeline,
  num_workers=K)` for the plan's K workers.

Where the work happens: `item_pipeline(transform=encoder.image_transform,
tokenize=encoder.text_tokenizer())` decodes JPEGs, resizes and crops them to uint8 pixels
(`ImageTransform.pixels`) and tokenises texts, inside the pipeline; `make_loader(num_workers=K)` runs
the pipeline in K DataLoader processes, so the training process only receives finished `ItemBatch`es
(from pinned memory with `pin_memory=True`; move them with `batch.to(device)`). Pixels stay uint8 up
to the device, a quarter of float32's bytes; the encoder normalizes them there (`encode_image`
accepts uint8). Every stage is picklable (no closures), so any multiprocessing start method works.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys

from ptmrec.data.epochs import EpochPlan, ReaderShare
from ptmrec.data.shards import load_manifest, shard_hashes
from ptmrec.storage import Storage


class ShardError(ValueError):
    """A shard that cannot be used as it is; the message names the shard and what was expected."""


# ---------------------------------------------------------------------------------- pipeline stages


def split_by_rank(rank: int, world_size: int):
    """Stage: keep every `world_size`-th shard starting at `rank` (ranks come from Ray Train)."""
    return functools.partial(_split_by_rank, rank=rank, world_size=world_size)


def _split_by_rank(src: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    for i, sample in enumerate(src):
        if i % world_size == rank:
            yield sample


def _reader_share(plan: EpochPlan, rank: int) -> tuple[int, ReaderShare]:
    """(worker id, share) of the DataLoader worker this runs in (worker 0 in the main process)."""
    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    readers = len(plan.shares[rank])
    if (info.num_workers if info is not None else 1) != readers:
        raise ValueError(f"this epoch plan is for {readers} loader worker(s) per rank; build the loader with "
                         f"make_loader(pipeline, num_workers={readers if readers > 1 else '0 or 1'})")
    return worker, plan.share(rank, worker)


class EpochShards(torch.utils.data.IterableDataset):
    """Source stage: this worker's shards from an `EpochPlan`, as {"url"}, cycling in a fresh order per pass."""

    def __init__(self, plan: EpochPlan, rank: int, seed: int) -> None:
        self.plan, self.rank, self.seed = plan, rank, seed

    def __iter__(self) -> Iterator[dict]:
        worker, share = _reader_share(self.plan, self.rank)
        if not share.urls or not share.batches:
            return
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}")
        while True:  # the batch quota (`take_share`) ends it
            urls = list(share.urls)
            rng.shuffle(urls)
            for url in urls:
                yield {"url": url}


def open_shuffled_shards(storage: Storage, expected_sha256: Optional[dict[str, str]], seed: int, rank: int):
    """Stage: {"url"} → that shard's samples (as `open_shards` + `group_by_keys` give them) in a random order."""
    return functools.partial(_open_shuffled_shards, storage=storage, expected_sha256=expected_sha256,
                             seed=seed, rank=rank)


def _open_shuffled_shards(src: Iterable[dict], storage: Storage, expected_sha256: Optional[dict[str, str]],
                          seed: int, rank: int) -> Iterator[dict]:
    info = torch.utils.data.get_worker_info()
    rng = random.Random(f"{seed}/{rank}/{info.id if info is not None else 0}/items")
    for source in src:
        samples = list(group_by_keys(_open_shards([source], storage, expected_sha256)))
        rng.shuffle(samples)
        yield from samples


def take_share(plan: EpochPlan, rank: int):
    """Stage: stop after this worker's batch quota in the plan."""
    return functools.partial(_take_share, plan=plan, rank=rank)


def _take_share(src: Iterable, plan: EpochPlan, rank: int) -> Iterator:
    _, share = _reader_share(plan, rank)
    for i, batch in enumerate(src):
        if i >= share.batches:
            return
        yield batch


def open_shards(storage: Storage, expected_sha256: Optional[dict[str, str]] = None):
    """Stage: {"url"} → the shard's files as {"fname", "data", "__url__"}, after the sha256 check.

    A shard is read whole with one GET (shards are tens of MB), which also makes the hash check free.
    """
    return functools.partial(_open_shards, storage=storage, expected_sha256=expected_sha256)


def _open_shards(src: Iterable[dict], storage: Storage, expected_sha256: Optional[dict[str, str]]) -> Iterator[dict]:
    for source in src:
        url = source["url"]
        data = storage.read_bytes(url)
        if expected_sha256 is not None:
            want = expected_sha256.get(url)
            got = hashlib.sha256(data).hexdigest()
            if want is not None and got != want:
                raise ShardError(f"{url}: sha256 {got[:12]}… differs from the manifest's {want[:12]}…; "
                                 "the shard was changed or damaged after `ptmrec prepare` (re-run it)")
        yield from tar_members(url, data)
        yield {}  # end-of-shard marker, so that group_by_keys never joins two shards' samples


def tar_members(url: str, data: bytes) -> Iterator[dict]:
    def broken(why: str) -> ShardError:
        return ShardError(f"{url}: corrupt or truncated tar shard ({why}); expected WebDataset samples "
                          "as ptmrec writes them (`ptmrec prepare`, the layer cache)")

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
    # [B, 3, S, S] or None when there are no images (or no transform): uint8 pixels from the stream
    # (`ImageTransform.pixels`; the encoder normalizes them on its device), float when normalized already
    image: Optional[torch.Tensor]
    tokens: Optional[dict[str, torch.Tensor]] = None  # {"input_ids", "attention_mask"}: long [B, L], with `tokenize`
    # modality -> the states the layer cache stored for the batch (`ptmrec.encoders.layer_split.TowerState`, or
    # anything with `apply(fn)`); the raw text and images are not read then
    states: Optional[dict] = None

    def pin_memory(self) -> "ItemBatch":
        """A copy with every tensor in pinned memory (the DataLoader calls this with `pin_memory=True`).

        Without an accelerator there is nothing to pin for: the tensors are returned as they are.
        """
        return self._map(lambda t: t.pin_memory() if torch.accelerator.is_available() else t)

    def to(self, device: Union[str, torch.device], non_blocking: bool = True) -> "ItemBatch":
        """A copy with `item`, `tokens` and `image` on `device` (asynchronous from pinned memory); `text` stays."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ItemBatch":
        return ItemBatch(item=fn(self.item), text=self.text,
                         image=fn(self.image) if self.image is not None else None,
                         tokens={k: fn(v) for k, v in self.tokens.items()} if self.tokens is not None else None,
                         states={m: s.apply(fn) for m, s in self.states.items()} if self.states is not None else None)


# An encoder's image preprocessing (`TwoTowerEncoder.image_transform`, an `ImageTransform`): its `pixels`
# turns PIL images into uint8 Tensor[B, 3, S, S]; its `size` is a decoding hint.
ImageBatchTransform = Callable[[list[Image.Image]], torch.Tensor]
# Texts → {"input_ids", "attention_mask"} (`TwoTowerEncoder.text_tokenizer()`; picklable).
TextTokenize = Callable[[list[str]], dict[str, torch.Tensor]]


def decode_jpeg(data: bytes, size_hint: Optional[int] = None) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        if size_hint:
            im.draft("RGB", (size_hint, size_hint))  # JPEG: decode at a reduced scale when it can
        return im.convert("RGB")


def decode_item(transform: Optional[ImageBatchTransform]) -> Callable[[dict], dict]:
    """Stage: raw sample → {"item", "text"?, "image"? (PIL, only when a transform will use it)}."""
    return functools.partial(_decode_item, want_image=transform is not None,
                             size_hint=getattr(transform, "size", None))


def _decode_item(sample: dict, want_image: bool, size_hint: Optional[int]) -> dict:
    url = sample.get("__url__", "?")
    try:
        meta = json.loads(sample["json"])
        out = {"item": int(meta["item"])}
    except (KeyError, ValueError) as exc:
        raise ShardError(f"{url}: sample {sample.get('__key__')!r} has no valid .json with an 'item' id "
                         f"({exc})") from None
    if "txt" in sample:
        out["text"] = sample["txt"].decode("utf-8")
    if "jpg" in sample and want_image:
        try:
            out["image"] = decode_jpeg(sample["jpg"], size_hint)
        except OSError as exc:
            raise ShardError(f"{url}: sample {sample['__key__']!r}: .jpg is not a readable image ({exc})") from None
    return out


def collate_items(transform: Optional[ImageBatchTransform],
                  tokenize: Optional[TextTokenize] = None) -> Callable[[list[dict]], ItemBatch]:
    """Samples → `ItemBatch`: images as uint8 pixels (`transform.pixels`), texts tokenised when `tokenize`
    is given (the texts are kept too)."""
    return functools.partial(_collate_items, transform=transform, tokenize=tokenize)


def _collate_items(samples: list[dict], transform: Optional[ImageBatchTransform],
                   tokenize: Optional[TextTokenize]) -> ItemBatch:
    text = [s["text"] for s in samples] if "text" in samples[0] else None
    return ItemBatch(
        item=torch.tensor([s["item"] for s in samples], dtype=torch.long),
        text=text,
        image=_pixels(transform, [s["image"] for s in samples]) if "image" in samples[0] else None,
        tokens=tokenize(text) if tokenize is not None and text is not None else None,
    )


def _pixels(transform: ImageBatchTransform, images: list[Image.Image]) -> torch.Tensor:
    # `ImageTransform.pixels` (uint8); a plain callable transform gives whatever it returns.
    pixels = getattr(transform, "pixels", None)
    return pixels(images) if pixels is not None else transform(images)


def item_pipeline(urls: list[str], storage: Storage, *, batch_size: int, rank: int = 0, world_size: int = 1,
                  transform: Optional[ImageBatchTransform] = None, tokenize: Optional[TextTokenize] = None,
                  shuffle_buffer: int = 0, seed: int = 0, plan: Optional[EpochPlan] = None,
                  expected_sha256: Optional[dict[str, str]] = None, partial: bool = True,
                  decode: Optional[Callable[[dict], dict]] = None,
                  collate: Optional[Callable[[list[dict]], ItemBatch]] = None) -> wds.DataPipeline:
    """A WebDataset pipeline yielding `ItemBatch`es; see the module docstring for the two modes.

    `transform` (an `ImageTransform`): images are decoded and become uint8 pixels, else they are skipped.
    `tokenize` (`encoder.text_tokenizer()`): batches carry `tokens` besides `text`.
    `plan` (training epochs): `urls` are ignored for the plan's own, `seed` orders shards and items, every
    batch is full, and the loader over all of the plan's workers yields exactly `plan.steps` batches.
    `decode`, `collate`: other samples than items' (picklable; the layer cache's), in place of
    `decode_item(transform)` and `collate_items(transform, tokenize)`.
    """
    if plan is not None:
        stages = [EpochShards(plan, rank, seed), open_shuffled_shards(storage, expected_sha256, seed, rank)]
    else:
        stages = [wds.SimpleShardList(urls), split_by_rank(rank, world_size), wds.split_by_worker,
                  open_shards(storage, expected_sha256), group_by_keys]
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + rank))
    stages += [wds.map(decode or decode_item(transform)),
               wds.batched(batch_size, collation_fn=collate or collate_items(transform, tokenize),
                           partial=partial and plan is None)]
    if plan is not None:
        stages.append(take_share(plan, rank))
    pipeline = wds.DataPipeline(*stages)
    pipeline.plan = plan
    return pipeline


def make_loader(pipeline: wds.DataPipeline, num_workers: int = 0, pin_memory: bool = False) -> Iterable:
    """Iterate `pipeline` in `num_workers` DataLoader processes (0: in this process); batches are already
    formed by the pipeline.

    A pipeline with an epoch plan must be given the plan's number of workers (a `ValueError` otherwise).
    `pin_memory` puts batches in pinned memory (when an accelerator exists) so that `batch.to(device)`
    copies asynchronously. Workers run with `TOKENIZERS_PARALLELISM=false`.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    plan = getattr(pipeline, "plan", None)
    if plan is not None and len(plan.shares[0]) != max(num_workers, 1):
        raise ValueError(f"this pipeline's epoch plan is for {len(plan.shares[0])} loader worker(s) per rank, "
                         f"not {num_workers}")
    pin = pin_memory and torch.accelerator.is_available()
    if num_workers == 0 and not pin:
        return pipeline
    if num_workers > 0:
        # Tokenizers that ran threads in this process warn at each fork unless this is set before it.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin,
                         worker_init_fn=_loader_worker_init if num_workers > 0 else None,
                         persistent_workers=False)


def _loader_worker_init(worker_id: int) -> None:
    # A forked Rust tokenizer must not use its thread pool (deadlocks); the workers are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def items_from_manifest(storage: Storage, data_uri: str, **kwargs) -> wds.DataPipeline:
    """`item_pipeline` over the item shards a manifest lists, with their hashes checked.

    `kwargs` are `item_pipeline`'s (batch_size, rank, world_size, transform, tokenize, plan, …).
    """
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
