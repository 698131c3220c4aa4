import numpy as np
import pytest

from ptmrec.config import RecommenderConfig
from ptmrec.data.stream import Interactions
from ptmrec.evaluation import evaluate
from ptmrec.recommenders import build_recommender, get_recommender_class
from ptmrec.stages.common import epoch_triples, evaluate_distributed, recommender_kwargs


def toy_interactions(seed=0, users=30, items=25):
    rng = np.random.default_rng(seed)
    tu, ti, valid, test = [], [], {}, {}
    for u in range(users):
        its = rng.choice(items, size=8, replace=False)
        tu += [u] * 6
        ti += its[:6].tolist()
        valid[u], test[u] = [int(its[6])], [int(its[7])]
    return Interactions(users, items, np.array(tu), np.array(ti), valid, test)


def test_recommender_kwargs_pass_set_fields_and_refuse_foreign_ones():
    kw = recommender_kwargs(RecommenderConfig(name="lightgcn", n_layers=3), get_recommender_class("lightgcn"))
    assert kw == {"embedding_dim": 64, "n_layers": 3}
    with pytest.raises(ValueError, match="recommender.knn_k does not apply to bpr"):
        recommender_kwargs(RecommenderConfig(name="bpr", knn_k=5), get_recommender_class("bpr"))


def test_epoch_triples_are_the_same_on_every_rank_and_differ_by_epoch():
    inter = toy_interactions()
    a, b, c = epoch_triples(inter, 3, 7), epoch_triples(inter, 3, 7), epoch_triples(inter, 4, 7)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[2] == c[2]).all()


def test_sharded_evaluation_equals_one_process():
    """Each rank scores every world_size-th user; the weighted combination equals a single evaluation."""
    inter = toy_interactions()
    model = build_recommender("bpr", num_users=inter.num_users, num_items=inter.num_items)
    whole = evaluate_distributed(model, inter, [5, 10], 8, rank=0, world_size=1)
    user_repr, item_repr = model()
    direct = evaluate(lambda u: user_repr[u] @ item_repr.T, inter.test, _csr(inter), ks=[5, 10])
    assert whole["test"] == pytest.approx(direct)
    # world_size 2 without a process group: emulate the all-reduce by summing the two ranks by hand
    parts = []
    for rank in range(2):
        mine = {u: v for u, v in inter.test.items() if u % 2 == rank}
        parts.append((len(mine), evaluate(lambda u: user_repr[u] @ item_repr.T, mine, _csr(inter), ks=[5, 10])))
    n = sum(p[0] for p in parts)
    combined = {k: sum(c * m[k] for c, m in parts) / n for k in direct}
    assert combined == pytest.approx(direct)


def _csr(inter):
    from ptmrec.evaluation import csr_from_pairs

    return csr_from_pairs(inter.train_users, inter.train_items, inter.num_users)


def test_epoch_progress_says_k_of_n_and_the_latest_stop():
    from ptmrec.stages.state import TrainState

    state = TrainState(epoch=12, bad_evals=3)
    assert state.progress(1000, 20, 3.0) == "12/1000, stops by 29 (≤ 51 s)"
    assert state.progress(1000, 20, 60.0, epochs_per_eval=2) == "12/1000, stops by 46 (≤ 34 min)"
    assert TrainState(epoch=5, bad_evals=0).progress(5, 3, 1.0) == "5/5"


def test_recommender_modalities_choose_the_features_a_content_model_uses(repo):
    import torch

    from ptmrec.config import load_config
    from ptmrec.stages.common import build_recommender_from_config

    inter = toy_interactions()
    features = {"image": torch.randn(25, 6), "text": torch.randn(25, 4)}
    cfg = load_config(repo / "configs/smoke.yaml", ["recommender.modalities=[image]"])
    assert build_recommender_from_config(cfg, inter, features).modalities == ("image",)
    cfg.recommender.modalities = None
    assert build_recommender_from_config(cfg, inter, features).modalities == ("image", "text")
    cfg.recommender.modalities = ["text"]
    with pytest.raises(ValueError, match=r"recommender.modalities: \['text'\] not among the item features \(\['image'\]\)"):
        build_recommender_from_config(cfg, inter, {"image": features["image"]})
