"""Ray Tune sweeps over adapters, KT and the stage schedule (`ptmrec sweep`, `jobs/sweep.py`).

The `sweep.space` of the config maps dotted config keys to the values to try. Keys under `stage2.` vary
the knowledge-guided stage only; every other key (stage-1 epochs and lr, the recommender, the seed, ...)
changes stage 1. Stage 1 is trained once per distinct stage-1 setting, before the trials start, into
`<run uri>/sweep-stage1/<hash>/`, and every trial with those settings reuses it. Each trial runs stage 2
(Ray Train + DeepSpeed inside the Tune trial) and reports every epoch to Tune; ASHA stops weak trials on
the **valid** metric. The best trial is chosen by its valid metric and its test metric is shown next to
it, never used. An interrupted sweep resumes (`Tuner.restore`) when started again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from typing import Any

from ptmrec.config import Config, ConfigError, load_config, pinned_overrides
from ptmrec.storage import Storage, StorageError, join

log = logging.getLogger(__name__)


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def stage1_key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def trial_config(config_path: str, overrides: list[str], base: Config, params: dict[str, Any],
                 trial_name: str = "") -> Config:
    """The run config of one point of the space: stage 1 shared by its stage-1 values, stage 2 its own.

    Adapter options the point's adapter does not take (a rank for prompts, a prompt length for LoRA) are
    dropped: a space may mix adapters."""
    params = drop_foreign_adapter_options(params, base)
    s1 = {k: v for k, v in params.items() if not k.startswith("stage2.")}
    sets = [*overrides, *(_override(k, v) for k, v in params.items()),
            f"run.uri={join(base.run.uri, 'sweep-stage1', stage1_key(s1))}"]
    if trial_name:
        sets += [f"stage2.output=trials/{trial_name}", _override("tracking.tags", [*base.tracking.tags, f"sweep:{base.sweep.name}"])]
    return load_config(config_path, sets)


def drop_foreign_adapter_options(params: dict[str, Any], base: Config) -> dict[str, Any]:
    from ptmrec.encoders.adapters import adapter_takes

    name = params.get("stage2.adapter.name", base.stage2.adapter.name)
    takes = adapter_takes(name)
    prefix = "stage2.adapter."
    return {k: v for k, v in params.items()
            if not k.startswith(prefix) or k == prefix + "name" or k[len(prefix):] in takes}


def validate_space(config_path: str, overrides: list[str], base: Config) -> None:
    """Every key and value of the space must make a valid config, before anything runs."""
    if not base.sweep.space:
        raise ConfigError(f"{config_path}: sweep.space is empty; give it dotted keys with lists of values")
    for key, values in base.sweep.space.items():
        if not values:
            raise ConfigError(f"{config_path}: sweep.space.{key}: needs at least one value")
        for value in values:
            if key.startswith("stage2.adapter.") and key != "stage2.adapter.name":
                continue  # checked per trial, against the trial's adapter
            load_config(config_path, [*overrides, _override(key, value)])


def run_sweep(config_path: str, overrides: list[str], progress: bool = True) -> dict:
    """Run (or resume) the sweep; returns {"best": {...}, "trials": [...]}."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ptmrec.runtime import ray_train
    from ptmrec.stages.common import read_metrics
    from ptmrec.stages.recommendation import run_recommendation_stage

    # Trials run in their own working directories: pin the config file and every path in it.
    config_path = os.path.abspath(config_path)
    base = load_config(config_path, overrides)
    overrides = [*overrides, *(p for p in pinned_overrides(base) if not p.startswith("run.uri="))]
    sw = base.sweep
    validate_space(config_path, overrides, base)
    storage = Storage(base.storage)
    ray_train.connect(base)
    metric = f"valid/{base.eval.metric}"

    # 1. Stage 1 once per distinct stage-1 setting.
    s1_keys = [k for k in sw.space if not k.startswith("stage2.")]
    for combo in itertools.product(*(sw.space[k] for k in s1_keys)):
        cfg1 = trial_config(config_path, overrides, base, dict(zip(s1_keys, combo)))
        try:
            read_metrics(storage, join(cfg1.run.uri, "stage1"))
            log.info("stage 1 %s already trained: reusing it (%s)", dict(zip(s1_keys, combo)), cfg1.run.uri)
        except StorageError:
            log.info("stage 1 for %s → %s", dict(zip(s1_keys, combo)), cfg1.run.uri)
            run_recommendation_stage(cfg1, progress=progress)

    # 2. Stage 2 per trial, under Tune.
    def trainable(params: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from ptmrec.stages.knowledge import run_knowledge_stage

        name = tune.get_context().get_trial_id()
        cfg = trial_config(config_path, overrides, base, params, trial_name=name)
        run_knowledge_stage(cfg, progress=False, callbacks=[TuneReportCallback()])

    pick = tune.grid_search if sw.search == "grid" else tune.choice
    param_space = {k: pick(v) for k, v in sw.space.items()}
    storage_path, filesystem = ray_train.ray_storage(base, "ray_tune")
    path = os.path.join(storage_path, sw.name) if filesystem is None else f"{storage_path}/{sw.name}"
    trainable = tune.with_resources(trainable, {"CPU": sw.trial_cpus})
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        log.info("resuming the interrupted sweep at %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        from ray.tune import RunConfig, TuneConfig

        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=TuneConfig(metric=metric, mode="max", num_samples=sw.num_samples,
                                   max_concurrent_trials=sw.max_concurrent_trials,
                                   scheduler=ASHAScheduler(grace_period=sw.grace_period,
                                                           reduction_factor=sw.reduction_factor)),
            run_config=RunConfig(name=sw.name, storage_path=storage_path, storage_filesystem=filesystem))
    results = tuner.fit()

    trials = []
    for result in results:
        params = {k: result.config[k] for k in sw.space}
        cfg = trial_config(config_path, overrides, base, params, trial_name=result.metrics.get("trial_id", ""))
        trial = {"trial": result.metrics.get("trial_id"), "params": params, "stage1": cfg.run.uri,
                 "valid": {}, "test": {}, "best_epoch": None}
        try:
            m = read_metrics(storage, join(cfg.run.uri, cfg.stage2.output))
            trial.update(valid=m["valid"], test=m["test"], best_epoch=m["best_epoch"])
        except StorageError:  # stopped by ASHA before its first epoch ended, or failed
            trial["error"] = str(result.error or "no metrics")
        trials.append(trial)
    finished = [t for t in trials if t["valid"]]
    if not finished:
        raise RuntimeError(f"sweep {sw.name}: no trial finished an epoch")
    best = max(finished, key=lambda t: t["valid"][base.eval.metric])  # valid only: test is reported, never used
    summary = {"metric": metric, "best": best, "trials": trials}
    storage.write_text(join(base.run.uri, f"sweep-{sw.name}.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def format_sweep(summary: dict) -> str:
    key = summary["metric"].split("/", 1)[1]
    rows = [f"{'trial':<14}{'valid ' + key:>16}{'test ' + key:>16}  params"]
    for t in summary["trials"]:
        mark = "  <- best (by valid)" if t["trial"] == summary["best"]["trial"] else ""
        v, te = t["valid"].get(key), t["test"].get(key)
        rows.append(f"{str(t['trial']):<14}{(f'{v:.4f}' if v is not None else 'stopped'):>16}"
                    f"{(f'{te:.4f}' if te is not None else '-'):>16}  {json.dumps(t['params'])}{mark}")
    return "\n".join(rows)
