"""Ray Train glue: how a failed training reaches the user."""

from __future__ import annotations

import pytest
import ray

from ptmrec.config import ConfigError, load_config
from ptmrec.runtime import ray_train
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


# --- failure classification: transient failures restart from the checkpoint, the rest fail at once -----------


class ActorDiedError(Exception):
    """Named as Ray's: a worker process that died."""


class FakeFailure(Exception):
    def __init__(self, failures):
        super().__init__("Training failed")
        self.worker_failures = failures


def test_a_lost_worker_or_unreachable_storage_is_transient():
    from ptmrec.runtime.ray_train import is_transient
    from ptmrec.storage import StorageError

    assert is_transient(FakeFailure({1: ActorDiedError("The actor died unexpectedly before finishing this task.")}))
    wrapped = RuntimeError("task failed")
    wrapped.cause = ActorDiedError("gone")
    assert is_transient(FakeFailure({0: wrapped}))
    assert is_transient(FakeFailure({0: StorageError("s3://b/x.tar: cannot reach the S3 endpoint http://h: timeout")}))
    assert is_transient(FakeFailure({0: StorageError("s3://b/x.tar: read failed after 5 attempts: reset")}))
    # a node lost: Ray Train reports its worker as unavailable (seen when a node's raylet stopped mid-stage)
    assert is_transient(FakeFailure({1: RuntimeError(
        "The actor 25f6 is unavailable: The actor is temporarily unavailable: RpcError: failed to connect")}))
    # pyarrow's checkpoint uploads during an S3 outage (HEAD answers carry no error code)
    assert is_transient(FakeFailure({0: OSError("When getting information for key 'r/x': AWS Error UNKNOWN "
                                                "(HTTP status 503) during HeadObject operation: No response body.")}))


def test_bad_input_and_bugs_are_not_retried():
    from ptmrec.data.stream import ShardError
    from ptmrec.runtime.ray_train import is_transient

    assert not is_transient(FakeFailure({0: ShardError("x/items-000000.tar: sha256 1234… differs from the manifest's")}))
    assert not is_transient(FakeFailure({0: ValueError("stage2.lr must be positive")}))
    # one worker lost while another hit a bad shard: the shard would fail again
    assert not is_transient(FakeFailure({0: ActorDiedError("x"), 1: ShardError("bad")}))


def test_a_peer_broken_collective_is_the_lost_workers_failure_and_names_it():
    from ptmrec.runtime.ray_train import is_transient, root_cause

    broken = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:63685: Connection reset by peer.")
    failure = FakeFailure({0: broken, 1: ActorDiedError("The actor died unexpectedly before finishing this task.")})
    assert is_transient(failure)
    assert root_cause(failure) == "rank 1: The actor died unexpectedly before finishing this task."


def test_the_latest_complete_checkpoint_is_found_on_storage_and_unusable_ones_pruned(tmp_path):
    import pyarrow.fs

    from ptmrec.runtime.ray_train import _complete_checkpoints, prune_checkpoints

    def checkpoint(name, ranks, state=True):
        step = tmp_path / name / "deepspeed" / "step"
        step.mkdir(parents=True)
        (step / "mp_rank_00_model_states.pt").write_bytes(b"m")
        for r in ranks:
            (step / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"o")
        if state:
            (tmp_path / name / "state.json").write_text("{}")

    checkpoint("checkpoint_2026-12-01_10-00-00.000001", [0, 1])
    checkpoint("checkpoint_2026-12-01_10-00-05.000001", [0, 1])  # newest complete
    checkpoint("checkpoint_2026-12-01_10-00-09.000001", [0])  # rank 1's partition never persisted
    checkpoint("checkpoint_2026-12-01_10-00-12.000001", [0, 1], state=False)  # rank 0 killed mid-write
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")
    found = _complete_checkpoints(pyarrow.fs.LocalFileSystem(), str(tmp_path), world_size=2)
    assert [p.rsplit("/", 1)[1] for p in found] == ["checkpoint_2026-12-01_10-00-00.000001",
                                                    "checkpoint_2026-12-01_10-00-05.000001"]
    assert _complete_checkpoints(pyarrow.fs.LocalFileSystem(), str(tmp_path / "none"), world_size=2) == []

    checkpoint("checkpoint_2026-12-01_09-59-50.000001", [0, 1])  # Ray's snapshot knows it: Ray must find it
    checkpoint("checkpoint_2026-12-01_09-59-55.000001", [0])  # incomplete and old: can never be used
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(
        '{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_2026-12-01_09-59-50.000001"}]}')
    removed = prune_checkpoints(pyarrow.fs.LocalFileSystem(), str(tmp_path), world_size=2, keep=1)
    assert [p.rsplit("/", 1)[1] for p in removed] == ["checkpoint_2026-12-01_09-59-55.000001",
                                                      "checkpoint_2026-12-01_10-00-00.000001"]
    # the registered one, the newest complete one and the newer incomplete ones (which a restart looks past) stay
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*") if p.is_dir()) == [
        "checkpoint_2026-12-01_09-59-50.000001", "checkpoint_2026-12-01_10-00-05.000001",
        "checkpoint_2026-12-01_10-00-09.000001", "checkpoint_2026-12-01_10-00-12.000001"]


def test_pyarrow_retries_for_about_the_outage_budget():
    from ptmrec.runtime.ray_train import pyarrow_attempts

    # measured: 6 attempts last about 13 s, each further one about 10 s
    assert pyarrow_attempts(0) == 3 and pyarrow_attempts(10) == 6
    assert 13 + (pyarrow_attempts(300) - 6) * 10 >= 300 > 13 + (pyarrow_attempts(300) - 7) * 10


def test_the_checkpoint_file_system_keeps_its_retry_budget_when_pickled(repo):
    import pickle

    from ptmrec.config import load_config
    from ptmrec.runtime.ray_train import pyarrow_attempts, ray_storage

    cfg = load_config(repo / "configs/smoke.yaml", ["run.uri=s3://bkt/run", "storage.endpoint_url=http://127.0.0.1:9",
                                                   "storage.outage_budget_s=120"])
    path, fs = ray_storage(cfg)
    again = pickle.loads(pickle.dumps(fs))  # as Ray hands it to its controller and workers
    assert path == "bkt/run/ray" and again.type_name == "py::ptmrec-s3"
    assert again.handler.attempts == pyarrow_attempts(120) and again.handler.options["endpoint_override"] == "127.0.0.1:9"


@pytest.mark.parametrize("cpus,threads", [(0.5, 1), (1.0, 1), (1.75, 2), (2.0, 2), (7.6, 8)])
def test_a_worker_runs_its_cpu_share_rounded_as_torch_threads(repo, cpus, threads):
    import torch

    before = torch.get_num_threads()
    try:
        cfg = load_config(str(repo / "configs/smoke.yaml"), [f"ray.cpus_per_worker={cpus}"])
        assert ray_train.use_assigned_cpus(cfg) == threads == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _threads_and_echo(value):
    import torch

    return torch.get_num_threads(), value


@pytest.mark.slow
def test_a_worker_task_runs_round_cpus_threads_where_ray_would_run_one(repo):
    # (a fresh Ray worker given 1.75 CPUs starts with OMP_NUM_THREADS=1: Ray floors the share)
    cfg = load_config(str(repo / "configs/smoke.yaml"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        task = ray_train.worker_task(_threads_and_echo, cfg, 1.75)
        assert ray.get(task.remote("x")) == (2, "x")
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
class _StateProbe:
    def ask_about(self, actor_id: str) -> str:
        """What Ray Train's placement-group cleaner hears when it asks the State API whether an actor lives."""
        from ray.util.state import get_actor

        try:
            return f"answered {get_actor(actor_id, timeout=5)}"
        except Exception as exc:  # what the cleaner catches (RayStateApiException) means "ask again later"
            return type(exc).__name__


@pytest.mark.slow
def test_a_local_instance_never_asks_another_instances_dashboard_whether_its_actors_live(repo):
    import os
    import subprocess
    import sys

    # another Ray instance on this machine with a dashboard on 127.0.0.1:8265, as `make demo`'s head has
    other = subprocess.Popen([sys.executable, "-c", "import ray, sys; ray.init(address='local', include_dashboard=True, "
                              "num_cpus=1); print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        assert other.stdout.readline().strip() == "ready"
        ray_train.connect(load_config(str(repo / "configs/smoke.yaml")))
        probe = _StateProbe.remote()
        # the dashboard answering on 8265 would say "no such actor" (None): the cleaner's cue to remove its group
        assert ray.get(probe.ask_about.remote(probe._actor_id.hex())) == "ServerUnavailable"
        assert "RAY_API_SERVER_ADDRESS" not in os.environ
    finally:
        ray.shutdown()
        other.stdin.close()
        other.wait(timeout=60)
