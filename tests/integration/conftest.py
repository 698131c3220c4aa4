"""Helpers for the integration tests: run the real `ptmrec` command, and a prepared smoke data set."""

import os
import shutil
import subprocess
import sys

import pytest

# Real Ray clusters without token auth; W&B off unless a test switches it on; tracebacks for debugging.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PTMREC_TRACEBACK": "1",
       "WANDB_MODE": "disabled"}


def ptmrec(repo, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "ptmrec.cli", *args], cwd=repo, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_data(repo, tmp_path_factory):
    """The smoke config's synthetic catalogue, prepared once for the session (tests only read it)."""
    data = tmp_path_factory.mktemp("smoke") / "data"
    proc = ptmrec(repo, "-q", "prepare", "--config", "configs/smoke.yaml", "--set", f"data.uri={data}")
    assert proc.returncode == 0, proc.stderr
    return data


@pytest.fixture(scope="session")
def smoke_stage1(repo, smoke_data, tmp_path_factory):
    """A run folder holding a finished stage 1 of the smoke config as it is (tiny-clip features, VBPR) on
    `smoke_data`, logged to W&B offline in `<run>/../wandb` (test_stage1 reads it): tests copy the folder
    (`copy_run`) instead of each training their own."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    proc = ptmrec(repo, "stage1", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}", "--set", f"tracking.dir={run.parent}/wandb",
                  "--set", "tracking.mode=offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run.parent / "stderr.txt").write_text(proc.stderr)
    return run


@pytest.fixture(scope="session")
def smoke_stage2(repo, smoke_data, smoke_stage1, tmp_path_factory):
    """`smoke_stage1` followed by the smoke config's stage 2 for 3 epochs (prompts, KT), every epoch run
    (patience off): test_stage2 checks it, the worker-kill test compares a killed run against it."""
    run = tmp_path_factory.mktemp("stage2") / "run"
    copy_run(smoke_stage1, run)
    proc = ptmrec(repo, "stage2", *SMOKE_STAGE2, "--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


SMOKE_STAGE2 = ["--config", "configs/smoke.yaml", "--set", "stage2.epochs=3", "--set", "stage2.patience=1000"]


def copy_run(run, to, parts=None) -> None:
    """Copy a finished run folder (or only `parts` of it, e.g. ["features"]) for a test to extend."""
    if parts is None:
        shutil.copytree(run, to)
    for part in parts or ():
        shutil.copytree(run / part, to / part)
