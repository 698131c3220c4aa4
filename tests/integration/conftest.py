"""Helpers for the integration and fault tests: run the real `ptmrec` command; copy a finished run. The smoke
data set and runs they share are session fixtures in tests/conftest.py (one instance for the whole session)."""

import os
import shutil
import subprocess
import sys


# Real Ray clusters without token auth; W&B off unless a test switches it on; tracebacks for debugging.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PTMREC_TRACEBACK": "1",
       "WANDB_MODE": "disabled"}


def ptmrec(repo, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "ptmrec.cli", *args], cwd=repo, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


SMOKE_STAGE2 = ["--config", "configs/smoke.yaml", "--set", "stage2.epochs=3", "--set", "stage2.patience=1000"]


def copy_run(run, to, parts=None) -> None:
    """Copy a finished run folder (or only `parts` of it, e.g. ["features"]) for a test to extend."""
    if parts is None:
        shutil.copytree(run, to)
    for part in parts or ():
        shutil.copytree(run / part, to / part)
