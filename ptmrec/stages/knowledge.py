"""The knowledge-guided stage (stage 2): adapters in the encoders, tuned with BPR + λ·KT against stage 1.

Driver (`run_knowledge_stage`): needs only the run URI (stage 1's model, teacher and frozen features live
there) and runs `knowledge_worker` on Ray Train workers. Each worker: setup (teacher, student recommender
from stage 1, encoder + adapter) → DeepSpeed engine (adapters at `stage2.lr`, the recommender at its own
lower `recommender_lr`) → per epoch: item-centric steps on resampled item shards (every rank the same
number of steps), re-encode the catalogue with the adapted encoder, evaluate exactly as stage 1,
checkpoint (adapters + recommender only), early-stop on valid → rank 0 saves the best adapters, the
adapted features and metrics.json.

`stage2.mode` selects the paper's comparisons: `ptmrec` (BPR + KT), `no_kt` (BPR only), `joint` (one
stage: adapters + a fresh recommender, BPR only) and `full_finetune` (every encoder weight trains, BPR + KT).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from typing import Optional

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest
from ptmrec.data.stream import items_from_manifest, read_interactions
from ptmrec.recommenders import get_recommender_class
from ptmrec.report import write_report
from ptmrec.encoders.adapters import count_parameters
from ptmrec.runtime import ray_train
from ptmrec.runtime.ds_engine import build_ds_config, load_ds_config
from ptmrec.runtime.tracking import Tracker
from ptmrec.stages.common import (build_recommender_from_config, evaluate_distributed,
                                  load_torch, peak_memory, read_metrics, save_torch, write_metrics)
from ptmrec.stages.features import encode_items, feature_dir, load_features, save_features
from ptmrec.stages.state import TrainState, restore_checkpoint, save_checkpoint
from ptmrec.stages.student import ItemUserIndex, Student
from ptmrec.storage import Storage, join

log = logging.getLogger("ptmrec.stage2")


def stage_dir(mode: str, output: Optional[str] = None) -> str:
    """`stage2/` for the method itself, `stage2-<mode>/` for the comparisons, side by side in one run
    (or the folder `stage2.output` names, e.g. one per sweep trial)."""
    if output:
        return output
    return "stage2" if mode == "ptmrec" else f"stage2-{mode}"


def adapted_kind(stage_folder: str) -> str:
    """The features folder kind (features/<kind>/...) of the adapted features of the stage-2 folder
    `stage_folder` ("stage2", "stage2-no_kt", "trials/<id>")."""
    return "adapted-" + stage_folder.replace("/", "-")


def effective_settings(cfg: Config) -> dict:
    """What the mode means for the adapter, the KT weight and the recommender's start."""
    mode = cfg.stage2.mode
    return {
        "adapter": "full" if mode == "full_finetune" else cfg.stage2.adapter.name,
        "kt_weight": cfg.stage2.kt.weight if mode in ("ptmrec", "full_finetune") else 0.0,
        "from_stage1": mode != "joint",
        # A fresh recommender (joint) trains at stage 1's rate; a warm one at its own lower rate.
        "recommender_lr": cfg.stage1.lr if mode == "joint" else cfg.stage2.recommender_lr,
    }


# ------------------------------------------------------------------------------------------- driver


def run_knowledge_stage(cfg: Config, progress: bool = True, callbacks: Optional[list] = None) -> dict:
    """Run stage 2 in the configured mode; returns its metrics.json."""
    storage = Storage(cfg.storage)
    stage1_uri = join(cfg.run.uri, "stage1")
    if not storage.exists(join(stage1_uri, "metrics.json")):
        raise ValueError(f"{stage1_uri}: no finished stage 1 (metrics.json missing); run `ptmrec stage1` first")
    if cfg.stage2.zero_stage == 3:
        raise ValueError("stage2.zero_stage: 3 is not supported yet (evaluation reads the adapted towers "
                         "outside the engine); use 0, 1 or 2")
    manifest = load_manifest(storage, cfg.data.uri)
    if not get_recommender_class(cfg.recommender.name).uses_features:
        raise ValueError(f"recommender.name: {cfg.recommender.name} is ID-only; the knowledge-guided stage "
                         "tunes item features, so it needs a content model (vbpr, freedom)")
    settings = effective_settings(cfg)
    from ptmrec.encoders.adapters import adapter_options

    adapter_options(cfg.stage2.adapter, settings["adapter"])  # a bad adapter setting fails here, not in a worker
    ray_train.connect(cfg)
    sc = cfg.stage2
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=sc.items_per_step * sc.num_workers,
                                num_workers=sc.num_workers, lr=sc.lr, zero_stage=sc.zero_stage,
                                bf16=cfg.ray.use_gpu)
    steps = max(1, -(-manifest["num_items"] // (sc.items_per_step * sc.num_workers)))
    log.info("stage 2 (%s): adapter %s, λ=%g, τ=%g, %d workers × %d items/step, %d steps/epoch, ZeRO-%d",
             sc.mode, settings["adapter"], settings["kt_weight"], sc.kt.temperature, sc.num_workers,
             sc.items_per_step, steps, sc.zero_stage)
    identity = {"mode": sc.mode, "data": cfg.data.uri, "seed": cfg.run.seed, "encoder": asdict(cfg.encoder),
                "recommender": asdict(cfg.recommender), "adapter": asdict(sc.adapter), "kt": asdict(sc.kt),
                "ds_config": ds_config, "items_per_step": sc.items_per_step, "pairs": sc.pairs_per_step,
                "stage1": read_metrics(storage, stage1_uri)["wall_s"]}
    out = stage_dir(sc.mode, sc.output)
    ray_train.run_trainer(knowledge_worker, cfg, stage=out.replace("/", "-"), num_workers=sc.num_workers,
                          identity=identity, callbacks=callbacks,
                          worker_config={"cfg": cfg, "ds_config": ds_config, "settings": settings, "steps": steps})
    return read_metrics(storage, join(cfg.run.uri, out))


# ------------------------------------------------------------------------------------------- worker


def knowledge_worker(config: dict) -> None:
    """One Ray Train worker of stage 2 (see the module docstring for the shape)."""
    import deepspeed

    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, adapter_state_dict, apply_adapter

    cfg: Config = config["cfg"]
    settings, sc = config["settings"], cfg.stage2
    rank, world_size = ray_train.world()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ray_train.quiet_worker_logs()
    torch.manual_seed(cfg.run.seed)
    start = time.perf_counter()

    # --- setup: data, teacher, student recommender, adapted encoder
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    inter = read_interactions(storage, cfg.data.uri)
    stage1 = load_torch(storage, join(cfg.run.uri, "stage1", "model.pt"))
    teacher = load_torch(storage, join(cfg.run.uri, "stage1", "teacher.pt"))
    frozen = load_features(storage, stage1["features_uri"])
    recommender = build_recommender_from_config(cfg, inter, frozen)
    if settings["from_stage1"]:
        recommender.load_state_dict(stage1["state_dict"])
    encoder = build_encoder(cfg.encoder.name, model=cfg.encoder.model, image_size=cfg.encoder.image_size,
                            max_text_len=cfg.encoder.max_text_len, modalities=manifest["modalities"])
    encoder = apply_adapter(encoder, settings["adapter"], **adapter_options(sc.adapter, settings["adapter"]))
    encoder_trainable, encoder_total = count_parameters(encoder)
    student = Student(encoder, recommender, teacher["user"], teacher["item"], settings["kt_weight"],
                      sc.kt.temperature, sc.kt.variant)
    groups = [{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": sc.lr},
              {"params": [p for p in recommender.parameters() if p.requires_grad], "lr": settings["recommender_lr"]}]
    groups = [g for g in groups if g["params"]]
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=groups, config=config["ds_config"])
    trainable, total = count_parameters(student)

    state, best = TrainState(), None  # best: rank 0's copy of the best epoch's adapters, recommender, features
    with ray_train.latest_checkpoint() as restored:
        if restored is not None:
            state, best = restore_checkpoint(engine, restored, rank, exclude_frozen=True)
            log.info("rank %d: resumed from the checkpoint after epoch %d", rank, state.epoch)

    out = stage_dir(sc.mode, sc.output)
    tracker = Tracker(cfg, out.replace("/", "-"), rank, tags=(sc.mode, settings["adapter"]))

    # --- train: item-centric steps, the same number on every rank
    wants_images = "image" in manifest["modalities"]
    index = ItemUserIndex(inter.train_users, inter.train_items, inter.num_items)
    train_s, items_seen = 0.0, 0
    global_step = state.epoch * config["steps"]
    for epoch in range(state.epoch, sc.epochs):
        rng = np.random.default_rng([cfg.run.seed, epoch, rank])
        stream = items_from_manifest(storage, cfg.data.uri, batch_size=sc.items_per_step, rank=rank,
                                     world_size=world_size, transform=encoder.image_transform if wants_images else None,
                                     resample=True, batches_per_epoch=config["steps"], shuffle_buffer=4 * sc.items_per_step,
                                     seed=cfg.run.seed * 1000 + epoch)
        student.train()
        sums: dict[str, float] = {}
        t0 = t_step = time.perf_counter()
        for batch in stream:
            pairs = index.sample(batch.item.numpy(), sc.pairs_per_step, rng)
            text_inputs = encoder.tokenize(batch.text) if batch.text is not None else None
            loss, parts = engine(batch.item, pairs, text_inputs, batch.image)
            engine.backward(loss)
            engine.step()
            items_seen += len(batch.item)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            global_step += 1
            tracker.log({**{f"step/{k}": float(v) for k, v in parts.items()}, "step/loss": loss.item(),
                         "step/lr_adapter": engine.get_lr()[0],
                         "step/items_per_s": len(batch.item) * world_size / max(time.perf_counter() - t_step, 1e-9)},
                        step=global_step)
            t_step = time.perf_counter()
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        state.epoch = epoch + 1
        losses = {k: v / config["steps"] for k, v in sums.items()}

        # --- evaluate exactly as stage 1, on the catalogue re-encoded by the adapted encoder
        adapted = _encode_catalogue(cfg, encoder, inter.num_items, rank, world_size)
        eval_model = build_recommender_from_config(cfg, inter, adapted)
        eval_model.load_state_dict(recommender.weights_without_features(), strict=False)
        result = evaluate_distributed(eval_model, inter, cfg.eval.ks, cfg.eval.batch_users, rank, world_size)
        improved = state.observe(result, cfg.eval.metric)
        if improved and rank == 0:
            best = {"adapter": adapter_state_dict(encoder), "features": {m: f.clone() for m, f in adapted.items()},
                    "recommender": copy.deepcopy(recommender.weights_without_features())}
        record = {"epoch": state.epoch, "epoch_s": round(epoch_s, 3), **{f"loss/{k}": v for k, v in losses.items()},
                  **{f"valid/{k}": v for k, v in result["valid"].items()},
                  **{f"test/{k}": v for k, v in result["test"].items()}}
        state.history.append(record)
        tracker.log({**record, "epoch": state.epoch}, step=global_step)
        if rank == 0:
            log.info("epoch %d: loss %s %.1f s (%.1f items/s) | valid %s %.4f | test %s %.4f%s", state.epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in losses.items()), epoch_s,
                     config["steps"] * sc.items_per_step * world_size / max(epoch_s, 1e-9), cfg.eval.metric, result["valid"][cfg.eval.metric],
                     cfg.eval.metric, result["test"][cfg.eval.metric], " *best*" if improved else "")
        with ray_train.checkpoint_dir() as ckpt:
            # Checkpoints hold what trains (adapters, recommender, optimizer state), not the frozen backbone.
            save_checkpoint(engine, state, ckpt, rank, best, exclude_frozen=True)
            ray_train.report(record, checkpoint_dir=ckpt)
        if state.bad_evals >= sc.patience:
            break

    # --- save (rank 0): the best epoch's adapters, recommender and adapted features
    if rank == 0:
        _save_outputs(cfg, storage, manifest, settings, state, best,
                      params={"trainable_params": trainable, "total_params": total,
                              "encoder_trainable_params": encoder_trainable, "encoder_total_params": encoder_total},
                      wall_s=time.perf_counter() - start, items_per_s=items_seen * world_size / max(train_s, 1e-9))
        # The report compares this stage with stage 1 (and any other modes already run).
        write_report(storage, cfg.run.uri, cfg.eval.ks, cfg.eval.metric)
        report_png = storage.read_bytes(join(cfg.run.uri, "report.png"))
        tracker.finish({"best_epoch": state.best_epoch, **{f"best/{split}/{k}": v for split, m in state.best.items()
                                                            for k, v in m.items()}}, table=state.best, image_png=report_png)
    del engine
    ray_train.finish_distributed()


def _encode_catalogue(cfg: Config, encoder, num_items: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Every item through the adapted encoder, each rank its share of the shards, gathered on all ranks."""
    was_training = encoder.training
    ids, feats = encode_items(cfg, rank, world_size, encoder=encoder, progress=False)
    encoder.train(was_training)
    parts = [(ids, feats)]
    if world_size > 1:
        import torch.distributed as dist

        parts = [None] * world_size
        dist.all_gather_object(parts, (ids, feats))
    out: dict[str, torch.Tensor] = {}
    for part_ids, part_feats in parts:
        for m, array in part_feats.items():
            out.setdefault(m, torch.zeros(num_items, array.shape[1]))[torch.from_numpy(part_ids)] = torch.from_numpy(array)
    return out


def _save_outputs(cfg: Config, storage: Storage, manifest: dict, settings: dict, state: TrainState,
                  best: Optional[dict], params: dict, wall_s: float, items_per_s: float) -> None:
    name = stage_dir(cfg.stage2.mode, cfg.stage2.output)
    out = join(cfg.run.uri, name)
    if best is not None:
        save_torch(storage, join(out, "adapter.pt"), {"adapter": settings["adapter"],
                                                      "options": asdict(cfg.stage2.adapter), "state": best["adapter"]})
        save_torch(storage, join(out, "recommender.pt"), {"recommender": cfg.recommender.name,
                                                          "state_dict": best["recommender"]})
        features_uri = feature_dir(cfg, manifest, kind=adapted_kind(name))
        save_features(storage, features_uri, {m: f.numpy() for m, f in best["features"].items()},
                      {"encoder": cfg.encoder.name, "adapter": settings["adapter"], "epoch": state.best_epoch})
    peak_mb, memory_kind = peak_memory()
    write_metrics(storage, out, {
        "stage": "stage2", "mode": cfg.stage2.mode, "model": cfg.recommender.name, "adapter": settings["adapter"],
        "dataset": manifest["dataset"], "valid": state.best.get("valid", {}), "test": state.best.get("test", {}),
        "best_epoch": state.best_epoch, **params,
        "encoder_trainable_share": params["encoder_trainable_params"] / max(params["encoder_total_params"], 1),
        "kt_weight": settings["kt_weight"], "temperature": cfg.stage2.kt.temperature,
        "wall_s": round(wall_s, 2), "items_per_s": round(items_per_s, 1), "peak_memory_mb": round(peak_mb, 1),
        "memory_kind": memory_kind, "seed": cfg.run.seed,
        "epochs_run": state.epoch, "num_workers": cfg.stage2.num_workers, "zero_stage": cfg.stage2.zero_stage,
        "resumed_from_epoch": state.resumed_from_epoch, "history": state.history})
    log.info("stage 2 (%s) done: best valid %s %.4f at epoch %d → %s", cfg.stage2.mode, cfg.eval.metric,
             state.best_score, state.best_epoch, out)
