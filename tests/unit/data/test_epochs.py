"""Dealing an epoch's shards over ranks and loader workers."""

from __future__ import annotations

import pytest

from ptmrec.data.epochs import plan_epoch

SHARDS = {f"s{i}": 10 for i in range(7)} | {"s7": 3}  # 73 items, the last shard short


@pytest.mark.parametrize(("world_size", "workers"), [(1, 0), (2, 0), (2, 3), (4, 2), (16, 1)])
def test_every_rank_the_same_steps_and_every_shard_dealt(world_size, workers):
    plan = plan_epoch(SHARDS, batch_size=4, world_size=world_size, workers=workers, seed=0)
    for rank_shares in plan.shares:
        assert len(rank_shares) == max(workers, 1)
        assert sum(share.batches for share in rank_shares) == plan.steps
    dealt = [u for rank_shares in plan.shares for share in rank_shares for u in share.urls]
    assert set(dealt) == set(SHARDS)
    if world_size <= len(SHARDS):
        assert sorted(dealt) == sorted(SHARDS)  # each shard to one reader
        for share in (s for rank_shares in plan.shares for s in rank_shares):  # whose quota covers its items
            assert share.batches >= -(-sum(SHARDS[u] for u in share.urls) // 4)
    else:  # more ranks than shards: a rank without any draws from the whole catalogue
        assert any(len(rank_shares[0].urls) == len(SHARDS) for rank_shares in plan.shares)


def test_the_steps_do_not_depend_on_the_epoch():
    steps = {plan_epoch(SHARDS, batch_size=4, world_size=3, workers=2, seed=s).steps for s in range(20)}
    assert len(steps) == 1
    shares = {plan_epoch(SHARDS, batch_size=4, world_size=3, workers=2, seed=s).shares for s in range(20)}
    assert len(shares) > 1  # but who reads what does


def test_one_reader_reads_the_catalogue_once():
    plan = plan_epoch(SHARDS, batch_size=4, world_size=1, workers=0, seed=0)
    assert plan.steps == 19 and plan.shares[0][0].batches == 19  # ceil(73 / 4)


def test_nothing_to_read_is_an_error():
    with pytest.raises(ValueError, match="at least one item"):
        plan_epoch({"s0": 0}, batch_size=4, world_size=1, workers=0, seed=0)
    with pytest.raises(ValueError, match="batch_size and world_size must be >= 1"):
        plan_epoch(SHARDS, batch_size=0, world_size=1, workers=0, seed=0)
