"""DeepSpeed glue: `ds_config.json` + the run config → the config dict every worker initializes with.

`ds_config.json` holds DeepSpeed's own settings (optimizer type, clipping, precision). What depends on
the run is filled in here, so that the two never disagree: the learning rate, the ZeRO stage and the
batch sizes, derived as train_batch_size = micro_batch_size × num_workers × gradient_accumulation_steps.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

DS_CONFIG_KEYS_WE_SET = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


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
    return cfg


def derive_batch_sizes(batch_size: int, num_workers: int, gradient_accumulation_steps: int = 1) -> int:
    """The per-worker micro batch size; the global batch must split evenly."""
    per_step = num_workers * gradient_accumulation_steps
    if batch_size % per_step:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {num_workers} workers × "
                         f"{gradient_accumulation_steps} accumulation steps")
    return batch_size // per_step


def build_ds_config(base: dict, *, batch_size: int, num_workers: int, lr: float, zero_stage: int,
                    gradient_accumulation_steps: int = 1) -> dict:
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
    cfg["optimizer"].setdefault("params", {})["lr"] = lr
    cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    return cfg


def initialize_engine(model, param_groups: list, ds_config: dict, device=None):
    """The DeepSpeed engine of one stage worker: `model` moved to `device` first (DeepSpeed would move it
    to its accelerator's current device anyway; doing it here makes the device explicit on every path),
    parameter groups without trainable tensors dropped. Every stage and benchmark builds engines here."""
    import deepspeed

    if device is not None:
        model.to(device)
    groups = [g for g in param_groups if g["params"]]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    return engine
