import torch

from ptmrec.recommenders.vbpr import VBPR


def test_score_is_id_part_plus_content_part(tiny):
    torch.manual_seed(0)
    model = VBPR(**tiny.kwargs(), embedding_dim=8)
    users, items = torch.tensor([0, 5]), torch.tensor([1, 2, 3])
    u = model.user_embedding[users]
    # features concatenate in sorted modality order: image, then text
    content = model.item_linear(torch.cat([tiny.features["image"][items], tiny.features["text"][items]], 1))
    expected = u[:, :8] @ model.item_embedding[items].T + u[:, 8:] @ content.T
    torch.testing.assert_close(model.full_scores(users)[:, items], expected)


def test_modality_scores_split_the_content_score(tiny):
    model = VBPR(**tiny.kwargs(), embedding_dim=8)
    users, items = torch.tensor([0, 5]), torch.tensor([1, 2, 3])
    u = model.user_embedding[users]
    id_part = u[:, :8] @ model.item_embedding[items].T
    bias_part = (u[:, 8:] @ model.item_linear.bias)[:, None]  # the same for every item of a user
    per_modality = model.modality_scores(users, items)
    torch.testing.assert_close(id_part + bias_part + sum(per_modality.values()), model.full_scores(users)[:, items])


def test_features_are_inputs_not_parameters(tiny):
    model = VBPR(**tiny.kwargs())
    n_params = sum(p.numel() for p in model.parameters())
    d_in = sum(f.shape[1] for f in tiny.features.values())
    assert n_params == tiny.num_users * 128 + tiny.num_items * 64 + d_in * 64 + 64
