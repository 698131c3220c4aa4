"""BPR triple sampling: one uniform negative per training positive, never one of the user's positives."""

from __future__ import annotations

import numpy as np


def sample_triples(
    train_users: np.ndarray, train_items: np.ndarray, num_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, positive, negative) for every training pair, in the pairs' order (shuffle separately).

    Negatives are uniform over all items minus the user's training items, as MMRec's sampler draws them,
    but vectorised: draw for every pair at once, then redraw only the pairs whose draw was a positive.
    Each round keeps a pair's redraw probability at deg(u)/num_items, so a few rounds suffice.

    Args:
        train_users, train_items: [n] int arrays, the training pairs.
        num_items: size of the item catalogue.
        rng: the caller's generator, so epochs are reproducible from one seed.

    Returns:
        users [n], positives [n], negatives [n], int64.
    """
    users = np.asarray(train_users, dtype=np.int64)
    items = np.asarray(train_items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"train_users {users.shape} and train_items {items.shape} must be 1-d arrays of one length")
    # A pair is known by one int64 key; membership is a binary search in the sorted unique keys.
    positives = np.unique(users * num_items + items)
    degree = np.bincount(positives // num_items)
    if len(degree) and degree.max() >= num_items:
        full = int(np.argmax(degree))
        raise ValueError(f"user {full} interacted with all {num_items} items: no negative can be drawn")

    negatives = rng.integers(0, num_items, size=len(users), dtype=np.int64)
    redraw = np.arange(len(users))
    while len(redraw):
        keys = users[redraw] * num_items + negatives[redraw]
        slot = np.minimum(np.searchsorted(positives, keys), len(positives) - 1)
        redraw = redraw[positives[slot] == keys]
        negatives[redraw] = rng.integers(0, num_items, size=len(redraw), dtype=np.int64)
    return users, items.copy(), negatives
