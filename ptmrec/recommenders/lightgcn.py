"""LightGCN (He et al., SIGIR 2020), as in MMRec's `lightgcn.py`."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ptmrec.losses import bpr_loss, l2_reg
from ptmrec.recommenders.base import Recommender, TrainInteractions
from ptmrec.recommenders.graphs import Graph, normalized_adjacency


class LightGCN(Recommender):
    """ID embeddings propagated over the normalised user-item graph; the final representation is the
    mean of the layer-0..n_layers embeddings. Ignores item features.

    Loss = BPR on the propagated embeddings + reg_weight · EmbLoss on the layer-0 (ego) embeddings of the
    batch, which are the parameters.
    """

    name = "lightgcn"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        train_interactions: TrainInteractions,
        features: Mapping[str, torch.Tensor] | None = None,
        *,
        embedding_dim: int = 64,
        n_layers: int = 2,
        reg_weight: float = 1e-5,
    ) -> None:
        super().__init__(num_users, num_items)
        if n_layers < 0:
            raise ValueError(f"lightgcn: n_layers must be >= 0, got {n_layers}")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.reg_weight = reg_weight
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_users, embedding_dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_items, embedding_dim)))
        users, items = train_interactions
        self.norm_adj = Graph(normalized_adjacency(users, items, num_users, num_items), symmetric=True)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding, self.item_embedding])
        layers = [ego]
        for _ in range(self.n_layers):
            layers.append(self.norm_adj(layers[-1]))
        final = torch.stack(layers).mean(0)
        return final[: self.num_users], final[self.num_users :]

    def loss(self, users, pos_items, neg_items):
        user_repr, item_repr = self.forward()
        u = user_repr[users]
        mf = bpr_loss((u * item_repr[pos_items]).sum(-1), (u * item_repr[neg_items]).sum(-1))
        reg = self.reg_weight * l2_reg(
            self.user_embedding[users], self.item_embedding[pos_items], self.item_embedding[neg_items]
        )
        return mf + reg, {"bpr": mf.detach(), "reg": reg.detach()}
