"""A Ray Tune sweep on the smoke config: 3 trials sharing one stage-1 setting, best picked by valid."""

import json

import pytest

from tests.integration.conftest import ptmrec

pytestmark = pytest.mark.slow


def test_sweep_shares_stage1_and_selects_on_valid(repo, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    sets = ["--set", f"data.uri={data}", "--set", f"run.uri={run}", "--set", "ray.cpus_per_worker=0.5",
            "--set", "stage1.epochs=2", "--set", "stage2.epochs=1",
            "--set", "sweep={name: smoke, search: grid, space: {stage1.lr: [0.01], stage2.kt.weight: [0.0, 1.0]}}"]
    prep = ptmrec(repo, "-q", "prepare", "--config", "configs/smoke.yaml", *sets)
    assert prep.returncode == 0, prep.stderr
    proc = ptmrec(repo, "sweep", "--config", "configs/smoke.yaml", *sets, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    summary = json.loads((run / "sweep-smoke.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 2
    assert sorted(t["params"]["stage2.kt.weight"] for t in trials) == [0.0, 1.0]
    # stage 1 trained once, under one shared folder, and every trial used it
    assert proc.stderr.count("stage 1 for {") == 1
    assert len({t["stage1"] for t in trials}) == 1
    shared = list((run / "sweep-stage1").glob("*/stage1/metrics.json"))
    assert len(shared) == 1
    # the best trial is the best by valid, and its test metric is reported beside it
    finished = [t for t in trials if t["valid"]]
    assert summary["best"]["valid"]["recall@20"] == max(t["valid"]["recall@20"] for t in finished)
    assert "(selected)" in proc.stdout and "(reported)" in proc.stdout
    assert (run / "sweep-smoke.csv").read_text().count("\n") == 1 + 2 and (run / "sweep-smoke.png").stat().st_size > 1000


def test_stage1_grid_is_a_tuned_baseline_chosen_on_valid_or_labelled_when_on_test(repo, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    sets = ["--set", f"data.uri={data}", "--set", f"run.uri={run}", "--set", "recommender.name=bpr",
            "--set", "stage1.epochs=3", "--set", "ray.cpus_per_worker=0.5",
            "--set", "sweep={name: grid, stage: stage1, space: {recommender.reg_weight: [0.0001, 0.1]}}"]
    prep = ptmrec(repo, "-q", "prepare", "--config", "configs/smoke.yaml", *sets)
    assert prep.returncode == 0, prep.stderr

    def sweep(*extra):
        proc = ptmrec(repo, "sweep", "--config", "configs/smoke.yaml", *sets, *extra)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        return proc, json.loads((run / "sweep-grid.json").read_text())

    proc, summary = sweep()
    assert summary["stage"] == "stage1" and len(summary["trials"]) == 2
    assert proc.stderr.count("stage 1 for {") == 2 and "(selected)" in proc.stdout
    assert summary["best"]["valid"]["recall@20"] == max(t["valid"]["recall@20"] for t in summary["trials"])
    # MMRec's protocol on the same runs: nothing retrained, the pick by test, and said so
    proc, summary = sweep("--set", "sweep.select=test")
    assert proc.stderr.count("already trained") == 2 and "stage 1 for {" not in proc.stderr
    assert summary["best"]["test"]["recall@20"] == max(t["test"]["recall@20"] for t in summary["trials"])
    assert "SELECTED ON TEST" in proc.stdout and "test-set leakage" in summary["warning"]
    assert "selected_by_test" in (run / "sweep-grid.csv").read_text()
