"""A tiny synthetic data set with structure the models can learn: two taste groups of users, two groups
of items, users interacting mostly within their group, and item features that reveal the item's group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch


@dataclass
class TinyData:
    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    features: dict[str, torch.Tensor]

    def kwargs(self, modalities=("image", "text")) -> dict:
        """Constructor arguments shared by every recommender."""
        return dict(
            num_users=self.num_users,
            num_items=self.num_items,
            train_interactions=(self.train_users, self.train_items),
            features={m: self.features[m] for m in modalities},
        )


def make_tiny_data(num_users: int = 24, num_items: int = 30, per_user: int = 6, seed: int = 0) -> TinyData:
    rng = np.random.default_rng(seed)
    item_group = np.arange(num_items) % 2
    users, items = [], []
    for u in range(num_users):
        own = np.flatnonzero(item_group == u % 2)
        other = np.flatnonzero(item_group != u % 2)
        picks = np.concatenate([rng.choice(own, per_user - 1, replace=False), rng.choice(other, 1)])
        users += [u] * per_user
        items += picks.tolist()
    signal = torch.from_numpy(np.eye(2)[item_group]).float()
    gen = torch.Generator().manual_seed(seed)
    features = {
        "image": torch.cat([signal, torch.randn(num_items, 14, generator=gen)], 1),
        "text": torch.cat([signal, torch.randn(num_items, 6, generator=gen)], 1),
    }
    return TinyData(num_users, num_items, np.array(users), np.array(items), features)


@pytest.fixture(scope="session")
def tiny() -> TinyData:
    return make_tiny_data()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which costs seconds
    per test when the cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
