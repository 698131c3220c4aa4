import time

import numpy as np
import pytest

from ptmrec.recommenders import sample_triples


def dense_pairs(num_users=50, num_items=40, seed=0):
    """Users holding most of the catalogue, so that rejection is frequent."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        chosen = rng.choice(num_items, rng.integers(1, num_items - 1), replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    return np.array(users), np.array(items), num_items


def test_negatives_are_never_training_positives():
    users, items, num_items = dense_pairs()
    positives = set(zip(users.tolist(), items.tolist()))
    rng = np.random.default_rng(1)
    for _ in range(20):
        u, p, n = sample_triples(users, items, num_items, rng)
        assert np.array_equal(u, users) and np.array_equal(p, items)
        assert u.dtype == p.dtype == n.dtype == np.int64
        assert ((n >= 0) & (n < num_items)).all()
        assert not any((a, b) in positives for a, b in zip(u.tolist(), n.tolist()))


def test_negatives_are_uniform_over_the_users_non_positives():
    # one user who owns items 0..4 of 10: each of items 5..9 drawn ~1/5 of the time
    users, items = np.zeros(5, dtype=np.int64), np.arange(5)
    rng = np.random.default_rng(2)
    draws = np.concatenate([sample_triples(users, items, 10, rng)[2] for _ in range(4000)])
    counts = np.bincount(draws, minlength=10)
    assert counts[:5].sum() == 0
    assert np.allclose(counts[5:] / len(draws), 0.2, atol=0.01)


def test_same_seed_same_triples():
    users, items, num_items = dense_pairs()
    a = sample_triples(users, items, num_items, np.random.default_rng(7))
    b = sample_triples(users, items, num_items, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_user_with_every_item_is_an_error():
    with pytest.raises(ValueError, match="all 3 items"):
        sample_triples(np.zeros(3), np.arange(3), 3, np.random.default_rng(0))


def test_fast_on_200k_pairs():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 20_000, 200_000)
    items = rng.integers(0, 7_000, 200_000)
    start = time.perf_counter()
    sample_triples(users, items, 7_000, rng)
    assert time.perf_counter() - start < 2.0
