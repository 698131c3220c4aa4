"""The canonical in-memory form of a data set, which every source produces and `shards.py` writes.

Ids are dense: users 0..num_users-1, items 0..num_items-1. Interactions are three parallel arrays, with
the split of each pair (0 = train, 1 = valid, 2 = test, as MMRec's `x_label`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


@dataclass
class Dataset:
    name: str
    num_users: int
    num_items: int
    users: np.ndarray  # int64 [n]
    items: np.ndarray  # int64 [n]
    splits: np.ndarray  # int8 [n], TRAIN / VALID / TEST
    item_texts: Optional[list[str]] = None  # [num_items]; "" where an item has no text
    # Returns the item's image, or None where it has none; a function so that images are produced
    # (read or drawn) one at a time while shards are written, never all held in memory.
    item_image: Optional[Callable[[int], Optional[Image.Image]]] = None
    item_meta: Optional[list[dict]] = None  # [num_items], small JSON-able facts (asin, title, …)
    # The source's own ids of users and items, in index order (None: the dense index is the id)
    user_ids: Optional[list[str]] = None
    item_ids: Optional[list[str]] = None
    extra: dict = field(default_factory=dict)  # source-specific facts for the manifest's readers

    @property
    def modalities(self) -> list[str]:
        out = []
        if self.item_image is not None:
            out.append("image")
        if self.item_texts is not None:
            out.append("text")
        return out

    def original_ids(self) -> dict[str, list[str]]:
        """{"users": [...], "items": [...]}: the source's ids by dense index (the index itself where it has none)."""
        return {"users": self.user_ids or [str(u) for u in range(self.num_users)],
                "items": self.item_ids or [str(i) for i in range(self.num_items)]}

    def split_counts(self) -> dict[str, int]:
        counts = np.bincount(self.splits, minlength=3)
        return {SPLIT_NAMES[s]: int(counts[s]) for s in (TRAIN, VALID, TEST)}

    def per_user(self) -> list[dict[str, list[int]]]:
        """For every user, its item lists per split (the interaction shards' samples), in input order."""
        order = np.argsort(self.users, kind="stable")
        users, items, splits = self.users[order], self.items[order], self.splits[order]
        bounds = np.searchsorted(users, np.arange(self.num_users + 1))
        out = []
        for u in range(self.num_users):
            lo, hi = bounds[u], bounds[u + 1]
            its, sps = items[lo:hi], splits[lo:hi]
            out.append({SPLIT_NAMES[s]: its[sps == s].tolist() for s in (TRAIN, VALID, TEST)})
        return out


def held_out_sizes(n: int) -> tuple[int, int]:
    """MMRec's per-user rule: (held out, of which valid) for a user with `n` interactions. Fewer than 10:
    one valid and one test; otherwise 20 % (rounded down) held out, split evenly, the test side taking the
    odd one; a user with one interaction keeps it for training."""
    held = min(max(2, n // 5), n - 1) if n > 1 else 0
    return held, held // 2


def mmrec_split(users: np.ndarray, num_users: int, seed: int) -> np.ndarray:
    """MMRec's per-user random split: the split label of every interaction, `held_out_sizes` per user in a
    seeded random order. The rule reproduces the per-user split sizes of the Amazon data in MMRec format
    exactly (see the tests)."""
    rng = np.random.default_rng(seed)
    return _per_user_split(users, num_users, lambda idx: idx[rng.permutation(len(idx))])


def chronological_split(users: np.ndarray, times: np.ndarray, num_users: int) -> np.ndarray:
    """The same held-out sizes, each user's latest interactions held out: valid before test (ties keep the
    input order)."""
    return _per_user_split(users, num_users, lambda idx: idx[np.argsort(times[idx], kind="stable")])


def _per_user_split(users: np.ndarray, num_users: int, order_of) -> np.ndarray:
    splits = np.zeros(len(users), dtype=np.int8)
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(num_users + 1))
    for u in range(num_users):
        idx = order_of(order[bounds[u]:bounds[u + 1]])
        n = len(idx)
        held, valid = held_out_sizes(n)
        splits[idx[n - held:n - held + valid]] = VALID
        splits[idx[n - held + valid:]] = TEST
    return splits
