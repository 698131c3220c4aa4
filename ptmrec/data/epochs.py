"""Which shards each training worker reads in one epoch, and how many batches it yields.

Stage 2 trains on chunks of items. Two things have to hold at once:

- every item is seen once per epoch, in an order drawn afresh each epoch (in-chunk negatives and the
  KT softmax should see items from the whole catalogue, not a narrow id range: `prepare` writes the
  items into shards in a seeded random order, and the stream shuffles each shard's items);
- every rank runs the same number of steps, whatever the shards and DataLoader workers, or the
  gradient all-reduce hangs.

So the shards are dealt out over the ``world_size × workers`` readers (rank-major, largest shards
first, equal ones in a seeded random order), each reader's first ``ceil(items / batch_size)`` batches
cover its items (its stream cycles over its shards, so no batch is partial), and a rank whose readers
need fewer batches than the busiest rank fills up by cycling on: a few items are seen twice, none
never. The sizes dealt do not depend on the seed, so the number of steps is the same every epoch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ReaderShare:
    """One DataLoader worker's part of an epoch: its shards (read in a fresh order each pass) and how
    many batches it yields."""

    urls: tuple[str, ...]
    batches: int


@dataclass(frozen=True)
class EpochPlan:
    steps: int  # batches per rank, the same on every rank
    shares: tuple[tuple[ReaderShare, ...], ...]  # [rank][worker]

    def share(self, rank: int, worker: int) -> ReaderShare:
        return self.shares[rank][worker]


def plan_epoch(counts: dict[str, int], *, batch_size: int, world_size: int, workers: int, seed: int) -> EpochPlan:
    """Deal the shards (``url -> items``) over ``world_size`` ranks × ``max(workers, 1)`` readers."""
    if batch_size < 1 or world_size < 1 or workers < 0:
        raise ValueError(f"batch_size and world_size must be >= 1 and workers >= 0, got "
                         f"{batch_size}, {world_size}, {workers}")
    if not counts or not any(counts.values()):
        raise ValueError("an epoch needs at least one item; the shards listed are empty")
    readers = max(workers, 1)
    rng = random.Random(seed)
    order = sorted(counts, key=lambda url: (-counts[url], rng.random()))
    dealt: list[list[str]] = [[] for _ in range(world_size * readers)]
    for i, url in enumerate(order):
        dealt[i % len(dealt)].append(url)

    def reader(rank: int, worker: int) -> list[str]:
        return dealt[worker * world_size + rank]

    def needed(urls: list[str]) -> int:
        return -(-sum(counts[u] for u in urls) // batch_size)

    steps = max(sum(needed(reader(r, w)) for w in range(readers)) for r in range(world_size))
    shares = []
    for rank in range(world_size):
        batches = [needed(reader(rank, w)) for w in range(readers)]
        with_items = [w for w in range(readers) if batches[w] > 0]
        urls = [tuple(reader(rank, w)) for w in range(readers)]
        if not with_items:  # fewer shards than ranks: this rank draws from the whole catalogue
            with_items, urls[0] = [0], tuple(order)
        for i in range(steps - sum(batches)):
            batches[with_items[i % len(with_items)]] += 1
        shares.append(tuple(ReaderShare(urls[w], batches[w]) for w in range(readers)))
    return EpochPlan(steps=steps, shares=tuple(shares))
