"""The recommendation stage (stage 1): a base recommender on frozen item features, trained with BPR.

Driver side (`run_recommendation_stage`): extract the frozen features once (Ray tasks), then run
`recommendation_worker` on Ray Train workers. Each worker: setup → DeepSpeed engine → per epoch train on
its share of the BPR triples, evaluate (every `eval_every` epochs), checkpoint, early-stop on valid
Recall@20 → rank 0 saves the best model as the teacher for stage 2.

Outputs in `<run uri>/stage1/`: `model.pt` (the best model's weights and how to rebuild it), `teacher.pt`
(its user and item representations: scores are their dot products), `metrics.json`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Optional

import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest
from ptmrec.data.stream import read_interactions
from ptmrec.recommenders import get_recommender_class
from ptmrec.encoders.adapters import count_parameters
from ptmrec.runtime import ray_train
from ptmrec.runtime.device import pin, select_device
from ptmrec.runtime.ds_engine import build_ds_config, initialize_engine, load_ds_config
from ptmrec.runtime.tracking import Tracker
from ptmrec.stages.common import (build_recommender_from_config, check_lazy_adam, cpu_state, epoch_triples,
                                  eval_protocol, evaluate_distributed, peak_memory, read_metrics, result_metrics,
                                  save_torch, score_line, selection_fields, selection_split,
                                  settings_fingerprint, write_metrics)
from ptmrec.stages.features import extract_frozen_features, load_features
from ptmrec.stages.state import TrainState, restore_checkpoint, save_checkpoint
from ptmrec.storage import Storage
from ptmrec.uris import join

log = logging.getLogger("ptmrec.stage1")

STAGE = "stage1"


# ------------------------------------------------------------------------------------------- driver


def run_recommendation_stage(cfg: Config, progress: bool = True) -> dict:
    """Run stage 1 on the Ray cluster; returns the stage's metrics.json."""
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    check_lazy_adam(cfg, STAGE)
    ray_train.connect(cfg)
    cls = get_recommender_class(cfg.recommender.name)
    features_uri = None
    if cls.uses_features:
        features_uri = extract_frozen_features(cfg, num_workers=cfg.stage1.num_workers,
                                               cpus_per_worker=cfg.ray.cpus_per_worker, progress=progress)
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=cfg.stage1.batch_size,
                                num_workers=cfg.stage1.num_workers, lr=cfg.stage1.lr,
                                zero_stage=cfg.stage1.zero_stage, lazy_adam=cfg.stage1.optimizer == "lazy_adam")
    log.info("stage 1: %s on %s (%d users, %d items), %d workers, ZeRO-%d, global batch %d",
             cfg.recommender.name, manifest["dataset"], manifest["num_users"], manifest["num_items"],
             cfg.stage1.num_workers, cfg.stage1.zero_stage, ds_config["train_batch_size"])
    # Epochs, patience and eval_every are left out: a resumed run may be given a longer budget.
    identity = {"data": cfg.data.uri, "seed": cfg.run.seed, "recommender": asdict(cfg.recommender),
                "features": features_uri, "ds_config": ds_config, "batch_size": cfg.stage1.batch_size}
    ray_train.run_trainer(recommendation_worker, cfg, stage=STAGE, num_workers=cfg.stage1.num_workers,
                          worker_config={"cfg": cfg, "ds_config": ds_config, "features_uri": features_uri},
                          identity=identity)
    return read_metrics(storage, join(cfg.run.uri, STAGE))


# ------------------------------------------------------------------------------------------- worker


def recommendation_worker(config: dict) -> None:
    """One Ray Train worker of stage 1 (see the module docstring for the shape)."""
    cfg: Config = config["cfg"]
    rank, world_size, nodes = ray_train.start_worker(cfg)
    start = time.perf_counter()

    # --- setup
    device = select_device(cfg.ray.use_gpu)
    storage = Storage(cfg.storage)
    inter = read_interactions(storage, cfg.data.uri)
    features = load_features(storage, config["features_uri"]) if config["features_uri"] else None
    model = build_recommender_from_config(cfg, inter, features)
    if cfg.stage1.optimizer == "lazy_adam":
        model.use_sparse_gradients()
    trainable, total = count_parameters(model)
    engine = initialize_engine(model, [{"params": [p for p in model.parameters() if p.requires_grad]}],
                               config["ds_config"], device)
    state, best_weights = TrainState(), None  # best_weights: rank 0's copy of the best epoch's model
    with ray_train.latest_checkpoint(config) as restored:
        if restored is not None:
            state, best_weights = restore_checkpoint(engine, restored, rank)
            log.info("rank %d: resumed from the checkpoint after epoch %d", rank, state.epoch)

    tracker = Tracker(cfg, STAGE, rank)

    # --- train, evaluate, checkpoint, early-stop
    micro = config["ds_config"]["train_micro_batch_size_per_gpu"]
    sc = cfg.stage1
    train_s, triples_seen, run_start, first_epoch = 0.0, 0, time.perf_counter(), state.epoch
    chooser = selection_split(cfg.eval, STAGE)  # the split whose metric picks the epoch
    for epoch in range(state.epoch, sc.epochs):
        t0 = time.perf_counter()
        parts = train_epoch(engine, model, inter, epoch, cfg.run.seed, micro, rank, world_size, device)
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        triples_seen += len(inter.train_users)
        state.epoch = epoch + 1
        record = {"epoch": state.epoch, "epoch_s": round(epoch_s, 3), **{f"loss/{k}": v for k, v in parts.items()},
                  "lr": engine.get_lr()[0], "triples_per_s": len(inter.train_users) / max(epoch_s, 1e-9)}
        last = state.epoch == sc.epochs
        if state.epoch % sc.eval_every and not last:
            tracker.log(record, step=state.epoch)
            ray_train.report(record)
            continue
        t0 = time.perf_counter()
        result = evaluate_distributed(model, inter, cfg.eval, rank, world_size)
        record["eval_s"] = round(time.perf_counter() - t0, 3)
        improved = state.observe(result, cfg.eval.metric, chooser)
        if improved and rank == 0:
            best_weights = cpu_state(model.state_dict())
        record.update(result_metrics(result))
        state.history.append(record)
        tracker.log(record, step=state.epoch)
        stop = state.bad_evals >= sc.patience
        if rank == 0:
            per_epoch = (time.perf_counter() - run_start) / (state.epoch - first_epoch)
            log.info("epoch %s: loss %.4f (%s) %.1f s | %s%s",
                     state.progress(sc.epochs, sc.patience, per_epoch, sc.eval_every),
                     sum(parts.values()), ", ".join(f"{k} {v:.4f}" for k, v in parts.items()), epoch_s,
                     score_line(cfg.eval, result, chooser),
                     " *best*" if improved else f" (best {state.best_score:.4f} at epoch {state.best_epoch})")
        with ray_train.checkpoint_dir() as ckpt:
            save_checkpoint(engine, state, ckpt, rank, best_weights)
            ray_train.report(record, checkpoint_dir=ckpt)
        if stop:
            if rank == 0:
                log.info("early stop: no better %s %s for %d evaluations", chooser, cfg.eval.metric, sc.patience)
            break

    # --- save (rank 0): the best model is the teacher
    if rank == 0:
        _save_outputs(cfg, storage, model, best_weights, inter, state, config, trainable, total,
                      wall_s=time.perf_counter() - start, items_per_s=triples_seen / max(train_s, 1e-9), nodes=nodes)
    out = join(cfg.run.uri, STAGE)
    tracker.finish(state.summary(), table=state.best, artifact=("model", [join(out, "model.pt"), join(out, "teacher.pt")]))
    del engine
    ray_train.finish_distributed()


def train_epoch(engine, model, inter, epoch: int, seed: int, micro: int, rank: int, world_size: int,
                device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """One pass over every training pair: global batches of micro × world triples, this rank's slice.

    The epoch's triples go to the device once (three int64 vectors); the loss terms are summed on the
    device and read once at the end, so no step waits for the host.
    """
    model.pre_epoch()
    model.train()
    users, pos, neg = (pin(torch.from_numpy(a), device).to(device, non_blocking=True)
                       for a in epoch_triples(inter, epoch, seed))
    batch = micro * world_size
    n_steps = len(users) // batch + (1 if len(users) % batch >= world_size else 0)
    sums: dict[str, torch.Tensor] = {}
    for step in range(n_steps):
        lo = step * batch
        size = min(batch, len(users) - lo)
        # Split the (possibly short, last) global batch evenly so every rank runs every step.
        per = size // world_size
        sl = slice(lo + rank * per, lo + (rank + 1) * per)
        loss, parts = model.loss(users[sl], pos[sl], neg[sl])
        engine.backward(loss)
        engine.step()
        for k, v in parts.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
    return {k: float(v) / max(n_steps, 1) for k, v in sums.items()}


def _save_outputs(cfg: Config, storage: Storage, model, best_weights: Optional[dict], inter, state: TrainState,
                  config: dict, trainable: int, total: int, wall_s: float, items_per_s: float,
                  nodes: list[str]) -> None:
    """Write the best model, its teacher representations and metrics.json."""
    stage_uri = join(cfg.run.uri, STAGE)
    best = best_weights if best_weights is not None else cpu_state(model.state_dict())
    model.load_state_dict(best)
    model.eval()
    with torch.no_grad():
        user_repr, item_repr = model()
    save_torch(storage, join(stage_uri, "model.pt"), {
        "recommender": cfg.recommender.name, "config": asdict(cfg.recommender), "state_dict": best,
        "features_uri": config["features_uri"], "num_users": inter.num_users, "num_items": inter.num_items})
    save_torch(storage, join(stage_uri, "teacher.pt"), {"user": user_repr.detach().cpu(),
                                                         "item": item_repr.detach().cpu()})
    manifest = load_manifest(storage, cfg.data.uri)
    peak_mb, memory_kind = peak_memory()
    write_metrics(storage, stage_uri, {
        "stage": STAGE, "settings": settings_fingerprint(cfg, STAGE), "model": cfg.recommender.name, "adapter": "none", "dataset": manifest["dataset"],
        "valid": state.best.get("valid", {}), "test": state.best.get("test", {}), "best_epoch": state.best_epoch,
        **selection_fields(cfg.eval, STAGE, state.best),
        "trainable_params": trainable, "total_params": total, "wall_s": round(wall_s, 2),
        "items_per_s": round(items_per_s, 1), "peak_memory_mb": round(peak_mb, 1), "memory_kind": memory_kind,
        "seed": cfg.run.seed, "epochs_run": state.epoch, "num_workers": cfg.stage1.num_workers, "worker_nodes": nodes,
        "zero_stage": cfg.stage1.zero_stage, "optimizer": cfg.stage1.optimizer,
        "eval_protocol": eval_protocol(cfg.eval, inter.num_items), "resumed_from_epoch": state.resumed_from_epoch,
        "history": state.history})
    log.info("stage 1 done: best %s %s %.4f at epoch %d, test %s %.4f → %s", selection_split(cfg.eval, STAGE), cfg.eval.metric,
             state.best_score, state.best_epoch, cfg.eval.metric, state.best.get("test", {}).get(cfg.eval.metric, 0),
             stage_uri)
