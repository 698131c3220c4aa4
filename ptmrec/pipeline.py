"""The main job: prepare → recommendation stage → knowledge-guided stage, as three `ray job submit` jobs.

Starts a local Ray cluster (and the local S3 server when the run's storage is `s3://` on localhost) unless
`--address` names a cluster, submits each stage as its own job with the repository as working directory,
streams its logs, stops at the first failed job with its exit status, prints the stage-1 vs stage-2 table
and where the report is, and stops what it started. A stage whose outputs are already in the run URI is
not submitted again unless `force`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ptmrec.config import Config, pinned_overrides
from ptmrec.lease import RunLease
from ptmrec.runtime.local_ray import ray_command
from ptmrec.runtime.local_s3 import die_with_parent
from ptmrec.storage import Storage
from ptmrec.uris import join, parse_uri

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    name: str
    script: str  # under jobs/
    done_marker: str  # relative to the run URI (or the data URI for prepare)
    under_data: bool = False


JOBS = [
    Job("prepare", "jobs/prepare_data.py", "manifest.json", under_data=True),
    Job("stage1", "jobs/recommendation_stage.py", "stage1/metrics.json"),
    Job("stage2", "jobs/knowledge_stage.py", ""),  # <stage2.mode's folder>/metrics.json (stage2/, stage2-<mode>/)
]


def finished(storage: Storage, cfg: Config, job: Job) -> tuple[str, Optional[bool]]:
    """(marker URI, state): True when the job's output exists for these settings, False when it exists for
    other settings (its metrics.json carries their fingerprint), None when it does not exist."""
    from ptmrec.stages.common import settings_fingerprint
    from ptmrec.stages.knowledge import stage_dir

    if job.name == "stage2":
        marker = join(cfg.run.uri, stage_dir(cfg.stage2.mode, cfg.stage2.output), "metrics.json")
    else:
        marker = join(cfg.data.uri if job.under_data else cfg.run.uri, job.done_marker)
    if not storage.exists(marker):
        return marker, None
    if job.under_data:
        return marker, True
    written = json.loads(storage.read_text(marker)).get("settings")
    return marker, written == settings_fingerprint(cfg, job.name)


class JobFailed(RuntimeError):
    def __init__(self, job: str, status: int):
        super().__init__(f"job {job} failed with exit status {status}; later stages were not submitted")
        self.status = status


def run_pipeline(cfg: Config, config_path: str, overrides: list[str], address: Optional[str] = None,
                 force: bool = False, verbose: bool = False) -> dict:
    """Run the three jobs; returns {"stage1": metrics, "stage2": metrics, "report": report.md's text}."""
    from ptmrec.runtime.local_ray import LocalRayCluster
    from ptmrec.runtime.local_s3 import LocalS3Server

    storage = Storage(cfg.storage)
    # Jobs run in a copy of the working directory: pin the URIs and paths to what they mean here.
    pinned = [*overrides, *pinned_overrides(cfg)]
    env_vars = job_env(cfg.ray.env_vars, os.environ)
    with ExitStack() as stack:
        if parse_uri(cfg.run.uri).scheme == "s3" and _wants_local_s3(cfg):
            s3 = stack.enter_context(LocalS3Server())
            os.environ.update(s3.env())
            pinned.append(f"storage.endpoint_url={s3.endpoint_url}")
            storage = Storage(dataclasses.replace(cfg.storage, endpoint_url=s3.endpoint_url))
            for uri in (cfg.run.uri, cfg.data.uri, cfg.run.features_uri):
                if uri:
                    storage.ensure_bucket(uri)
            env_vars.update({k: v for k, v in s3.env().items() if k not in SECRET_ENV})  # the cluster inherits those
            log.info("started the local S3 server on %s (pid %d)", s3.endpoint_url, s3.pid)
        # One pipeline per run URI: a second one would submit the same jobs against the same folders.
        stack.enter_context(RunLease(storage, join(cfg.run.uri, "leases", "pipeline.json"),
                                     what=f"the pipeline of run {cfg.run.name}"))
        pending = []
        for job in JOBS:
            marker, done = finished(storage, cfg, job)
            if done and not force:
                print(f"== {job.name}: already done ({marker}); skipping (use --force to redo)", flush=True)
                continue
            if done is False and not force:
                print(f"== {job.name}: {marker} holds a run with other settings; running it again", flush=True)
            pending.append(job)
        if pending and address is None:  # nothing to submit: no cluster to start either
            cluster = stack.enter_context(LocalRayCluster(log_file=_head_log(cfg)))
            address = cluster.address
            python = sys.executable  # the local cluster runs from this environment
            log.info("started a local Ray cluster: job server %s (pid %d)", address, cluster.process.pid)
        else:
            python = "python"
            if pending and any(k in os.environ for k in SECRET_ENV):
                log.info("credentials in this shell (%s) are not sent to the cluster at %s: it reads its own "
                         "(Kubernetes / Slurm Secrets, cluster/README.md)",
                         ", ".join(k for k in SECRET_ENV if k in os.environ), address)
        for job in pending:
            submit(job, address, python, config_path, pinned, env_vars, cfg.ray.working_dir_excludes, verbose)
        # Read while a local S3 server we started still holds the objects (stage 2 wrote the report).
        out = {job.name: json.loads(storage.read_text(finished(storage, cfg, job)[0])) for job in JOBS[1:]}
        out["report"] = storage.read_text(join(cfg.run.uri, "report.md"))
        return out


# Never put into a job's runtime environment: `ray job submit --runtime-env-json` shows it to anyone who can
# run `ps` and Ray keeps it in the job's metadata. A cluster this pipeline starts inherits them from this
# process's environment instead; any other cluster has its own (Kubernetes / Slurm Secrets).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY")
PASSED_ENV = ("HF_HUB_OFFLINE", "WANDB_MODE", "WANDB_PROJECT", "TORCH_EXTENSIONS_DIR")


def job_env(configured: dict[str, str], environ) -> dict[str, str]:
    """The jobs' runtime environment: ray_config.yaml's `env_vars`, then this shell's settings that the jobs
    need (endpoints, offline switches), never a secret (`SECRET_ENV`)."""
    env = {k: v for k, v in configured.items() if k not in SECRET_ENV}
    env.update({k: v for k, v in environ.items()
                if (k in PASSED_ENV or k.startswith("AWS_")) and k not in SECRET_ENV})
    if "WANDB_API_KEY" in environ and "WANDB_MODE" not in environ:
        env["WANDB_MODE"] = "online"
    return env


def _head_log(cfg: Config) -> Optional[str]:
    loc = parse_uri(cfg.run.uri)
    if loc.scheme != "file":
        return None
    Path(loc.path).mkdir(parents=True, exist_ok=True)
    return str(Path(loc.path) / "ray-head.log")


def _wants_local_s3(cfg: Config) -> bool:
    """An s3:// run with no endpoint anywhere is the demo's "local S3": start one. A configured endpoint
    (AWS, MinIO, or a local server someone else started) is used as it is."""
    return not (cfg.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))


# Lines of `ray job submit` output that say nothing about the run: Ray's CLI chatter, W&B's run banners and
# summaries (the W&B run holds them), progress-bar repaints, one-time build notes, and a Ray warning about
# its own actors. Shown with `ptmrec -v`.
NOISE = re.compile("|".join([
    r"\b(INFO|SUCC) (cli|packaging|dashboard_sdk|sdk)\.py:\d+ --",
    r"^-{6,}\s*$",
    r"Running entrypoint for job ",
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store",
    r"\bwandb:",
    r"Setting accelerator to CPU",
    r"deepspeed_shm_comm_op built successfully",
    r"Loading weights:",
    r"FutureWarning: `torch\.distributed\._",
    r"^\s*return func\(\*args, \*\*kwargs\)\s*$",
]))


def shown(line: str) -> Optional[str]:
    """The part of a job's output line worth printing (a progress bar's last repaint), or None for noise."""
    line = line.rstrip("\n").split("\r")[-1]
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)
    if not plain.strip() or NOISE.search(plain):
        return None
    return line


def submit(job: Job, address: str, python: str, config_path: str, overrides: list[str], env_vars: dict,
           excludes: list[str], verbose: bool = False) -> None:
    """`ray job submit` one job and stream its logs; raises JobFailed on a non-zero exit."""
    entrypoint = " ".join([python, job.script, "--config", shlex.quote(config_path),
                           *(f"--set {shlex.quote(o)}" for o in overrides)])
    runtime_env = {"working_dir": str(REPO), "excludes": excludes, "env_vars": env_vars}
    submission_id = f"ptmrec-{job.name}-{int(time.time())}"
    cmd = [*ray_command(), "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env),
           "--submission-id", submission_id, "--", *shlex.split(entrypoint)]
    print(f"== {job.name}: ray job submit --address {address} --working-dir . -- {entrypoint}", flush=True)
    start = time.perf_counter()
    hidden = 0
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", preexec_fn=die_with_parent) as proc:
        try:
            for line in proc.stdout:
                keep = line.rstrip("\n") if verbose else shown(line)
                if keep is None:
                    hidden += 1
                else:
                    print(keep, flush=True)
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C, SIGTERM or SIGHUP: stop the job on the cluster too, not only our view of it.
            print(f"== {job.name}: stopping the job on the cluster", flush=True)
            subprocess.run([*ray_command(), "job", "stop", "--address", address, submission_id], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            raise
    note = f" ({hidden} lines of Ray / W&B chatter hidden; `ptmrec -v pipeline …` shows them)" if hidden else ""
    if proc.returncode != 0:
        print(f"== {job.name}: failed with exit status {proc.returncode}{note}", flush=True)
        raise JobFailed(job.name, proc.returncode)
    print(f"== {job.name}: done in {time.perf_counter() - start:.0f} s{note}", flush=True)
