import pytest
import torch

from ptmrec.recommenders.freedom import FREEDOM, modality_mix
from ptmrec.recommenders.graphs import unique_pairs


def build(tiny, modalities=("image", "text"), **hparams):
    torch.manual_seed(0)
    hparams.setdefault("knn_k", 4)
    return FREEDOM(**tiny.kwargs(modalities), embedding_dim=8, **hparams)


def test_modality_mix_follows_mm_image_weight():
    assert modality_mix(("image", "text"), 0.1) == {"image": 0.1, "text": 0.9}
    assert modality_mix(("text",), 0.1) == {"text": 1.0}
    assert modality_mix(("audio", "text"), 0.1) == {"audio": 0.5, "text": 0.5}


def test_item_graph_rows_average_k_neighbours_including_self(tiny):
    model = build(tiny)
    dense = model.mm_adj.to_dense()
    torch.testing.assert_close(dense.sum(1), torch.ones(tiny.num_items))
    # an item is its own nearest neighbour in both modalities: weight 0.1/k + 0.9/k
    torch.testing.assert_close(dense.diagonal(), torch.full((tiny.num_items,), 1 / 4))


def test_edge_pruning_keeps_a_fraction_drawn_anew_each_epoch(tiny):
    model = build(tiny, dropout=0.8)
    num_edges = len(unique_pairs(tiny.train_users, tiny.train_items, tiny.num_users, tiny.num_items)[0])
    kept = int(num_edges * 0.2)
    first = model.masked_adj.to_dense().to_sparse_coo()
    assert first._nnz() == 2 * kept  # both directions of each kept edge
    # kept edges are renormalised by their degrees in the pruned graph
    dense = first.to_dense()
    degree = (dense > 0).sum(1).float()
    rows, cols = first.indices()
    torch.testing.assert_close(first.values(), (degree[rows] * degree[cols]).rsqrt())
    model.pre_epoch()
    assert not torch.equal(model.masked_adj.to_dense().to_sparse_coo().indices(), first.indices())


def test_no_dropout_trains_on_the_full_graph(tiny):
    model = build(tiny, dropout=0.0)
    model.pre_epoch()
    assert model.masked_adj is model.norm_adj
    with pytest.raises(ValueError, match="dropout"):
        build(tiny, dropout=1.0)


def test_reg_weight_weighs_the_modality_bpr_terms(tiny):
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    with_terms = build(tiny, reg_weight=1.0, dropout=0.0)
    without = build(tiny, reg_weight=0.0, dropout=0.0)
    total, parts = with_terms.loss(users, pos, neg)
    assert set(parts) == {"bpr", "bpr_image", "bpr_text"} and parts["bpr_image"] > 0
    torch.testing.assert_close(without.loss(users, pos, neg)[0], parts["bpr"])


def test_train_features_decides_whether_the_feature_table_learns(tiny):
    trained, fixed = build(tiny, train_features=True), build(tiny, train_features=False)
    assert set(trained.feature_table) == {"image", "text"} and len(fixed.feature_table) == 0
    loss, _ = trained.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([4, 5]))
    loss.backward()
    assert trained.feature_table["text"].grad.abs().sum() > 0
    extra = sum(f.numel() for f in tiny.features.values())
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in fixed.parameters()) + extra


def test_two_item_graph_layers_still_reproduce_full_scores(tiny):
    model = build(tiny, n_mm_layers=2)
    users, items = torch.tensor([0, 3]), torch.tensor([5, 9, 13])
    own = {"image": tiny.features["image"][items]}
    torch.testing.assert_close(model.score_with_features(users, items, own), model.full_scores(users)[:, items])


def test_modality_scores_are_fully_propagated_users_against_projected_features(tiny):
    model = build(tiny)
    users, items = torch.tensor([1, 2]), torch.tensor([0, 3, 6])
    embeddings = model.item_modality_embeddings(items)
    torch.testing.assert_close(embeddings["text"], model.projections["text"](tiny.features["text"][items]))
    scores = model.modality_scores(users, items)
    torch.testing.assert_close(scores["image"], model.user_embeddings(users) @ embeddings["image"].T)


def test_a_student_adopting_the_adapted_catalogue_scores_as_its_evaluation_model(tiny):
    # Stage 2: the student trains with score_with_features; evaluation rebuilds FREEDOM on the re-encoded
    # catalogue. After adopting that model's item graph the two agree on every item.
    student = build(tiny)
    generator = torch.Generator().manual_seed(3)
    adapted = {m: f + 0.5 * torch.randn(f.shape, generator=generator) for m, f in tiny.features.items()}
    evaluation = FREEDOM(**{**tiny.kwargs(("image", "text")), "features": adapted}, embedding_dim=8, knn_k=4)
    evaluation.load_weights_without_features(student.weights_without_features())
    users, items = torch.tensor([0, 3]), torch.arange(tiny.num_items)
    before = student.score_with_features(users, items, adapted)
    student.adopt_reference_features(evaluation)
    after = student.score_with_features(users, items, adapted)
    torch.testing.assert_close(after, evaluation.full_scores(users))
    assert not torch.allclose(before, after)  # against the frozen neighbours they disagreed
    with pytest.raises(ValueError, match="cannot adopt the item graph"):
        student.adopt_reference_features(build(tiny, modalities=("text",)))


@pytest.mark.parametrize("model_name", ["vbpr", "freedom"])
def test_a_catalogue_item_without_its_history_scores_as_a_cold_item(tiny, model_name):
    # A new item given the features of catalogue item i: it lands where i's content puts it, without i's
    # ID embedding and interactions (zeroed here to compare).
    from ptmrec.recommenders import build_recommender

    torch.manual_seed(0)
    model = build_recommender(model_name, **tiny.kwargs(("image", "text")), embedding_dim=8,
                              **({"knn_k": 4} if model_name == "freedom" else {}))
    items = torch.tensor([2, 7])
    cold = model.cold_item_embeddings({m: f[items] for m, f in tiny.features.items()})
    users = model.user_embeddings(torch.tensor([0, 1]))
    assert cold.shape == (2, users.shape[1])
    with torch.no_grad():
        if model_name == "vbpr":
            model.item_embedding.zero_()
            expected = model()[1][items]
        else:
            expected = model._item_graph_embeddings(1)[items]  # own neighbours by own features
    torch.testing.assert_close(cold, expected)
    with pytest.raises(ValueError, match="need features for every modality"):
        model.cold_item_embeddings({"text": tiny.features["text"][items]})
