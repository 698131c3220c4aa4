"""A stage-2 sweep's trials: fixed and named before anything runs, so that a rerun reuses the finished and the
stopped ones and gives only the rest to a new Tune run (where `max_concurrent_trials` holds)."""

from __future__ import annotations

import json

from ptmrec.config import load_config
from ptmrec.storage import Storage
from ptmrec.uris import join
from ptmrec import sweep


def _base(repo, tmp_path, space: str, *sets: str):
    path = str(repo / "configs/smoke.yaml")
    overrides = [f"run.uri=file://{tmp_path}/run", f"sweep={{name: s, {space}}}", *sets]
    return path, overrides, load_config(path, overrides)


def test_points_are_every_combination_named_by_their_params(repo, tmp_path):
    *_, base = _base(repo, tmp_path, "space: {stage2.lr: [0.001, 0.01], stage2.kt.weight: [0.0, 1.0]}")
    points = sweep.sweep_points(base)
    assert [p for _, p in points] == [{"stage2.lr": lr, "stage2.kt.weight": w} for lr in (0.001, 0.01) for w in (0.0, 1.0)]
    assert len({name for name, _ in points}) == 4 and sweep.sweep_points(base) == points


def test_random_points_are_drawn_again_the_same_and_repeats_get_their_own_names(repo, tmp_path):
    *_, base = _base(repo, tmp_path, "search: random, num_samples: 12, space: {stage2.lr: [0.001, 0.01]}")
    points = sweep.sweep_points(base)
    assert points == sweep.sweep_points(base) and len({name for name, _ in points}) == 12
    assert {p["stage2.lr"] for _, p in points} == {0.001, 0.01}
    *_, other = _base(repo, tmp_path, "search: random, num_samples: 12, space: {stage2.lr: [0.001, 0.01]}",
                      "run.seed=8")
    assert [p for _, p in sweep.sweep_points(other)] != [p for _, p in points]


def test_a_rerun_reuses_finished_and_stopped_trials_and_runs_only_the_rest(repo, tmp_path, monkeypatch):
    from ptmrec.stages.common import settings_fingerprint

    path, overrides, base = _base(repo, tmp_path, "space: {stage2.lr: [0.001, 0.01, 0.1, 1.0]}")
    storage = Storage(base.storage)
    (done, p_done), (stopped, p_stopped), (todo, p_todo), (changed, p_changed) = sweep.sweep_points(base)

    def out(name, params):
        cfg = sweep.trial_config(path, overrides, base, params, trial_name=name)
        return join(cfg.run.uri, cfg.stage2.output), settings_fingerprint(cfg, "stage2")

    def finish(name, params, settings):
        storage.write_text(join(out(name, params)[0], "metrics.json"), json.dumps(
            {"valid": {"recall@20": 0.3}, "test": {"recall@20": 0.2}, "best_epoch": 2, "settings": settings}))

    finish(done, p_done, out(done, p_done)[1])
    finish(changed, p_changed, "finished before the config changed")
    storage.write_text(join(out(stopped, p_stopped)[0], sweep.STOPPED),
                       json.dumps({"after_epoch": 1, "settings": out(stopped, p_stopped)[1]}))
    given = []
    monkeypatch.setattr(sweep, "_run_tuner", lambda *args: given.extend(args[-1]) or [])
    trials = {t["trial"]: t for t in sweep._tune_stage2(path, overrides, base, storage, "valid/recall@20")}
    assert given == [{"name": todo, "params": p_todo}, {"name": changed, "params": p_changed}]
    assert trials[done]["valid"] == {"recall@20": 0.3} and trials[stopped]["stopped"]["after_epoch"] == 1
    assert "error" in trials[todo] and "stopped" not in trials[todo]
    assert "stopped" in sweep.format_sweep({"metric": "valid/recall@20", "best": trials[done],
                                            "trials": list(trials.values())})
