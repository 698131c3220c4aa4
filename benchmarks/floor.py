"""What the stage-2 benchmarks measure the job's step against, and how they time it (one copy for
benchmarks/stage2.py, benchmarks/layer_cache.py and benchmarks/gpu/step.py).

The floor is a bare forward + backward + optimizer step of the adapted encoder on a ready batch: no
pairs, no recommender, no engine. Its loss (the squared mean of each modality's features) is arbitrary:
only its cost matters.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from ptmrec.runtime.device import synchronize
from ptmrec.stages.features import encode_batch


def bare_encoder_step(encoder, batch, optimizer: torch.optim.Optimizer, device: torch.device,
                      precision: str) -> None:
    """One fwd + bwd + optimizer step of `encoder` alone on an `ItemBatch` (tokens and/or pixels)."""
    feats = encode_batch(encoder, batch, device, precision)  # the job's own encode (autocast, device copy)
    loss = sum(f.pow(2).mean() for f in feats.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def best_rates(fns: dict[str, Callable[[], None]], items: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Items/s of each pass function: one warm-up pass each (allocator, cuBLAS/cuDNN choices), then
    `repeats` rounds timing each in turn (interleaved, so machine noise hits all alike); the best round."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = max(best[name], items / (time.perf_counter() - t0))
    return best


def step_parser(doc: str, *, items: int, image_size: int) -> argparse.ArgumentParser:
    """The options every stage-2 step benchmark takes (more can be added to the returned parser)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=items, help="items per timed pass (synthetic, image + text)")
    parser.add_argument("--items-per-step", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def single_process_group() -> None:
    """The environment DeepSpeed's engine reads to form a one-process group on this machine."""
    import os

    from ptmrec.runtime.local_s3 import free_port

    os.environ.update(HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
