"""Training losses shared by the recommenders.

Stage 1: BPR and MMRec's embedding regulariser. Stage 2 adds the in-batch knowledge-transfer (KT) terms:
total = BPR + λ·Σ_modality KT_modality.
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


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float,
            standardize: bool = False) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher/τ) ‖ softmax(student/τ)).

    Args:
        teacher_logits, student_logits: [R, n], one distribution over n candidates per row.
        temperature: τ > 0.
        standardize: z-score each row of both sides first, so that τ means the same sharpness whatever the
            scale of the teacher's and the student's scores (which differ by model and by modality).

    Returns:
        Scalar tensor; 0 exactly when both rows give the same distribution. The teacher side is detached:
        the frozen stage-1 model is a target, never trained through this loss.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher {tuple(teacher_logits.shape)} and student {tuple(student_logits.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    teacher, student = teacher_logits.detach().float(), student_logits.float()
    if standardize:
        teacher, student = _zscore_rows(teacher), _zscore_rows(student)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def _zscore_rows(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-6)


def user_item_kt(teacher_scores: torch.Tensor, student_scores: dict[str, torch.Tensor],
                 temperature: float, standardize: bool = False) -> dict[str, torch.Tensor]:
    """The paper's in-batch KT: per user, KL between the teacher's and the student's softmax over the batch's
    items; one term per modality.

    Args:
        teacher_scores: [B, n] stage-1 scores of the batch's users against the batch's items.
        student_scores: modality -> [B, n] scores driven by that modality's adapted features.
    Returns:
        modality -> scalar KL.
    """
    return {m: kl_rows(teacher_scores, s, temperature, standardize) for m, s in student_scores.items()}


def item_item_kt(teacher_items: torch.Tensor, student_features: dict[str, torch.Tensor],
                 temperature: float, standardize: bool = False) -> dict[str, torch.Tensor]:
    """The item–item reading of KT: per item, KL between softmax over cosine similarities to the batch's
    other items under the stage-1 ID embeddings (teacher) and under the adapted features (student).

    Args:
        teacher_items: [n, D] stage-1 item representations of the batch's items.
        student_features: modality -> [n, d] adapted features of the same items.
    Returns:
        modality -> scalar KL. The diagonal (an item's similarity to itself) is left out of both sides.
    """
    n = teacher_items.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=teacher_items.device)

    def similarities(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        return (x @ x.T)[off_diagonal].view(n, n - 1)

    teacher = similarities(teacher_items)
    return {m: kl_rows(teacher, similarities(f), temperature, standardize) for m, f in student_features.items()}
