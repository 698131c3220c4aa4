"""DeepSpeed glue: `ds_config.json` + the run config → the config dict every worker initializes with.

`ds_config.json` holds DeepSpeed's own settings (optimizer type, clipping, precision). What depends on
the run is filled in here, so that the two never disagree: the learning rate, the ZeRO stage and the
batch sizes, derived as train_batch_size = micro_batch_size × num_workers × gradient_accumulation_steps.
"""

from __future__ import annotations

import copy
import json
import math
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

DS_CONFIG_KEYS_WE_SET = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
LAZY_ADAM = "LazyAdam"  # optimizer type of <stage>.optimizer lazy_adam: ours (runtime/lazy_adam.py), not DeepSpeed's


def load_ds_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: DeepSpeed config not found (run.ds_config names it)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    clash = [k for k in DS_CONFIG_KEYS_WE_SET if k in cfg]
    if clash:
        raise ValueError(f"{path}: {clash[0]!r} is derived from the run config (batch_size, num_workers); "
                         "remove it from the DeepSpeed config")
    params = cfg.get("optimizer", {}).get("params", {})
    if params.get("fused") and not params.get("torch_adam"):  # DeepSpeed's own Adams would fail on it in every worker
        raise ValueError(f"{path}: optimizer.params.fused is an option of torch's Adam: set torch_adam: true with it, "
                         "or drop it")
    return cfg


def derive_batch_sizes(batch_size: int, num_workers: int, gradient_accumulation_steps: int = 1) -> int:
    """The per-worker micro batch size; the global batch must split evenly."""
    per_step = num_workers * gradient_accumulation_steps
    if batch_size % per_step:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {num_workers} workers × "
                         f"{gradient_accumulation_steps} accumulation steps")
    return batch_size // per_step


def build_ds_config(base: dict, *, batch_size: int, num_workers: int, lr: float, zero_stage: int,
                    gradient_accumulation_steps: int = 1, lazy_adam: bool = False) -> dict:
    """The full DeepSpeed config for one stage: `base` plus the run's lr, ZeRO stage and batch sizes.

    DeepSpeed's own bf16 mode stays as `base` says (off in ds_config.json): it would cast every parameter,
    the recommender's too. Mixed precision is bf16 autocast around the encoders instead
    (`ptmrec.runtime.device`)."""
    cfg = copy.deepcopy(base)
    micro = derive_batch_sizes(batch_size, num_workers, gradient_accumulation_steps)
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = gradient_accumulation_steps
    cfg["train_batch_size"] = micro * num_workers * gradient_accumulation_steps
    cfg.setdefault("optimizer", {"type": "Adam", "params": {"torch_adam": True}})
    if lazy_adam:  # built by initialize_engine (DeepSpeed does not know it), with the base's betas and eps
        params = cfg["optimizer"].get("params", {})
        if params.get("weight_decay"):
            raise ValueError("optimizer lazy_adam takes no weight decay (the DeepSpeed config sets "
                             f"{params['weight_decay']}): the model's reg_weight regularises the batch's rows")
        cfg["optimizer"] = {"type": LAZY_ADAM, "params": {k: params[k] for k in ("betas", "eps") if k in params}}
    cfg["optimizer"].setdefault("params", {})["lr"] = lr
    cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    return cfg


@dataclass(frozen=True)
class WarmupCosine:
    """The learning-rate multiplier of optimizer step `step` (0-based): a linear rise over `warmup` steps, then
    1 (`cosine` False) or a cosine decay that reaches 0 after `total` steps. A dataclass, not a closure, so
    that the scheduler's state saves with DeepSpeed's checkpoints and a resumed run continues the curve."""

    warmup: int
    total: int
    cosine: bool

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.total < 1:
            raise ValueError(f"learning-rate schedule: warmup_steps must be >= 0 and the steps >= 1, got "
                             f"{self.warmup} and {self.total}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def initialize_engine(model, param_groups: list, ds_config: dict, device=None,
                      lr_multiplier: Optional[Callable[[int], float]] = None):
    """The DeepSpeed engine of one stage worker: `model` moved to `device` first (DeepSpeed would move it
    to its accelerator's current device anyway; doing it here makes the device explicit on every path),
    parameter groups without trainable tensors dropped. `lr_multiplier(step)` scales every group's rate
    (the engine steps it after each optimizer step). Every stage and benchmark builds engines here."""
    import deepspeed
    import torch

    if device is not None:
        model.to(device)
    groups = [g for g in param_groups if g["params"]]
    # DeepSpeed calls this with the optimizer it builds
    scheduler = None if lr_multiplier is None else partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lr_multiplier)
    optimizer = None
    if ds_config.get("optimizer", {}).get("type") == LAZY_ADAM:  # ours: DeepSpeed takes it as a client's
        from ptmrec.runtime.lazy_adam import LazyAdam

        optimizer = LazyAdam(groups, **ds_config["optimizer"]["params"])
        ds_config = {k: v for k, v in ds_config.items() if k != "optimizer"}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config,
                                           optimizer=optimizer, lr_scheduler=scheduler)
    return engine
