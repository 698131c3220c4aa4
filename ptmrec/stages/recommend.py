"""Recommendations out of a finished stage (`ptmrec recommend`): each user's top-K items in the data's own
ids, with scores, the user's training items left out, from the same model and features evaluation ranks
with (`load_stage_model`); or the top-K of new items from a file, scored through the stage's encoder and
the recommender's content pathway without retraining (`recommend_new_items`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest, read_ids
from ptmrec.data.stream import read_interactions
from ptmrec.stages.evaluate import load_stage_model
from ptmrec.storage import Storage
from ptmrec.uris import join


@dataclass
class Recommendation:
    user: str  # the data's own user id
    items: list[str]  # the data's own item ids, best first
    scores: list[float]


@dataclass
class _Served:
    """What every serving call reads from the prepared data: storage, manifest, ids and interactions."""

    storage: Storage
    manifest: dict
    ids: dict[str, list[str]]
    inter: object

    @classmethod
    def load(cls, cfg: Config) -> "_Served":
        storage = Storage(cfg.storage)
        manifest = load_manifest(storage, cfg.data.uri)
        return cls(storage, manifest, read_ids(storage, cfg.data.uri, manifest), read_interactions(storage, cfg.data.uri))

    def user_rows(self, users: list[str], data_uri: str) -> list[int]:
        row_of = {user: row for row, user in enumerate(self.ids["users"])}
        unknown = [u for u in users if u not in row_of]
        if unknown:
            raise ValueError(f"user id(s) {unknown[:5]} not in {data_uri} ({len(row_of)} users, e.g. "
                             f"{', '.join(self.ids['users'][:3])})")
        return [row_of[u] for u in users]

    def train_items(self, row: int) -> np.ndarray:
        return self.inter.train_items[self.inter.train_users == row]


def recommend(cfg: Config, users: list[str], k: int = 20, stage: str = "stage1") -> list[Recommendation]:
    """Top-`k` items for each of `users` (the data's own ids) from a finished `stage`."""
    served = _Served.load(cfg)
    rows = served.user_rows(users, cfg.data.uri)
    if not 1 <= k <= served.manifest["num_items"]:
        raise ValueError(f"--k must be in [1, {served.manifest['num_items']}] (the catalogue), got {k}")
    model = load_stage_model(cfg, stage, served.storage, served.inter)
    with torch.no_grad():
        user_repr, item_repr = model()
        scores = user_repr[torch.tensor(rows)] @ item_repr.T
    for i, row in enumerate(rows):  # what the user already has is not a recommendation
        scores[i, torch.from_numpy(served.train_items(row))] = -torch.inf
    return _top(users, scores, k, served.ids["items"])


def train_items_of(cfg: Config, user: str) -> set[str]:
    """The user's training items in the data's own ids (what `recommend` leaves out)."""
    served = _Served.load(cfg)
    row = served.user_rows([user], cfg.data.uri)[0]
    return {served.ids["items"][j] for j in served.train_items(row).tolist()}


def recommend_new_items(cfg: Config, users: list[str], items_file: str, k: int = 20,
                        stage: str = "stage1") -> list[Recommendation]:
    """Top-`k` of items that are not in the catalogue (`items_file`: CSV or Parquet with an `item` column,
    `text` for a text tower, `image` paths, relative to the file, for an image tower), scored through the
    stage's encoder (with its trained adapter for stage 2) and its recommender's content pathway, without
    retraining: the cold-start case content models exist for."""
    served = _Served.load(cfg)
    rows = served.user_rows(users, cfg.data.uri)
    model = load_stage_model(cfg, stage, served.storage, served.inter)
    modalities = served.manifest["modalities"]
    new_ids, features = encode_items_file(load_stage_encoder(cfg, stage, served.storage, modalities),
                                          Path(items_file), modalities, cfg.encoder.precision)
    with torch.no_grad():
        scores = model.user_embeddings(torch.tensor(rows)) @ model.cold_item_embeddings(features).T
    return _top(users, scores, min(k, len(new_ids)), new_ids)


def _top(users: list[str], scores: torch.Tensor, k: int, item_ids: list[str]) -> list[Recommendation]:
    top = torch.topk(scores, k, dim=1)
    return [Recommendation(user, [item_ids[j] for j in top.indices[i].tolist()],
                           [round(float(v), 5) for v in top.values[i]]) for i, user in enumerate(users)]


def load_stage_encoder(cfg: Config, stage: str, storage: Storage, modalities: list[str]):
    """The encoder a finished stage scores with: frozen for stage 1; with the saved adapter for stage 2."""
    from ptmrec.encoders.adapters import load_adapter_state
    from ptmrec.stages.common import build_configured_encoder, load_torch

    if stage == "stage1":
        return build_configured_encoder(cfg, modalities).eval()
    saved = load_torch(storage, join(cfg.run.uri, stage, "adapter.pt"))
    encoder = build_configured_encoder(cfg, modalities, saved["adapter"])
    load_adapter_state(encoder, saved["state"])
    return encoder.eval()


def encode_items_file(encoder, path: Path, modalities: list[str], precision: str) -> tuple[list[str], dict]:
    """(ids, {modality: [n, d]}) of the items a file describes, through `encoder` (see `recommend_new_items`)."""
    from ptmrec.data.sources.mmrec import SourceError
    from ptmrec.data.sources.table import read_columns
    from ptmrec.data.stream import ItemBatch
    from ptmrec.stages.features import encode_batch

    columns = ["item", *(["text"] if "text" in modalities else []), *(["image"] if "image" in modalities else [])]
    rows = read_columns(path, columns, may_be_empty=("text",))
    images = None
    if "image" in modalities:
        files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in rows["image"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SourceError(f"{path}: image {missing[0]} not found")
        images = encoder.image_transform.pixels([Image.open(f).convert("RGB") for f in files])
    texts = list(rows["text"]) if "text" in modalities else None
    batch = ItemBatch(item=torch.arange(len(rows["item"])), text=texts, image=images,
                      tokens=encoder.text_tokenizer()(texts) if texts is not None else None)
    with torch.no_grad():
        features = encode_batch(encoder, batch, torch.device("cpu"), precision)
    return list(rows["item"]), features

