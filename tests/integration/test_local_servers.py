"""The servers a command starts go when it goes: Ctrl-C, SIGTERM, SIGHUP, and even SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ENV

pytestmark = pytest.mark.slow

STARTS_BOTH = """
import time
from ptmrec.runtime.local_ray import LocalRayCluster
from ptmrec.runtime.local_s3 import LocalS3Server
s3, ray = LocalS3Server().start(), LocalRayCluster().start()
print(s3.pid, ray.process.pid, flush=True)
time.sleep(600)
"""


def processes_with(text: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if "pgrep" not in line]


def gone(check, timeout_s: float = 40.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1)
    return False


def test_a_killed_parent_leaves_no_ray_head_and_no_s3_server(repo):
    parent = subprocess.Popen([sys.executable, "-c", STARTS_BOTH], cwd=repo, env=ENV, stdout=subprocess.PIPE, text=True)
    s3_pid, ray_pid = (int(x) for x in parent.stdout.readline().split())
    cmdline = open(f"/proc/{ray_pid}/cmdline").read().split("\0")
    temp_dir = cmdline[cmdline.index("--temp-dir") + 1]  # every process of that cluster names it
    assert processes_with(temp_dir)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert gone(lambda: not os.path.exists(f"/proc/{s3_pid}") and not processes_with(temp_dir)), processes_with(temp_dir)


def test_s3_server_command_stops_on_sigterm(repo):
    server = subprocess.Popen([sys.executable, "-m", "ptmrec.cli", "s3-server"], cwd=repo, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    first = server.stdout.readline()
    assert "local S3 server on http://127.0.0.1:" in first
    moto_pid = int(first.split("(pid ")[1].split(")")[0])
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert gone(lambda: not os.path.exists(f"/proc/{moto_pid}"), 15)
