"""Re-evaluate a finished stage from the run URI alone (the `evaluate` job): rebuild its recommender with the
features it scores with (frozen for stage 1, adapted for stage 2), rank the whole catalogue for every user
as MMRec does, and write `<stage>/eval.json`. Serving cost equals the frozen baseline: features are cached.
"""

from __future__ import annotations

import json
import logging
import time

import torch

from ptmrec.config import Config
from ptmrec.data.stream import read_interactions
from ptmrec.recommenders import Recommender
from ptmrec.runtime.device import select_device
from ptmrec.stages.common import build_recommender_from_config, evaluate_distributed, load_torch, read_metrics
from ptmrec.stages.features import load_features
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

log = logging.getLogger(__name__)


def evaluate_stage(cfg: Config, stage: str = "stage1") -> dict:
    """{"valid": {...}, "test": {...}} of a finished stage ("stage1", "stage2", "stage2-<mode>")."""
    storage = Storage(cfg.storage)
    start = time.perf_counter()
    inter = read_interactions(storage, cfg.data.uri)
    model = load_stage_model(cfg, stage, storage, inter)
    # The evaluate job's driver may run on a head node without a GPU: a GPU run uses one where it sees one.
    device = select_device(cfg.ray.use_gpu and torch.cuda.is_available())
    result = evaluate_distributed(model.to(device), inter, cfg.eval, rank=0, world_size=1)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    storage.write_text(join(cfg.run.uri, stage, "eval.json"), json.dumps(result, indent=2) + "\n")
    return result


def load_stage_model(cfg: Config, stage: str, storage: Storage, inter) -> Recommender:
    """A finished stage's recommender, rebuilt with the features it scores with (frozen for stage 1,
    adapted for stage 2), in eval mode on the CPU; a `ValueError` naming the folder if it is not finished."""
    stage_uri = join(cfg.run.uri, stage)
    try:
        read_metrics(storage, stage_uri)
    except StorageError:
        raise ValueError(f"{stage_uri}: no finished {stage} (metrics.json missing)") from None
    stage1 = load_torch(storage, join(cfg.run.uri, "stage1", "model.pt"))
    if stage == "stage1":
        features = load_features(storage, stage1["features_uri"]) if stage1["features_uri"] else None
        weights = stage1["state_dict"]
    else:
        if not storage.exists(join(stage_uri, "recommender.pt")):
            raise ValueError(f"{stage_uri}: no recommender.pt")
        weights = load_torch(storage, join(stage_uri, "recommender.pt"))["state_dict"]
        features = _adapted_features(storage, cfg, stage)
    model = build_recommender_from_config(cfg, inter, features)
    if stage == "stage1":
        model.load_state_dict(weights)
    else:
        model.load_weights_without_features(weights)
    return model.eval()


def _adapted_features(storage: Storage, cfg: Config, stage: str):
    from ptmrec.data.shards import load_manifest
    from ptmrec.stages.features import feature_dir

    from ptmrec.stages.knowledge import adapted_kind

    manifest = load_manifest(storage, cfg.data.uri)
    return load_features(storage, feature_dir(cfg, manifest, kind=adapted_kind(stage), per_run=True))
