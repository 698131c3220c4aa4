"""Training losses shared by the recommenders.

Only the stage-1 pieces live here for now: BPR and MMRec's embedding regulariser. The knowledge-transfer
(KT) loss of stage 2 will join them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: mean over the batch of -log sigmoid(pos - neg).

    Args:
        pos_scores: [B] scores of (user, positive item) pairs.
        neg_scores: [B] scores of (user, negative item) pairs, aligned with `pos_scores`.

    Returns:
        Scalar tensor.

    MMRec writes -log(1e-10 + sigmoid(d)), which caps the loss of one pair near 23; softplus(-d) is the
    same function without the cap and without underflow when d is very negative.
    """
    if pos_scores.shape != neg_scores.shape:
        raise ValueError(f"pos_scores {tuple(pos_scores.shape)} and neg_scores {tuple(neg_scores.shape)} differ")
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*tensors: torch.Tensor) -> torch.Tensor:
    """MMRec's `EmbLoss`: the sum of the tensors' L2 (Frobenius) norms, divided by the batch size.

    Args:
        tensors: batch embeddings, each [B, d]; B is read from the last one, as MMRec does.

    Returns:
        Scalar tensor.

    Note the norms are not squared: this is MMRec's definition (and so what its reg_weight grids were
    tuned against), not the 0.5·||x||² of weight decay.
    """
    if not tensors:
        raise ValueError("l2_reg needs at least one tensor")
    total = sum(torch.linalg.vector_norm(t) for t in tensors)
    return total / tensors[-1].shape[0]
