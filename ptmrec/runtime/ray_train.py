"""Ray glue: connect to (or start) Ray, run a stage as a `TorchTrainer`, checkpoint through Ray Train.

Checkpoints go to `<run uri>/ray/<run name>-<stage>/`, on local disk or S3 (through pyarrow's S3
filesystem with the same endpoint and credentials as `Storage`). A trainer started again with the same
run name resumes from the latest checkpoint there (Ray Train V2's job-level restore), which is how an
interrupted stage picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ptmrec.config import Config, ConfigError
from ptmrec.storage import Storage, join, parse_uri

log = logging.getLogger(__name__)


def connect(cfg: Config) -> None:
    """Join the Ray cluster the config or RAY_ADDRESS names, or start a local one (2-core friendly)."""
    import ray

    if ray.is_initialized():
        return
    # Local clusters here run without token auth (Ray 2.60 turns it on for the job server by default).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a submitted job (or against a remote cluster) the runtime environment is the job's:
        # ray_config.yaml's env_vars travel with `ray job submit`, and a second one here would conflict.
        ray.init(address=address, log_to_driver=True)
    else:
        # "local" starts a private instance (its workers inherit this process's environment); a bare
        # ray.init() would attach to whatever cluster `ray start` last recorded on this machine, even a
        # dead one.
        ray.init(address="local", include_dashboard=False)


def ray_storage(cfg: Config, folder: Optional[str] = None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's / Tune's RunConfig, under the run URI."""
    loc = parse_uri(join(cfg.run.uri, folder or cfg.ray.storage_folder))
    if loc.scheme == "file":
        return loc.path, None
    import pyarrow.fs

    s = cfg.storage
    endpoint = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region": s.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    key = s.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = s.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret)
    return f"{loc.bucket}/{loc.key}", pyarrow.fs.S3FileSystem(**kwargs)


def run_trainer(train_fn: Callable[[dict], None], cfg: Config, *, stage: str, num_workers: int,
                worker_config: dict, identity: Any, callbacks: Optional[list] = None) -> None:
    """Run `train_fn` on `num_workers` Ray Train workers (torch.distributed set up: gloo on CPU, NCCL on
    GPU); raises if training failed after the allowed restarts.

    `identity` is what makes two runs "the same training" (model, data, optimisation; not the epoch
    budget): its hash is part of the Ray run name, so a run started again with the same identity resumes
    from its latest checkpoint, and a changed one starts fresh instead of loading mismatched weights.
    """
    import hashlib
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, filesystem = ray_storage(cfg)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    check_placement(cfg, stage, num_workers, resources)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=worker_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{cfg.run.name}-{stage}-{hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]}",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            callbacks=callbacks,
        ),
    )
    from ray.train import TrainingFailedError

    from ptmrec.lease import RunLease

    # One writer per stage folder and checkpoint folder: a second command on the same run and stage stops here.
    lease = join(cfg.run.uri, "leases", f"{stage}.json")
    with RunLease(Storage(cfg.storage), lease, what=f"{stage} of run {cfg.run.name}"):
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:  # Ray 2.60 raises instead of returning result.error
            raise RuntimeError(f"{stage} failed: {root_cause(exc)}") from None
    if result.error:
        raise RuntimeError(f"{stage} failed: {root_cause(result.error)}")


def check_placement(cfg: Config, stage: str, num_workers: int, per_worker: dict[str, float]) -> None:
    """Fail at once, in one line, when the workers can never be placed on this cluster (Ray Train would retry
    its worker group's start-up forever); an autoscaling cluster (`ray.wait_for_resources`) is only warned about."""
    import ray

    total = ray.cluster_resources()
    short = {k: (num_workers * v, total.get(k, 0.0)) for k, v in per_worker.items() if num_workers * v > total.get(k, 0.0)}
    if not short:
        return
    asked = " + ".join(f"{v:g} {k}" for k, v in per_worker.items())
    has = ", ".join(f"{have:g} {k}" for k, (_, have) in short.items())
    message = (f"{stage} asks for {num_workers} workers × ({asked}) and the Ray cluster has {has} in all; lower the "
               f"stage's num_workers or ray.cpus_per_worker, or add nodes")
    if cfg.ray.wait_for_resources:
        log.warning("%s; waiting for the cluster to grow (ray.wait_for_resources)", message)
        return
    raise ConfigError(message)  # a setting to change, not a run that failed: exit status 2


def root_cause(exc: BaseException) -> str:
    """One line for a failed training: the first failing worker's own message (our errors name the file, key
    or shard), not Ray's wrapper and traceback."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank = min(failures)
        return f"rank {rank}: {_last_line(failures[rank])}"
    cause = getattr(exc, "controller_failure", None)
    return _last_line(cause if cause is not None else exc)


def _last_line(exc: BaseException) -> str:
    # Ray's task errors carry the remote traceback in their text; the user's exception is its last line.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -------------------------------------------------------------------------------- worker-side helpers


def quiet_worker_logs() -> None:
    """Drop Ray Train's per-report INFO lines (one per rank per report, each with every metric) from the
    job log; our own per-epoch line says the same once. Ray names these loggers by their module file."""
    import importlib

    for module in ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage"):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # another Ray version: keep its logs
            continue
        for name in (mod.__file__, module):
            logging.getLogger(name).setLevel(logging.WARNING)


def world() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def report(metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
    """Report metrics (and this rank's checkpoint files) to Ray Train; every rank must call it."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


@contextmanager
def latest_checkpoint() -> Iterator[Optional[Path]]:
    """The directory of the checkpoint to resume from, or None on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


@contextmanager
def checkpoint_dir() -> Iterator[str]:
    """A scratch directory for one rank's checkpoint files; removed after Ray has persisted them."""
    directory = tempfile.mkdtemp(prefix="ptmrec-ckpt-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def finish_distributed() -> None:
    """End a worker cleanly: collect the engine, then sync, so no gloo thread races interpreter exit
    ("terminate called without an active exception"). Ray Train destroys the process group itself."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
