"""Ray Train glue: how a failed training reaches the user."""

from __future__ import annotations


def test_a_failed_training_is_one_line_from_the_first_failing_worker():
    from ray.train import ControllerError, WorkerGroupError

    from ptmrec.runtime.ray_train import root_cause

    wrapped = RuntimeError("Traceback (most recent call last):\n  File x, line 1\n"
                           "ptmrec.data.stream.ShardError: items/items-000001.tar: sha256 3f… differs from the manifest's")
    error = WorkerGroupError("2 workers failed", {1: ValueError("rank one"), 0: wrapped})
    assert root_cause(error) == "rank 0: ptmrec.data.stream.ShardError: items/items-000001.tar: sha256 3f… differs from the manifest's"
    assert root_cause(ControllerError(TimeoutError("worker group startup timed out after 60.0 seconds"))) == \
        "worker group startup timed out after 60.0 seconds"
