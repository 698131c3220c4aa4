"""Frozen feature extraction: every item encoded once per modality by the frozen towers, with Ray workers.

Features are written to `<run uri>/features/frozen/<encoder>-<key>/` (or under `run.features_uri`) as
`<modality>.npy` (float32 [num_items, dim]) plus `meta.json`, written last as the commit marker. The key
hashes the encoder settings and the item shards' sha256, so a second run with the same settings reuses the
features and any change (another model, image size, text length, data) extracts anew.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from typing import Optional

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest
from ptmrec.runtime.device import encoder_autocast, select_device
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

log = logging.getLogger(__name__)

META = "meta.json"


def feature_dir(cfg: Config, manifest: dict, kind: str = "frozen", per_run: bool = False) -> str:
    """Where the features of these encoder settings and this data live: under `run.features_uri` when set,
    unless they are `per_run` (a stage's adapted features depend on its seed and training)."""
    settings = {"encoder": cfg.encoder.name, "model": cfg.encoder.model, "image_size": cfg.encoder.image_size,
                "max_text_len": cfg.encoder.max_text_len,
                # bf16 features (a GPU run) differ from float32 ones: they are not interchangeable
                "precision": cfg.encoder.precision if cfg.ray.use_gpu else "fp32",
                "items": [e["sha256"] for e in manifest["shards"]["items"]]}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return join(join(cfg.run.uri, "features") if per_run else features_root(cfg), kind, f"{cfg.encoder.name}-{key}")


def features_root(cfg: Config) -> str:
    """The folder of the run's seed-independent encoder outputs; runs derived from this one (seeds, sweep
    trials) are pointed at it with `run.features_uri`."""
    return cfg.run.features_uri or join(cfg.run.uri, "features")


def load_features(storage: Storage, uri: str) -> dict[str, torch.Tensor]:
    """Read a feature folder: {modality: float32 Tensor[num_items, dim]}; fails if it is incomplete."""
    try:
        meta = json.loads(storage.read_text(join(uri, META)))
    except StorageError:
        raise FileNotFoundError(f"{uri}: no complete features ({META} missing)") from None
    out = {}
    for modality in meta["modalities"]:
        array = np.load(io.BytesIO(storage.read_bytes(join(uri, f"{modality}.npy"))))
        if array.shape != (meta["num_items"], meta["dims"][modality]):
            raise ValueError(f"{uri}/{modality}.npy: shape {array.shape}, meta.json says "
                             f"{(meta['num_items'], meta['dims'][modality])}")
        out[modality] = torch.from_numpy(array)
    return out


def save_features(storage: Storage, uri: str, features: dict[str, np.ndarray], extra: dict) -> None:
    for modality, array in features.items():
        buf = io.BytesIO()
        np.save(buf, array.astype(np.float32))
        storage.write_bytes(join(uri, f"{modality}.npy"), buf.getvalue())
    meta = {"modalities": sorted(features), "num_items": int(next(iter(features.values())).shape[0]),
            "dims": {m: int(a.shape[1]) for m, a in features.items()}, **extra}
    storage.write_text(join(uri, META), json.dumps(meta, indent=2) + "\n")  # last: the commit marker


def encode_items(cfg: Config, rank: int, world_size: int, encoder=None, progress: bool = True,
                 device: Optional[torch.device] = None, cache=None,
                 limit: Optional[int] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Encode this rank's share of the item shards (or its first batches, `limit` items or a little more):
    (item ids [n], {modality: [n, dim]}).

    Decoding, resizing and tokenising run in `ray.loader_workers` DataLoader processes; batches reach
    `device` from pinned memory; the encoders run under `encoder.precision`'s autocast there. Features stay
    on the device until the end (one copy back, no per-batch wait). With `cache` (a `LayerCache` of this
    adapted encoder) the cache shards are read instead and only the towers' upper layers run.
    """
    from ptmrec.data.stream import items_from_manifest, make_loader
    from ptmrec.stages.common import build_configured_encoder

    device = device or select_device(cfg.ray.use_gpu)
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    if encoder is None:
        encoder = build_configured_encoder(cfg, manifest["modalities"]).to(device)
    encoder.eval()
    wants_images = "image" in manifest["modalities"]
    wants_text = "text" in manifest["modalities"]
    if cache is not None:
        stream = cache.pipeline(storage, batch_size=cfg.encoder.batch_size, rank=rank, world_size=world_size)
    else:
        stream = items_from_manifest(storage, cfg.data.uri, batch_size=cfg.encoder.batch_size, rank=rank,
                                     world_size=world_size, transform=encoder.image_transform if wants_images else None,
                                     tokenize=encoder.text_tokenizer() if wants_text else None)
    loader = make_loader(stream, num_workers=cfg.ray.loader_workers, pin_memory=device.type == "cuda")
    bar = progress_bar(progress, rank, manifest["num_items"] // world_size)
    ids, parts = [], {m: [] for m in manifest["modalities"]}
    with torch.inference_mode():
        for batch in loader:
            ids.append(batch.item.numpy())
            for m, f in encode_batch(encoder, batch, device, cfg.encoder.precision).items():
                parts[m].append(f)
            bar.update(len(ids[-1]))
            if limit is not None and sum(map(len, ids)) >= limit:
                break
    bar.close()
    if not ids:
        return np.zeros(0, dtype=np.int64), {}
    return np.concatenate(ids), {m: torch.cat(p).cpu().numpy() for m, p in parts.items() if p}


def encode_batch(encoder, batch, device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """One `ItemBatch` through the encoder on `device` (copied there without blocking, encoders under
    `precision`'s autocast): {modality: float32 [B, dim]}, left on the device."""
    batch = batch.to(device)
    out = {}
    with encoder_autocast(device, precision):
        if batch.states is not None:
            from ptmrec.encoders.layer_split import upper_all

            out = upper_all(encoder, batch.states)
        if batch.tokens is not None:
            out["text"] = encoder.encode_text(**batch.tokens)
        if batch.image is not None:
            out["image"] = encoder.encode_image(batch.image)
    return {m: f.float() for m, f in out.items()}


def extract_frozen_features(cfg: Config, num_workers: int, cpus_per_worker: float = 1.0,
                            progress: bool = True) -> str:
    """Make sure the frozen features exist (extracting them with Ray tasks if not); returns their folder."""
    import ray

    from ptmrec.runtime.ray_train import worker_task

    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    if not manifest["modalities"]:
        raise ValueError(f"{cfg.data.uri}: the data set has no item text or images, so there is nothing to "
                         f"extract; use an ID-only recommender (bpr, lightgcn)")
    out = feature_dir(cfg, manifest)
    if storage.exists(join(out, META)):
        log.info("frozen features found at %s: reusing them", out)
        return out

    start = time.perf_counter()
    workers = max(1, min(num_workers, len(manifest["shards"]["items"])))
    # A GPU run encodes on GPUs: one per task, so tasks beyond the cluster's GPUs simply queue.
    task = worker_task(encode_items, cfg, cpus_per_worker)
    parts = ray.get([task.remote(cfg, rank, workers, progress=progress) for rank in range(workers)])
    num_items = manifest["num_items"]
    features: dict[str, np.ndarray] = {}
    seen = np.zeros(num_items, dtype=bool)
    for ids, feats in parts:
        seen[ids] = True
        for modality, array in feats.items():
            features.setdefault(modality, np.zeros((num_items, array.shape[1]), dtype=np.float32))[ids] = array
    if not seen.all():
        raise RuntimeError(f"{cfg.data.uri}: {int((~seen).sum())} items were not in any item shard")
    wall_s = time.perf_counter() - start
    save_features(storage, out, features, {"encoder": cfg.encoder.name, "model": cfg.encoder.model,
                                           "wall_s": round(wall_s, 2),
                                           "items_per_s": round(num_items / wall_s, 1)})
    log.info("extracted frozen features of %d items (%s) in %.1f s: %.0f items/s with %d workers → %s",
             num_items, ", ".join(f"{m} {a.shape[1]}-d" for m, a in sorted(features.items())), wall_s,
             num_items / wall_s, workers, out)
    return out


def progress_bar(enabled: bool, rank: int, total: Optional[int], desc: str = "encode items"):
    """Inside Ray, Ray's tqdm (bars of every task drawn together on the driver); else a plain one."""
    import ray

    if enabled and ray.is_initialized():
        from ray.experimental.tqdm_ray import tqdm

        return tqdm(total=total, desc=f"{desc} (rank {rank})", unit="item")
    from tqdm import tqdm as plain

    return plain(total=total, desc=f"{desc} (rank {rank})", unit="item", disable=not enabled)
