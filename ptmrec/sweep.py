"""Sweeps (`ptmrec sweep`, `jobs/sweep.py`): Ray Tune over adapters, KT and the stage schedule, or a
grid of stage-1 runs for a tuned frozen baseline.

The `sweep.space` of the config maps dotted config keys to the values to try. Keys under `stage2.` vary
the knowledge-guided stage only; every other key (stage-1 epochs and lr, the recommender, the seed, ...)
changes stage 1. Stage 1 is trained once per distinct stage-1 setting, before the trials start, into
`<run uri>/sweep-stage1/<hash>/`, and every trial with those settings reuses it.

- `sweep.stage: stage2`: each trial runs stage 2 (Ray Train + DeepSpeed inside the Tune trial) and
  reports every epoch to Tune; ASHA stops weak trials on the **valid** metric of their best epoch so far (never
  in their last epoch).
  The trials are fixed before any runs and named by their params (`trials/<hash>`): started again, a sweep
  reuses the trials that finished or were stopped and runs the rest in a new Tune run, resuming an
  interrupted trial from its checkpoint.
- `sweep.stage: stage1`: the trials are the stage-1 runs themselves (each early-stopped on valid), every
  combination of the space; finished ones are reused, so an interrupted grid resumes too.

The result is the trial with the best **valid** metric, its test metric shown next to it and never used.
`sweep.select: test` picks by the test metric instead, as MMRec picks the rows of its published tables
(test-set leakage): only to compare with such a table, and every output says so. Outputs under the run
URI: `sweep-<name>.json`, `.csv` (one row per trial) and `.png` (valid against test per trial).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import random
from typing import Any, Optional

from ptmrec.config import Config, ConfigError, load_config, pinned_overrides
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

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
    from ptmrec.stages.features import features_root

    params = drop_foreign_adapter_options(params, base)
    s1 = {k: v for k, v in params.items() if not k.startswith("stage2.")}
    sets = [*overrides, *(_override(k, v) for k, v in params.items()),
            f"run.uri={join(base.run.uri, 'sweep-stage1', stage1_key(s1))}",
            f"run.features_uri={features_root(base)}"]  # one extraction for every trial
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
    stage2_keys = [k for k in base.sweep.space if k.startswith("stage2.")]
    if base.sweep.stage == "stage1" and stage2_keys:
        raise ConfigError(f"{config_path}: sweep.space.{stage2_keys[0]}: a stage-1 sweep (sweep.stage: stage1) "
                          "varies stage-1 settings only")
    for key, values in base.sweep.space.items():
        if not values:
            raise ConfigError(f"{config_path}: sweep.space.{key}: needs at least one value")
        for value in values:
            if key.startswith("stage2.adapter.") and key != "stage2.adapter.name":
                continue  # checked per trial, against the trial's adapter
            load_config(config_path, [*overrides, _override(key, value)])


def check_trial_fits(base: Config, cluster_cpus: float) -> None:
    """A stage-2 trial holds `sweep.trial_cpus` while its workers start: if both cannot fit on the cluster at
    once, the workers would wait forever. Fail in one line instead."""
    sw, workers = base.sweep, base.stage2.num_workers
    need = sw.trial_cpus * sw.max_concurrent_trials + workers * base.ray.cpus_per_worker
    if need > cluster_cpus and not base.ray.wait_for_resources:
        raise ConfigError(f"sweep.trial_cpus {sw.trial_cpus:g} (× {sw.max_concurrent_trials} concurrent trials) + "
                          f"{workers} stage-2 workers × ray.cpus_per_worker {base.ray.cpus_per_worker:g} need "
                          f"{need:g} CPUs and the Ray cluster has {cluster_cpus:g}; lower ray.cpus_per_worker (a worker "
                          f"still runs round(ray.cpus_per_worker) threads) or sweep.trial_cpus")


def run_sweep(config_path: str, overrides: list[str], progress: bool = True) -> dict:
    """Run (or resume) the sweep; returns {"best": {...}, "trials": [...], ...}."""
    from ptmrec.runtime import ray_train
    from ptmrec.stages.common import selection_split, settings_fingerprint
    from ptmrec.stages.recommendation import run_recommendation_stage

    # Trials run in their own working directories: pin the config file and every path in it.
    config_path = os.path.abspath(config_path)
    base = load_config(config_path, overrides)
    overrides = [*overrides, *(p for p in pinned_overrides(base) if not p.startswith("run.uri="))]
    sw = base.sweep
    validate_space(config_path, overrides, base)
    storage = Storage(base.storage)
    ray_train.connect(base, state_api=sw.stage == "stage2")
    if sw.stage == "stage2":
        import ray

        check_trial_fits(base, ray.cluster_resources().get("CPU", 0.0))
    metric = f"{selection_split(base.eval, sw.stage, base.stage2.mode)}/{base.eval.metric}"  # what Tune's ASHA and the pick compare

    # 1. Stage 1 once per distinct stage-1 setting.
    s1_keys = [k for k in sw.space if not k.startswith("stage2.")]
    stage1_runs = []
    for combo in itertools.product(*(sw.space[k] for k in s1_keys)):
        params = dict(zip(s1_keys, combo))
        cfg1 = trial_config(config_path, overrides, base, params)
        if "error" not in _trial("", params, cfg1.run.uri, storage, join(cfg1.run.uri, "stage1"),
                                 settings_fingerprint(cfg1, "stage1")):
            log.info("stage 1 %s already trained: reusing it (%s)", params, cfg1.run.uri)
        else:
            log.info("stage 1 for %s → %s", params, cfg1.run.uri)
            run_recommendation_stage(cfg1, progress=progress)
        stage1_runs.append((params, cfg1.run.uri))

    if sw.stage == "stage1":
        trials = [_trial(stage1_key(params), params, uri, storage, join(uri, "stage1"))
                  for params, uri in stage1_runs]
    else:
        trials = _tune_stage2(config_path, overrides, base, storage, metric)
    return _summarise(base, storage, metric, trials)


def sweep_points(base: Config) -> list[tuple[str, dict[str, Any]]]:
    """The (name, params) of every stage-2 trial, fixed before anything runs so that a rerun finds the same ones:
    every combination (grid, `num_samples` times over) or `num_samples` draws seeded by `run.seed` (random). The
    name is a hash of the params (a repeat gets `-<n>`): it names the trial's output folder."""
    sw, keys = base.sweep, list(base.sweep.space)
    if sw.search == "grid":
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(sw.space[k] for k in keys))] * sw.num_samples
    else:
        rng = random.Random(base.run.seed)
        points = [{k: rng.choice(sw.space[k]) for k in keys} for _ in range(sw.num_samples)]
    seen: dict[str, int] = {}
    named = []
    for params in points:
        key = stage1_key(params)
        seen[key] = seen.get(key, 0) + 1
        named.append((key if seen[key] == 1 else f"{key}-{seen[key] - 1}", params))
    return named


def _tune_stage2(config_path: str, overrides: list[str], base: Config, storage: Storage, metric: str) -> list[dict]:
    """Stage 2 per trial, under Tune with ASHA on the valid metric; one record per trial. Trials finished or stopped
    by an earlier run of the same sweep are reported from their outputs, not run again; an interrupted trial
    resumes from its latest checkpoint (its Ray Train run has the same name)."""
    from ptmrec.stages.common import settings_fingerprint

    sw = base.sweep
    trials, pending = {}, []
    for name, params in sweep_points(base):
        cfg = trial_config(config_path, overrides, base, params, trial_name=name)
        trial = _trial(name, params, cfg.run.uri, storage, join(cfg.run.uri, cfg.stage2.output),
                       settings_fingerprint(cfg, "stage2"))
        if "error" not in trial or "stopped" in trial:
            log.info("trial %s %s already %s: reusing it", name, params, "stopped" if "stopped" in trial else "finished")
        else:
            pending.append({"name": name, "params": params})
        trials[name] = trial
    if pending:
        log.info("sweep %s: %d of %d trials to run", sw.name, len(pending), len(trials))
        for result in _run_tuner(config_path, overrides, base, metric, pending):
            point = result.config["point"]
            cfg = trial_config(config_path, overrides, base, point["params"], trial_name=point["name"])
            out = join(cfg.run.uri, cfg.stage2.output)
            if not storage.exists(join(out, "metrics.json")) and result.error is None:
                # Tune stopped it (ASHA): record that, so that a rerun does not train it again
                history = result.metrics_dataframe  # every epoch it reported: the stop ranked its best so far
                best = float(history[metric].max()) if history is not None and metric in history else None
                storage.write_text(join(out, STOPPED), json.dumps({
                    "after_epoch": result.metrics.get("epoch"), metric: best, "at_stop": result.metrics.get(metric),
                    "settings": settings_fingerprint(cfg, "stage2")}) + "\n")
            trial = _trial(point["name"], point["params"], cfg.run.uri, storage, out)
            if "error" in trial and "stopped" not in trial:
                trial["error"] = str(result.error or trial["error"])
            trials[point["name"]] = trial
    return list(trials.values())


STOPPED = "stopped.json"  # beside where metrics.json would be: the sweep's scheduler stopped this trial


def _run_tuner(config_path: str, overrides: list[str], base: Config, metric: str, points: list[dict]):
    """One Tune run over `points` (a grid over them: no more, no fewer), at most `sweep.max_concurrent_trials` at
    a time; returns Tune's results."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig

    from ptmrec.runtime import ray_train
    from ptmrec.runtime.scheduler import LastEpochFinishes

    sw = base.sweep

    def trainable(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from ptmrec.stages.knowledge import run_knowledge_stage

        point = config["point"]
        cfg = trial_config(config_path, overrides, base, point["params"], trial_name=point["name"])
        m = run_knowledge_stage(cfg, progress=False, callbacks=[TuneReportCallback()])
        # The stage's result (its best epoch, chosen on valid) is the trial's last: Tune then ranks what the stage
        # chose, and a trial resumed after its last epoch, which trains and reports nothing, still has a result.
        splits = ("valid", "test", m.get("selection_split", "valid"))
        tune.report({**{f"{split}/{k}": v for split in splits for k, v in m[split].items()},
                     "best_epoch": m["best_epoch"], "last_epoch": True})

    storage_path, filesystem = ray_train.ray_storage(base, "ray_tune")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": sw.trial_cpus}), param_space={"point": tune.grid_search(points)},
        tune_config=TuneConfig(metric=metric, mode="max", max_concurrent_trials=sw.max_concurrent_trials,
                               scheduler=LastEpochFinishes(grace_period=sw.grace_period,
                                                           reduction_factor=sw.reduction_factor)),
        run_config=RunConfig(name=sw.name, storage_path=storage_path, storage_filesystem=filesystem))
    return tuner.fit()


def _trial(trial_id: str, params: dict, stage1_uri: str, storage: Storage, metrics_uri: str,
           settings: Optional[str] = None) -> dict:
    """One trial's record from its outputs; with `settings` (the stage's settings fingerprint), outputs finished
    with other settings (the config changed since) count as missing."""
    from ptmrec.stages.common import read_metrics

    trial = {"trial": trial_id, "params": params, "stage1": stage1_uri, "valid": {}, "test": {}, "best_epoch": None,
             "epochs_run": None, "wall_s": None}
    try:
        m = read_metrics(storage, metrics_uri)
        if settings is None or m.get("settings") == settings:
            # the split that chose the stage's epoch: valid, or its half under eval.selection: valid_halves
            chosen_on = m.get("selection_split", "valid")
            trial.update({"valid": m["valid"], "test": m["test"], chosen_on: m[chosen_on], "chosen_on": chosen_on,
                          "best_epoch": m["best_epoch"], "epochs_run": m.get("epochs_run"), "wall_s": m.get("wall_s")})
            return trial
        trial["error"] = "finished with other settings"
    except StorageError:
        trial["error"] = "no metrics"
        if storage.exists(join(metrics_uri, STOPPED)):
            stopped = json.loads(storage.read_text(join(metrics_uri, STOPPED)))
            if settings is None or stopped.get("settings") == settings:
                trial["stopped"] = stopped
    return trial


def _summarise(base: Config, storage: Storage, metric: str, trials: list[dict]) -> dict:
    """Pick the result (by valid unless `sweep.select: test`), write the JSON, CSV and plot; the summary."""
    sw, key = base.sweep, metric.split("/", 1)[1]
    finished = [t for t in trials if t["valid"]]
    if not finished:
        raise RuntimeError(f"sweep {sw.name}: no trial finished an epoch")
    # By valid: each trial's own choosing split, the half that chose its epoch under valid_halves.
    best = max(finished, key=lambda t: t["test" if sw.select == "test" else t["chosen_on"]][key])
    summary = {"metric": metric, "select": sw.select, "stage": sw.stage, "best": best, "trials": trials}
    if sw.select == "test":
        summary["warning"] = SELECTED_ON_TEST
    prefix = join(base.run.uri, f"sweep-{sw.name}")
    storage.write_text(prefix + ".json", json.dumps(summary, indent=2) + "\n")
    storage.write_text(prefix + ".csv", sweep_csv(summary))
    storage.write_bytes(prefix + ".png", sweep_plot(summary, title=f"sweep {sw.name} ({sw.stage})"))
    log.info("sweep %s: %d trials → %s.{json,csv,png}", sw.name, len(trials), prefix)
    return summary


SELECTED_ON_TEST = ("selected by the TEST metric (MMRec's table protocol, test-set leakage): for comparison "
                    "with a published table only, not a result")


def sweep_csv(summary: dict) -> str:
    """One row per trial: id, each swept key, the valid (and choosing half's) and test metrics, the best epoch, the
    epochs run and the wall time (a resumed run's own, since its resume), the pick."""
    keys = sorted({k for t in summary["trials"] for k in t["params"]})
    metrics = sorted({m for t in summary["trials"] for m in t["valid"]})
    splits = _shown_splits(summary)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", *keys, *(f"{split}/{m}" for split in splits for m in metrics),
                     "best_epoch", "epochs_run", "wall_s", f"selected_by_{summary['select']}"])
    for t in summary["trials"]:
        writer.writerow([t["trial"], *(_csv_value(t["params"].get(k)) for k in keys),
                         *(t.get(split, {}).get(m, "") for split in splits for m in metrics),
                         *(t.get(k) if t.get(k) is not None else "" for k in ("best_epoch", "epochs_run", "wall_s")),
                         int(t["trial"] == summary["best"]["trial"])])
    return out.getvalue()


def _shown_splits(summary: dict) -> list[str]:
    """valid, the half of valid that chose each trial's epoch and ranked the trials (under eval.selection:
    valid_halves), test: the pick is read off the column it was made on."""
    chosen = summary["metric"].split("/", 1)[0]
    return ["valid", *([chosen] if chosen != "valid" else []), "test"]


def _csv_value(value: Any) -> str:
    # a name reads as itself (lora, not "lora"); lists, maps and null keep their YAML-compatible JSON form
    return value if isinstance(value, str) else json.dumps(value)


def sweep_plot(summary: dict, title: str) -> bytes:
    """Valid (the half that ranked the trials, under valid_halves) against test metric per finished trial, the pick
    circled; with one numeric swept key, also the metrics against its values (log scale when they span decades).
    PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, key = summary["metric"].split("/", 1)  # chosen: valid, or the half of it that ranked the trials
    done = [t for t in summary["trials"] if t["valid"]]
    swept = sorted({k for t in done for k in t["params"]})
    numeric = len(swept) == 1 and all(isinstance(t["params"][swept[0]], (int, float)) for t in done)
    fig, axes = plt.subplots(1, 2 if numeric else 1, figsize=(12 if numeric else 6.4, 4.6), squeeze=False)
    best, pick = summary["best"], f"selected by {summary['select']}"
    pick += " (test-set leakage)" if summary["select"] == "test" else ""
    if numeric:
        ax = axes[0][0]
        by_value = sorted(done, key=lambda t: t["params"][swept[0]])
        values = [t["params"][swept[0]] for t in by_value]
        for split in _shown_splits(summary):
            style = {"valid": "o-", "test": "s--"}.get(split, "^:")  # ^: the half that ranked the trials
            ax.plot(values, [t[split][key] for t in by_value], style, label=f"{split} {key}")
        picked_on = "test" if summary["select"] == "test" else chosen
        ax.plot([best["params"][swept[0]]], [best[picked_on][key]], "o", ms=16, mfc="none", mec="#d62728", label=pick)
        if min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(swept[0])
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    ax.scatter([t[chosen][key] for t in done], [t["test"][key] for t in done], color="#3b75af")
    for t in done if not numeric else ():
        ax.annotate(_short(t["params"]), (t[chosen][key], t["test"][key]), fontsize=7, alpha=0.8,
                    textcoords="offset points", xytext=(3, 3))
    ax.scatter([best[chosen][key]], [best["test"][key]], s=160, facecolors="none", edgecolors="#d62728", label=pick)
    ax.set_xlabel(f"{chosen} {key}")
    ax.set_ylabel(f"test {key}")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _short(params: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())


def format_sweep(summary: dict) -> str:
    key = summary["metric"].split("/", 1)[1]
    select = summary.get("select", "valid")
    splits = _shown_splits(summary)
    rows = [f"{'trial':<14}" + "".join(f"{split + ' ' + key:>18}" for split in splits) + f"{'best/run':>10}{'wall':>9}"
            + "  params"]
    for t in summary["trials"]:
        mark = f"  <- best (by {select})" if t["trial"] == summary["best"]["trial"] else ""
        values = [t.get(split, {}).get(key) for split in splits]
        state = "stopped" if "stopped" in t else "failed"
        stop = t.get("stopped", {})
        # what the scheduler ranked it on, its best epoch before the stop; records without `at_stop` predate that
        # and hold the value at the stop under the same key
        best = stop.get(summary["metric"]) if "at_stop" in stop else None
        if best is not None:
            mark = f"  (stopped after epoch {stop.get('after_epoch')}; best {summary['metric']} {best:.4f})"
        cells = [f"{v:.4f}" if v is not None else state if i == 0 else "-" for i, v in enumerate(values)]
        run = t.get("epochs_run")
        epochs = f"{t['best_epoch']}/{'?' if run is None else run}" if t.get("best_epoch") is not None else "-"
        wall = f"{t['wall_s']:.0f} s" if t.get("wall_s") is not None else "-"
        rows.append(f"{str(t['trial']):<14}" + "".join(f"{c:>18}" for c in cells) + f"{epochs:>10}{wall:>9}"
                    + f"  {json.dumps(t['params'])}{mark}")
    if select == "test":
        rows.append(f"NOTE: {SELECTED_ON_TEST}")
    return "\n".join(rows)
