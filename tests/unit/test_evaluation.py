"""MMRec's metrics on tiny score matrices computed by hand, plus masking and batching."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ptmrec.evaluation import csr_from_pairs, evaluate, evaluate_splits

L2 = {r: 1 / math.log2(r + 1) for r in range(1, 7)}  # discount of rank r

SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0: item 0 masked -> ranking 1 2 3 4 5; truth {2, 5}
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 1: items 5, 4 masked -> ranking 3 2 1 0; truth {3}
        [0.3, 0.1, 0.2, 0.6, 0.5, 0.4],  # user 2: no ground truth -> skipped
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # user 3: nothing masked; truth {0..4}, more than K
        [0.05, 0.9, 0.8, 0.7, 0.02, 0.01],  # user 4: ranking 1 2 3 0 4 5; truth {3, 0}
    ]
)
TRUTH = {0: [2, 5], 1: [3], 3: [0, 1, 2, 3, 4], 4: [3, 0]}
TRAIN = {0: [0], 1: [5, 4], 2: [1]}

# By hand, per user (0, 1, 3, 4), at K = 2 and K = 4
IDCG2 = L2[1] + L2[2]
EXPECTED = {
    "recall@2": [1 / 2, 1, 2 / 5, 0],
    "precision@2": [1 / 2, 1 / 2, 1, 0],
    "ndcg@2": [L2[2] / IDCG2, 1, 1, 0],
    "map@2": [(1 / 2) / 2, 1, (1 + 1) / 2, 0],
    "recall@4": [1 / 2, 1, 4 / 5, 1],
    "precision@4": [1 / 4, 1 / 4, 1, 2 / 4],
    "ndcg@4": [L2[2] / IDCG2, 1, 1, (L2[3] + L2[4]) / IDCG2],
    "map@4": [(1 / 2) / 2, 1, 4 / 4, (1 / 3 + 2 / 4) / 2],
}


def score_fn(users):
    return SCORES[users]


def test_metrics_match_hand_computation():
    result = evaluate(score_fn, TRUTH, TRAIN, ks=(2, 4))
    assert set(result) == set(EXPECTED)
    for name, per_user in EXPECTED.items():
        assert result[name] == pytest.approx(np.mean(per_user), abs=1e-12), name


def test_input_forms_and_batch_size_do_not_change_results():
    reference = evaluate(score_fn, TRUTH, TRAIN, ks=(2, 4))

    def pairs(d):
        return np.array([u for u, v in d.items() for _ in v]), np.array([i for v in d.values() for i in v])

    truth_csr = csr_from_pairs(*pairs(TRUTH), num_users=5)
    train_csr = csr_from_pairs(*pairs(TRAIN), num_users=3)  # shorter than truth: missing rows are empty
    u, i = pairs(TRAIN)
    train_scipy = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(5, 6))
    for truth, train, batch in [(truth_csr, train_csr, 1), (TRUTH, train_scipy, 2), (truth_csr, TRAIN, 4096)]:
        assert evaluate(score_fn, truth, train, ks=(2, 4), batch_users=batch) == pytest.approx(reference)


def test_splits_ranked_together_give_each_splits_own_metrics():
    # Overlapping users, a user in one split only, and an empty split; each user is scored once.
    splits = {"valid": {0: [1], 1: [3], 2: [0]}, "test": TRUTH, "empty": {}}
    scored = []

    def counting(users):
        scored.extend(users.tolist())
        return SCORES[users]

    together = evaluate_splits(counting, splits, TRAIN, ks=(2, 4), batch_users=2)
    assert sorted(scored) == [0, 1, 2, 3, 4]
    for name, truth in splits.items():
        assert together[name] == pytest.approx(evaluate(score_fn, truth, TRAIN, ks=(2, 4)), abs=1e-15), name
    assert set(together["empty"].values()) == {0.0}


def test_training_items_are_masked_but_other_splits_are_not():
    # User 1's best-scored items 5 and 4 are training items: masked, the test item 3 ranks first.
    assert evaluate(lambda u: SCORES[u], {1: [3]}, {1: [5, 4]}, ks=(1,))["recall@1"] == 1.0
    # Evaluating test, MMRec masks training items only: a valid item (5) scored above the test item
    # keeps its place and pushes the test item down.
    valid_not_masked = evaluate(lambda u: SCORES[u], {1: [3]}, {1: [4]}, ks=(1, 2))
    assert valid_not_masked["recall@1"] == 0.0 and valid_not_masked["recall@2"] == 1.0


def test_score_fn_output_is_left_untouched():
    cache = SCORES.clone()
    evaluate(lambda u: cache[: len(u)], {0: [1], 1: [2]}, {0: [0], 1: [5]}, ks=(2,))
    assert torch.equal(cache, SCORES)


def test_no_ground_truth_gives_zeros_and_bad_k_raises():
    assert set(evaluate(score_fn, {}, TRAIN, ks=(2,)).values()) == {0.0}
    with pytest.raises(ValueError, match="exceeds"):
        evaluate(score_fn, TRUTH, TRAIN, ks=(7,))
    with pytest.raises(ValueError, match="positive"):
        evaluate(score_fn, TRUTH, TRAIN, ks=(0,))


def test_random_case_matches_a_plain_per_user_loop():
    rng = np.random.default_rng(3)
    num_users, num_items, ks = 40, 30, (1, 5, 10)
    scores = torch.from_numpy(rng.random((num_users, num_items)))
    train = {u: rng.choice(num_items, rng.integers(0, 6), replace=False).tolist() for u in range(num_users)}
    truth = {}
    for u in range(num_users):
        rest = np.setdiff1d(np.arange(num_items), train[u])
        truth[u] = rng.choice(rest, rng.integers(0, 15), replace=False).tolist()

    expected = {f"{m}@{k}": [] for m in ("recall", "precision", "ndcg", "map") for k in ks}
    for u in range(num_users):
        if not truth[u]:
            continue
        ranking = [i for i in np.argsort(-scores[u].numpy()) if i not in train[u]]
        for k in ks:
            hits = [ranking[r] in truth[u] for r in range(k)]
            n = min(len(truth[u]), k)
            expected[f"recall@{k}"].append(sum(hits) / len(truth[u]))
            expected[f"precision@{k}"].append(sum(hits) / k)
            dcg = sum(1 / math.log2(r + 2) for r in range(k) if hits[r])
            expected[f"ndcg@{k}"].append(dcg / sum(1 / math.log2(r + 2) for r in range(n)))
            ap = sum(sum(hits[: r + 1]) / (r + 1) for r in range(k) if hits[r])
            expected[f"map@{k}"].append(ap / n)
    result = evaluate(lambda u: scores[u], truth, train, ks=ks, batch_users=7)
    for name, values in expected.items():
        assert result[name] == pytest.approx(np.mean(values), abs=1e-12), name
