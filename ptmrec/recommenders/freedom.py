"""FREEDOM (Zhou & Shen, ACM MM 2023: "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation"), as in MMRec's `freedom.py` and `FREEDOM.yaml`.

Two graphs:
- a *frozen* item-item graph: per modality, each item's k nearest items by cosine similarity of its
  features, built once; modalities mixed with `mm_image_weight` for the image graph;
- a *denoised* user-item graph: each epoch keeps (1 - dropout) of the training edges, drawn with
  probability proportional to 1/sqrt(deg(u)·deg(i)) (degree-sensitive edge pruning), renormalised.

Item representation = LightGCN mean over the (pruned, in training) user-item graph + the ID embeddings
propagated over the item-item graph; users come from the user-item graph alone. Features reach the score
only through the item-item graph, and the loss through the modality BPR terms:

    loss = BPR(u·i) + reg_weight · sum_m BPR(u · Linear_m(f_m))

(MMRec calls that weight `reg_weight`; it weighs BPR terms, there is no L2 term in FREEDOM.)
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from ptmrec.losses import bpr_loss
from ptmrec.recommenders.base import (
    Recommender,
    TrainInteractions,
    check_features,
    check_replacement_features,
    new_item_features,
)
from ptmrec.recommenders.graphs import (
    Graph,
    bipartite_edge_weights,
    item_knn_graph,
    knn_neighbours,
    normalized_adjacency,
    symmetric_adjacency,
    unique_pairs,
)


def modality_mix(modalities: tuple[str, ...], mm_image_weight: float) -> dict[str, float]:
    """Weights of the modalities' item-item graphs.

    MMRec has image and text: image gets mm_image_weight, text the rest, a lone modality gets 1. Other
    modality names share what image leaves, equally.
    """
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" not in modalities:
        return {m: 1.0 / len(modalities) for m in modalities}
    others = [m for m in modalities if m != "image"]
    return {"image": mm_image_weight, **{m: (1.0 - mm_image_weight) / len(others) for m in others}}


class FREEDOM(Recommender):
    name = "freedom"
    uses_features = True
    feature_state_prefixes = ("feature_table.",)

    def __init__(
        self,
        num_users: int,
        num_items: int,
        train_interactions: TrainInteractions,
        features: Mapping[str, torch.Tensor] | None = None,
        *,
        embedding_dim: int = 64,
        knn_k: int = 10,
        mm_image_weight: float = 0.1,
        n_mm_layers: int = 1,
        n_ui_layers: int = 2,
        dropout: float = 0.8,
        reg_weight: float = 1e-4,
        train_features: bool = True,
    ) -> None:
        """Args beyond the shared ones (defaults from MMRec's FREEDOM.yaml; where it lists a grid, the value
        chosen is noted):
            knn_k: neighbours per item in each modality's item-item graph.
            mm_image_weight: weight of the image graph when other modalities are present.
            n_mm_layers: propagation steps over the item-item graph.
            n_ui_layers: propagation steps over the user-item graph.
            dropout: fraction of user-item edges pruned each epoch (grid [0.8, 0.9]; 0 disables pruning).
            reg_weight: weight of the modality BPR terms (grid [0, 1e-5, 1e-4, 1e-3]).
            train_features: MMRec wraps the features in `nn.Embedding.from_pretrained(freeze=False)`, so the
                feature table itself is trained by the modality BPR terms; False keeps it fixed. The
                item-item graph is built from the features given here either way.
        """
        super().__init__(num_users, num_items)
        features = check_features(self.name, features, num_items, required=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"freedom: dropout must lie in [0, 1), got {dropout}")
        self.modalities = tuple(features)
        self.embedding_dim = embedding_dim
        self.knn_k = min(knn_k, num_items)
        self.n_mm_layers = n_mm_layers
        self.n_ui_layers = n_ui_layers
        self.dropout = dropout
        self.reg_weight = reg_weight
        self.mix = modality_mix(self.modalities, mm_image_weight)

        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_id_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        # Linear layers keep PyTorch's default init, as in MMRec.
        self.projections = nn.ModuleDict({m: nn.Linear(f.shape[1], embedding_dim) for m, f in features.items()})
        self.feature_table = nn.ParameterDict(
            {m: nn.Parameter(f.clone()) for m, f in features.items()} if train_features else {}
        )

        # Derived data, rebuilt by the constructor, never checkpointed (see graphs.py).
        for m, f in features.items():
            self.register_buffer(f"feat_{m}", f, persistent=False)  # the item-item graph's reference features
            self.register_buffer(f"knn_{m}", knn_neighbours(f, f, self.knn_k), persistent=False)
        mm_adj = item_knn_graph({m: getattr(self, f"knn_{m}") for m in self.modalities}, self.mix, num_items)
        self.mm_adj = Graph(mm_adj, symmetric=False)  # an item's k nearest need not have it among theirs

        users, items = unique_pairs(*train_interactions, num_users, num_items)
        users, items = torch.from_numpy(users), torch.from_numpy(items)
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.register_buffer("edge_values", bipartite_edge_weights(users, items, num_users, num_items), persistent=False)
        adj = normalized_adjacency(users.numpy(), items.numpy(), num_users, num_items)
        self.norm_adj = Graph(adj, symmetric=True)
        # MMRec leaves the pruned graph empty until the first epoch; drawing one now lets loss() run at once.
        self.pre_epoch()  # sets masked_adj

    def adopt_reference_features(self, other: "FREEDOM") -> None:
        """The item-item graph and its reference features of `other`, a FREEDOM built on the re-encoded
        catalogue (stage 2's evaluation model): training then looks up a chunk's neighbours among the
        features evaluation built its graph from, not among the frozen ones this model started with."""
        if other.modalities != self.modalities or other.knn_k != self.knn_k or other.num_items != self.num_items:
            raise ValueError(f"freedom: cannot adopt the item graph of a model with modalities {other.modalities}, "
                             f"k {other.knn_k}, {other.num_items} items")
        device = self.edge_users.device
        for name in [f"{prefix}_{m}" for m in self.modalities for prefix in ("feat", "knn")]:
            setattr(self, name, getattr(other, name).to(device))
        self.mm_adj = copy.deepcopy(other.mm_adj).to(device)  # Module.to moves in place: leave other's as it is

    # -- graphs -----------------------------------------------------------------------------------------

    def pre_epoch(self) -> None:
        """Degree-sensitive edge pruning: draw this epoch's user-item graph for training."""
        if self.dropout <= 0.0:
            self.masked_adj = self.norm_adj
            return
        keep = max(1, int(self.edge_values.numel() * (1.0 - self.dropout)))
        # Without replacement, with probability proportional to 1/sqrt(deg(u)·deg(i)): edges between
        # high-degree nodes, the likeliest noise, are the likeliest to go.
        kept = torch.multinomial(self.edge_values, keep)
        users, items = self.edge_users[kept], self.edge_items[kept]
        values = bipartite_edge_weights(users, items, self.num_users, self.num_items)
        pruned = symmetric_adjacency(users, items, values, self.num_users, self.num_items)
        self.masked_adj = Graph(pruned, symmetric=True)

    def _user_item_propagation(self, adj: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN layer mean over `adj`: ([U, D], [I, D])."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        layers = [ego]
        for _ in range(self.n_ui_layers):
            layers.append(adj(layers[-1]))
        final = torch.stack(layers).mean(0)
        return final[: self.num_users], final[self.num_users :]

    def _item_graph_embeddings(self, n_layers: int) -> torch.Tensor:
        """Item ID embeddings propagated n_layers times over the item-item graph: [I, D]."""
        h = self.item_id_embedding.weight
        for _ in range(n_layers):
            h = self.mm_adj(h)
        return h

    def _propagate(self, adj: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self._user_item_propagation(adj)
        return users, items + self._item_graph_embeddings(self.n_mm_layers)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Scoring always uses the full user-item graph; only training sees the pruned one.
        return self._propagate(self.norm_adj)

    # -- training ---------------------------------------------------------------------------------------

    def _feature(self, modality: str) -> torch.Tensor:
        """The modality's feature table as trained (or the fixed one): [I, d_m]."""
        if modality in self.feature_table:
            return self.feature_table[modality]
        return getattr(self, f"feat_{modality}")

    def loss(self, users, pos_items, neg_items):
        user_repr, item_repr = self._propagate(self.masked_adj)
        u = user_repr[users]
        mf = bpr_loss((u * item_repr[pos_items]).sum(-1), (u * item_repr[neg_items]).sum(-1))
        parts = {"bpr": mf}
        for m in self.modalities:
            project, table = self.projections[m], self._feature(m)
            pos_f, neg_f = project(table[pos_items]), project(table[neg_items])
            parts[f"bpr_{m}"] = self.reg_weight * bpr_loss((u * pos_f).sum(-1), (u * neg_f).sum(-1))
        return sum(parts.values()), {name: part.detach() for name, part in parts.items()}

    # -- stage 2 ----------------------------------------------------------------------------------------

    def score_with_features(self, users, items, features):
        """FREEDOM's score with the items' item-item graph rows rebuilt from `features`.

        Each given item's neighbours are looked up among the catalogue's reference features (those the
        model was built with) by cosine similarity, as when the graph was built; its item-graph embedding
        is then the mixed mean of those neighbours' embeddings. With the reference features themselves this
        reproduces `full_scores`. The k-NN choice is discrete, so no gradient reaches `features` here: a
        student that must learn through the features uses `modality_scores`.
        """
        own = {m: getattr(self, f"feat_{m}") for m in self.modalities}
        features = check_replacement_features(self.name, features, own, len(items))
        user_repr, item_ui = self._user_item_propagation(self.norm_adj)
        if self.n_mm_layers == 0:
            item_graph = self.item_id_embedding.weight[items]
        else:
            item_graph = self._item_graph_rows(features, items)
        return user_repr[users] @ (item_ui[items] + item_graph).T

    def _item_graph_rows(self, features, items=None) -> torch.Tensor:
        """Item-graph embeddings of items whose neighbours are looked up by `features` among the reference
        features (a modality without features uses catalogue item `items`' own neighbours)."""
        own = {m: getattr(self, f"feat_{m}") for m in self.modalities}
        previous = self._item_graph_embeddings(self.n_mm_layers - 1)
        rows = 0
        for m in self.modalities:
            if m in features:
                nbrs = knn_neighbours(features[m].to(own[m].dtype), own[m], self.knn_k)
            else:
                nbrs = getattr(self, f"knn_{m}")[items]
            rows = rows + self.mix[m] * previous[nbrs].mean(1)
        return rows

    def cold_item_embeddings(self, features):
        """The item-graph part only, from the new items' neighbours among the catalogue: a new item has no
        user-item edges and no ID embedding, so its LightGCN part is zero."""
        features = new_item_features(self, features)
        if self.n_mm_layers == 0:
            return self.item_id_embedding.weight.new_zeros(len(next(iter(features.values()))), self.embedding_dim)
        return self._item_graph_rows(features)

    def item_modality_embeddings(self, items, features=None):
        """Per modality m: Linear_m(f_m) ([n, D]); a missing modality uses the model's (trained) table."""
        own = {m: self._feature(m) for m in self.modalities}
        features = check_replacement_features(self.name, features, own, len(items))
        return {m: self.projections[m](features[m] if m in features else own[m][items]) for m in self.modalities}

    def modality_scores(self, users, items, features=None):
        """Per modality m: u · Linear_m(f_m), the scorer of FREEDOM's modality BPR term, with the users of the
        full user-item graph. Differentiable in `features`."""
        user_repr = self._user_item_propagation(self.norm_adj)[0][users]
        return {m: user_repr @ e.T for m, e in self.item_modality_embeddings(items, features).items()}
