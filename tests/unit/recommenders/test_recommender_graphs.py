import copy
import pickle

import numpy as np
import pytest
import torch

from ptmrec.recommenders.graphs import Graph, item_knn_graph, knn_neighbours, normalized_adjacency, unique_pairs


def test_normalized_adjacency_matches_dense_formula():
    users = np.array([0, 0, 1, 2, 2, 2, 0])  # the last pair repeats (0, 1): counted once
    items = np.array([0, 1, 1, 0, 2, 3, 1])
    adj = normalized_adjacency(users, items, num_users=3, num_items=4).to_dense()
    r = np.zeros((3, 4))
    r[users, items] = 1
    a = np.block([[np.zeros((3, 3)), r], [r.T, np.zeros((4, 4))]])
    d = a.sum(1) ** -0.5
    np.testing.assert_allclose(adj.numpy(), d[:, None] * a * d[None, :], rtol=1e-6)


def test_unique_pairs_validates_ids():
    u, i = unique_pairs(np.array([1, 0, 1]), np.array([2, 1, 2]), 2, 3)
    assert u.tolist() == [0, 1] and i.tolist() == [1, 2]
    with pytest.raises(ValueError, match="user ids"):
        unique_pairs(np.array([2]), np.array([0]), 2, 3)
    with pytest.raises(ValueError, match="item ids"):
        unique_pairs(np.array([0]), np.array([-1]), 2, 3)


def test_knn_is_cosine_and_includes_the_item_itself():
    feats = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [0.1, 5.0]])
    nbrs = knn_neighbours(feats, feats, k=2, chunk_rows=3)  # chunked: 3 + 1 rows
    assert [sorted(row) for row in nbrs.tolist()] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    # an all-zero feature (an item without the modality) stays finite
    assert knn_neighbours(torch.zeros(1, 2), feats, k=1).shape == (1, 1)


def test_item_graph_rows_are_weighted_means():
    a = torch.tensor([[0, 1], [1, 2], [2, 0]])
    b = torch.tensor([[0, 2], [1, 0], [2, 1]])
    graph = item_knn_graph({"image": a, "text": b}, {"image": 0.25, "text": 0.75}, num_items=3).to_dense()
    torch.testing.assert_close(graph.sum(1), torch.ones(3))
    # item 0: image neighbours {0, 1} and text {0, 2}, each a mean over k = 2
    torch.testing.assert_close(graph[0], torch.tensor([0.125 + 0.375, 0.125, 0.375]))


def test_graph_propagation_stays_float32_under_bf16():
    # CUDA has no bf16 sparse matmul: propagation must run in float32 whatever autocast or inputs say.
    adj = normalized_adjacency(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 2)
    dense = torch.randn(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Graph(adj, symmetric=True)(dense.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, adj.to_dense() @ dense.bfloat16().float())


def test_a_graph_that_is_not_symmetric_propagates_with_the_dense_products_value_and_gradient():
    # the k-NN graph is directed: backward must multiply by its transpose, not by the graph itself
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    graph = item_knn_graph({"image": knn_neighbours(a, a, 2), "text": knn_neighbours(b, b, 3)},
                           {"image": 0.3, "text": 0.7}, num_items=6)
    assert not torch.equal(graph.to_dense(), graph.to_dense().T)
    x = torch.randn(6, 5, requires_grad=True)
    weights = torch.randn(6, 5)
    propagate = Graph(graph, symmetric=False)
    (propagate(x) * weights).sum().backward()
    expected = x.detach().clone().requires_grad_()
    (graph.to_dense() @ expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, expected.grad)
    torch.testing.assert_close(propagate(x), graph.to_dense() @ x)


def test_a_graph_survives_deepcopy_and_pickle_and_carries_no_state():
    # DeepSpeed, Ray and stage 2's model copies need both; torch's sparse CSR tensors support neither
    adj = normalized_adjacency(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 2)
    graph = Graph(adj, symmetric=True)
    x = torch.randn(4, 3)
    for copied in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph))):
        torch.testing.assert_close(copied(x), adj.to_dense() @ x)
    assert graph.state_dict() == {}
