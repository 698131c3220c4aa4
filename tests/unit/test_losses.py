import math

import pytest
import torch

from ptmrec.losses import bpr_loss, l2_reg


def test_bpr_loss_is_mean_negative_log_sigmoid_of_the_margin():
    pos = torch.tensor([2.0, 0.5, -1.0])
    neg = torch.tensor([1.0, 0.5, 1.0])
    expected = sum(-math.log(1 / (1 + math.exp(-(p - n)))) for p, n in zip(pos.tolist(), neg.tolist())) / 3
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_loss_is_stable_for_huge_margins():
    pos = torch.tensor([-1000.0, 1000.0], requires_grad=True)
    neg = torch.tensor([1000.0, -1000.0])
    loss = bpr_loss(pos, neg)
    loss.backward()
    # pair 1 costs its margin (2000), pair 2 nothing; a plain log(sigmoid) would give inf
    assert loss.item() == pytest.approx(1000.0)
    assert torch.isfinite(pos.grad).all()


def test_bpr_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        bpr_loss(torch.zeros(3), torch.zeros(4))


def test_l2_reg_is_mmrec_emb_loss_unsquared_norms_over_batch_size():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norm 5
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # norm 1
    assert l2_reg(a, b).item() == pytest.approx((5.0 + 1.0) / 2)


def test_l2_reg_needs_a_tensor():
    with pytest.raises(ValueError):
        l2_reg()


# ---- knowledge transfer (stage 2)

from ptmrec.losses import item_item_kt, kl_rows, user_item_kt  # noqa: E402


def test_kt_is_zero_when_student_matches_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(5, 7)
    assert kl_rows(teacher, teacher.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_rows(teacher, teacher + 3.0, 0.5).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    assert kl_rows(teacher, torch.randn(5, 7), 1.0).item() > 0
    parts = user_item_kt(teacher, {"text": teacher.clone(), "image": -teacher}, 1.0)
    assert parts["text"].item() == pytest.approx(0.0, abs=1e-7) and parts["image"].item() > 0


def test_kt_sends_gradients_only_into_trainable_parameters():
    torch.manual_seed(0)
    teacher_table = torch.nn.Parameter(torch.randn(6, 4), requires_grad=False)  # frozen stage-1 model
    adapter = torch.nn.Linear(4, 4)  # the student's trainable part
    backbone = torch.nn.Linear(4, 4).requires_grad_(False)
    users, items = torch.randn(3, 4), torch.randn(6, 4)
    student = users @ adapter(backbone(items)).T
    loss = user_item_kt(users @ teacher_table.T, {"text": student}, 1.0)["text"]
    loss.backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert teacher_table.grad is None and backbone.weight.grad is None


def test_item_item_kt():
    torch.manual_seed(0)
    ids = torch.randn(8, 16)
    same = item_item_kt(ids, {"text": ids * 2.0}, 0.2)  # cosine similarity ignores scale
    assert same["text"].item() == pytest.approx(0.0, abs=1e-6)
    assert item_item_kt(ids, {"text": torch.randn(8, 5)}, 0.2)["text"].item() > 0


def test_kt_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature must be positive"):
        kl_rows(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="differ"):
        kl_rows(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_standardised_kt_ignores_each_rows_scale_and_shift():
    torch.manual_seed(0)
    teacher = torch.randn(4, 9)
    scaled = teacher * torch.tensor([[0.1], [5.0], [30.0], [1.0]]) + 7.0
    assert kl_rows(teacher, scaled, 1.0, standardize=True).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_rows(teacher, scaled, 1.0).item() > 0.01  # raw scores: the scale is the sharpness
    assert user_item_kt(teacher, {"text": scaled}, 0.5, standardize=True)["text"].item() == pytest.approx(0.0, abs=1e-6)
