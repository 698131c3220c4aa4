"""The contract every recommender keeps, MMRec-style but with plain constructor arguments.

A recommender is built from the data it needs and its own hyper-parameters, never a config dict:

    Model(num_users, num_items, train_interactions=(users, items), features={"image": ..., "text": ...},
          embedding_dim=64, ...)

and offers:

    forward()                    -> (user_repr [U, D], item_repr [I, D]), the representations scored by dot product
    loss(users, pos, neg)        -> (total, parts) on a batch of BPR triples; sum(parts.values()) == total
    full_scores(users)           -> [B, I] scores against every item (evaluation)
    score(users, items)          -> [B, n] scores against some items (the teacher's side of stage 2)
    user_embeddings(users)       -> [B, D]
    pre_epoch()                  -> per-epoch resampling (FREEDOM's edge pruning); a no-op by default

and, for content models only (stage 2's student side):

    score_with_features(users, items, features) -> [B, n]  the model's own score, the items' features swapped
    item_modality_embeddings(items, features)   -> {modality: [n, D]}  each modality's item-side vectors
    modality_scores(users, items, features)     -> {modality: [B, n]}  users against those vectors
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

TrainInteractions = tuple[np.ndarray, np.ndarray]


class Recommender(nn.Module):
    """Base class: validated sizes, default scoring from `forward`, and the stage-2 hooks' error messages."""

    #: registry name, set by each model
    name: str = ""
    #: whether item features enter the model (VBPR, FREEDOM) or not (BPR, LightGCN)
    uses_features: bool = False
    #: state-dict key prefixes that hold item features (trainable copies of them), which a model rebuilt
    #: with other (adapted) features must not load
    feature_state_prefixes: tuple[str, ...] = ()
    #: whether the training loss reads only the batch's rows of the embedding tables, so that those rows can
    #: arrive as sparse gradients (`stage1.optimizer: lazy_adam`); graph models propagate over every row
    takes_sparse_gradients: bool = False

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        if num_users <= 0 or num_items <= 0:
            raise ValueError(f"{self.name}: num_users ({num_users}) and num_items ({num_items}) must be positive")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.sparse_gradients = False  # set by `use_sparse_gradients`

    def use_sparse_gradients(self) -> None:
        """From now on the loss gives its embedding tables sparse gradients: the batch's rows only."""
        if not self.takes_sparse_gradients:
            raise ValueError(f"{self.name}: its loss reads every embedding row (a graph model): no sparse gradients")
        self.sparse_gradients = True

    def rows(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """`table[ids]`, whose gradient is sparse (the looked-up rows) after `use_sparse_gradients`."""
        return nn.functional.embedding(ids, table, sparse=self.sparse_gradients)

    def weights_without_features(self) -> dict[str, torch.Tensor]:
        """The state dict minus feature tables: what a copy rebuilt on other (adapted) features loads."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.feature_state_prefixes)}

    def load_weights_without_features(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Load `weights_without_features()` of a model of the same kind into this one, which was built on
        other (adapted) features: strict, except that the feature tables themselves stay this model's."""
        missing, unexpected = self.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith(self.feature_state_prefixes)]
        if missing or unexpected:
            raise ValueError(f"{self.name}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def item_features(self) -> dict[str, torch.Tensor]:
        """The item features this model was built with (adapted ones for a stage-2 model), by modality; none
        for an ID-only model."""
        return {m: getattr(self, f"feat_{m}") for m in getattr(self, "modalities", ())}

    def adopt_reference_features(self, other: "Recommender") -> None:
        """Take over `other`'s reference features and what is derived from them, `other` being this kind of
        model built on another (adapted) catalogue. The stage-2 student calls it after each re-encode, so
        that training scores items against the catalogue evaluation sees. Models whose score takes the
        given features directly (VBPR) keep nothing derived: nothing to do."""

    # -- training ----------------------------------------------------------------------------------------

    def loss(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss on a batch of BPR triples.

        Args:
            users, pos_items, neg_items: [B] LongTensors.

        Returns:
            (total, parts): the scalar to backpropagate, and its named, already weighted terms, detached
            for logging (they sum to total).
        """
        raise NotImplementedError

    def pre_epoch(self) -> None:
        """Called once before each training epoch (MMRec's `pre_epoch_processing`)."""

    # -- scoring -----------------------------------------------------------------------------------------

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Representations used for scoring: ([U, D] users, [I, D] items); score = dot product."""
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of the given users against all items.

        Args:
            users: [B] LongTensor.

        Returns:
            [B, num_items] float tensor.
        """
        user_repr, item_repr = self.forward()
        return user_repr[users] @ item_repr.T

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of the given users against the given items (every user against every item).

        Args:
            users: [B] LongTensor; items: [n] LongTensor.

        Returns:
            [B, n] float tensor, equal to `full_scores(users)[:, items]`.
        """
        user_repr, item_repr = self.forward()
        return user_repr[users] @ item_repr[items].T

    def user_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """The users' representations as scored by `full_scores`: [B] LongTensor -> [B, D]."""
        return self.forward()[0][users]

    def cold_item_embeddings(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[n, D] representations of items outside the catalogue from their features alone (`modality ->
        [n, d_m]`, every modality the model uses): no interactions and no ID embedding, so that
        `user_embeddings(users) @ result.T` scores them as this model scores content (the cold-start case
        content models exist for). Content models only."""
        raise NotImplementedError(self._id_only_message("cold_item_embeddings"))

    # -- stage 2: scores driven by (adapted) item features ------------------------------------------------

    def score_with_features(
        self, users: torch.Tensor, items: torch.Tensor, features: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Scores of users against items whose modality features are replaced by `features`.

        Args:
            users: [B] LongTensor; items: [n] LongTensor.
            features: modality -> [n, d_m] features of `items`, row j for items[j]; a modality left out
                keeps the model's own features.

        Returns:
            [B, n] float tensor; with the model's own features it equals `full_scores(users)[:, items]`.
        """
        raise NotImplementedError(self._id_only_message("score_with_features"))

    def item_modality_embeddings(
        self, items: torch.Tensor, features: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """What each modality's features become on the item side of the score, differentiably.

        Args:
            items: [n] LongTensor.
            features: modality -> [n, d_m] features of `items`; None or a missing modality uses the model's own.

        Returns:
            modality -> [n, D] float tensor, for every modality the model was built with.
        """
        raise NotImplementedError(self._id_only_message("item_modality_embeddings"))

    def modality_scores(
        self, users: torch.Tensor, items: torch.Tensor, features: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """One differentiable, feature-driven score per modality (the student's scores for KT): the users'
        vectors against `item_modality_embeddings(items, features)`.

        Args:
            users: [B] LongTensor; items: [n] LongTensor.
            features: as for `item_modality_embeddings`.

        Returns:
            modality -> [B, n] float tensor, for every modality the model was built with.
        """
        raise NotImplementedError(self._id_only_message("modality_scores"))

    def _id_only_message(self, method: str) -> str:
        return (
            f"{self.name or type(self).__name__} is an ID-only recommender: its scores do not depend on item "
            f"features, so it has no {method}; use a content model (vbpr, freedom) for the knowledge-guided stage"
        )


def check_features(
    model_name: str, features: Mapping[str, torch.Tensor] | None, num_items: int, required: bool
) -> dict[str, torch.Tensor]:
    """Validate the modality features a model is built with; returns them as float32, in sorted name order.

    Sorted order fixes how modalities are concatenated (VBPR) whatever order the caller's dict has.
    """
    features = dict(features or {})
    if required and not features:
        raise ValueError(
            f"{model_name} needs item features of at least one modality (e.g. features={{'text': [num_items, d]}}), "
            "got none; the ID-only recommenders are bpr and lightgcn"
        )
    out = {}
    for name in sorted(features):
        feat = torch.as_tensor(features[name])
        if feat.ndim != 2 or feat.shape[0] != num_items:
            raise ValueError(f"{model_name}: features[{name!r}] has shape {tuple(feat.shape)}, expected [{num_items}, d]")
        out[name] = feat.detach().float()
    return out


def check_replacement_features(
    model_name: str, features: Mapping[str, torch.Tensor] | None, own: Mapping[str, torch.Tensor], num_rows: int
) -> dict[str, torch.Tensor]:
    """Validate features passed to the stage-2 hooks: known modalities, [num_rows, d_m] each."""
    features = dict(features or {})
    unknown = sorted(set(features) - set(own))
    if unknown:
        raise ValueError(f"{model_name} was built with modalities {sorted(own)}; got features for {unknown}")
    for name, feat in features.items():
        expected = (num_rows, own[name].shape[1])
        if tuple(feat.shape) != expected:
            raise ValueError(f"{model_name}: features[{name!r}] has shape {tuple(feat.shape)}, expected {list(expected)}")
    return features


def new_item_features(model: Recommender, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Features of items outside the catalogue: every modality the model uses, with its own widths."""
    own = {m: getattr(model, f"feat_{m}") for m in model.modalities}
    missing = [m for m in model.modalities if m not in features]
    if missing:
        raise ValueError(f"{model.name}: new items need features for every modality it uses; missing {missing}")
    n = len(next(iter(features.values())))
    return check_replacement_features(model.name, {m: features[m] for m in model.modalities}, own, n)
