"""The main job end to end: the smoke config through three real `ray job submit` jobs on a local Ray cluster,
with data and run URIs on the local S3-compatible server."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.s3_helpers import bucket_keys

pytestmark = pytest.mark.slow


class SecretWatch:
    """Looks for `secret` while commands run: in every process's command line (each `poll`), and every tenth
    poll in the files under `watched` (where the Ray cluster keeps its session logs while it runs) and in the
    records of the jobs on the clusters the output names. `leaks` says where it was seen."""

    def __init__(self, secret: str, watched: Path) -> None:
        self.secret, self.watched = secret, watched
        self.leaks: set[str] = set()
        self.polls = 0

    def poll(self, output: str) -> None:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        self.leaks.update(f"ps: {line[:100]}" for line in ps.splitlines() if self.secret in line)
        if self.polls % 10 == 0:
            self.leaks.update(files_holding(self.watched, self.secret))
            self.leaks.update(jobs_holding(output, self.secret))
        self.polls += 1

    def run(self, args, cwd, env, log: Path, until=None, timeout: float = 1200) -> subprocess.Popen:
        """Start `args` (output to `log`) and `wait` for it."""
        with open(log, "w") as out:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        return self.wait(proc, log, until, timeout)

    def wait(self, proc, log: Path, until=None, timeout: float = 1200) -> subprocess.Popen:
        """Poll twice a second until `proc` ends or `until()` holds."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not (until and until()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            self.poll(log.read_text())
            time.sleep(0.5)
        return proc


def files_holding(folder: Path, secret: str) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(f"file: {path}")
        except OSError:  # a socket, or gone meanwhile
            pass
    return found


def jobs_holding(output: str, secret: str) -> list[str]:
    """The clusters named in `output` whose job records (entrypoint, runtime environment, metadata), as the
    job server's REST API returns them, hold the secret."""
    import urllib.request

    found = []
    for address in set(re.findall(r"ray job submit --address (http://127\.0\.0\.1:\d+)", output)):
        try:
            with urllib.request.urlopen(f"{address}/api/jobs/", timeout=5) as reply:
                if secret in reply.read().decode(errors="replace"):
                    found.append(f"job records on {address}")
        except OSError:  # the cluster stopped meanwhile
            pass
    return found


def args_after(process, flag: str) -> list[str]:
    try:
        args = process.cmdline()
    except Exception:  # noqa: BLE001 - ended meanwhile
        return []
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_pipeline_through_ray_job_submit_on_s3(repo, s3_server, tmp_path):
    """The pipeline on S3, killed (SIGKILL) mid-stage-1 and run again: nothing of the killed one stays
    running, a second pipeline is refused meanwhile, the same command resumes and finishes, a third finds
    everything done; a sentinel secret in the environment shows up nowhere."""
    import psutil

    from ptmrec.config import StorageConfig
    from ptmrec.storage import Storage

    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    secret = f"SENTINEL{uuid.uuid4().hex}"
    # The clusters' session folders go under TMPDIR: a short one (Ray's socket paths are limited in length).
    tmp = Path(tempfile.mkdtemp(prefix="ptm-e2e-", dir="/tmp"))
    # As a user runs it: Ray Train's own polling (the suite's faster one ends the short stage 1 before the
    # watch below sees its first checkpoint on S3)
    user_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_TRAIN_")}
    env = {**user_env, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": secret, "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "offline", "PTMREC_TRACEBACK": "1", "TMPDIR": str(tmp)}
    storage = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key_id="k", secret_access_key="s"))
    storage.ensure_bucket(f"s3://{bucket}")
    args = [sys.executable, "-m", "ptmrec.cli", "pipeline", "--config", "configs/smoke.yaml",
            "--set", f"run.uri=s3://{bucket}/runs/smoke", "--set", f"data.uri=s3://{bucket}/data/smoke",
            "--set", "stage1.epochs=20", "--set", "stage1.eval_every=5", "--set", "stage1.patience=1000",
            "--set", "stage2.epochs=1", "--set", f"tracking.dir={tmp_path}/wandb"]

    def stage1_checkpoint() -> bool:
        return any("stage1" in k and "/checkpoint_" in k and k.endswith("state.json")
                   for k in bucket_keys(storage, bucket, "runs/smoke/ray/"))

    def preparing() -> bool:  # the first pipeline holds its lease by then
        return "== prepare: ray job submit" in (tmp_path / "first.log").read_text()

    watch = SecretWatch(secret, tmp)
    try:
        first = watch.run(args, repo, env, tmp_path / "first.log", until=preparing)
        second = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "ray job submit" not in second.stdout, second.stderr[-2000:]
        assert re.search(rf"leases/pipeline.json: the pipeline of run smoke is running on this run \(pid {first.pid} ",
                         second.stderr), second.stderr[-2000:]
        watch.wait(first, tmp_path / "first.log", until=stage1_checkpoint)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        started = psutil.Process(first.pid).children(recursive=True)
        session = next(a for p in started for a in args_after(p, "--temp-dir"))
        first.kill()  # SIGKILL: no handler runs; the parent-death signal takes down what it started
        first.wait()
        _, alive = psutil.wait_procs(started, timeout=90)
        assert not alive, [" ".join(p.cmdline())[:200] for p in alive]

        again = watch.run(args, repo, env, tmp_path / "again.log")
        assert not os.path.exists(session)  # the killed cluster's session folder, removed by the next start
        assert not list(tmp.glob("ptmrec-ray-*"))  # and this one's went with it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = (tmp_path / "again.log").read_text()
    assert again.returncode == 0, out[-5000:]
    assert watch.leaks == set() and secret not in (tmp_path / "first.log").read_text() + out + second.stderr
    assert "taking over the lease of the pipeline of run smoke" in out  # its holder is gone: no wait
    assert "== prepare: already done" in out and "resumed from the checkpoint after epoch" in out
    for job in ("stage1", "stage2"):
        assert f"== {job}: ray job submit --address http://127.0.0.1:" in out and f"== {job}: done in" in out
    stage1 = json.loads(storage.read_text(f"s3://{bucket}/runs/smoke/stage1/metrics.json"))
    stage2 = json.loads(storage.read_text(f"s3://{bucket}/runs/smoke/stage2/metrics.json"))
    assert stage1["stage"] == "stage1" and stage1["resumed_from_epoch"] >= 1 and stage1["epochs_run"] == 20
    assert [h["epoch"] for h in stage1["history"]] == [5, 10, 15, 20]  # picked up after the restored epochs
    assert stage2["stage"] == "stage2" and stage2["mode"] == "ptmrec"
    assert storage.exists(f"s3://{bucket}/runs/smoke/report.md")
    assert "| frozen (vbpr)" in out and "| ptmrec (vbpr, prompt)" in out
    # W&B: the stage-1 run killed midway, its resumed one and stage 2's, none holding the secret
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))) == 3
    assert files_holding(tmp_path / "wandb", secret) == []
    # nothing in the bucket holds it (read with the client: pyarrow leaves folder markers such as "runs/")
    assert not [k for k in bucket_keys(storage, bucket)
                if secret.encode() in storage.client().get_object(Bucket=bucket, Key=k)["Body"].read()]

    # a third run finds every stage done and submits nothing
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count("already done") == 3 and "ray job submit --address" not in done.stdout


def test_a_pipeline_on_a_given_cluster_stops_at_a_failed_job_and_stops_its_job_when_terminated(repo, tmp_path,
                                                                                               monkeypatch):
    import signal

    from ray.job_submission import JobStatus, JobSubmissionClient

    from ptmrec.runtime.local_ray import LocalRayCluster

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
    # somebody else's cluster (the pipeline must stop its job, not the cluster), whose `python` has the stack
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    with LocalRayCluster() as cluster:
        def pipeline(name, *sets):
            return [sys.executable, "-m", "ptmrec.cli", "pipeline", "--config", "configs/smoke.yaml", "--address",
                    cluster.address, "--set", f"run.uri={tmp_path}/{name}/run", "--set",
                    f"data.uri={tmp_path}/{name}/data", *(a for s in sets for a in ("--set", s))]

        # a config that passes the checks and fails in the stage-1 job: stage 2 is never submitted
        proc = subprocess.run(pipeline("failed", "stage1.batch_size=255"), cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "== prepare: done in" in out and "== stage1: ray job submit" in out
        assert "job stage1 failed with exit status" in out and "batch_size 255 does not split evenly" in out
        assert "== stage2" not in out
        assert not (tmp_path / "failed" / "run" / "stage1" / "metrics.json").exists()

        # SIGTERM mid-stage-1: the pipeline stops its job on the cluster
        proc = subprocess.Popen(pipeline("terminated", "stage1.epochs=200", "stage1.patience=200"), cwd=repo,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("== stage1: ray job submit"):
                break
        time.sleep(20)  # well into stage 1
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 128 + signal.SIGTERM and "== stage1: stopping the job on the cluster" in out, out[-3000:]
        client = JobSubmissionClient(cluster.address)
        stage1 = [j for j in client.list_jobs() if (j.submission_id or "").startswith("ptmrec-stage1-")
                  and client.get_job_status(j.submission_id) != JobStatus.FAILED]
        assert len(stage1) == 1
        for _ in range(60):
            if client.get_job_status(stage1[0].submission_id) == JobStatus.STOPPED:
                break
            time.sleep(1)
        assert client.get_job_status(stage1[0].submission_id) == JobStatus.STOPPED
