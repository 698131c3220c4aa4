"""The main job end to end: the smoke config through three real `ray job submit` jobs on a local Ray cluster,
with data and run URIs on the local S3-compatible server."""

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.slow


def run_watching_ps(args, cwd, env, out_dir, secret: str, timeout: float) -> tuple[int, str, str, list[str]]:
    """Run a command to its end, sampling every process's command line twice a second: (exit status, stdout,
    stderr, the command lines that held `secret`)."""
    import time

    with open(out_dir / "stdout", "w") as out, open(out_dir / "stderr", "w") as err:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        leaked, deadline = [], time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            leaked += [line for line in ps.splitlines() if secret in line]
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, (out_dir / "stdout").read_text(), (out_dir / "stderr").read_text(), leaked


def test_pipeline_through_ray_job_submit_on_s3(repo, s3_server, tmp_path):
    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    # A secret no output may hold: not a command line (ps), the pipeline's output, or any object it wrote.
    secret = f"SENTINEL{uuid.uuid4().hex}"
    env = {**os.environ, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": secret, "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled", "PTMREC_TRACEBACK": "1"}
    from ptmrec.config import StorageConfig
    from ptmrec.storage import Storage

    storage = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key_id="k", secret_access_key="s"))
    storage.ensure_bucket(f"s3://{bucket}")
    args = [sys.executable, "-m", "ptmrec.cli", "pipeline", "--config", "configs/smoke.yaml",
            "--set", f"run.uri=s3://{bucket}/runs/smoke", "--set", f"data.uri=s3://{bucket}/data/smoke",
            "--set", "stage1.epochs=2", "--set", "stage2.epochs=1"]
    code, stdout, stderr, leaked = run_watching_ps(args, repo, env, tmp_path, secret, timeout=1200)
    out = stdout + stderr
    assert code == 0, out[-5000:]
    assert leaked == [] and secret not in out
    for job in ("prepare", "stage1", "stage2"):
        assert f"== {job}: ray job submit --address http://127.0.0.1:" in out
        assert f"== {job}: done in" in out
    stage1 = json.loads(storage.read_text(f"s3://{bucket}/runs/smoke/stage1/metrics.json"))
    stage2 = json.loads(storage.read_text(f"s3://{bucket}/runs/smoke/stage2/metrics.json"))
    assert stage1["stage"] == "stage1" and stage2["stage"] == "stage2" and stage2["mode"] == "ptmrec"
    assert storage.exists(f"s3://{bucket}/runs/smoke/report.md")
    # Ray Train's checkpoints went to the same S3 server
    keys = [o["Key"] for o in storage.client().list_objects_v2(Bucket=bucket, Prefix="runs/smoke/ray/")["Contents"]]
    assert any("/checkpoint_" in k and k.endswith("state.json") for k in keys)
    assert "| frozen (vbpr)" in stdout and "| ptmrec (vbpr, prompt)" in stdout
    every_key = [o["Key"] for page in storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                 for o in page.get("Contents", [])]
    # (read with the client: pyarrow leaves folder markers such as "runs/", which are not URIs of ours)
    assert not [k for k in every_key
                if secret.encode() in storage.client().get_object(Bucket=bucket, Key=k)["Body"].read()]

    # a second run finds every stage done and submits nothing
    again = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert again.stdout.count("already done") == 3 and "ray job submit --address" not in again.stdout


def test_pipeline_stops_at_the_first_failed_job(repo, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "ptmrec.cli", "pipeline", "--config", "configs/smoke.yaml",
         "--set", f"run.uri={tmp_path}/run", "--set", f"data.uri={tmp_path}/data",
         "--set", "stage1.batch_size=255"],  # passes the config checks, fails in the stage-1 job
        cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "== prepare: done in" in out and "== stage1: ray job submit" in out
    assert "job stage1 failed with exit status" in out and "batch_size 255 does not split evenly" in out
    assert "== stage2" not in out  # never submitted
    assert not (tmp_path / "run" / "stage1" / "metrics.json").exists()


def test_a_terminated_pipeline_stops_its_job_on_the_cluster(repo, tmp_path, monkeypatch):
    import signal
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    from ptmrec.runtime.local_ray import LocalRayCluster

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
    # somebody else's cluster (the pipeline must stop its job, not the cluster), whose `python` has the stack
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    with LocalRayCluster() as cluster:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptmrec.cli", "pipeline", "--config", "configs/smoke.yaml", "--address",
             cluster.address, "--set", f"run.uri={tmp_path}/run", "--set", f"data.uri={tmp_path}/data",
             "--set", "stage1.epochs=200", "--set", "stage1.patience=200"],
            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("== stage1: ray job submit"):
                break
        time.sleep(20)  # well into stage 1
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 128 + signal.SIGTERM and "== stage1: stopping the job on the cluster" in out, out[-3000:]
        client = JobSubmissionClient(cluster.address)
        stage1 = [j for j in client.list_jobs() if (j.submission_id or "").startswith("ptmrec-stage1-")]
        assert len(stage1) == 1
        for _ in range(60):
            if client.get_job_status(stage1[0].submission_id) == JobStatus.STOPPED:
                break
            time.sleep(1)
        assert client.get_job_status(stage1[0].submission_id) == JobStatus.STOPPED
