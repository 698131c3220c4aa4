import numpy as np

from ptmrec.stages.student import ItemUserIndex


def _interactions(seed=0, users=200, items=100, n=600):
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, [users, items], size=(n, 2)), axis=0)
    return pairs[:, 0], pairs[:, 1], items


def test_chunk_pairs_are_real_positives_and_unseen_negatives():
    train_users, train_items, num_items = _interactions()
    index = ItemUserIndex(train_users, train_items, num_items)
    positives = set(zip(train_users.tolist(), train_items.tolist()))
    chunk = np.array([3, 7, 11, 19, 23, 31, 37, 41, 53, 67, 79, 97])
    pairs = index.sample(chunk, max_pairs=10_000, rng=np.random.default_rng(1))
    users, pos, neg = pairs.users.numpy(), chunk[pairs.pos.numpy()], chunk[pairs.neg.numpy()]
    # Every training interaction with a chunk item appears once, as a positive.
    expected = sorted((u, i) for u, i in positives if i in set(chunk.tolist()))
    assert sorted(zip(users.tolist(), pos.tolist())) == expected
    # Negatives are chunk items the user never interacted with (sparse data: a few redraws find one).
    assert not any((u, i) in positives for u, i in zip(users.tolist(), neg.tolist()))


def test_chunk_pairs_are_capped_and_empty_chunks_give_none():
    train_users, train_items, num_items = _interactions()
    index = ItemUserIndex(train_users, train_items, num_items)
    pairs = index.sample(np.arange(20), max_pairs=16, rng=np.random.default_rng(0))
    assert len(pairs.users) == 16 and pairs.pos.max() < 20 and pairs.neg.max() < 20
    unused = np.setdiff1d(np.arange(num_items + 5), train_items)
    lonely = ItemUserIndex(train_users, train_items, num_items + 5)
    assert lonely.sample(unused[-2:], max_pairs=16, rng=np.random.default_rng(0)) is None
