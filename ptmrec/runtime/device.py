"""Where tensors live and in what precision: the device rules every stage follows, in one place.

- Device: a worker of a run with `ray.use_gpu` trains on its CUDA device (Ray Train or a Ray task with
  one GPU assigns it); every other run on the CPU. A GPU run that finds no GPU fails at once, naming
  what it saw, instead of falling back to hours on the CPU.
- Precision: only the encoders run under bf16 autocast, and only on CUDA (`encoder.precision`). The
  recommender, the teacher, the scores and the losses stay in float32: they are small, and BPR/KL on
  nearly converged scores lose their signal in bf16's 8-bit mantissa. On the CPU everything is float32
  (CPU bf16 matmuls are slower than fp32 here and change the results).
- Host → device: batches come from pinned memory (the DataLoader pins them) and are copied with
  `non_blocking=True`, so the copy overlaps the previous step's kernels.
"""

from __future__ import annotations

import contextlib
import os

import torch


def select_device(use_gpu: bool) -> torch.device:
    """This process's device: its (Ray-assigned) CUDA device when the run uses GPUs, else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("ray.use_gpu is true but this worker sees no CUDA device (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use ray.profile: cpu or a GPU node")
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)  # DeepSpeed and NCCL place their buffers on the current device
    return device


def encoder_autocast(device: torch.device, precision: str = "bf16"):
    """The context the encoders run in: bf16 autocast on CUDA when `precision` is bf16, else nothing."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pin(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` in page-locked memory when it is headed for a CUDA device (pinning costs a copy, so
    only where the asynchronous copy it enables pays for it)."""
    return tensor.pin_memory() if device.type == "cuda" and not tensor.is_pinned() else tensor


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings that must mean wall time)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
