"""Graph recommenders' stage-1 epoch: the propagation and optimizer the product uses against the ones it
used before, side by side in one run on Amazon Clothing's interactions (FREEDOM's stage 1 took 2 h a seed here).

Each side runs whole epochs of the job's own `train_epoch` (edge pruning, DeepSpeed engine, BPR) on a fresh
copy of one model:

  before   graphs as sparse COO tensors, autograd through `torch.sparse.mm` (its backward transposes the
           graph on every call); DeepSpeed's torch Adam in its default (per-tensor) form;
  csr      `Graph` (CSR product, transpose built once), the same Adam;
  now      `Graph` and `fused: true` Adam, as `ds_config.json` sets it.

Then each part alone: one forward + backward of the model's propagation, and one optimizer step over the
model's parameters (FREEDOM trains its feature table: 23,033 × 384 floats at every step). Ratios are
before / now; the last line is `graph epoch speedup: X.XX` (FREEDOM). Item features are random, of the
bundled text tower's width: timing does not depend on their values.

    .venv/bin/python benchmarks/graphs.py [--models freedom lightgcn] [--epochs 2] [--data data/amazon-clothing]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root

from benchmarks.floor import best_rates, single_process_group  # noqa: E402
from ptmrec.config import load_config  # noqa: E402
from ptmrec.data.stream import read_interactions  # noqa: E402
from ptmrec.recommenders.graphs import Graph  # noqa: E402
from ptmrec.runtime.ds_engine import build_ds_config, initialize_engine, load_ds_config  # noqa: E402
from ptmrec.stages.common import build_recommender_from_config  # noqa: E402
from ptmrec.stages.recommendation import train_epoch  # noqa: E402
from ptmrec.storage import Storage  # noqa: E402

CPU = torch.device("cpu")


class CooGraph(nn.Module):
    """The propagation before `Graph`: a sparse COO buffer, autograd through torch.sparse.mm."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.register_buffer("adj", graph.matrix().to_sparse_coo().coalesce(), persistent=False)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.adj, dense.float())


def as_before(model: nn.Module) -> nn.Module:
    """`model` with every graph in COO form, edge pruning's new graph included."""
    for name, child in list(model.named_children()):
        if isinstance(child, Graph):
            setattr(model, name, CooGraph(child))
    if hasattr(model, "masked_adj"):
        pre_epoch = model.pre_epoch

        def pruned_as_before() -> None:
            pre_epoch()
            if isinstance(model.masked_adj, Graph):
                model.masked_adj = CooGraph(model.masked_adj)

        model.pre_epoch = pruned_as_before
    return model


def engine_for(cfg, model, fused: bool):
    base = load_ds_config(cfg.run.ds_config)
    base["optimizer"]["params"]["fused"] = fused
    ds = build_ds_config(base, batch_size=cfg.stage1.batch_size, num_workers=1, lr=cfg.stage1.lr, zero_stage=0)
    return initialize_engine(model, [{"params": [p for p in model.parameters() if p.requires_grad]}], ds, device=CPU)


def compare(name: str, data: str, threads: int, epochs: int) -> float:
    cfg = load_config("configs/amazon-clothing.yaml", [f"recommender.name={name}", "recommender.reg_weight=null",
                                                       f"data.uri=file://./{data}"])
    inter = read_interactions(Storage(), cfg.data.uri)
    features = {"text": torch.randn(inter.num_items, 384, generator=torch.Generator().manual_seed(0))}
    torch.manual_seed(cfg.run.seed)
    fresh = build_recommender_from_config(cfg, inter, features)
    sides = {"before": (as_before(copy.deepcopy(fresh)), False), "csr": (copy.deepcopy(fresh), False),
             "now": (copy.deepcopy(fresh), True)}
    engines = {side: engine_for(cfg, model, fused) for side, (model, fused) in sides.items()}
    print(f"{name}: {inter.num_users:,} users, {inter.num_items:,} items, {len(inter.train_users):,} training pairs, "
          f"{sum(p.numel() for p in fresh.parameters()):,} parameters, {threads} threads")
    epoch_s = dict.fromkeys(sides, float("inf"))
    for epoch in range(epochs):  # the sides in turn, each epoch: machine noise hits all alike; the best epoch
        for side, (model, _) in sides.items():
            t0 = time.perf_counter()
            train_epoch(engines[side], model, inter, epoch=epoch, seed=cfg.run.seed, micro=cfg.stage1.batch_size,
                        rank=0, world_size=1)
            epoch_s[side] = min(epoch_s[side], time.perf_counter() - t0)
    print(f"  epoch s (best of {epochs}): " + ", ".join(f"{side} {s:.1f}" for side, s in epoch_s.items()))
    propagate = {side: (lambda m=model: m._propagate(m.masked_adj) if hasattr(m, "masked_adj") else m())
                 for side, (model, _) in sides.items() if side != "now"}
    parts = best_rates({side: (lambda f=f: sum(x.sum() for x in f()).backward()) for side, f in propagate.items()},
                       items=1, repeats=3, device=CPU)
    for side in ("csr", "now"):  # the engine clears gradients after its step: give every parameter one again
        for p in sides[side][0].parameters():
            p.grad = torch.randn_like(p)
    steps = best_rates({side: engines[side].optimizer.step for side in ("csr", "now")}, items=1, repeats=3, device=CPU)
    print(f"  propagation fwd+bwd ms: COO {1e3 / parts['before']:.0f}, CSR {1e3 / parts['csr']:.0f} "
          f"({parts['csr'] / parts['before']:.2f}x faster)")
    print(f"  optimizer step ms: Adam {1e3 / steps['csr']:.0f}, fused Adam {1e3 / steps['now']:.0f} "
          f"({steps['now'] / steps['csr']:.2f}x faster)")
    speedup = epoch_s["before"] / epoch_s["now"]
    print(f"  epoch: before / csr {epoch_s['before'] / epoch_s['csr']:.2f}, before / now {speedup:.2f}")
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["freedom", "lightgcn"], choices=["freedom", "lightgcn"])
    parser.add_argument("--data", default="data/amazon-clothing",
                        help="a prepared data set (`ptmrec prepare --config configs/amazon-clothing.yaml`)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per side, interleaved; the best one counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    single_process_group()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    speedups = {name: compare(name, args.data, args.threads, args.epochs) for name in args.models}
    print(f"graph epoch speedup: {speedups.get('freedom', next(iter(speedups.values()))):.2f}")


if __name__ == "__main__":
    main()
