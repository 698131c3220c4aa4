"""kill -9 of one Ray Train worker mid-stage: a transient failure, so the stage restarts its workers from the
latest checkpoint on storage (`ray.max_failures`, 1 by default) and finishes in the same command, with the
metrics of a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ENV, SMOKE_STAGE2, copy_run, ptmrec

pytestmark = [pytest.mark.slow, pytest.mark.slower]


def run_killing_a_worker(repo, args: list[str], checkpoints) -> str:
    """Run `ptmrec <args>`, kill -9 the second Ray Train worker once `checkpoints()` finds a checkpoint, and
    return the command's stderr after it ended (asserting it finished)."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "ptmrec.cli", *args], cwd=repo, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not checkpoints():
            assert proc.poll() is None, "the stage ended before its first checkpoint"
            time.sleep(0.2)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(workers) == 2
        workers[1].kill()
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "a transient failure; restarting the workers from the latest checkpoint (restart 1 of" in err
    return err


def assert_same_end(killed: dict, whole: dict) -> None:
    """The resumed run continued the same seeded schedule from its checkpoint: it ends where the other does."""
    assert killed["resumed_from_epoch"] >= 1 and whole["resumed_from_epoch"] is None
    assert killed["best_epoch"] == whole["best_epoch"] and killed["epochs_run"] == whole["epochs_run"]
    for split in ("valid", "test"):
        for metric, value in whole[split].items():
            assert killed[split][metric] == pytest.approx(value, abs=1e-6), (split, metric)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_worker_killed_mid_stage_ends_where_an_uninterrupted_run_does(repo, smoke_data, smoke_stage1, smoke_stage2,
                                                                        tmp_path, stage):
    killed = tmp_path / "killed"
    if stage == "stage1":
        whole = tmp_path / "whole"
        # lazy Adam: its sparse-row moments go into the checkpoint and come back with it
        args = ["stage1", "--config", "configs/smoke.yaml", "--set", "stage1.epochs=6", "--set", "stage1.patience=1000",
                "--set", "stage1.optimizer=lazy_adam"]
        for run in (killed, whole):
            copy_run(smoke_stage1, run, parts=["features"])  # frozen features found: no extraction
        proc = ptmrec(repo, *args, "--set", f"data.uri={smoke_data}", "--set", f"run.uri={whole}", timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "frozen features found" in proc.stderr
    else:
        whole = smoke_stage2  # the same stage 2 from the same teacher, never interrupted
        args = ["stage2", *SMOKE_STAGE2]
        copy_run(smoke_stage1, killed)
    run_killing_a_worker(repo, [*args, "--set", f"data.uri={smoke_data}", "--set", f"run.uri={killed}"],
                         lambda: list((killed / "ray").glob(f"*{stage}*/checkpoint_*/state.json")))
    assert_same_end(json.loads((killed / stage / "metrics.json").read_text()),
                    json.loads((whole / stage / "metrics.json").read_text()))
