"""Stage 2's layer cache: the frozen layers below the adapter, run once per item and read back every step.

With `stage2.adapter.top_layers` k, each tower's bottom layers (`applied_adapter.frozen_layers`) compute the
same states for an item in every step and every epoch. `ensure_layer_cache` runs them once over the
catalogue with Ray tasks, as frozen extraction does, and writes one cache shard per item shard (the same
items in the same order) under

    <run uri>/features/layers-<modality><cut>-…/<encoder>-<key>/items-NNNNNN.tar  +  cache.json

where the key hashes the encoder settings, the precision and the item shards' sha256 (the folder name
holds the placement), so a changed encoder, placement or data builds a new cache and an unchanged one is
reused. `cache.json` is written last: a folder without it is unfinished. A rebuild after a kill keeps the
shards that are whole (a valid tar with every item of its item shard) and encodes the rest.

Each cache sample holds the item id and, per modality, the states `layer_split.lower` returns: text as its
own tokens only ([T_i, D], re-padded per batch), images as [T, D] tokens or [C, H, W] feature maps, in
float32 (a CPU run: exact) or the run's bf16 (a GPU run: half the bytes). Stage 2's steps and its per-epoch
re-encode stream these shards (hash-checked, split by rank and loader worker, the same epoch plan as the
item shards) and run only `layer_split.upper`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest, shard_counts, shard_hashes, tar_samples
from ptmrec.data.stream import ItemBatch, ShardError, item_pipeline, make_loader, tar_members
from ptmrec.encoders.layer_split import TowerState, lower
from ptmrec.runtime.device import encoder_autocast, select_device
from ptmrec.stages.features import feature_dir, progress_bar
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

log = logging.getLogger(__name__)

META = "cache.json"
STORED = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LayerCache:
    """A finished cache (what `cache.json` says), handed to the stage-2 workers."""

    uri: str
    frozen_layers: dict[str, int]  # modality -> layers below the cut (the states are their output)
    dtype: str  # "fp32" | "bf16"
    meta: dict  # cache.json: shards (name, sha256, count, bytes), sizes, build time

    @property
    def total_bytes(self) -> int:
        return sum(e["bytes"] for e in self.meta["shards"]["items"])

    @property
    def bytes_per_item(self) -> float:
        return self.total_bytes / max(self.meta["num_items"], 1)

    def counts(self) -> dict[str, int]:
        """Cache shard URL -> items, for `plan_epoch`."""
        return shard_counts(self.meta, self.uri, "items")

    def pipeline(self, storage: Storage, **kwargs):
        """`item_pipeline` over the cache shards (hash-checked): `ItemBatch`es with `states` and no raw inputs.

        `kwargs` are `item_pipeline`'s (batch_size, rank, world_size, plan, seed, …).
        """
        sha = shard_hashes(self.meta, self.uri, "items")
        return item_pipeline(list(sha), storage, expected_sha256=sha,
                             decode=functools.partial(decode_sample, dtype=self.dtype, modalities=tuple(self.frozen_layers)),
                             collate=collate_states, **kwargs)

    def summary(self) -> dict:
        """What metrics.json records about the cache."""
        return {"uri": self.uri, "frozen_layers": self.frozen_layers, "dtype": self.dtype,
                "total_bytes": self.total_bytes, "bytes_per_item": round(self.bytes_per_item, 1),
                "build_s": self.meta["build_s"]}


def cache_dir(cfg: Config, manifest: dict, frozen_layers: dict[str, int]) -> str:
    """Where the cache for this encoder, placement and data lives."""
    placement = "-".join(f"{m}{cut}" for m, cut in sorted(frozen_layers.items()))
    return feature_dir(cfg, manifest, kind=f"layers-{placement}")


def cache_dtype(cfg: Config) -> str:
    # As frozen features: the run's precision on a GPU, float32 (and exact) on a CPU.
    return cfg.encoder.precision if cfg.ray.use_gpu else "fp32"


# ------------------------------------------------------------------------------------------- driver


def ensure_layer_cache(cfg: Config, adapter: str, num_workers: int, cpus_per_worker: float = 1.0,
                       progress: bool = True) -> LayerCache:
    """The cache for `cfg`'s encoder with `adapter` placed as configured: reused if finished, else built (the
    whole shards of an interrupted build kept) with Ray tasks."""
    import ray

    from ptmrec.runtime.ray_train import worker_task
    from ptmrec.stages.common import build_configured_encoder

    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    frozen = build_configured_encoder(cfg, manifest["modalities"], adapter).applied_adapter.frozen_layers
    uri = cache_dir(cfg, manifest, frozen)
    if storage.exists(join(uri, META)):
        cache = load_layer_cache(storage, uri)
        log.info("layer cache found at %s: reusing it (%s)", uri, _describe(cache))
        return cache

    start = time.perf_counter()
    sources = cache_sources(cfg, manifest, uri)
    workers = max(1, min(num_workers, len(sources)))
    task = worker_task(build_cache_shards, cfg, cpus_per_worker)
    parts = ray.get([task.remote(cfg, adapter, sources[rank::workers], rank, progress) for rank in range(workers)])
    cache = finish_cache(cfg, storage, uri, frozen, sources, [e for part in parts for e in part],
                         time.perf_counter() - start)
    log.info("built the layer cache of %d items in %.1f s (%.0f items/s, %d workers): %s → %s",
             cache.meta["num_items"], cache.meta["build_s"], cache.meta["items_per_s"], workers, _describe(cache), uri)
    return cache


def cache_sources(cfg: Config, manifest: dict, uri: str) -> list[tuple[str, str, str, int]]:
    """(item shard URL, its sha256, cache shard URL, items) for every item shard: the build's work list."""
    return [(url, sha, join(uri, posixpath.basename(url)), count) for (url, sha), count in
            zip(shard_hashes(manifest, cfg.data.uri, "items").items(),
                shard_counts(manifest, cfg.data.uri, "items").values())]


def finish_cache(cfg: Config, storage: Storage, uri: str, frozen: dict[str, int], sources: list, entries: list[dict],
                 build_s: float) -> LayerCache:
    """Write `cache.json` (the commit marker) over the built shards' entries, in the item shards' order."""
    by_name = {e["name"]: e for e in entries}
    ordered = [by_name[posixpath.basename(target)] for _, _, target, _ in sources]
    num_items = sum(e["count"] for e in ordered)
    meta = {"frozen_layers": frozen, "dtype": cache_dtype(cfg), "encoder": cfg.encoder.name, "num_items": num_items,
            "shards": {"items": ordered}, "build_s": round(build_s, 2),
            "items_per_s": round(num_items / max(build_s, 1e-9), 1)}
    storage.write_text(join(uri, META), json.dumps(meta, indent=2) + "\n")
    return LayerCache(uri, frozen, meta["dtype"], meta)


def load_layer_cache(storage: Storage, uri: str) -> LayerCache:
    """A finished cache; a clear error when `cache.json` is missing (unfinished) or not one."""
    try:
        meta = json.loads(storage.read_text(join(uri, META)))
        return LayerCache(uri, {m: int(c) for m, c in meta["frozen_layers"].items()}, meta["dtype"], meta)
    except StorageError:
        raise FileNotFoundError(f"{uri}: no finished layer cache ({META} missing)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ShardError(f"{join(uri, META)}: not a layer cache's {META} ({exc})") from None


def _describe(cache: LayerCache) -> str:
    cuts = ", ".join(f"{m} below layer {c}" for m, c in sorted(cache.frozen_layers.items()))
    return (f"{cuts}; {cache.dtype}, {cache.bytes_per_item / 1024:.1f} KiB per item, "
            f"{cache.total_bytes / 2 ** 20:.1f} MiB in all")


# -------------------------------------------------------------------------------------------- build


def build_cache_shards(cfg: Config, adapter: str, sources: list[tuple[str, str, str, int]], rank: int = 0,
                       progress: bool = True) -> list[dict]:
    """A Ray task: for each (item shard URL, its sha256, cache shard URL, items), write the cache shard unless a
    whole one is there; returns their manifest entries (name, sha256, count, bytes)."""
    from ptmrec.stages.common import build_configured_encoder

    device = select_device(cfg.ray.use_gpu)
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    encoder = build_configured_encoder(cfg, manifest["modalities"], adapter).to(device).eval()
    bar = progress_bar(progress, rank, sum(count for *_, count in sources), desc="layer cache")
    entries = []
    for source, sha, target, count in sources:
        data = _whole_shard(storage, target, count)
        if data is None:
            data = tar_samples(_cache_samples(cfg, storage, encoder, source, sha, device))
            storage.write_bytes(target, data)
        entries.append({"name": posixpath.basename(target), "sha256": hashlib.sha256(data).hexdigest(),
                        "count": count, "bytes": len(data)})
        bar.update(count)
    bar.close()
    return entries


def _whole_shard(storage: Storage, uri: str, count: int) -> Optional[bytes]:
    """The shard an earlier, interrupted build finished (a valid tar with `count` samples), else None."""
    if not storage.exists(uri):
        return None
    data = storage.read_bytes(uri)
    try:
        samples = sum(1 for m in tar_members(uri, data) if m["fname"].endswith(".json"))
    except ShardError:
        samples = -1
    if samples != count:
        log.warning("%s: an unfinished cache shard (%d of %d items): encoding it again", uri, max(samples, 0), count)
        return None
    return data


def _cache_samples(cfg: Config, storage: Storage, encoder, source: str, sha: str,
                   device: torch.device) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, files) for every item of one item shard, in its order: json (id), <modality>.npy (states)."""
    modalities = sorted(encoder.applied_adapter.frozen_layers)
    stream = item_pipeline([source], storage, batch_size=cfg.encoder.batch_size, expected_sha256={source: sha},
                           transform=encoder.image_transform if "image" in modalities else None,
                           tokenize=encoder.text_tokenizer() if "text" in modalities else None)
    stored = STORED[cache_dtype(cfg)]
    for batch in make_loader(stream, pin_memory=device.type == "cuda"):
        batch = batch.to(device)
        states = {}
        with torch.inference_mode(), encoder_autocast(device, cfg.encoder.precision):
            for m in modalities:
                inputs = {"pixel_values": batch.image} if m == "image" else batch.tokens
                states[m] = lower(encoder, m, encoder.applied_adapter.frozen_layers[m], **inputs).apply(
                    lambda t: t.to("cpu"))
        yield from item_samples(batch.item.tolist(), states, stored)


def item_samples(items: list[int], states: dict[str, TowerState],
                 stored: torch.dtype) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A batch's states ([B, ...] per modality) as one cache sample per item: (key, {json, <modality>.npy})."""
    for row, item in enumerate(items):
        meta, files = {"item": item}, {}
        for m, state in states.items():
            hidden = state.hidden[row]
            if state.mask is not None:  # text: its own tokens only (tokenizers pad on the right)
                hidden = hidden[: int(state.mask[row].sum())]
            if state.pool_index is not None:
                meta[f"{m}_pool"] = int(state.pool_index[row])
            files[f"{m}.npy"] = _npy(hidden.to(stored))
        yield f"{item:09d}", {"json": json.dumps(meta).encode(), **files}


def _npy(tensor: torch.Tensor) -> bytes:
    # numpy has no bfloat16: its bits travel as int16 and are viewed back on reading.
    array = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- read


def decode_sample(sample: dict, dtype: str, modalities: tuple[str, ...]) -> dict:
    """Pipeline stage: a cache sample's files → {"item", "states": {modality: (Tensor, pool position or None)}}."""
    url = sample.get("__url__", "?")
    try:
        meta = json.loads(sample["json"])
        out = {"item": int(meta["item"]), "states": {}}
        for m in modalities:
            array = torch.from_numpy(np.load(io.BytesIO(sample[f"{m}.npy"])))
            out["states"][m] = (array.view(torch.bfloat16) if dtype == "bf16" else array, meta.get(f"{m}_pool"))
    except (KeyError, ValueError) as exc:
        raise ShardError(f"{url}: sample {sample.get('__key__')!r} is not a layer-cache sample with "
                         f"{', '.join(modalities)} states ({exc})") from None
    return out


def collate_states(samples: list[dict]) -> ItemBatch:
    """Decoded cache samples → an `ItemBatch` with `states` (texts re-padded to the batch's longest)."""
    states = {}
    for m, (first, pool) in samples[0]["states"].items():
        rows = [s["states"][m][0] for s in samples]
        if m == "image":
            states[m] = TowerState(torch.stack(rows))
            continue
        # Text: re-padded to this batch's longest; the mask keeps the padding out of attention and pooling.
        hidden = first.new_zeros(len(rows), max(len(r) for r in rows), first.shape[-1])
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
        for i, r in enumerate(rows):
            hidden[i, : len(r)] = r
            mask[i, : len(r)] = 1
        pools = None if pool is None else torch.tensor([s["states"][m][1] for s in samples], dtype=torch.long)
        states[m] = TowerState(hidden, mask, pools)
    return ItemBatch(item=torch.tensor([s["item"] for s in samples], dtype=torch.long), text=None, image=None,
                     states=states)
