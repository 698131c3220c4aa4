"""The contract of base.py, checked on every registered model."""

import numpy as np
import pytest
import torch

from ptmrec.losses import bpr_loss
from ptmrec.recommenders import available_recommenders, build_recommender, sample_triples

ALL = sorted(available_recommenders())
CONTENT = ["freedom", "vbpr"]
ID_ONLY = ["bpr", "lightgcn"]
MODALITY_SETS = [("image",), ("text",), ("image", "text")]


def build(name, tiny, modalities=("image", "text"), **hparams):
    torch.manual_seed(0)
    if name == "freedom":
        hparams.setdefault("knn_k", 4)
    return build_recommender(name, **tiny.kwargs(modalities), embedding_dim=16, **hparams)


def triples(tiny, seed=0):
    u, p, n = sample_triples(tiny.train_users, tiny.train_items, tiny.num_items, np.random.default_rng(seed))
    return torch.from_numpy(u), torch.from_numpy(p), torch.from_numpy(n)


@pytest.mark.parametrize("name", ALL)
def test_shapes(name, tiny):
    model = build(name, tiny)
    users, items = torch.tensor([0, 3, 5]), torch.tensor([1, 7, 2, 9])
    scores = model.full_scores(users)
    assert scores.shape == (3, tiny.num_items)
    torch.testing.assert_close(model.score(users, items), scores[:, items])
    user_repr, item_repr = model()
    assert user_repr.shape[0] == tiny.num_users and item_repr.shape[0] == tiny.num_items
    torch.testing.assert_close(model.user_embeddings(users), user_repr[users])


@pytest.mark.parametrize("name", ALL)
def test_loss_decreases_with_adam(name, tiny):
    model = build(name, tiny)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(50):
        if step % 10 == 0:
            model.pre_epoch()
        batch = (torch.from_numpy(a) for a in sample_triples(tiny.train_users, tiny.train_items, tiny.num_items, rng))
        loss, parts = model.loss(*batch)
        assert loss.ndim == 0 and "bpr" in parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * losses[0]


@pytest.mark.parametrize("name", ALL)
def test_full_scores_are_what_the_loss_ranks(name, tiny):
    # FREEDOM trains on a pruned graph; without pruning, training and scoring see the same graph.
    model = build(name, tiny, **({"dropout": 0.0} if name == "freedom" else {}))
    users, pos, neg = triples(tiny)
    total, parts = model.loss(users, pos, neg)
    scores = model.full_scores(users)
    rows = torch.arange(len(users))
    expected = bpr_loss(scores[rows, pos], scores[rows, neg])
    torch.testing.assert_close(parts["bpr"], expected.detach())
    torch.testing.assert_close(sum(parts.values()), total.detach())


@pytest.mark.parametrize("name", CONTENT)
@pytest.mark.parametrize("modalities", MODALITY_SETS)
def test_content_models_run_on_any_modality_set(name, modalities, tiny):
    model = build(name, tiny, modalities)
    assert model.modalities == modalities
    loss, _ = model.loss(*triples(tiny))
    loss.backward()
    users, items = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    assert set(model.modality_scores(users, items)) == set(modalities)


@pytest.mark.parametrize("name", CONTENT)
def test_content_models_refuse_to_run_without_features(name, tiny):
    kwargs = tiny.kwargs(())
    with pytest.raises(ValueError, match=f"{name} needs item features"):
        build_recommender(name, **kwargs)


@pytest.mark.parametrize("name", ID_ONLY)
def test_id_only_models_ignore_features_and_have_no_feature_scores(name, tiny):
    with_features, without = build(name, tiny), build(name, tiny, ())
    torch.testing.assert_close(with_features.full_scores(torch.arange(3)), without.full_scores(torch.arange(3)))
    users, items = torch.tensor([0]), torch.tensor([1, 2])
    with pytest.raises(NotImplementedError, match="ID-only"):
        with_features.score_with_features(users, items, {"text": tiny.features["text"][items]})
    with pytest.raises(NotImplementedError, match="ID-only"):
        with_features.modality_scores(users, items)
    with pytest.raises(NotImplementedError, match="ID-only"):
        with_features.item_modality_embeddings(items)


@pytest.mark.parametrize("name", CONTENT)
@pytest.mark.parametrize("replaced", MODALITY_SETS)
def test_score_with_own_features_equals_full_scores(name, replaced, tiny):
    model = build(name, tiny)
    users, items = torch.tensor([0, 4, 7, 11]), torch.tensor([3, 0, 17, 29, 8])
    own = {m: tiny.features[m][items] for m in replaced}
    torch.testing.assert_close(model.score_with_features(users, items, own), model.full_scores(users)[:, items])


@pytest.mark.parametrize("name", CONTENT)
def test_new_features_change_scores_and_modality_scores_pass_gradients(name, tiny):
    model = build(name, tiny)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6, 7])
    new = {m: torch.randn(len(items), tiny.features[m].shape[1], requires_grad=True) for m in model.modalities}
    assert not torch.allclose(model.score_with_features(users, items, new), model.full_scores(users)[:, items])
    embeddings = model.item_modality_embeddings(items, new)
    assert all(e.shape == (4, 16) for e in embeddings.values())
    scores = model.modality_scores(users, items, new)
    assert all(s.shape == (3, 4) for s in scores.values())
    sum(s.sum() for s in scores.values()).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in new.values())


@pytest.mark.parametrize("name", CONTENT)
def test_feature_replacements_are_validated(name, tiny):
    model = build(name, tiny, ("text",))
    users, items = torch.tensor([0]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="image"):
        model.score_with_features(users, items, {"image": tiny.features["image"][items]})
    with pytest.raises(ValueError, match="shape"):
        model.modality_scores(users, items, {"text": tiny.features["text"][:3]})


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_holds_parameters_not_derived_graphs(name, tiny):
    model = build(name, tiny)
    state = model.state_dict()
    assert not any(key.startswith(("norm_adj", "mm_adj", "masked_adj", "feat_", "knn_")) for key in state)
    clone = build(name, tiny)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.full_scores(torch.arange(5)), model.full_scores(torch.arange(5)))
