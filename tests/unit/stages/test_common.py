import numpy as np
import pytest

from ptmrec.config import EvalConfig, RecommenderConfig
from ptmrec.data.stream import Interactions
from ptmrec.evaluation import evaluate
from ptmrec.recommenders import build_recommender, get_recommender_class
from ptmrec.stages.common import (check_lazy_adam, epoch_triples, eval_protocol, eval_users, evaluate_distributed,
                                  recommender_kwargs)


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
    whole = evaluate_distributed(model, inter, EvalConfig(ks=[5, 10], batch_users=8), rank=0, world_size=1)
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


def test_evaluation_batches_by_the_score_budget_and_samples_users_past_the_item_limit():
    inter = toy_interactions()
    model = build_recommender("bpr", num_users=inter.num_users, num_items=inter.num_items)
    full = EvalConfig(ks=[5, 10])
    # at most max_batch_scores scores at once (here one user's row): the same numbers
    one_row = EvalConfig(ks=[5, 10], max_batch_scores=inter.num_items)
    batched, whole = (evaluate_distributed(model, inter, ev, 0, 1) for ev in (one_row, full))
    for split in ("valid", "test"):
        assert batched[split] == pytest.approx(whole[split])
    assert eval_users(full, inter, "test") == sorted(inter.test) and eval_protocol(full, inter.num_items) == "full ranking"
    # past the item limit: a seeded sample of users per split, ranked in full, the same every time
    sampled = EvalConfig(ks=[5, 10], sampled_above_items=inter.num_items - 1, sample_users=10)
    users = eval_users(sampled, inter, "test")
    assert len(users) == 10 and set(users) <= set(inter.test) and users == eval_users(sampled, inter, "test")
    assert users != eval_users(sampled, inter, "valid")
    assert "10 sampled users per split (25 items > eval.sampled_above_items 24)" in eval_protocol(sampled, 25)
    user_repr, item_repr = model()
    direct = evaluate(lambda u: user_repr[u] @ item_repr.T, {u: inter.test[u] for u in users}, _csr(inter), ks=[5, 10])
    assert evaluate_distributed(model, inter, sampled, 0, 1)["test"] == pytest.approx(direct)


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


def test_lazy_adam_is_refused_before_any_work_for_a_graph_model(repo):
    from ptmrec.config import ConfigError, load_config

    for name, stage in (("bpr", "stage1"), ("vbpr", "stage2")):
        sets = [f"recommender.name={name}", f"{stage}.optimizer=lazy_adam", f"{stage}.zero_stage=0"]
        check_lazy_adam(load_config(repo / "configs/smoke.yaml", sets), stage)
    cfg = load_config(repo / "configs/smoke.yaml", ["recommender.name=lightgcn", "stage1.optimizer=lazy_adam"])
    with pytest.raises(ConfigError, match="stage1.optimizer: lazy_adam needs .* lightgcn propagates"):
        check_lazy_adam(cfg, "stage1")


def test_valid_halves_split_the_valid_users_in_two_fixed_halves_that_choose_apart():
    from ptmrec.stages.common import selection_split, valid_half
    from ptmrec.stages.state import TrainState

    halves = [valid_half(u) for u in range(10_000)]
    assert 0.48 < halves.count("a") / len(halves) < 0.52 and halves == [valid_half(u) for u in range(10_000)]
    assert set(halves[:20]) == {"a", "b"}  # not by id order: old and new users in both halves
    inter = toy_interactions(users=60)
    model = build_recommender("bpr", num_users=inter.num_users, num_items=inter.num_items)
    plain = evaluate_distributed(model, inter, EvalConfig(ks=[5, 10]), 0, 1)
    split = evaluate_distributed(model, inter, EvalConfig(ks=[5, 10], selection="valid_halves"), 0, 1)
    assert set(plain) == {"valid", "test"} and set(split) == {"valid", "test", "valid_a", "valid_b"}
    assert split["valid"] == pytest.approx(plain["valid"]) and split["test"] == pytest.approx(plain["test"])
    n_a = sum(valid_half(u) == "a" for u in inter.valid)
    for k in split["valid"]:  # the halves' means, weighted by their users, are the whole split's
        whole = (n_a * split["valid_a"][k] + (len(inter.valid) - n_a) * split["valid_b"][k]) / len(inter.valid)
        assert whole == pytest.approx(split["valid"][k])
    halves_cfg = EvalConfig(selection="valid_halves")
    assert [selection_split(halves_cfg, *s) for s in (("stage1",), ("stage2",), ("stage2", "no_kt"), ("stage2", "joint"))] \
        == ["valid_a", "valid_b", "valid_b", "valid_a"]
    assert selection_split(EvalConfig(), "stage2") == "valid"
    # an epoch is the best on the half that chooses it, whatever the whole valid split says
    state = TrainState()
    state.observe({"valid": {"recall@20": 0.5}, "valid_b": {"recall@20": 0.1}}, "recall@20", "valid_b")
    state.epoch = 1
    assert state.observe({"valid": {"recall@20": 0.4}, "valid_b": {"recall@20": 0.2}}, "recall@20", "valid_b")
    assert state.best_epoch == 1
