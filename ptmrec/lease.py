"""One writer per stage of a run: a lease object with an owner and a heartbeat, next to the run's outputs.

Two commands training the same stage of the same run URI would share one checkpoint folder and overwrite
each other's outputs (last writer wins). A stage therefore holds `<run uri>/leases/<stage>.json` while it
trains: created with a conditional put (S3 `If-None-Match: *`; locally a hard link, which fails if the
name exists), refreshed by a heartbeat thread every `heartbeat_s`, removed when the stage ends. A second
writer finds a fresh lease and stops with one line naming the holder; a lease whose heartbeat is older
than `stale_s`, or whose holder was a process on this host that no longer runs (it was killed), is taken
over, with a warning.

    with RunLease(storage, join(run_uri, "leases", "stage1.json"), what="stage1 of demo"):
        ...  # train

The lease is advisory: it stops ptmrec commands, not other programs writing under the URI.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Optional

from ptmrec.storage import NotFound, Storage, StorageError

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 120.0


class RunLeased(RuntimeError):
    """Another live command holds the lease; the message names it."""


class RunLease:
    """A context manager holding the lease at `uri` (see the module docstring)."""

    def __init__(self, storage: Storage, uri: str, what: str, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S) -> None:
        self.storage, self.uri, self.what = storage, uri, what
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RunLease":
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="ptmrec-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._holder() == self.owner:
                self.storage.delete(self.uri)
        except StorageError as err:  # storage gone for longer than its budget: the lease lapses on its own
            log.warning("%s: could not release the lease (%s); it lapses %.0f s after its last heartbeat", self.uri,
                        err, self.stale_s)
        return False

    def acquire(self) -> None:
        """Take the lease, or a lapsed one; `RunLeased` if a live command holds it."""
        for _ in range(3):  # a lease released or lapsed between our reads: look again
            if self.storage.create_exclusive(self.uri, self._body()):
                return
            held = self._read()
            if held is None:
                continue
            age = time.time() - float(held.get("heartbeat", 0))
            if age < self.stale_s and not _gone(held):
                raise RunLeased(
                    f"{self.uri}: {held.get('what', 'another command')} is running on this run (pid "
                    f"{held.get('pid')} on {held.get('host')}, heartbeat {max(age, 0):.0f} s ago); wait for it to "
                    f"finish or use another run.uri (a killed holder's lease lapses {self.stale_s:.0f} s after its "
                    "last heartbeat)")
            log.warning("%s: taking over the lease of %s (pid %s on %s, %s)", self.uri, held.get("what"), held.get("pid"),
                        held.get("host"), "no longer running" if _gone(held) else f"last heartbeat {age:.0f} s ago")
            self.storage.delete(self.uri)
        raise RunLeased(f"{self.uri}: could not take the lease (other commands keep taking it)")

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "what": self.what, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time()}).encode()

    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.storage.read_bytes(self.uri))
        except NotFound:  # gone since (any other storage error is raised: an outage is not a lost lease)
            return None
        except ValueError:  # unreadable: treat as held just now, so a live writer is never displaced
            return {"heartbeat": time.time()}

    def _holder(self) -> Optional[str]:
        held = self._read()
        return held.get("owner") if held else None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._holder() != self.owner:
                    log.error("%s: this command's lease was taken over by another; its outputs may be overwritten",
                              self.uri)
                    return
                self.storage.write_bytes(self.uri, self._body())
            except StorageError as exc:  # a storage hiccup: the next beat tries again, well within stale_s
                log.warning("%s: lease heartbeat failed: %s", self.uri, exc)


def _gone(held: dict) -> bool:
    """Whether the holder was a process on this host that no longer runs (killed: its lease need not lapse)."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        return False
    return False
