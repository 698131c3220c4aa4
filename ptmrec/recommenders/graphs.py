"""Graph construction for the graph recommenders (LightGCN, FREEDOM).

Graphs are built as torch sparse COO tensors, once, from the training pairs or the item features, and the
models keep them as `Graph` modules (the CSR product) with non-persistent buffers: they are derived data, so
a checkpoint does not carry them and a model rebuilt from new features (stage 2 re-extraction) gets graphs
that match those features.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def unique_pairs(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (user, item) training pairs, sorted by user then item, as int64 arrays [E]."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"train users {users.shape} and items {items.shape} must be 1-d arrays of one length")
    if len(users) and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(f"train user ids must lie in [0, {num_users})")
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"train item ids must lie in [0, {num_items})")
    keys = np.unique(users * num_items + items)
    return keys // num_items, keys % num_items


def bipartite_edge_weights(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """1/sqrt(deg(u)·deg(i)) for every edge of the user-item graph the pairs span.

    Args:
        users, items: [E] LongTensors, one edge each, no duplicates.

    Returns:
        [E] float tensor; degrees are counted over these edges only.
    """
    user_deg = torch.bincount(users, minlength=num_users).float()
    item_deg = torch.bincount(items, minlength=num_items).float()
    return user_deg[users].rsqrt() * item_deg[items].rsqrt()


def symmetric_adjacency(
    users: torch.Tensor, items: torch.Tensor, values: torch.Tensor, num_users: int, num_items: int
) -> torch.Tensor:
    """The (U+I) x (U+I) adjacency [[0, R], [Rᵀ, 0]] with R's entries given per edge.

    Users are nodes 0..U-1 and items U..U+I-1, the order LightGCN's propagation concatenates them in.
    """
    n = num_users + num_items
    rows = torch.cat([users, items + num_users])
    cols = torch.cat([items + num_users, users])
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.cat([values, values]), (n, n), check_invariants=False
    ).coalesce()


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """LightGCN's D^-1/2 A D^-1/2 over the bipartite user-item graph of the training pairs.

    Returns:
        Sparse [(U+I), (U+I)] float tensor.
    """
    u, i = unique_pairs(users, items, num_users, num_items)
    u, i = torch.from_numpy(u), torch.from_numpy(i)
    return symmetric_adjacency(u, i, bipartite_edge_weights(u, i, num_users, num_items), num_users, num_items)


class _Propagate(torch.autograd.Function):
    """adj @ dense, differentiable in dense only. Autograd's own backward of a CSR product transposes the
    matrix on every call; a graph's transpose is built once instead (a symmetric graph is its own)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return adj @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.adj_t @ grad


class Graph(nn.Module):
    """A fixed sparse matrix that propagates embeddings: `graph(x)` is adj @ x, differentiable in x.

    The product runs on CSR (compressed rows), and backward multiplies by a transpose built here once: on
    Clothing's user-item graph a forward + backward takes 0.4-0.7 of the COO form's time (benchmarks/graphs.py).
    The CSR parts are kept as plain non-persistent buffers and the sparse tensor is assembled per call (no
    copy), because deepcopy and pickling do not take sparse CSR tensors.
    """

    def __init__(self, adj: torch.Tensor, symmetric: bool) -> None:
        """Args:
            adj: sparse COO [n, m], as the builders here return it.
            symmetric: adj equals its transpose (the user-item graphs): backward reuses it.
        """
        super().__init__()
        self.shape = tuple(adj.shape)
        self.symmetric = symmetric
        for prefix, matrix in [("", adj)] + ([] if symmetric else [("t_", adj.t())]):
            with _csr_in_beta_quiet():
                csr = matrix.coalesce().to_sparse_csr()
            self.register_buffer(prefix + "crow", csr.crow_indices(), persistent=False)
            self.register_buffer(prefix + "col", csr.col_indices(), persistent=False)
            self.register_buffer(prefix + "values", csr.values(), persistent=False)

    def _csr(self, prefix: str, shape: tuple[int, int]) -> torch.Tensor:
        parts = (getattr(self, prefix + name) for name in ("crow", "col", "values"))
        with _csr_in_beta_quiet():
            return torch.sparse_csr_tensor(*parts, size=shape, check_invariants=False)

    def matrix(self) -> torch.Tensor:
        """The graph as a sparse CSR tensor (sharing the buffers' memory)."""
        return self._csr("", self.shape)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """adj @ dense in float32: CUDA has no bf16 sparse matmul, and under stage 2's bf16 autocast the
        product would get bf16 inputs; graph propagation stays in float32 instead."""
        adj = self.matrix()
        adj_t = adj if self.symmetric else self._csr("t_", self.shape[::-1])
        with torch.autocast(dense.device.type, enabled=False):
            return _Propagate.apply(adj, adj_t, dense.float())

    def to_dense(self) -> torch.Tensor:
        return self.matrix().to_dense()


@contextlib.contextmanager
def _csr_in_beta_quiet():
    """Torch warns that CSR support is in beta; the parts used here are tested (tests/unit/recommenders)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


def knn_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_rows: int = 4096
) -> torch.Tensor:
    """Indices of the k keys most cosine-similar to each query (a key equal to the query included).

    Args:
        queries: [n, d] features.
        keys: [m, d] features of the catalogue.
        k: neighbours per query, k <= m.
        chunk_rows: queries per similarity block, so memory stays at chunk_rows x m floats.

    Returns:
        [n, k] LongTensor.
    """
    # F.normalize's eps keeps an all-zero feature (an item without that modality) finite instead of the
    # NaN a plain division by its norm gives.
    keys = F.normalize(keys.float(), dim=-1)
    queries = F.normalize(queries.float(), dim=-1)
    out = [torch.topk(q @ keys.T, k, dim=-1).indices for q in queries.split(chunk_rows)]
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=keys.device)


def item_knn_graph(neighbours: dict[str, torch.Tensor], weights: dict[str, float], num_items: int) -> torch.Tensor:
    """FREEDOM's item-item graph: per modality, each item linked to its k nearest items; modalities summed.

    MMRec normalises each modality's directed k-NN graph as D^-1/2 A D^-1/2 with D the row sums; every
    row holds exactly k ones, so each edge weight is 1/k and a row is the mean over the item's
    neighbours. The modalities' graphs are then mixed with the given weights.

    Args:
        neighbours: modality -> [I, k] neighbour indices (from `knn_neighbours`).
        weights: modality -> mixing weight.

    Returns:
        Sparse [I, I] float tensor.
    """
    indices, values = [], []
    for name, nbrs in neighbours.items():
        k = nbrs.shape[1]
        rows = torch.arange(num_items, device=nbrs.device).repeat_interleave(k)
        indices.append(torch.stack([rows, nbrs.reshape(-1)]))
        values.append(torch.full((num_items * k,), weights[name] / k, device=nbrs.device))
    # coalesce() sums an edge present in several modalities, as MMRec's weighted sum of sparse graphs does.
    return torch.sparse_coo_tensor(
        torch.cat(indices, 1), torch.cat(values), (num_items, num_items), check_invariants=False
    ).coalesce()
