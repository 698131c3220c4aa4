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
