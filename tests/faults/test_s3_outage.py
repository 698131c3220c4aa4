"""Stage 1 with its data and run on S3 behind a proxy that answers 503 to everything for 30 s mid-stage: the
workers (our reads and writes, pyarrow's checkpoint uploads) wait the outage out and the stage finishes."""

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.faulty_proxy import FaultyProxy
from tests.s3_helpers import bucket_keys, upload_folder
from tests.integration.conftest import ENV

pytestmark = [pytest.mark.slow, pytest.mark.slower]


def test_a_30_s_outage_mid_stage_only_pauses_it(repo, smoke_data, s3_server, s3_storage):
    bucket = s3_storage.bucket
    upload_folder(s3_storage, smoke_data, f"s3://{bucket}/data")
    proxy = FaultyProxy(s3_server.endpoint_url)
    run = f"s3://{bucket}/run-{uuid.uuid4().hex[:6]}"
    args = [sys.executable, "-m", "ptmrec.cli", "stage1", "--config", "configs/smoke.yaml",
            "--set", f"data.uri=s3://{bucket}/data", "--set", f"run.uri={run}",
            "--set", f"storage.endpoint_url={proxy.endpoint}", "--set", "recommender.name=bpr",
            "--set", "stage1.epochs=12", "--set", "stage1.patience=1000"]
    proc = subprocess.Popen(args, cwd=repo, env={**ENV, **s3_server.env()}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        prefix = run[len(f"s3://{bucket}/"):]
        while not [k for k in bucket_keys(s3_storage, bucket, prefix) if k.endswith("state.json") and "/checkpoint_" in k]:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the stage ended"
            time.sleep(0.3)
        proxy.outage(30)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.stop()
    assert proc.returncode == 0, out[-4000:]
    assert proxy.refused > 0  # the outage was met, and waited out
    metrics = json.loads(s3_storage.read_text(f"{run}/stage1/metrics.json"))
    assert metrics["epochs_run"] == 12 and metrics["resumed_from_epoch"] is None  # no restart was needed
    assert "restarting the workers" not in out
