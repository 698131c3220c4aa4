"""A real S3-compatible server on 127.0.0.1 for the demo and the tests (moto's standalone server).

It runs as its own process, so clients talk to it over HTTP exactly as they would to S3 or MinIO; it is
stopped by its own process id. Its objects live in that process's memory: they go when it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Optional

# moto accepts any key pair unless IAM auth is switched on; these are the ones the demo and tests use.
ACCESS_KEY_ID = "ptmrec-local"
SECRET_ACCESS_KEY = "ptmrec-local-secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL("libc.so.6", use_errno=True).prctl


# Resolved here, not in the child: between fork and exec only async-signal-safe work is safe, and an import
# there can deadlock on a lock another thread (a lease heartbeat, a log handler) held at the fork.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for processes we start: the kernel sends them SIGTERM when the process that started them
    dies, even by SIGKILL, so a killed pipeline leaves no S3 server, Ray head or `ray job submit` behind
    (Linux; a no-op elsewhere)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: Optional[subprocess.Popen], timeout_s: float, group: bool = False) -> None:
    """SIGTERM a server we started (its whole process group with `group`), SIGKILL after `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    kill = os.killpg if group else os.kill
    kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill(process.pid, signal.SIGKILL)
        process.wait()


class LocalS3Server:
    """Start with `start()` (or `with LocalS3Server() as s3:`); `endpoint_url` and `env()` say how to reach it.

    `auth=True` switches on moto's IAM checks after `free_actions` unauthenticated calls, so a test can
    create real credentials first and then see wrong ones refused.
    """

    def __init__(self, port: Optional[int] = None, auth: bool = False, free_actions: int = 0):
        self.port = port or free_port()
        self.auth = auth
        self.free_actions = free_actions
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so `Storage`) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 30.0) -> "LocalS3Server":
        env = dict(os.environ)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.free_actions)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal should reach us, not kill it mid-request
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local S3 server exited at start with status {self.process.returncode} "
                                   f"(port {self.port})")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"local S3 server did not answer on {self.endpoint_url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)

    def __enter__(self) -> "LocalS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
