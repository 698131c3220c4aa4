"""A local Ray cluster (head node with dashboard and job server on 127.0.0.1) for the demo and the tests.

`ray start --head --block` runs in its own process group, so stopping it by its process id also stops the
GCS, raylet and dashboard it spawned, and nothing else on the machine (unlike `ray stop`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from ptmrec.runtime.local_s3 import die_with_parent, free_port, stop_process


def ray_command() -> list[str]:
    """The `ray` CLI of this interpreter's Ray, as a command. Through `-m`, not the `ray` script beside the
    interpreter: a Ray installed with `pip --target` (an offline wheelhouse) has its script elsewhere."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


TEMP_PREFIX = "ptmrec-ray-"


def remove_orphaned_sessions() -> list[str]:
    """Remove the session folders (logs, sockets, spilled objects) of local clusters whose head no longer runs:
    a SIGKILLed pipeline takes its cluster down (`die_with_parent`) but cannot remove the folder. A folder is
    orphaned when no running process has it on its command line (the head is started with `--temp-dir`).
    Linux only (it reads /proc); returns the folders removed."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    ours = sorted(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"))
    if not ours:
        return []
    in_use = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        in_use.update(a.decode(errors="replace") for a in args if TEMP_PREFIX.encode() in a)
    removed = []
    for folder in ours:
        if not any(str(folder) in arg for arg in in_use) and time.time() - folder.stat().st_mtime > 10:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


class LocalRayCluster:
    """`with LocalRayCluster(num_cpus=2) as ray_cluster:` → `ray_cluster.address` is the job server's URL."""

    def __init__(self, num_cpus: Optional[int] = None, log_file: Optional[str] = None):
        self.num_cpus = num_cpus or os.cpu_count() or 2
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.log_file = log_file
        self.process: Optional[subprocess.Popen] = None
        self.temp_dir: Optional[str] = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        # Local clusters run without token auth (Ray 2.60 turns it on for the job server by default).
        return {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": self.address}

    def start(self, timeout_s: float = 120.0) -> "LocalRayCluster":
        remove_orphaned_sessions()
        self.temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [*ray_command(), "start", "--head", "--block",
             "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--num-cpus", str(self.num_cpus),
             "--include-dashboard", "true", "--disable-usage-stats",
             # Free ports for every listener with a fixed default, so that this cluster starts beside
             # another Ray on the same machine (a test's, a notebook's) instead of losing its job agent.
             *(arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                "--runtime-env-agent-port", "--metrics-export-port", "--ray-client-server-port")
               for arg in (flag, str(free_port()))),
             "--temp-dir", self.temp_dir],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local Ray head exited at start with status {self.process.returncode}"
                                   + (f" (log: {self.log_file})" if self.log_file else ""))
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2).close()
                if self._job_agent_ready():
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"local Ray job server did not answer on {self.address} within {timeout_s:.0f} s")

    def _job_agent_ready(self) -> bool:
        """The dashboard answers before the node's job agent does ("No available agent to submit job"):
        a tiny job that runs to the end proves that submissions go through."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            client = JobSubmissionClient(self.address)
            job = client.submit_job(entrypoint="true")
        except (RuntimeError, ConnectionError):
            return False
        for _ in range(120):
            status = client.get_job_status(job)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status == JobStatus.SUCCEEDED
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        """Stop the cluster and remove its session folder (logs, sockets, job working directories)."""
        stop_process(self.process, timeout_s=30, group=True)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
