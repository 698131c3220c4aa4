"""Ray Tune sweeps on the smoke config, in one run folder: a stage-1 grid (the tuned frozen baseline), chosen
on valid or, labelled, on test; then a stage-2 sweep whose stage 1 is one of the grid's, reused."""

import json

import pytest

from tests.integration.conftest import ptmrec

pytestmark = pytest.mark.slow


def test_stage1_grid_then_a_stage2_sweep_that_reuses_its_stage1(repo, smoke_data, tmp_path):
    run = tmp_path / "run"
    sets = ["--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}", "--set", "ray.cpus_per_worker=0.5",
            "--set", "stage1.epochs=2", "--set", "stage2.epochs=1"]

    def sweep(name, space, *extra):
        proc = ptmrec(repo, "sweep", "--config", "configs/smoke.yaml", *sets, "--set", f"sweep={{name: {name}, {space}}}",
                      *extra, timeout=1500)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        return proc, json.loads((run / f"sweep-{name}.json").read_text())

    grid = "stage: stage1, space: {recommender.reg_weight: [0.0001, 0.1]}"
    proc, summary = sweep("grid", grid)
    assert summary["stage"] == "stage1" and len(summary["trials"]) == 2
    assert proc.stderr.count("stage 1 for {") == 2 and "(selected)" in proc.stdout
    assert summary["best"]["valid"]["recall@20"] == max(t["valid"]["recall@20"] for t in summary["trials"])
    # MMRec's protocol on the same runs: nothing retrained, the pick by test, and said so
    proc, summary = sweep("grid", grid, "--set", "sweep.select=test")
    assert proc.stderr.count("already trained") == 2 and "stage 1 for {" not in proc.stderr
    assert summary["best"]["test"]["recall@20"] == max(t["test"]["recall@20"] for t in summary["trials"])
    assert "SELECTED ON TEST" in proc.stdout and "test-set leakage" in summary["warning"]
    assert "selected_by_test" in (run / "sweep-grid.csv").read_text()

    # stage 2 over one of the grid's stage-1 settings: that stage 1 is reused, not trained again. The cluster
    # holds one trial's workers at a time (2 × 0.8 of 2 CPUs), and ASHA stops the diverging second trial (adapter
    # lr 1000) after its first of two epochs: Tune kills it, and the third trial's workers must still get its CPUs.
    stage2 = ("smoke", "search: grid, space: {recommender.reg_weight: [0.0001], stage2.lr: [0.001, 1000.0, 0.002]}",
              "--set", "ray.cpus_per_worker=0.8", "--set", "stage2.epochs=2")
    proc, summary = sweep(*stage2)
    trials = {t["params"]["stage2.lr"]: t for t in summary["trials"]}
    assert sorted(trials) == [0.001, 0.002, 1000.0]
    # Tune acts on a stop at the trial's next report: killed then, the trial is recorded as stopped; a trial that
    # finished saving first (a race) is complete and counts as finished
    diverged = trials[1000.0]
    assert diverged["stopped"]["after_epoch"] == 1 if not diverged["valid"] else diverged["best_epoch"] == 0, diverged
    assert trials[0.001]["valid"] and trials[0.002]["valid"], proc.stdout[-3000:]
    assert trials[0.002]["best_epoch"] is not None and "startup timed out" not in proc.stdout + proc.stderr
    assert proc.stderr.count("already trained") == 1 and "stage 1 for {" not in proc.stderr
    assert len({t["stage1"] for t in trials.values()}) == 1 and len(list((run / "sweep-stage1").glob("*/stage1"))) == 2
    # the best trial is the best by valid, and its test metric is reported beside it
    finished = [t for t in trials.values() if t["valid"]]
    assert summary["best"]["valid"]["recall@20"] == max(t["valid"]["recall@20"] for t in finished)
    assert "(selected)" in proc.stdout and "(reported)" in proc.stdout
    assert (run / "sweep-smoke.csv").read_text().count("\n") == 1 + 3 and (run / "sweep-smoke.png").stat().st_size > 1000
    # started again after one trial lost its metrics.json (as if killed while saving): the finished and the stopped
    # trials are reused, and that one resumes from its checkpoint after its last epoch and saves the same result
    lost = run / "sweep-stage1" / summary["best"]["stage1"].rsplit("/", 1)[-1] / "trials" / trials[0.002]["trial"]
    (lost / "metrics.json").unlink()
    proc, again = sweep(*stage2)
    assert proc.stderr.count("already finished: reusing") + proc.stderr.count("already stopped: reusing") == 2
    assert "1 of 3 trials to run" in proc.stderr and "resumed from the checkpoint after epoch 2" in proc.stderr
    redone = next(t for t in again["trials"] if t["trial"] == trials[0.002]["trial"])
    assert redone["valid"] == trials[0.002]["valid"] and again["best"]["trial"] == summary["best"]["trial"]
