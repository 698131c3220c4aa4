"""Stage-1 overheads, measured side by side in one run on the same data (Amazon Baby by default):

1. epoch time of the training loop under Ray Train + DeepSpeed with one worker, against a plain PyTorch
   loop (same model, same triples, same batch, torch Adam): target ratio <= 1.2;
2. our evaluation (full ranking, train items masked, all metrics, valid + test) against the floor of a
   bare batched matmul + top-k over the same users: target ratio <= 1.5; and, side by side, the same
   metrics from `evaluate` run once per split (each user ranked twice, as before `evaluate_splits`).

    .venv/bin/python benchmarks/stage1.py [--models bpr lightgcn] [--epochs 3] [--data ../shared/data/amazon-baby]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from ptmrec.config import load_config
from ptmrec.data.prepare import prepare
from ptmrec.data.stream import read_interactions
from ptmrec.evaluation import csr_from_pairs, evaluate
from ptmrec.runtime import ray_train
from ptmrec.runtime.ds_engine import build_ds_config, initialize_engine, load_ds_config
from ptmrec.stages.common import (build_recommender_from_config, epoch_triples, eval_batch_users,
                                  evaluate_distributed)
from ptmrec.stages.recommendation import train_epoch
from ptmrec.storage import Storage


def plain_epochs(cfg, inter, epochs: int) -> list[float]:
    """The floor: the same epochs in a bare PyTorch loop in this process."""
    torch.manual_seed(cfg.run.seed)
    model = build_recommender_from_config(cfg, inter, None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.stage1.lr)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.pre_epoch()
        model.train()
        users, pos, neg = epoch_triples(inter, epoch, cfg.run.seed)
        b = cfg.stage1.batch_size
        for lo in range(0, len(users), b):
            loss, _ = model.loss(*(torch.from_numpy(a[lo:lo + b]) for a in (users, pos, neg)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def deepspeed_worker(config: dict) -> None:
    """One Ray Train worker running the stage-1 training epochs (no evaluation), timing each."""
    cfg = config["cfg"]
    torch.manual_seed(cfg.run.seed)
    inter = read_interactions(Storage(cfg.storage), cfg.data.uri)
    model = build_recommender_from_config(cfg, inter, None)
    engine = initialize_engine(model, [{"params": [p for p in model.parameters() if p.requires_grad]}],
                               config["ds_config"])
    torch.set_num_threads(config["threads"])  # the same thread count as the plain loop
    times = []
    for epoch in range(config["epochs"]):
        t0 = time.perf_counter()
        train_epoch(engine, model, inter, epoch, cfg.run.seed, config["ds_config"]["train_micro_batch_size_per_gpu"], 0, 1)
        times.append(time.perf_counter() - t0)
        ray_train.report({"epoch_s": times[-1]})
    with open(config["times_file"], "w") as f:  # same machine: the driver reads it after fit()
        json.dump(times, f)
    del engine
    ray_train.finish_distributed()


def ray_deepspeed_epochs(cfg, epochs: int) -> list[float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=cfg.stage1.batch_size, num_workers=1,
                         lr=cfg.stage1.lr, zero_stage=cfg.stage1.zero_stage)
    with tempfile.TemporaryDirectory() as tmp:
        times_file = os.path.join(tmp, "epoch_times.json")
        TorchTrainer(deepspeed_worker,
                     train_loop_config={"cfg": cfg, "ds_config": ds, "epochs": epochs, "times_file": times_file,
                                            "threads": torch.get_num_threads()},
                     scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(storage_path=tmp, name="bench")).fit()
        with open(times_file) as f:
            return json.load(f)


def eval_floor(model, inter, k: int, batch_users: int) -> None:
    """Matmul + top-k once for every user with a valid or a test item, nothing else: what any evaluation
    must at least do (both splits mask the same training items, so one ranking per user serves both)."""
    user_repr, item_repr = model()
    users = torch.tensor(sorted(set(inter.valid) | set(inter.test)))
    for lo in range(0, len(users), batch_users):
        torch.topk(user_repr[users[lo:lo + batch_users]] @ item_repr.T, k, dim=1)


def eval_per_split(model, inter, ev) -> None:
    """The library's one-split `evaluate` on valid, then on test: every user ranked once per split."""
    user_repr, item_repr = model()
    mask = csr_from_pairs(inter.train_users, inter.train_items, inter.num_users)
    for truth in (inter.valid, inter.test):
        evaluate(lambda u: user_repr[u] @ item_repr.T, truth, mask, ks=ev.ks,
                 batch_users=eval_batch_users(ev, inter.num_items))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/amazon-baby.yaml")
    parser.add_argument("--models", nargs="+", default=["bpr", "lightgcn"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on both sides (inside Ray workers 2 threads on 2 busy cores "
                             "oversubscribe badly; 1 is the fair, stable comparison)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(args.config, [f"data.uri={tmp}/data", "stage1.num_workers=1"])
        prepare(base, progress=False)
        inter = read_interactions(Storage(), base.data.uri)
        ray_train.connect(base)
        print(f"data: {args.config} ({inter.num_users} users, {inter.num_items} items, "
              f"{len(inter.train_users)} training pairs), batch {base.stage1.batch_size}, {args.epochs} epochs, "
              f"median epoch; torch threads {torch.get_num_threads()}")
        print(f"{'model':<10}{'plain s/epoch':>15}{'Ray+DS s/epoch':>16}{'ratio':>8}{'floor eval s':>14}"
              f"{'our eval s':>12}{'ratio':>8}{'per split s':>13}{'×ours':>8}")
        for name in args.models:
            cfg = load_config(args.config, [f"data.uri={tmp}/data", "stage1.num_workers=1",
                                            f"recommender.name={name}"])
            plain = statistics.median(plain_epochs(cfg, inter, args.epochs))
            ds = statistics.median(ray_deepspeed_epochs(cfg, args.epochs))
            model = build_recommender_from_config(cfg, inter, None).eval()
            k = max(cfg.eval.ks)
            with torch.no_grad():
                floor = best_of(lambda: eval_floor(model, inter, k, cfg.eval.batch_users), args.repeats)
                per_split = best_of(lambda: eval_per_split(model, inter, cfg.eval), args.repeats)
            ours = best_of(lambda: evaluate_distributed(model, inter, cfg.eval, 0, 1), args.repeats)
            print(f"{name:<10}{plain:>15.3f}{ds:>16.3f}{ds / plain:>8.2f}{floor:>14.3f}{ours:>12.3f}{ours / floor:>8.2f}"
                  f"{per_split:>13.3f}{per_split / ours:>8.2f}", flush=True)
        print("targets: training ratio <= 1.20, evaluation ratio <= 1.50")


if __name__ == "__main__":
    main()
