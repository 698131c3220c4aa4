"""The knowledge-guided stage (stage 2): adapters in the encoders, tuned with BPR + λ·KT against stage 1.

Driver (`run_knowledge_stage`): needs only the run URI (stage 1's model, teacher and frozen features live
there) and runs `knowledge_worker` on Ray Train workers. Each worker: setup (teacher, student recommender
from stage 1, encoder + adapter) → DeepSpeed engine (adapters at `stage2.lr`, the recommender at its own
lower `recommender_lr`) → per epoch: item-centric steps over every item once (`epoch_plan`: every rank the same
number of steps), re-encode the catalogue with the adapted encoder, evaluate exactly as stage 1 (the
starting point too, as epoch 0: the best epoch is chosen among it and the trained ones),
checkpoint (adapters + recommender only), early-stop on valid → rank 0 saves the best adapters, the
adapted features and metrics.json.

`stage2.mode` selects the paper's comparisons: `ptmrec` (BPR + KT), `no_kt` (BPR only), `joint` (one
stage: adapters + a fresh recommender, BPR only) and `full_finetune` (every encoder weight trains, BPR + KT).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Optional

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.epochs import EpochPlan, plan_epoch
from ptmrec.data.shards import load_manifest, shard_counts
from ptmrec.data.stream import ItemBatch, items_from_manifest, make_loader, read_interactions
from ptmrec.recommenders import get_recommender_class
from ptmrec.stages.report import write_report
from ptmrec.encoders.adapters import count_parameters, set_train_mode
from ptmrec.runtime import ray_train
from ptmrec.runtime.device import select_device
from ptmrec.runtime.ds_engine import WarmupCosine, build_ds_config, initialize_engine, load_ds_config
from ptmrec.runtime.tracking import Tracker
from ptmrec.stages.common import (build_configured_encoder, build_recommender_from_config, check_lazy_adam,
                                  cpu_state, eval_protocol, evaluate_distributed, load_torch, peak_memory,
                                  read_metrics, result_metrics, save_torch, score_line, selection_fields,
                                  selection_split, settings_fingerprint, write_metrics)
from ptmrec.stages.features import encode_items, feature_dir, load_features, save_features
from ptmrec.stages.state import TrainState, restore_checkpoint, save_checkpoint
from ptmrec.stages.student import ItemUserIndex, Student
from ptmrec.storage import Storage
from ptmrec.uris import join

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
        # One-stage training gets stage 1's budget and early stopping, or it only measures under-training.
        "epochs": cfg.stage1.epochs if mode == "joint" else cfg.stage2.epochs,
        "patience": cfg.stage1.patience if mode == "joint" else cfg.stage2.patience,
        "eval_every": cfg.stage1.eval_every if mode == "joint" else cfg.stage2.eval_every,
        # and stage 1's epoch: every training interaction once (None: no cap on a chunk's triples). The cap that
        # bounds a KT step would leave a joint epoch a fraction of stage 1's on dense data (ML-100K: a fifth).
        "pairs_per_step": None if mode == "joint" else cfg.stage2.pairs_per_step,
    }


# ------------------------------------------------------------------------------------------- driver


def run_knowledge_stage(cfg: Config, progress: bool = True, callbacks: Optional[list] = None) -> dict:
    """Run stage 2 in the configured mode; returns its metrics.json."""
    storage = Storage(cfg.storage)
    stage1_uri = join(cfg.run.uri, "stage1")
    if not storage.exists(join(stage1_uri, "metrics.json")):
        raise ValueError(f"{stage1_uri}: no finished stage 1 (metrics.json missing); run `ptmrec stage1` first")
    if read_metrics(storage, stage1_uri).get("settings") not in (None, settings_fingerprint(cfg, "stage1")):
        raise ValueError(f"{stage1_uri}: stage 1 finished with other settings than this config's (data, encoder, "
                         "recommender, stage1, eval or seed differ); run `ptmrec stage1` with this config first")
    if cfg.stage2.zero_stage == 3:
        raise ValueError("stage2.zero_stage: 3 is not supported yet (evaluation reads the adapted towers "
                         "outside the engine); use 0, 1 or 2")
    manifest = load_manifest(storage, cfg.data.uri)
    if not get_recommender_class(cfg.recommender.name).uses_features:
        raise ValueError(f"recommender.name: {cfg.recommender.name} is ID-only; the knowledge-guided stage "
                         "tunes item features, so it needs a content model (vbpr, freedom)")
    check_lazy_adam(cfg, "stage2")
    settings = effective_settings(cfg)
    from ptmrec.encoders.adapters import adapter_options

    adapter_options(cfg.stage2.adapter, settings["adapter"])  # a bad adapter setting fails here, not in a worker
    ray_train.connect(cfg)
    sc = cfg.stage2
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=sc.items_per_step * sc.num_workers,
                                num_workers=sc.num_workers, lr=sc.lr, zero_stage=sc.zero_stage,
                                lazy_adam=sc.optimizer == "lazy_adam")
    steps = epoch_plan(cfg, manifest, 0, sc.num_workers).steps  # the same every epoch
    if sc.steps_per_epoch is not None:
        steps = min(steps, sc.steps_per_epoch)
    cache = None
    if sc.layer_cache:
        from ptmrec.stages.layer_cache import ensure_layer_cache

        cache = ensure_layer_cache(cfg, settings["adapter"], sc.num_workers, cfg.ray.cpus_per_worker, progress)
    log.info("stage 2 (%s): adapter %s, λ=%g, τ=%g, %d workers × %d items/step, %d steps/epoch, up to %d epochs "
             "(evaluated every %d), lr %s (warm-up %d steps), ZeRO-%d", sc.mode, settings["adapter"],
             settings["kt_weight"], sc.kt.temperature, sc.num_workers, sc.items_per_step, steps, settings["epochs"],
             settings["eval_every"], sc.lr_schedule, sc.warmup_steps, sc.zero_stage)
    identity = {"mode": sc.mode, "data": cfg.data.uri, "seed": cfg.run.seed, "encoder": asdict(cfg.encoder),
                "recommender": asdict(cfg.recommender), "adapter": asdict(sc.adapter), "kt": asdict(sc.kt),
                "ds_config": ds_config, "items_per_step": sc.items_per_step, "pairs": settings["pairs_per_step"],
                "schedule": [sc.warmup_steps, sc.lr_schedule, settings["epochs"]],
                "stage1": read_metrics(storage, stage1_uri)["wall_s"], "layer_cache": cache and cache.uri}
    out = stage_dir(sc.mode, sc.output)
    ray_train.run_trainer(knowledge_worker, cfg, stage=out.replace("/", "-"), num_workers=sc.num_workers,
                          identity=identity, callbacks=callbacks,
                          worker_config={"cfg": cfg, "ds_config": ds_config, "settings": settings, "steps": steps,
                                         "layer_cache": cache})
    return read_metrics(storage, join(cfg.run.uri, out))


# ------------------------------------------------------------------------------------------- worker


def knowledge_worker(config: dict) -> None:
    """One Ray Train worker of stage 2 (see the module docstring for the shape)."""
    cfg: Config = config["cfg"]
    settings, sc = config["settings"], cfg.stage2
    rank, world_size, nodes = ray_train.start_worker(cfg)
    start = time.perf_counter()

    # --- setup: data, teacher, student recommender, adapted encoder, engine
    device = select_device(cfg.ray.use_gpu)
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    inter = read_interactions(storage, cfg.data.uri)
    student, frozen = load_student(cfg, settings, storage, inter, manifest)
    if sc.optimizer == "lazy_adam":
        student.recommender.use_sparse_gradients()
    encoder_trainable, encoder_total = count_parameters(student.encoder)
    trainable, total = count_parameters(student)
    engine = stage2_engine(student, cfg, settings, config["ds_config"], device, config["steps"])

    state, best = TrainState(), None  # best: rank 0's copy of the best epoch's adapters, recommender, features
    with ray_train.latest_checkpoint(config) as restored:
        if restored is not None:
            state, best = restore_checkpoint(engine, restored, rank, exclude_frozen=True)
            log.info("rank %d: resumed from the checkpoint after epoch %d", rank, state.epoch)

    out = stage_dir(sc.mode, sc.output)
    tracker = Tracker(cfg, out.replace("/", "-"), rank, tags=(sc.mode, settings["adapter"]))

    # --- train, evaluate, checkpoint, early-stop: item-centric steps, the same number on every rank
    index = ItemUserIndex(inter.train_users, inter.train_items, inter.num_items)
    cache = config["layer_cache"]  # a LayerCache: steps and re-encodes read the frozen layers' states from it
    epoch_run = EpochRun(cfg, storage, engine, student, index, rank, world_size, device, tracker, config["steps"],
                         settings["pairs_per_step"], cache)
    if not state.history:
        best = _evaluate_start(cfg, inter, student, frozen, state, rank, world_size, device, cache)
    for epoch in range(state.epoch, settings["epochs"]):
        epoch_s, losses = epoch_run.train(epoch)
        state.epoch = epoch + 1
        record = {"epoch": state.epoch, "epoch_s": round(epoch_s, 3), **{f"loss/{k}": v for k, v in losses.items()}}
        if state.epoch % settings["eval_every"] and state.epoch < settings["epochs"]:
            # No evaluation, so no candidate, checkpoint or report either: a sweep's scheduler compares
            # evaluated epochs only, and a restart redoes at most eval_every - 1 epochs.
            tracker.log(record, step=epoch_run.global_step)
            if rank == 0:
                log.info("epoch %s: loss %s %.1f s (evaluated every %d epochs)", state.progress(
                    settings["epochs"], settings["patience"], epoch_run.seconds_per_epoch, settings["eval_every"]),
                    _loss_line(record), epoch_s, settings["eval_every"])
            continue
        best = _evaluate_epoch(cfg, settings, inter, epoch_run, state, record, best)
        last = state.epoch >= settings["epochs"] or state.bad_evals >= settings["patience"]
        with ray_train.checkpoint_dir() as ckpt:
            # Checkpoints hold what trains (adapters, recommender, optimizer state), not the frozen backbone.
            save_checkpoint(engine, state, ckpt, rank, best, exclude_frozen=True)
            # `last_epoch` tells a sweep's scheduler not to stop this trial now: it is about to save its outputs
            ray_train.report({**record, "last_epoch": last}, checkpoint_dir=ckpt)
        if last:
            break

    # --- save (rank 0): the best epoch's adapters, recommender and adapted features
    if rank == 0:
        if state.best_epoch == 0:
            log.info("no stage-2 epoch beat the starting point on %s %s (%.4f): the outputs are the starting "
                     "point", _chooser(cfg), cfg.eval.metric, state.best_score)
        _save_outputs(cfg, storage, manifest, settings, state, best,
                      params={"trainable_params": trainable, "total_params": total,
                              "encoder_trainable_params": encoder_trainable, "encoder_total_params": encoder_total},
                      wall_s=time.perf_counter() - start, items_per_s=epoch_run.items_per_s, nodes=nodes,
                      layer_cache=cache.summary() if cache is not None else None)
        # The report compares this stage with stage 1 (and any other modes already run).
        write_report(storage, cfg.run.uri, cfg.eval.ks, cfg.eval.metric)
        report_png = storage.read_bytes(join(cfg.run.uri, "report.png"))
        weights = [join(cfg.run.uri, out, name) for name in ("adapter.pt", "recommender.pt")]
        tracker.finish(state.summary(), table=state.best, image_png=report_png,
                       artifact=("adapter", weights) if all(storage.exists(w) for w in weights) else None)
    del engine
    ray_train.finish_distributed()


def _evaluate_epoch(cfg: Config, settings: dict, inter, epoch_run: EpochRun, state: TrainState, record: dict,
                    best: Optional[dict]) -> Optional[dict]:
    """Evaluate the epoch just trained as a candidate, add its metrics to `record` and the history, log it;
    returns the (possibly new) best."""
    run = epoch_run
    best_before, t0 = state.best_epoch, time.perf_counter()
    result, best = _evaluate_candidate(cfg, inter, run.student, state, run.rank, run.world_size, run.device, best,
                                       run.cache)
    record.update({**result_metrics(result), "eval_s": round(time.perf_counter() - t0, 3)})
    state.history.append(record)
    run.tracker.log(record, step=run.global_step)
    if run.rank == 0:
        log.info("epoch %s: loss %s %.1f s (%.1f items/s) | %s%s",
                 state.progress(settings["epochs"], settings["patience"], run.seconds_per_epoch, settings["eval_every"]),
                 _loss_line(record), record["epoch_s"], run.items_per_epoch / max(record["epoch_s"], 1e-9),
                 score_line(cfg.eval, result, _chooser(cfg)), " *best*" if state.best_epoch != best_before else "")
    return best


def _loss_line(record: dict) -> str:
    """The epoch's mean loss terms ("loss/<term>" in `record`) for its log line."""
    return ", ".join(f"{k[len('loss/'):]} {v:.4f}" for k, v in record.items() if k.startswith("loss/"))


def load_student(cfg: Config, settings: dict, storage: Storage, inter,
                 manifest: dict) -> tuple[Student, dict[str, torch.Tensor]]:
    """The student of a run: stage 1's recommender (warm unless `joint`) and teacher, the adapted encoder;
    and stage 1's frozen features."""
    stage1 = load_torch(storage, join(cfg.run.uri, "stage1", "model.pt"))
    teacher = load_torch(storage, join(cfg.run.uri, "stage1", "teacher.pt"))
    frozen = load_features(storage, stage1["features_uri"])
    recommender = build_recommender_from_config(cfg, inter, frozen)
    if settings["from_stage1"]:
        recommender.load_state_dict(stage1["state_dict"])
    encoder = build_configured_encoder(cfg, manifest["modalities"], settings["adapter"])
    return make_student(cfg, settings, encoder, recommender, teacher["user"], teacher["item"]), frozen


def make_student(cfg: Config, settings: dict, encoder, recommender, teacher_user: torch.Tensor,
                 teacher_item: torch.Tensor) -> Student:
    """The one place a `Student` is put together (the stage-2 job and the benchmarks alike)."""
    kt = cfg.stage2.kt
    return Student(encoder, recommender, teacher_user, teacher_item, settings["kt_weight"], kt.temperature,
                   kt.variant, precision=cfg.encoder.precision, kt_standardize=kt.standardize)


def stage2_engine(student: Student, cfg: Config, settings: dict, ds_config: dict, device: torch.device,
                  steps_per_epoch: int = 1):
    """The DeepSpeed engine over the student: adapters at `stage2.lr`, the recommender at its own rate, both
    under `stage2.warmup_steps` and `stage2.lr_schedule` over the mode's epochs × `steps_per_epoch`."""
    groups = [{"params": [p for p in student.encoder.parameters() if p.requires_grad], "lr": cfg.stage2.lr},
              {"params": [p for p in student.recommender.parameters() if p.requires_grad],
               "lr": settings["recommender_lr"]}]
    schedule = WarmupCosine(cfg.stage2.warmup_steps, settings["epochs"] * steps_per_epoch,
                            cfg.stage2.lr_schedule == "cosine")
    return initialize_engine(student, groups, ds_config, device, lr_multiplier=schedule)


def train_step(engine, batch: ItemBatch, index: ItemUserIndex, pairs_per_step: Optional[int], rng: np.random.Generator,
               device: torch.device, kt_users: int = 0) -> dict[str, torch.Tensor]:
    """One stage-2 step on a chunk of items: its BPR triples (and `kt_users` extra KT rows) drawn on the host,
    the batch copied to the device without blocking, forward (the loss), backward, optimizer step. Returns
    the detached loss terms, still on the device: reading them waits for the step, so callers do it only
    now and then."""
    pairs = index.sample(batch.item.numpy(), pairs_per_step, rng, kt_users)
    if pairs is not None:
        pairs = pairs.to(device)
    batch = batch.to(device)
    loss, parts = engine(batch.item, pairs, batch.tokens, batch.image, batch.states)
    engine.backward(loss)
    engine.step()
    return parts


class EpochRun:
    """Stage 2's training epochs on one worker: the item stream (decoded and tokenised in loader
    processes), the steps, and per-step logs every `stage2.log_every` steps."""

    def __init__(self, cfg: Config, storage: Storage, engine, student: Student, index: ItemUserIndex, rank: int,
                 world_size: int, device: torch.device, tracker: Tracker, steps: int,
                 pairs_per_step: Optional[int], cache=None):
        self.cfg, self.storage, self.engine, self.student, self.index = cfg, storage, engine, student, index
        self.pairs_per_step, self.cache = pairs_per_step, cache
        self.rank, self.world_size, self.device, self.tracker, self.steps = rank, world_size, device, tracker, steps
        self.items_per_epoch = steps * cfg.stage2.items_per_step * world_size
        self.global_step, self.train_s, self.items_seen = 0, 0.0, 0
        self.started, self.epochs_run = 0.0, 0  # from this run's first epoch (a resumed run: after the restart)

    @property
    def items_per_s(self) -> float:
        return self.items_seen * self.world_size / max(self.train_s, 1e-9)

    @property
    def seconds_per_epoch(self) -> float:
        """Wall time per epoch so far, evaluations included (for the log's estimate of what is left)."""
        return (time.perf_counter() - self.started) / max(self.epochs_run, 1)

    def train(self, epoch: int) -> tuple[float, dict[str, float]]:
        """One epoch of steps: (seconds, mean loss terms)."""
        cfg, sc = self.cfg, self.cfg.stage2
        self.global_step = epoch * self.steps
        rng = np.random.default_rng([cfg.run.seed, epoch, self.rank])
        self.student.train()
        sums: dict[str, torch.Tensor] = {}
        t0 = t_log = time.perf_counter()
        self.started, self.epochs_run = self.started or t0, self.epochs_run + 1
        logged_items = 0
        # zip stops at `steps`: all of the epoch's chunks, or the first `stage2.steps_per_epoch` of them
        for _, batch in zip(range(self.steps), item_stream(cfg, self.storage, self.student.encoder, epoch, self.rank,
                                                           self.world_size, self.device, self.cache)):
            parts = train_step(self.engine, batch, self.index, self.pairs_per_step, rng, self.device,
                               sc.kt.sampled_users if sc.kt.variant == "user_item" else 0)
            for k, v in parts.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            self.items_seen += len(batch.item)
            logged_items += len(batch.item)
            self.global_step += 1
            if self.global_step % sc.log_every == 0:
                now = time.perf_counter()
                self.tracker.log({**{f"step/{k}": float(v) for k, v in parts.items()},
                                  "step/loss": float(sum(parts.values())), "step/lr_adapter": self.engine.get_lr()[0],
                                  "step/items_per_s": logged_items * self.world_size / max(now - t_log, 1e-9)},
                                 step=self.global_step)
                t_log, logged_items = now, 0
        epoch_s = time.perf_counter() - t0
        self.train_s += epoch_s
        return epoch_s, {k: float(v) / self.steps for k, v in sums.items()}


def epoch_plan(cfg: Config, manifest: dict, epoch: int, world_size: int, cache=None) -> EpochPlan:
    """Which item shards (or the layer cache's shards of them) each rank's loader workers read in `epoch`, and
    the steps (every rank the same)."""
    counts = cache.counts() if cache is not None else shard_counts(manifest, cfg.data.uri, "items")
    return plan_epoch(counts, batch_size=cfg.stage2.items_per_step,
                      world_size=world_size, workers=cfg.ray.loader_workers, seed=_epoch_seed(cfg, epoch))


def _epoch_seed(cfg: Config, epoch: int) -> int:
    return cfg.run.seed * 1000 + epoch


def item_stream(cfg: Config, storage: Storage, encoder, epoch: int, rank: int, world_size: int,
                device: torch.device, cache=None):
    """This rank's chunks for one epoch (`epoch_plan`): `items_per_step` items each, every item of the
    catalogue in the epoch, in a fresh random order, decoded and tokenised by `ray.loader_workers`
    processes (with a `LayerCache`: the frozen layers' states read from it), pinned for the copy to a GPU."""
    manifest = load_manifest(storage, cfg.data.uri)
    if cache is not None:
        stream = cache.pipeline(storage, batch_size=cfg.stage2.items_per_step, rank=rank, world_size=world_size,
                                 plan=epoch_plan(cfg, manifest, epoch, world_size, cache), seed=_epoch_seed(cfg, epoch))
        return make_loader(stream, num_workers=cfg.ray.loader_workers, pin_memory=device.type == "cuda")
    stream = items_from_manifest(
        storage, cfg.data.uri, batch_size=cfg.stage2.items_per_step, rank=rank, world_size=world_size,
        transform=encoder.image_transform if "image" in manifest["modalities"] else None,
        tokenize=encoder.text_tokenizer() if "text" in manifest["modalities"] else None,
        plan=epoch_plan(cfg, manifest, epoch, world_size), seed=_epoch_seed(cfg, epoch))
    return make_loader(stream, num_workers=cfg.ray.loader_workers, pin_memory=device.type == "cuda")


def _evaluate_candidate(cfg: Config, inter, student: Student, state: TrainState, rank: int, world_size: int,
                        device: torch.device, best: Optional[dict], cache=None,
                        adapted: Optional[dict[str, torch.Tensor]] = None) -> tuple[dict, Optional[dict]]:
    """Evaluate the student as it is now (epoch `state.epoch`) exactly as stage 1, on the catalogue re-encoded
    by the adapted encoder (or on `adapted`, features known to be its output); returns (result, best), best
    replaced on rank 0 when this epoch is the best."""
    from ptmrec.encoders.adapters import adapter_state_dict

    if adapted is None:
        adapted = _encode_catalogue(cfg, student.encoder, inter.num_items, rank, world_size, device, cache)
    result, eval_model = _evaluate_adapted(cfg, inter, student.recommender, adapted, rank, world_size, device)
    # Train the next epoch against the catalogue just evaluated (FREEDOM: its item graph and neighbours).
    student.recommender.adopt_reference_features(eval_model)
    if state.observe(result, cfg.eval.metric, _chooser(cfg)) and rank == 0:
        best = {"adapter": cpu_state(adapter_state_dict(student.encoder)), "features": adapted,
                "recommender": cpu_state(student.recommender.weights_without_features())}
    return result, best


def _chooser(cfg: Config) -> str:
    """The split stage 2 chooses its epoch on (`EvalConfig.selection`)."""
    return selection_split(cfg.eval, "stage2", cfg.stage2.mode)


def _encode_catalogue(cfg: Config, encoder, num_items: int, rank: int, world_size: int,
                      device: torch.device, cache=None) -> dict[str, torch.Tensor]:
    """Every item through the adapted encoder, each rank its share of the shards, gathered on all ranks
    (on the CPU: the evaluation model is rebuilt from them)."""
    share = _encode_share(cfg, encoder, rank, world_size, device, cache)
    parts = [share]
    if world_size > 1:
        import torch.distributed as dist

        parts = [None] * world_size
        dist.all_gather_object(parts, share)
    out: dict[str, torch.Tensor] = {}
    for part_ids, part_feats in parts:
        for m, array in part_feats.items():
            out.setdefault(m, torch.zeros(num_items, array.shape[1]))[torch.from_numpy(part_ids)] = torch.from_numpy(array)
    return out


def _encode_share(cfg: Config, encoder, rank: int, world_size: int, device: torch.device, cache=None,
                  limit: Optional[int] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """This rank's share of the catalogue (or its first `limit` items) through the adapted encoder in eval
    mode, the adapters left training if they were."""
    was_training = any(m.training for m in encoder.modules())  # set_train_mode keeps the root in eval
    share = encode_items(cfg, rank, world_size, encoder=encoder, progress=False, device=device, cache=cache,
                         limit=limit)
    set_train_mode(encoder, was_training)
    return share


def _evaluate_adapted(cfg: Config, inter, recommender, adapted: dict[str, torch.Tensor], rank: int,
                      world_size: int, device: torch.device) -> tuple[dict[str, dict[str, float]], object]:
    """Stage 1's evaluation of the student recommender rebuilt on the adapted features (FREEDOM rebuilds
    its item graph from them), on the device: (result, the rebuilt model)."""
    eval_model = build_recommender_from_config(cfg, inter, adapted)
    eval_model.load_weights_without_features(recommender.weights_without_features())
    eval_model.to(device)
    return evaluate_distributed(eval_model, inter, cfg.eval, rank, world_size), eval_model


def _evaluate_start(cfg: Config, inter, student, frozen: dict[str, torch.Tensor], state: TrainState, rank: int,
                    world_size: int, device: torch.device, cache) -> Optional[dict]:
    """Evaluate the starting point (stage 1's recommender, the adapters as initialised) as epoch 0, a candidate
    like any epoch: stage 2 never hands over a model that is worse on valid than the one it started from.
    Returns rank 0's copy of it as the best so far."""
    t0 = time.perf_counter()
    start = start_features(cfg, student.encoder, frozen, rank, world_size, device, cache)
    result, best = _evaluate_candidate(cfg, inter, student, state, rank, world_size, device, None, cache, start)
    state.history.append({"epoch": 0, **result_metrics(result), "eval_s": round(time.perf_counter() - t0, 3)})
    if rank == 0:
        log.info("epoch 0 (the starting point): %s", score_line(cfg.eval, result, _chooser(cfg)))
    return best


# Items each rank encodes to check that the adapters start as the identity, and the largest relative difference
# to the frozen features that still counts as equal (float32 sums in another order: ~1e-7).
PROBE_ITEMS = 64
PROBE_TOLERANCE = 1e-4


def start_features(cfg: Config, encoder, frozen: dict[str, torch.Tensor], rank: int, world_size: int,
                   device: torch.device, cache=None) -> Optional[dict[str, torch.Tensor]]:
    """The frozen features, if the adapted encoder as initialised reproduces them on a probe of each rank's
    first items; else None (the starting point is then evaluated on the re-encoded catalogue).

    Every registered adapter starts as the identity (tested), so the probe saves encoding the whole catalogue
    once more for epoch 0 (Amazon Clothing, LoRA through the layer cache, 2 cores: about 100 s of a 400 s
    stage 2); an adapter that does not (`prompt_style: inserted`) fails it and costs only the probe."""
    ids, probe = _encode_share(cfg, encoder, rank, world_size, device, cache, limit=PROBE_ITEMS)
    gap = feature_gap(ids, probe, frozen)
    if world_size > 1:  # every rank takes the same branch: re-encoding gathers across ranks
        import torch.distributed as dist

        gaps = [None] * world_size
        dist.all_gather_object(gaps, gap)
        gap = max(gaps)
    if gap > PROBE_TOLERANCE:
        if rank == 0:
            log.info("epoch 0: the adapters as initialised change the features (relative difference %.2g on a "
                     "probe): the catalogue is re-encoded for the starting point", gap)
        return None
    if rank == 0:
        log.info("epoch 0: the adapters as initialised reproduce the frozen features on a probe (relative "
                 "difference %.1g): the starting point is evaluated on them", gap)
    return {m: f.clone() for m, f in frozen.items()}


def feature_gap(ids: np.ndarray, probe: dict[str, np.ndarray], frozen: dict[str, torch.Tensor]) -> float:
    """The largest difference between the probe's features and the frozen features of the same items,
    relative to the largest frozen value, over the modalities; 0 for an empty probe."""
    gaps = [0.0]
    for m, array in probe.items():
        reference = frozen[m][torch.from_numpy(ids)]
        scale = float(reference.abs().max()) or 1.0
        gaps.append(float((torch.from_numpy(array) - reference).abs().max()) / scale)
    return max(gaps)


def _save_outputs(cfg: Config, storage: Storage, manifest: dict, settings: dict, state: TrainState,
                  best: Optional[dict], params: dict, wall_s: float, items_per_s: float, nodes: list[str],
                  layer_cache: Optional[dict] = None) -> None:
    name = stage_dir(cfg.stage2.mode, cfg.stage2.output)
    out = join(cfg.run.uri, name)
    if best is not None:
        save_torch(storage, join(out, "adapter.pt"), {"adapter": settings["adapter"],
                                                      "options": asdict(cfg.stage2.adapter), "state": best["adapter"]})
        save_torch(storage, join(out, "recommender.pt"), {"recommender": cfg.recommender.name,
                                                          "state_dict": best["recommender"]})
        features_uri = feature_dir(cfg, manifest, kind=adapted_kind(name), per_run=True)
        save_features(storage, features_uri, {m: f.numpy() for m, f in best["features"].items()},
                      {"encoder": cfg.encoder.name, "adapter": settings["adapter"], "epoch": state.best_epoch})
    peak_mb, memory_kind = peak_memory()
    write_metrics(storage, out, {
        "stage": "stage2", "settings": settings_fingerprint(cfg, "stage2"), "mode": cfg.stage2.mode, "model": cfg.recommender.name, "adapter": settings["adapter"],
        "dataset": manifest["dataset"], "valid": state.best.get("valid", {}), "test": state.best.get("test", {}),
        "best_epoch": state.best_epoch, "start_is_best": state.best_epoch == 0, **params,
        **selection_fields(cfg.eval, "stage2", state.best, cfg.stage2.mode),
        "encoder_trainable_share": params["encoder_trainable_params"] / max(params["encoder_total_params"], 1),
        "kt_weight": settings["kt_weight"], "temperature": cfg.stage2.kt.temperature, "kt": asdict(cfg.stage2.kt),
        "lr_schedule": cfg.stage2.lr_schedule, "warmup_steps": cfg.stage2.warmup_steps,
        "wall_s": round(wall_s, 2), "items_per_s": round(items_per_s, 1), "peak_memory_mb": round(peak_mb, 1),
        "memory_kind": memory_kind, "seed": cfg.run.seed,
        "epochs_run": state.epoch, "num_workers": cfg.stage2.num_workers, "worker_nodes": nodes,
        "zero_stage": cfg.stage2.zero_stage, "eval_protocol": eval_protocol(cfg.eval, manifest["num_items"]),
        "resumed_from_epoch": state.resumed_from_epoch, "layer_cache": layer_cache, "history": state.history})
    log.info("stage 2 (%s) done: best %s %s %.4f at epoch %d → %s", cfg.stage2.mode, _chooser(cfg), cfg.eval.metric,
             state.best_score, state.best_epoch, out)
