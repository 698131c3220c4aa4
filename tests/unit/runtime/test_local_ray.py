"""Session folders of local Ray clusters whose head is gone (a SIGKILLed pipeline) are removed at the next start."""

import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from ptmrec.runtime.local_ray import TEMP_PREFIX, remove_orphaned_sessions


def test_only_folders_no_running_process_names_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan, live, fresh = (tmp_path / f"{TEMP_PREFIX}{name}" for name in ("orphan", "live", "fresh"))
    for folder in (orphan, live, fresh):
        (folder / "session_latest" / "logs").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(live, (old, old))  # `fresh` is being set up by a cluster starting now: not touched
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--temp-dir", str(live)])
    # Popen returns once exec has begun, a moment before the kernel shows the new command line in /proc (read
    # empty then); a real head has run for seconds before its folder is 10 s old, so wait as it would have
    cmdline = Path(f"/proc/{holder.pid}/cmdline")
    deadline = time.time() + 10
    while str(live).encode() not in cmdline.read_bytes() and time.time() < deadline:
        time.sleep(0.01)
    try:
        assert remove_orphaned_sessions() == [str(orphan)]
    finally:
        holder.kill()
        holder.wait()
    assert not orphan.exists() and live.is_dir() and fresh.is_dir()
