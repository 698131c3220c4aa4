"""Recommendations out of a finished stage (`ptmrec recommend`): each user's top-K items in the data's own
ids, with scores, the user's training items left out, from the same model and features evaluation ranks
with (`load_stage_model`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest, read_ids
from ptmrec.data.stream import read_interactions
from ptmrec.stages.evaluate import load_stage_model
from ptmrec.storage import Storage


@dataclass
class Recommendation:
    user: str  # the data's own user id
    items: list[str]  # the data's own item ids, best first
    scores: list[float]


def recommend(cfg: Config, users: list[str], k: int = 20, stage: str = "stage1") -> list[Recommendation]:
    """Top-`k` items for each of `users` (the data's own ids) from a finished `stage`."""
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    ids = read_ids(storage, cfg.data.uri, manifest)
    row_of = {user: row for row, user in enumerate(ids["users"])}
    unknown = [u for u in users if u not in row_of]
    if unknown:
        raise ValueError(f"user id(s) {unknown[:5]} not in {cfg.data.uri} ({len(row_of)} users, e.g. "
                         f"{', '.join(ids['users'][:3])})")
    if not 1 <= k <= manifest["num_items"]:
        raise ValueError(f"--k must be in [1, {manifest['num_items']}] (the catalogue), got {k}")
    inter = read_interactions(storage, cfg.data.uri)
    model = load_stage_model(cfg, stage, storage, inter)
    rows = torch.tensor([row_of[u] for u in users])
    with torch.no_grad():
        user_repr, item_repr = model()
        scores = user_repr[rows] @ item_repr.T
    for i, row in enumerate(rows.tolist()):  # what the user already has is not a recommendation
        scores[i, torch.from_numpy(inter.train_items[inter.train_users == row])] = -torch.inf
    top = torch.topk(scores, k, dim=1)
    return [Recommendation(user, [ids["items"][j] for j in top.indices[i].tolist()],
                           [round(float(v), 5) for v in top.values[i]])
            for i, user in enumerate(users)]


def train_items_of(cfg: Config, user: str) -> set[str]:
    """The user's training items in the data's own ids (what `recommend` leaves out)."""
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    ids = read_ids(storage, cfg.data.uri, manifest)
    inter = read_interactions(storage, cfg.data.uri)
    row = ids["users"].index(user)
    return {ids["items"][j] for j in np.asarray(inter.train_items[inter.train_users == row]).tolist()}
