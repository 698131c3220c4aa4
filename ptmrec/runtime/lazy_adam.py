"""Lazy Adam: Adam for models whose embedding tables get sparse gradients (`stage1.optimizer: lazy_adam`).

Dense Adam moves every row of a table at every step, the rows the batch never touched included (their
moments are still decaying), so one step costs the whole catalogue and an epoch grows with items × steps.
Here a sparse gradient updates only the rows it holds, and their moments; the rest wait for a batch that
touches them (TensorFlow Addons' LazyAdam, PyTorch's SparseAdam). Dense gradients get Adam exactly, so
the recommender's other weights (VBPR's projection) train as before.
"""

from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LazyAdam: lr {lr}, betas {betas}, eps {eps}: expected lr, eps >= 0 and betas in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                root_correction = math.sqrt(1 - beta2 ** state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()  # one entry per row: rows hit twice in a batch sum first
                    rows, g = grad.indices()[0], grad.values()
                    m_rows = m[rows].mul_(beta1).add_(g, alpha=1 - beta1)
                    v_rows = v[rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    m[rows], v[rows] = m_rows, v_rows
                    p[rows] = p[rows].addcdiv_(m_rows, v_rows.sqrt().div_(root_correction).add_(group["eps"]),
                                               value=-step_size)
                else:
                    m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    p.addcdiv_(m, v.sqrt().div_(root_correction).add_(group["eps"]), value=-step_size)
        return loss
