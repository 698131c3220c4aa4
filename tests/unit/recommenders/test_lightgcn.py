import numpy as np
import torch

from ptmrec.recommenders.lightgcn import LightGCN


def test_propagation_is_the_mean_of_normalised_layers(tiny):
    torch.manual_seed(0)
    model = LightGCN(tiny.num_users, tiny.num_items, (tiny.train_users, tiny.train_items), n_layers=3, embedding_dim=8)
    adj = model.norm_adj.to_dense()
    ego = torch.cat([model.user_embedding, model.item_embedding]).detach()
    layers = [ego, adj @ ego, adj @ adj @ ego, adj @ adj @ adj @ ego]
    expected = torch.stack(layers).mean(0)
    users, items = model()
    torch.testing.assert_close(torch.cat([users, items]).detach(), expected)


def test_zero_layers_is_matrix_factorisation(tiny):
    model = LightGCN(tiny.num_users, tiny.num_items, (tiny.train_users, tiny.train_items), n_layers=0)
    torch.testing.assert_close(model.full_scores(torch.arange(2)), model.user_embedding[:2] @ model.item_embedding.T)


def test_regularises_the_ego_embeddings(tiny):
    model = LightGCN(tiny.num_users, tiny.num_items, (tiny.train_users, tiny.train_items), reg_weight=1.0)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    _, parts = model.loss(users, pos, neg)
    expected = sum(torch.linalg.vector_norm(t) for t in (
        model.user_embedding[users], model.item_embedding[pos], model.item_embedding[neg])) / 2
    torch.testing.assert_close(parts["reg"], expected.detach())
    assert np.isclose(model.reg_weight, 1.0)
