"""Helpers for the integration tests: run the real `ptmrec` command, and a prepared smoke data set."""

import os
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
    `smoke_data`: stage-2 tests copy it (`shutil.copytree`) instead of each training their own."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    proc = ptmrec(repo, "-q", "stage1", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run
