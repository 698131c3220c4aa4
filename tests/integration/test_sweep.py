"""A Ray Tune sweep on the smoke config: 3 trials sharing one stage-1 setting, best picked by valid."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_sweep_shares_stage1_and_selects_on_valid(repo, tmp_path):
    from tests.integration.conftest import ENV

    data, run = tmp_path / "data", tmp_path / "run"
    sets = ["--set", f"data.uri={data}", "--set", f"run.uri={run}", "--set", "ray.cpus_per_worker=0.5",
            "--set", "stage1.epochs=2", "--set", "stage2.epochs=2",
            "--set", "sweep={name: smoke, search: grid, space: {stage1.lr: [0.01], stage2.kt.weight: [0.0, 0.5, 1.0]}}"]
    prep = subprocess.run([sys.executable, "-m", "ptmrec.cli", "-q", "prepare", "--config", "configs/smoke.yaml", *sets],
                          cwd=repo, env=ENV, capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    proc = subprocess.run([sys.executable, "-m", "ptmrec.cli", "sweep", "--config", "configs/smoke.yaml", *sets],
                          cwd=repo, env=ENV, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    summary = json.loads((run / "sweep-smoke.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 3
    assert sorted(t["params"]["stage2.kt.weight"] for t in trials) == [0.0, 0.5, 1.0]
    # stage 1 trained once, under one shared folder, and every trial used it
    assert proc.stderr.count("stage 1 for {") == 1
    assert len({t["stage1"] for t in trials}) == 1
    shared = list((run / "sweep-stage1").glob("*/stage1/metrics.json"))
    assert len(shared) == 1
    # the best trial is the best by valid, and its test metric is reported beside it
    finished = [t for t in trials if t["valid"]]
    assert summary["best"]["valid"]["recall@20"] == max(t["valid"]["recall@20"] for t in finished)
    assert "(selected)" in proc.stdout and "(reported)" in proc.stdout
