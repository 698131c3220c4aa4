import numpy as np
import pytest
import torch

from ptmrec.stages.student import ItemUserIndex, Student


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
    every = index.sample(np.arange(20), max_pairs=None, rng=np.random.default_rng(0))  # joint: no cap
    assert len(every.users) == int(np.isin(train_items, np.arange(20)).sum()) > 16


def test_chunk_pairs_carry_their_distinct_users_found_on_the_host():
    train_users, train_items, num_items = _interactions()
    index = ItemUserIndex(train_users, train_items, num_items)
    pairs = index.sample(np.arange(30), max_pairs=200, rng=np.random.default_rng(0))
    distinct, row_of = pairs.distinct_users.numpy(), pairs.row_of.numpy()
    assert np.array_equal(distinct, np.unique(pairs.users.numpy()))
    assert np.array_equal(distinct[row_of], pairs.users.numpy())
    moved = pairs.to(torch.device("cpu"))
    assert all(torch.equal(getattr(moved, f), getattr(pairs, f)) for f in ("users", "pos", "neg", "distinct_users", "row_of"))


def test_only_the_encoder_runs_under_autocast_the_recommender_and_losses_stay_float32(monkeypatch):
    """A GPU step in miniature: bf16 autocast (here on the CPU, which the product never does) around the
    encoder only; features, scores and losses in float32, gradients reach the float32 recommender."""
    import ptmrec.stages.student as student_module
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import apply_adapter
    from ptmrec.recommenders import build_recommender

    seen = {}
    monkeypatch.setattr(student_module, "encoder_autocast",
                        lambda device, precision: torch.autocast("cpu", dtype=torch.bfloat16))
    encoder = apply_adapter(build_encoder("tiny-clip", max_text_len=16, modalities=["text"]), "lora")
    encoder.text_tower.register_forward_hook(lambda m, i, o: seen.update(tower=o[0].dtype))
    train_users, train_items, num_items = _interactions(users=40, items=30, n=200)
    texts = [f"item {i}" for i in range(num_items)]
    with torch.no_grad():
        frozen = {"text": encoder.encode_text(**encoder.tokenize(texts))}
    rec = build_recommender("vbpr", num_users=40, num_items=num_items, train_interactions=(train_users, train_items),
                            features=frozen)
    user_repr, item_repr = (t.detach() for t in rec())
    student = Student(encoder, rec, user_repr, item_repr, kt_weight=1.0, temperature=1.0, kt_variant="user_item")
    chunk = np.arange(12)
    pairs = ItemUserIndex(train_users, train_items, num_items).sample(chunk, 64, np.random.default_rng(0))
    loss, parts = student(torch.from_numpy(chunk), pairs, encoder.tokenize([texts[i] for i in chunk]))
    assert seen["tower"] == torch.bfloat16  # the encoder did run in bf16
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in rec.parameters())
    assert rec.user_embedding.grad is not None


@pytest.mark.parametrize("adapter", ["prompt", "lora"])
def test_frozen_backbone_runs_without_dropout_while_the_student_trains(adapter):
    """MiniLM has dropout 0.1: in train mode its features would change from call to call. In stage 2 the
    frozen backbone stays in eval mode, so two training-mode forward passes are equal, and equal to eval."""
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import apply_adapter
    from ptmrec.recommenders import build_recommender

    encoder = apply_adapter(build_encoder("bundled", modalities=["text"]), adapter)
    rec = build_recommender("vbpr", num_users=3, num_items=4, train_interactions=(np.array([0, 1]), np.array([1, 2])),
                            features={"text": torch.randn(4, 384)})
    student = Student(encoder, rec, torch.randn(3, 8), torch.randn(4, 8), 1.0, 1.0, "user_item").train()
    assert student.training and rec.training and not encoder.text_tower.training
    tokens = encoder.tokenize(["a red summer dress", "leather boots"])
    first, second = (student.encode(tokens, None)["text"] for _ in range(2))
    assert torch.equal(first, second)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student.encode(tokens, None)["text"], first.detach(), atol=1e-6)
    trainable_owners = [m for m in encoder.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    student.train()
    assert trainable_owners and all(m.training for m in trainable_owners)


def test_kt_rows_add_sampled_users_after_the_chunks_own():
    train_users, train_items, num_items = _interactions()
    index = ItemUserIndex(train_users, train_items, num_items)
    chunk = np.arange(30)
    plain = index.sample(chunk, max_pairs=200, rng=np.random.default_rng(0))
    wider = index.sample(chunk, max_pairs=200, rng=np.random.default_rng(0), kt_users=50)
    own = plain.distinct_users.numpy()
    rows = wider.distinct_users.numpy()
    assert np.array_equal(rows[:len(own)], own) and np.array_equal(wider.row_of, plain.row_of)
    extra = rows[len(own):]
    assert 0 < len(extra) <= 50 and len(np.unique(rows)) == len(rows)  # no user twice
    assert set(extra) <= set(np.unique(train_users))
