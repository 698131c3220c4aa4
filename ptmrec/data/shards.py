"""`Dataset` → WebDataset shards + `manifest.json` under `data.uri` (what `ptmrec prepare` does).

Layout (the README's "Data preparation"):
    <data uri>/items/items-000000.tar         one sample per item: key = item id; .txt, .jpg (if any), .json
                                              (items in a random order of `data.item_order_seed`)
    <data uri>/interactions/users-000000.tar  one sample per user: .json {"user", "train", "valid", "test"}
    <data uri>/ids.json                       the source's user and item ids by dense index
    <data uri>/manifest.json                  written last; lists every shard (and ids.json) with its sha256

Shards are built in memory and written deterministically (fixed tar headers, fixed order), so the same
input gives the same bytes: a re-run compares hashes and rewrites nothing that is already correct.
The manifest is the commit point: it is removed before any shard changes and written only after every
shard it lists is in place, so it never points at missing or partial shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ptmrec.config import DataConfig
from ptmrec.data.tables import Dataset
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IDS = "ids.json"
MANIFEST_KEYS = ("dataset", "num_users", "num_items", "num_interactions", "splits", "modalities", "shards")


class ManifestError(ValueError):
    """A manifest that is missing or does not describe the shards; the message names the URI."""


@dataclass
class Shard:
    name: str  # path relative to the data URI, e.g. "items/items-000000.tar"
    count: int
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self) -> dict:
        return {"name": self.name, "count": self.count, "sha256": self.sha256}


def write_shards(dataset: Dataset, cfg: DataConfig, storage: Storage, progress: bool = True) -> dict:
    """Write `dataset` as shards + manifest to `cfg.uri`; returns the manifest (and logs what changed)."""
    storage.ensure_bucket(cfg.uri)
    old = _read_manifest_or_none(storage, cfg.uri)
    old_hashes = {e["name"]: e["sha256"] for kind in ("items", "interactions")
                  for e in (old or {}).get("shards", {}).get(kind, [])}
    entries: dict[str, list[dict]] = {"items": [], "interactions": []}
    written = kept = 0
    manifest_removed = False
    n_item_shards = -(-dataset.num_items // cfg.shard_items)
    n_user_shards = -(-dataset.num_users // cfg.shard_users)
    bar = tqdm(total=n_item_shards + n_user_shards, desc=f"prepare {dataset.name}", unit="shard",
               disable=not progress)
    for kind, shard in _all_shards(dataset, cfg):
        entries[kind].append(shard.entry())
        uri = join(cfg.uri, shard.name)
        if old_hashes.get(shard.name) == shard.sha256 and _object_hash(storage, uri) == shard.sha256:
            kept += 1
        else:
            if not manifest_removed:
                # From here on the old manifest would describe shards that are being replaced.
                storage.delete(join(cfg.uri, MANIFEST))
                manifest_removed = True
            storage.write_bytes(uri, shard.data)
            written += 1
        bar.update(1)
    bar.close()

    ids = _json(dataset.original_ids())
    ids_entry = {"name": IDS, "sha256": hashlib.sha256(ids).hexdigest()}
    if (old or {}).get("ids") != ids_entry or _object_hash(storage, join(cfg.uri, IDS)) != ids_entry["sha256"]:
        if not manifest_removed:
            storage.delete(join(cfg.uri, MANIFEST))
            manifest_removed = True
        storage.write_bytes(join(cfg.uri, IDS), ids)
    manifest = {
        "dataset": dataset.name,
        "num_users": dataset.num_users,
        "num_items": dataset.num_items,
        "num_interactions": int(len(dataset.users)),
        "splits": dataset.split_counts(),
        "modalities": dataset.modalities,
        "shards": entries,
        "ids": ids_entry,  # the source's user and item ids by dense index
    }
    if manifest != old or manifest_removed:
        storage.write_text(join(cfg.uri, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    # Shards of an earlier, larger write that the new manifest no longer lists.
    listed = {e["name"] for kind in entries.values() for e in kind}
    for folder in ("items", "interactions"):
        for name in storage.list(join(cfg.uri, folder)):
            if f"{folder}/{name}" not in listed and name.endswith(".tar"):
                storage.delete(join(cfg.uri, folder, name))
    log.info("prepare %s → %s: %d shards written, %d already correct", dataset.name, cfg.uri, written, kept)
    return manifest


def load_manifest(storage: Storage, data_uri: str) -> dict:
    """Read and check `<data uri>/manifest.json`; a missing or malformed one fails naming the URI."""
    uri = join(data_uri, MANIFEST)
    try:
        text = storage.read_text(uri)
    except StorageError as exc:
        raise ManifestError(f"{uri}: no manifest ({exc}); run `ptmrec prepare --config …` first") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{uri}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{uri}: expected a JSON object with keys {', '.join(MANIFEST_KEYS)}")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{uri}: missing key {missing[0]!r}; expected {', '.join(MANIFEST_KEYS)}")
    for kind in ("items", "interactions"):
        for e in manifest["shards"].get(kind, []):
            if not {"name", "count", "sha256"} <= set(e):
                raise ManifestError(f"{uri}: shards.{kind} entry {e!r} needs name, count and sha256")
    return manifest


def shard_hashes(manifest: dict, data_uri: str, kind: str) -> dict[str, str]:
    """URL → sha256 of every shard of `kind` ("items" or "interactions"), in the manifest's order."""
    return {join(data_uri, e["name"]): e["sha256"] for e in manifest["shards"][kind]}


def read_ids(storage: Storage, data_uri: str, manifest: dict) -> dict[str, list[str]]:
    """{"users": [...], "items": [...]}: the source's ids by dense index (data prepared before ids were kept:
    the dense index as the id)."""
    entry = manifest.get("ids")
    if entry is None:
        return {"users": [str(u) for u in range(manifest["num_users"])],
                "items": [str(i) for i in range(manifest["num_items"])]}
    data = storage.read_bytes(join(data_uri, entry["name"]))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ManifestError(f"{join(data_uri, entry['name'])}: sha256 differs from the manifest's; re-run `ptmrec prepare`")
    return json.loads(data)


def shard_counts(manifest: dict, data_uri: str, kind: str) -> dict[str, int]:
    """URL → samples in every shard of `kind`, in the manifest's order."""
    return {join(data_uri, e["name"]): e["count"] for e in manifest["shards"][kind]}


# ------------------------------------------------------------------------------------------ building


def _all_shards(dataset: Dataset, cfg: DataConfig) -> Iterator[tuple[str, Shard]]:
    order = np.random.default_rng(cfg.item_order_seed).permutation(dataset.num_items).tolist()
    for i, start in enumerate(range(0, dataset.num_items, cfg.shard_items)):
        items = order[start:start + cfg.shard_items]
        samples = (_item_sample(dataset, item, cfg) for item in items)
        yield "items", Shard(f"items/items-{i:06d}.tar", len(items), tar_samples(samples))
    per_user = dataset.per_user()
    for i, start in enumerate(range(0, dataset.num_users, cfg.shard_users)):
        users = range(start, min(start + cfg.shard_users, dataset.num_users))
        samples = ((f"{u:07d}", {"json": _json({"user": u, **per_user[u]})}) for u in users)
        yield "interactions", Shard(f"interactions/users-{i:06d}.tar", len(users), tar_samples(samples))


def _item_sample(dataset: Dataset, item: int, cfg: DataConfig) -> tuple[str, dict[str, bytes]]:
    files: dict[str, bytes] = {}
    if dataset.item_texts is not None:
        files["txt"] = dataset.item_texts[item].encode("utf-8")
    if dataset.item_image is not None:
        image = dataset.item_image(item)
        if image is not None:
            files["jpg"] = encode_jpeg(image, cfg.image_size, cfg.jpeg_quality)
    meta = {"item": item, **(dataset.item_meta[item] if dataset.item_meta else {})}
    files["json"] = _json(meta)
    return f"{item:07d}", files


def encode_jpeg(image: Image.Image, short_side: int, quality: int) -> bytes:
    """Resize so the short side is at most `short_side` (never upscale) and encode as JPEG.

    Stored images are pre-resized so that training hosts decode small JPEGs: decoding full-size
    product photos on the host can starve a multi-GPU node.
    """
    image = image.convert("RGB")
    w, h = image.size
    scale = short_side / min(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tar_samples(samples) -> bytes:
    """A tar in WebDataset's layout (a sample's files adjacent, named key.ext) with fixed headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _object_hash(storage: Storage, uri: str) -> Optional[str]:
    if not storage.exists(uri):
        return None
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def _read_manifest_or_none(storage: Storage, data_uri: str) -> Optional[dict]:
    try:
        return load_manifest(storage, data_uri)
    except ManifestError:
        return None
