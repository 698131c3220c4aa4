"""The stage-2 student: adapted encoder + recommender, and the item-centric batches it trains on.

Why item-centric: the expensive part of a step is the encoder (its backward crosses the frozen backbone),
so a step takes a chunk of items from the stream, encodes each unique item once, and builds the BPR
triples and the KT distributions around that chunk: the users are those who interacted with the chunk's
items (from an in-memory index), the negatives come from the same chunk, and KT compares the teacher's
and the student's softmax over the chunk's items for each of those users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ptmrec.encoders.adapters import set_train_mode
from ptmrec.encoders.layer_split import upper_all
from ptmrec.losses import bpr_loss, item_item_kt, user_item_kt
from ptmrec.runtime.device import encoder_autocast


@dataclass
class ChunkPairs:
    """BPR triples inside one chunk of items; item positions index into the chunk.

    The distinct users are found on the host when the pairs are drawn: on a GPU, `torch.unique` would make
    every step wait for the device to report how many there are.
    """

    users: torch.Tensor  # int64 [P]
    pos: torch.Tensor  # int64 [P], positions in the chunk
    neg: torch.Tensor  # int64 [P], positions in the chunk
    # int64 [U]: the triples' users (sorted), then users drawn for the KT rows only (`kt_users`)
    distinct_users: torch.Tensor
    row_of: torch.Tensor  # int64 [P], row of each triple's user in distinct_users

    def to(self, device: torch.device) -> "ChunkPairs":
        return ChunkPairs(*(t.to(device, non_blocking=True) for t in
                            (self.users, self.pos, self.neg, self.distinct_users, self.row_of)))


class ItemUserIndex:
    """Training users of every item (CSR by item), and each user's training items, for chunk sampling."""

    def __init__(self, train_users: np.ndarray, train_items: np.ndarray, num_items: int):
        order = np.argsort(train_items, kind="stable")
        self.users_by_item = train_users[order]
        self.indptr = np.zeros(num_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(train_items, minlength=num_items), out=self.indptr[1:])
        self.positive_keys = np.unique(train_users.astype(np.int64) * num_items + train_items)
        self.num_items = num_items
        self.all_users = np.unique(train_users).astype(np.int64)

    def sample(self, chunk: np.ndarray, max_pairs: Optional[int], rng: np.random.Generator,
               kt_users: int = 0) -> Optional[ChunkPairs]:
        """Up to `max_pairs` (None: all) (user, positive in chunk, negative in chunk) triples, and `kt_users` more
        users drawn uniformly from all training users (without the triples' users) for the KT rows; None if no
        item of the chunk has users."""
        starts, ends = self.indptr[chunk], self.indptr[chunk + 1]
        counts = ends - starts
        if counts.sum() == 0 or len(chunk) < 2:
            return None
        positions = np.repeat(np.arange(len(chunk)), counts)
        users = np.concatenate([self.users_by_item[s:e] for s, e in zip(starts, ends)])
        if max_pairs is not None and len(users) > max_pairs:
            pick = rng.choice(len(users), size=max_pairs, replace=False)
            users, positions = users[pick], positions[pick]
        # A negative is another chunk item the user has not interacted with; a few redraws suffice, and the
        # rare user who interacted with the whole chunk keeps a (harmless) positive-as-negative draw.
        neg = rng.integers(0, len(chunk), size=len(users))
        for _ in range(4):
            bad = self._is_positive(users * self.num_items + chunk[neg])
            if not bad.any():
                break
            neg[bad] = rng.integers(0, len(chunk), size=int(bad.sum()))
        distinct, row_of = np.unique(users, return_inverse=True)
        if kt_users > 0:
            drawn = rng.choice(self.all_users, size=min(kt_users, len(self.all_users)), replace=False)
            distinct = np.concatenate([distinct, drawn[~np.isin(drawn, distinct)]])
        return ChunkPairs(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
                            for a in (users, positions, neg, distinct, row_of.reshape(-1))))

    def _is_positive(self, keys: np.ndarray) -> np.ndarray:
        # A binary search in the sorted keys: np.isin would re-sort all training pairs on every step.
        at = np.minimum(np.searchsorted(self.positive_keys, keys), len(self.positive_keys) - 1)
        return self.positive_keys[at] == keys


class Student(nn.Module):
    """What DeepSpeed trains in stage 2: the adapted encoder and the student recommender.

    `forward` returns the step's loss, so that DeepSpeed's engine runs the whole step (ZeRO hooks included):
        BPR   = bpr(full student score) + mean over modalities of bpr(modality score)
        KT    = Σ_modality KL(teacher ‖ student modality scores), per user over the chunk's items
        total = BPR + λ·KT
    The per-modality BPR term keeps a BPR gradient flowing into every tower even for models whose full
    score reaches the features only through a discrete graph (FREEDOM's k-NN item graph).

    Precision: only the encoder runs under autocast (`precision`, on CUDA); its features are cast to
    float32 before the recommender, the teacher and the losses see them.
    """

    def __init__(self, encoder: nn.Module, recommender: nn.Module, teacher_user: torch.Tensor,
                 teacher_item: torch.Tensor, kt_weight: float, temperature: float, kt_variant: str,
                 precision: str = "bf16", kt_standardize: bool = False):
        super().__init__()
        self.precision = precision
        self.encoder = encoder
        self.recommender = recommender
        # The teacher is a frozen copy of stage 1's representations: buffers, never parameters.
        self.register_buffer("teacher_user", teacher_user, persistent=False)
        self.register_buffer("teacher_item", teacher_item, persistent=False)
        self.kt_weight = kt_weight
        self.temperature = temperature
        self.kt_variant = kt_variant
        self.kt_standardize = kt_standardize

    def train(self, mode: bool = True) -> "Student":
        """The recommender trains as usual; in the encoder only the adapter does, its frozen backbone stays
        in eval mode (see `set_train_mode`)."""
        super().train(mode)
        set_train_mode(self.encoder, mode)
        return self

    def encode(self, text_inputs: Optional[dict], pixel_values: Optional[torch.Tensor],
               states: Optional[dict] = None) -> dict[str, torch.Tensor]:
        """The chunk's adapted features: modality -> [n, d_m]; from the layer cache's `states` when given."""
        device = self.teacher_item.device
        features = {}
        with encoder_autocast(device, self.precision):
            if states is not None:
                features = upper_all(self.encoder, states)
            if text_inputs is not None:
                features["text"] = self.encoder.encode_text(**text_inputs)
            if pixel_values is not None:
                features["image"] = self.encoder.encode_image(pixel_values)
        return {m: f.float() for m, f in features.items()}

    def forward(self, items: torch.Tensor, pairs: Optional[ChunkPairs], text_inputs: Optional[dict] = None,
                pixel_values: Optional[torch.Tensor] = None,
                states: Optional[dict] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encode(text_inputs, pixel_values, states)
        features = {m: f for m, f in features.items() if m in self.recommender.modalities}
        if pairs is None:
            # A chunk with no training users: still one (zero) step, since every rank must step together.
            zero = sum(f.sum() for f in features.values()) * 0.0
            return zero, {"bpr": zero.detach()}
        rows = torch.arange(len(pairs.users), device=items.device)
        scores = self.recommender.score_with_features(pairs.users, items, features)  # [P, n]
        parts = {"bpr": bpr_loss(scores[rows, pairs.pos], scores[rows, pairs.neg])}
        # The modality scores serve the modality BPR and KT alike: computed once per distinct user (for
        # graph models each call propagates the whole graph), then expanded to the triples' rows.
        users, row_of = pairs.distinct_users, pairs.row_of
        modality_scores = self.recommender.modality_scores(users, items, features)  # {m: [U, n]}
        modality_bpr = [bpr_loss(s[row_of, pairs.pos], s[row_of, pairs.neg]) for s in modality_scores.values()]
        # (rows past the triples' users, if any, were drawn for KT and take part only there)
        parts["bpr_modality"] = torch.stack(modality_bpr).mean()
        if self.kt_weight > 0:
            if self.kt_variant == "user_item":
                # KT over the chunk's items, once per distinct user (a user with two positives counts once).
                teacher = self.teacher_user[users] @ self.teacher_item[items].T
                kt = user_item_kt(teacher, modality_scores, self.temperature, self.kt_standardize)
            else:
                kt = item_item_kt(self.teacher_item[items], features, self.temperature, self.kt_standardize)
            for m, value in kt.items():
                parts[f"kt_{m}"] = self.kt_weight * value
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}
