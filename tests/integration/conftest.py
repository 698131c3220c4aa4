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


@pytest.fixture(scope="module")
def smoke_data(repo, tmp_path_factory):
    data = tmp_path_factory.mktemp("smoke") / "data"
    proc = ptmrec(repo, "-q", "prepare", "--config", "configs/smoke.yaml", "--set", f"data.uri={data}")
    assert proc.returncode == 0, proc.stderr
    return data
