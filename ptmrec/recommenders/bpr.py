"""BPR-MF: matrix factorisation trained with the BPR loss (Rendle et al., UAI 2009), as in MMRec's `bpr.py`."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ptmrec.losses import bpr_loss, l2_reg
from ptmrec.recommenders.base import Recommender, TrainInteractions


class BPR(Recommender):
    """User and item ID embeddings scored by dot product; ignores item features.

    Loss = BPR + reg_weight · EmbLoss(user, positive, negative batch embeddings).
    """

    name = "bpr"
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
        # train_interactions and features are accepted so every model builds from the same arguments;
        # matrix factorisation needs neither.
        super().__init__(num_users, num_items)
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_normal_(self.user_embedding.weight)  # MMRec: xavier_normal_initialization
        nn.init.xavier_normal_(self.item_embedding.weight)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def loss(self, users, pos_items, neg_items):
        user_e = self.rows(self.user_embedding.weight, users)
        pos_e = self.rows(self.item_embedding.weight, pos_items)
        neg_e = self.rows(self.item_embedding.weight, neg_items)
        mf = bpr_loss((user_e * pos_e).sum(-1), (user_e * neg_e).sum(-1))
        reg = self.reg_weight * l2_reg(user_e, pos_e, neg_e)
        return mf + reg, {"bpr": mf.detach(), "reg": reg.detach()}
