"""Ray glue: connect to (or start) Ray, run a stage as a `TorchTrainer`, checkpoint through Ray Train.

Checkpoints go to `<run uri>/ray/<run name>-<stage>/`, on local disk or S3 (through pyarrow's S3
filesystem with the same endpoint and credentials as `Storage`). A trainer started again with the same
run name resumes from the latest checkpoint there (Ray Train V2's job-level restore), which is how an
interrupted stage picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ptmrec.config import Config, ConfigError
from ptmrec.storage import Storage
from ptmrec.uris import join, parse_uri

log = logging.getLogger(__name__)


def connect(cfg: Config, state_api: bool = False) -> None:
    """Join the Ray cluster the config or RAY_ADDRESS names, or start a local one (2-core friendly).

    A local instance runs without Ray's dashboard (a process and a CPU share saved on small machines) unless
    `state_api`: a sweep needs it, because Tune stops trials by killing them, and only the dashboard's State API
    lets Ray Train's placement-group cleaner see that a killed trial's controller is gone and free its workers'
    CPUs; without it the next trial's workers wait for CPUs that never come back."""
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
        # Without a dashboard an instance still records 127.0.0.1:8265 as its State API: Ray Train's placement-
        # group cleaner would ask whatever other instance's dashboard listens there (`make demo`'s head, a
        # sweep) whether its controller lives, hear "no such actor" and remove a running stage's workers (seen:
        # a stage-1 worker killed when a test's sweep started). Its processes get an address that answers nothing.
        with _environ("RAY_API_SERVER_ADDRESS", None if state_api else NO_API_SERVER):
            ray.init(address="local", include_dashboard=state_api,
                     runtime_env={"worker_process_setup_hook": "ptmrec.runtime.ray_train.quiet_local_actors"})


NO_API_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


@contextmanager
def _environ(name: str, value: Optional[str]) -> Iterator[None]:
    """Set (or, with None, remove) one environment variable while Ray starts its processes, which inherit it."""
    before = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if before is not None:
            os.environ[name] = before


def ray_storage(cfg: Config, folder: Optional[str] = None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's / Tune's RunConfig, under the run URI."""
    loc = parse_uri(join(cfg.run.uri, folder or cfg.ray.storage_folder))
    if loc.scheme == "file":
        return loc.path, None
    import pyarrow.fs

    s = cfg.storage
    endpoint = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region": s.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                              "connect_timeout": s.connect_timeout_s, "request_timeout": 60.0}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    key = s.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = s.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret)
    from ptmrec.runtime.s3_fs import RetryingS3

    return f"{loc.bucket}/{loc.key}", pyarrow.fs.PyFileSystem(RetryingS3(kwargs, pyarrow_attempts(s.outage_budget_s)))


def pyarrow_attempts(outage_budget_s: float) -> int:
    """Attempts for pyarrow's S3 client (checkpoints) that wait out about `outage_budget_s`: it counts attempts,
    not time. Measured against a proxy answering 503: 6 attempts gave up after 13 s, 9 after 68 s, 12 after 94 s
    (the AWS SDK's backoff with jitter, capped): about 10 s for each attempt beyond 6."""
    if outage_budget_s <= 13:
        return 3 if outage_budget_s <= 0 else 6
    return 6 + math.ceil((outage_budget_s - 13) / 10)


def run_trainer(train_fn: Callable[[dict], None], cfg: Config, *, stage: str, num_workers: int,
                worker_config: dict, identity: Any, callbacks: Optional[list] = None) -> None:
    """Run `train_fn` on `num_workers` Ray Train workers (torch.distributed set up: gloo on CPU, NCCL on
    GPU); raises `RuntimeError` with one line (the failing worker's own message) if training failed.

    `identity` is what makes two runs "the same training" (model, data, optimisation; not the epoch
    budget): its hash is part of the Ray run name, so a run started again with the same identity resumes
    from its latest checkpoint, and a changed one starts fresh instead of loading mismatched weights.

    Failures are classified here rather than by Ray (which would retry a bad shard or a bad value as often
    as a lost worker): a transient one (a worker process or node lost, storage unreachable) restarts the
    workers from the latest checkpoint, up to `ray.max_failures` times; any other fails at once.
    """
    from ptmrec.lease import RunLease

    check_placement(cfg, stage, num_workers, _resources(cfg))
    # One writer per stage folder and checkpoint folder: a second command on the same run and stage stops here.
    lease = join(cfg.run.uri, "leases", f"{stage}.json")
    storage = Storage(cfg.storage)
    with RunLease(storage, lease, what=f"{stage} of run {cfg.run.name}"):
        removed = storage.clean_leftovers(cfg.run.uri)
        if removed:
            log.info("%s: removed %d leftovers of interrupted writes (temporary files, unfinished uploads) under %s",
                     stage, removed, cfg.run.uri)
        for restart in range(cfg.ray.max_failures + 1):
            error = _fit(train_fn, cfg, stage, num_workers, worker_config, identity, callbacks)
            if error is None:
                return
            if not is_transient(error) or restart == cfg.ray.max_failures:
                raise RuntimeError(f"{stage} failed: {root_cause(error)}")
            log.warning("%s: %s: a transient failure; restarting the workers from the latest checkpoint "
                        "(restart %d of ray.max_failures %d)", stage, root_cause(error), restart + 1,
                        cfg.ray.max_failures)


def _resources(cfg: Config) -> dict[str, float]:
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    return resources


def _fit(train_fn, cfg: Config, stage: str, num_workers: int, worker_config: dict, identity: Any,
         callbacks: Optional[list]) -> Optional[BaseException]:
    """One `TorchTrainer.fit` (resuming from the run's latest checkpoint, if any): None, or its error."""
    import hashlib

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    import pyarrow.fs

    storage_path, filesystem = ray_storage(cfg)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    run_name = f"{cfg.run.name}-{stage}-{key}"
    removed = prune_checkpoints(filesystem or pyarrow.fs.LocalFileSystem(), f"{storage_path}/{run_name}", num_workers,
                                keep=cfg.ray.checkpoints_to_keep)
    if removed:
        log.info("%s: removed %d checkpoint folders that a restart can never use (older than the latest complete one, "
                 "or incomplete)", stage, len(removed))
    trainer = TorchTrainer(
        train_fn,
        train_loop_config={**worker_config, "ray_run_name": run_name},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=_resources(cfg)),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            # Ray retries nothing itself (see run_trainer); its controller gets the same bound.
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            callbacks=callbacks,
        ),
    )
    try:
        return trainer.fit().error
    except TrainingFailedError as exc:  # Ray 2.60 raises instead of returning result.error
        return exc


# Worker failures worth a restart: the process or its node went away, or storage could not be reached for longer
# than its retries. Anything else (a bad value, a corrupt shard, a bug) would fail the same way again.
_TRANSIENT_TYPES = ("ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
                    "OwnerDiedError", "ObjectLostError", "RaySystemError", "PreemptionError",
                    # Ray Train's word for a worker whose process or node stopped answering (a node lost)
                    "WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError")
_TRANSIENT_TEXT = ("cannot reach the S3 endpoint", " attempts: ", "SlowDown", "ServiceUnavailable", "SLOW_DOWN",
                   "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "NETWORK_CONNECTION", "storage.outage_budget_s",
                   "(HTTP status 500)", "(HTTP status 502)", "(HTTP status 503)", "(HTTP status 504)",
                   "InternalError", "S3 error 500", "S3 error 502", "S3 error 503", "S3 error 504",
                   "The actor died unexpectedly", "worker died", "node died", "was killed", " is unavailable: ")


# What the surviving workers see when a peer dies mid-collective: a consequence, never the cause.
_COLLECTIVE_TEXT = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
                    "NCCL communicator", "NCCL error")


def is_transient(exc: BaseException) -> bool:
    """Whether a failed training is worth restarting from its checkpoint: every failing worker was lost or
    only saw a peer's loss in a collective."""
    errors = _errors(exc)
    return bool(errors) and all(_transient(e) or _collective(e) for e in errors)


def _errors(exc: BaseException) -> list[BaseException]:
    failures = getattr(exc, "worker_failures", None)
    return list(failures.values()) if failures else [getattr(exc, "controller_failure", None) or exc]


def _collective(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker in text for marker in _COLLECTIVE_TEXT)


def _transient(exc: BaseException) -> bool:
    chain, seen = [exc], set()
    while chain:
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ in _TRANSIENT_TYPES:
            return True
        chain += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    return any(marker in text for marker in _TRANSIENT_TEXT)


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
        # The first rank with an error of its own, not a collective that broke because a peer died.
        causes = [r for r in sorted(failures) if not _collective(failures[r])] or sorted(failures)
        return f"rank {causes[0]}: {_last_line(failures[causes[0]])}"
    cause = getattr(exc, "controller_failure", None)
    return _last_line(cause if cause is not None else exc)


def _last_line(exc: BaseException) -> str:
    # Ray's task errors carry the remote traceback in their text; the user's exception is its last line.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -------------------------------------------------------------------------------- worker-side helpers


def start_worker(cfg: Config) -> tuple[int, int, list[str]]:
    """What every stage's worker does first: timestamped INFO logs without Ray Train's per-report lines, its
    CPUs as torch threads, the run's seed (the same initial weights on every rank; DeepSpeed broadcasts
    anyway). Returns (rank, world size, every rank's node id)."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_worker_logs()
    use_assigned_cpus(cfg)
    torch.manual_seed(cfg.run.seed)
    return (*world(), worker_nodes())


def use_assigned_cpus(cfg: Config, cpus: Optional[float] = None) -> int:
    """Give this worker's torch its CPUs (`ray.cpus_per_worker` unless given) as threads, rounded (at least 1);
    returns the count. Ray floors a fractional share (1.75 CPUs → 1 thread), which would halve a worker given
    1.75 of 2 cores so that a sweep trial's driver (`sweep.trial_cpus`) fits beside it."""
    import torch

    threads = max(1, round(cfg.ray.cpus_per_worker if cpus is None else cpus))
    torch.set_num_threads(threads)
    return threads


def worker_task(fn, cfg: Config, cpus: float):
    """`fn` as a Ray task with a worker's resources (`cpus` CPUs, a GPU on GPU runs) and, like the stages'
    workers, round(cpus) torch threads (`use_assigned_cpus`)."""
    import ray

    def run(*args, **kwargs):
        use_assigned_cpus(cfg, cpus)
        return fn(*args, **kwargs)

    run.__name__ = run.__qualname__ = fn.__name__  # how Ray names the task in its logs
    return ray.remote(num_cpus=cpus, num_gpus=1 if cfg.ray.use_gpu else 0)(run)


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
    # DeepSpeed rebuilds every sparse gradient (lazy_adam) from its all-gathered parts and warns each time
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def quiet_local_actors() -> None:
    """Run in every worker process of a local instance. Without a dashboard (no State API: see `connect`), Ray
    Train's placement-group cleaner asks once a second whether the controller lives and logs a warning each time
    it cannot (~1,500 lines in a 30-minute stage); and when another Ray instance runs on the machine (a test, a
    second job) it dies with a traceback because it cannot tell which instance is its own. Point it at its own
    instance (and its own dashboard, where there is one: `connect(state_api=True)`) and keep only its errors."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def world() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def worker_nodes() -> list[str]:
    """The Ray node id of every rank's worker, in rank order (a collective: every rank calls it). Recorded in a
    stage's metrics.json: where the run actually ran."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [node]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


def report(metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
    """Report metrics (and this rank's checkpoint files) to Ray Train; every rank must call it."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


@contextmanager
def latest_checkpoint(config: dict) -> Iterator[Optional[Path]]:
    """The directory of the checkpoint to resume from (a local copy), or None on a fresh start.

    The latest *complete* checkpoint folder found on storage under this run's name, not only the one Ray's
    own records hold: a worker killed right after persisting a checkpoint, before Ray registered it, leaves a
    newer one there. Complete: rank 0's state.json and model states, and every rank's optimizer partition.
    """
    import pyarrow.fs
    import ray.train

    storage_path, fs = ray_storage(config["cfg"])
    fs = fs or pyarrow.fs.LocalFileSystem()
    found = _complete_checkpoints(fs, f"{storage_path}/{config['ray_run_name']}", ray.train.get_context().get_world_size())
    if not found:
        yield None
        return
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield Path(found[-1])
        return
    with tempfile.TemporaryDirectory(prefix="ptmrec-restore-") as local:
        pyarrow.fs.copy_files(found[-1], local, source_filesystem=fs)
        yield Path(local)


def prune_checkpoints(fs, root: str, world_size: int, keep: int) -> list[str]:
    """Delete the checkpoint folders of a Ray Train run folder that a restart can never use: older than its newest
    complete one, not among its `keep` newest complete ones, and unknown to Ray's run snapshot (Ray's `num_to_keep`
    deletes only the folders it registered, and refuses to start if one of those is gone; a worker killed around a
    save leaves others). Run before the workers start; returns what was removed."""
    complete = _complete_checkpoints(fs, root, world_size)
    if not complete:
        return []
    kept = set(complete[-max(1, keep):]) | {f"{root}/{name}" for name in _registered(fs, root)}
    stale = [f for f in _checkpoint_folders(fs, root) if f < complete[-1] and f not in kept]
    for folder in stale:
        fs.delete_dir(folder)
    return stale


def _registered(fs, root: str) -> set[str]:
    """The checkpoint folder names Ray's run snapshot refers to (it keeps its own list, by folder name)."""
    import re

    try:
        with fs.open_input_stream(f"{root}/checkpoint_manager_snapshot.json") as f:
            text = f.read().decode()
    except OSError:  # no snapshot yet (FileNotFoundError is one)
        return set()
    return set(re.findall(r'"checkpoint_dir_name"\s*:\s*"([^"]+)"', text))


def _checkpoint_folders(fs, root: str) -> list[str]:
    """The checkpoint folders under a Ray Train run folder, oldest first (Ray names them by time)."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and i.base_name.startswith("checkpoint_"))


def _complete_checkpoints(fs, root: str, world_size: int) -> list[str]:
    """The complete checkpoint folders under a Ray Train run folder, oldest first."""
    import pyarrow.fs

    complete = []
    for folder in _checkpoint_folders(fs, root):
        names = {i.path[len(folder) + 1:] for i in fs.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True))
                 if i.type == pyarrow.fs.FileType.File}
        partitions = [n for n in names if n.endswith("optim_states.pt")]
        if ("state.json" in names and "deepspeed/step/mp_rank_00_model_states.pt" in names
                and len(partitions) in (0, world_size)):
            complete.append(folder)
    return complete


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
