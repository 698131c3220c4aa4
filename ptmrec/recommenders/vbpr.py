"""VBPR (He & McAuley, AAAI 2016), in MMRec's "recommended version" (`vbpr.py`)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ptmrec.losses import bpr_loss, l2_reg
from ptmrec.recommenders.base import (
    Recommender,
    TrainInteractions,
    check_features,
    check_replacement_features,
    new_item_features,
)


class VBPR(Recommender):
    """Item = [ID embedding (D) ; Linear(concatenated modality features) (D)], user = one 2D vector.

    score(u, i) = user_u · [id_i ; W f_i + b]. Loss = BPR + reg_weight · EmbLoss(user, positive, negative
    representations). The features are frozen inputs; the linear layer learns to read them.
    """

    name = "vbpr"
    uses_features = True
    takes_sparse_gradients = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        train_interactions: TrainInteractions | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        *,
        embedding_dim: int = 64,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(num_users, num_items)
        features = check_features(self.name, features, num_items, required=True)
        self.modalities = tuple(features)
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        for name, feat in features.items():
            self.register_buffer(f"feat_{name}", feat, persistent=False)
        # Column range of each modality inside the concatenated input: W f = sum_m W[:, block_m] f_m,
        # which is what lets modality_scores split the content score per modality.
        widths = [feat.shape[1] for feat in features.values()]
        starts = [sum(widths[:i]) for i in range(len(widths))]
        self._blocks = {m: (s, s + w) for m, s, w in zip(self.modalities, starts, widths)}

        # MMRec draws both embedding tables with xavier_uniform and the linear layer with xavier_normal.
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_users, 2 * embedding_dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_items, embedding_dim)))
        self.item_linear = nn.Linear(sum(widths), embedding_dim)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)

    def _own_features(self) -> dict[str, torch.Tensor]:
        return {m: getattr(self, f"feat_{m}") for m in self.modalities}

    def _item_repr(self, items: torch.Tensor, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[n] item ids and their per-modality features ([n, d_m] each) -> [n, 2D] item representations."""
        content = self.item_linear(torch.cat([features[m] for m in self.modalities], dim=-1))
        return torch.cat([self.rows(self.item_embedding, items), content], dim=-1)

    def _own_item_repr(self, items: torch.Tensor) -> torch.Tensor:
        own = self._own_features()
        return self._item_repr(items, {m: feat[items] for m, feat in own.items()})

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        all_items = torch.arange(self.num_items, device=self.item_embedding.device)
        return self.user_embedding, self._own_item_repr(all_items)

    def score(self, users, items):
        return self.user_embedding[users] @ self._own_item_repr(items).T

    def user_embeddings(self, users):
        return self.user_embedding[users]

    def loss(self, users, pos_items, neg_items):
        # Only the batch's items are projected: the same numbers as projecting the catalogue, as MMRec
        # does, at a fraction of the cost.
        user_e = self.rows(self.user_embedding, users)
        pos_e = self._own_item_repr(pos_items)
        neg_e = self._own_item_repr(neg_items)
        mf = bpr_loss((user_e * pos_e).sum(-1), (user_e * neg_e).sum(-1))
        reg = self.reg_weight * l2_reg(user_e, pos_e, neg_e)
        return mf + reg, {"bpr": mf.detach(), "reg": reg.detach()}

    def cold_item_embeddings(self, features):
        """The content half only: the ID half of a new item is zero (it has no embedding yet)."""
        features = new_item_features(self, features)
        content = self.item_linear(torch.cat([features[m] for m in self.modalities], dim=-1))
        return torch.cat([content.new_zeros(len(content), self.embedding_dim), content], dim=-1)

    def score_with_features(self, users, items, features):
        """Exact VBPR scores with the items' features swapped; differentiable in `features`."""
        features = check_replacement_features(self.name, features, self._own_features(), len(items))
        own = self._own_features()
        merged = {m: features[m] if m in features else own[m][items] for m in self.modalities}
        return self.rows(self.user_embedding, users) @ self._item_repr(items, merged).T

    def item_modality_embeddings(self, items, features=None):
        """Per modality m: W_m f_m, the modality's share of the projected content vector ([n, D]).

        The linear layer's bias is left out: it adds the same number to every item of a user, so it
        changes no ranking and no softmax over items.
        """
        features = check_replacement_features(self.name, features, self._own_features(), len(items))
        own = self._own_features()
        out = {}
        for m in self.modalities:
            feat = features[m] if m in features else own[m][items]
            start, end = self._blocks[m]
            out[m] = feat @ self.item_linear.weight[:, start:end].T
        return out

    def modality_scores(self, users, items, features=None):
        """Per modality m: the content half of the user vector · W_m f_m."""
        user_content = self.rows(self.user_embedding, users)[:, self.embedding_dim :]
        return {m: user_content @ e.T for m, e in self.item_modality_embeddings(items, features).items()}

