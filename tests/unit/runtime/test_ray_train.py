"""Ray Train glue: how a failed training reaches the user."""

from __future__ import annotations

import pytest
import ray

from ptmrec.config import ConfigError, load_config
from ptmrec.runtime.ray_train import check_placement, root_cause


def test_a_failed_training_is_one_line_from_the_first_failing_worker():
    from ray.train import ControllerError, WorkerGroupError

    wrapped = RuntimeError("Traceback (most recent call last):\n  File x, line 1\n"
                           "ptmrec.data.stream.ShardError: items/items-000001.tar: sha256 3f… differs from the manifest's")
    error = WorkerGroupError("2 workers failed", {1: ValueError("rank one"), 0: wrapped})
    assert root_cause(error) == "rank 0: ptmrec.data.stream.ShardError: items/items-000001.tar: sha256 3f… differs from the manifest's"
    assert root_cause(ControllerError(TimeoutError("worker group startup timed out after 60.0 seconds"))) == \
        "worker group startup timed out after 60.0 seconds"


def test_workers_that_can_never_be_placed_fail_at_once(monkeypatch, repo, caplog):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e10})
    cfg = load_config(repo / "configs/smoke.yaml")
    check_placement(cfg, "stage2", 2, {"CPU": 1.0})  # fits
    with pytest.raises(ConfigError, match=r"stage2 asks for 2 workers × \(2 CPU\) and the Ray cluster has 2 CPU in all"):
        check_placement(cfg, "stage2", 2, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"\(1 CPU \+ 1 GPU\) and the Ray cluster has 0 GPU in all"):
        check_placement(cfg, "stage1", 1, {"CPU": 1.0, "GPU": 1})
    cfg.ray.wait_for_resources = True  # an autoscaling cluster: wait, with a warning
    check_placement(cfg, "stage2", 2, {"CPU": 2.0})
    assert "waiting for the cluster to grow" in caplog.text
