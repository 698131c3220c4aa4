"""The run config: one YAML file → strict, typed dataclasses.

Every section is a dataclass; unknown keys, wrong types and missing required fields fail before any
work starts, with a message that names the file and the dotted key. `--set a.b=value` overrides are
applied to the raw YAML tree before validation, so they are checked exactly like the file.

The resolved `Config` is what travels into Ray workers (it pickles); models never see it, they get
plain arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ptmrec.uris import StorageError, absolute_uri


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names file and key."""


class InputError(ValueError):
    """Input data that cannot be used as it is (empty, malformed); the message names the file and row. Like a
    config error, a user's to fix, not a run to retry: commands exit with status 2."""


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    name: str
    uri: str  # where every artifact of the run lives: a local path, file://… or s3://bucket/prefix
    seed: int = 2024
    # Where the encoder outputs that no seed changes live (frozen features, layer caches), so that runs of
    # several seeds or settings share one extraction; null: <uri>/features. Adapted features stay per run.
    features_uri: Optional[str] = None
    ds_config: str = "ds_config.json"  # DeepSpeed's own settings; batch sizes and lr come from the stages
    ray_config: Optional[str] = None  # the Ray side (default: ./ray_config.yaml when present)


@dataclass
class StorageConfig:
    """S3 connection settings; each falls back to the standard AWS environment variables when null."""

    endpoint_url: Optional[str] = None  # AWS_ENDPOINT_URL
    region: Optional[str] = None  # AWS_DEFAULT_REGION
    # Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the cluster's Secrets,
    # never from a config file: configs are printed, logged and sent to W&B. Code may still pass them here.
    access_key_id: Optional[str] = field(default=None, repr=False, metadata={"internal": True})
    secret_access_key: Optional[str] = field(default=None, repr=False, metadata={"internal": True})
    max_attempts: int = 5  # retries of one failed request, with exponential backoff
    connect_timeout_s: float = 5.0
    # How long an endpoint that has answered before may stay unavailable (5xx, throttling, lost connections, cut
    # bodies) before a read or write fails: an outage shorter than this only pauses the run. An endpoint that
    # never answered fails at once (a wrong URL or a server that is not up is not an outage).
    outage_budget_s: float = 300.0


@dataclass
class TableConfig:
    """`data.source: table`: your own interactions as a CSV or Parquet file, optional item texts and images.
    Ids may be any strings; `prepare` keeps them (ids.json) and `recommend` answers in them."""

    interactions: Optional[str] = None  # CSV or Parquet: one row per interaction
    user: str = "user"  # column names in it
    item: str = "item"
    time: Optional[str] = None  # numbers or ISO dates; needed by split: chronological
    rating: Optional[str] = None  # with data.rating_threshold, rows below the threshold are dropped
    split: Literal["random", "chronological"] = "random"  # per user, MMRec's held-out sizes (seed: data.split_seed)
    items: Optional[str] = None  # item table (CSV or Parquet) with the `item` column
    text: list[str] = field(default_factory=list)  # columns of the item table joined into each item's text
    images: Optional[str] = None  # folder of <item id>.jpg / .jpeg / .png


@dataclass
class DataConfig:
    source: Literal["mmrec", "movielens", "synthetic", "table"]
    uri: str  # where `prepare` writes the shards and manifest.json
    path: Optional[str] = None  # the raw input: an MMRec directory for `mmrec`
    shard_items: int = 1000  # items per item shard
    # item shards hold the items in this seed's random order, so that any run of shards (and stage 2's
    # chunks) is a uniform draw over the catalogue, not a narrow id range
    item_order_seed: int = 0
    shard_users: int = 5000  # users per interaction shard
    image_size: int = 256  # stored images are resized to this short side
    jpeg_quality: int = 90
    split_seed: int = 2024  # seeds the per-user split where the source has none (movielens, synthetic)
    rating_threshold: Optional[float] = None  # movielens: keep ratings >= this; null keeps all
    table: TableConfig = field(default_factory=TableConfig)  # the `table` source
    # synthetic source only. taste: the small drawn catalogue (images + texts, cost users × items); power_law:
    # texts only, ~10 interactions per item, Zipf popularity, linear cost (the scale benchmark's catalogues)
    synthetic_users: int = 200
    synthetic_items: int = 120
    synthetic_kind: Literal["taste", "power_law"] = "taste"


@dataclass
class EncoderConfig:
    name: str = "bundled"  # bundled | clip | tiny-clip
    model: Optional[str] = None  # `clip`: hub name or local folder; `bundled`: a local copy of its MiniLM folder (null: the wheel's)
    image_size: int = 224
    max_text_len: int = 64
    # bf16: the encoders run under bf16 autocast on a GPU (the recommender, scores and losses stay float32);
    # fp32: no autocast. The CPU always computes in float32.
    precision: Literal["bf16", "fp32"] = "bf16"
    batch_size: int = 64  # items per forward when a whole catalogue is encoded (frozen extraction, stage 2's re-encode)


@dataclass
class RecommenderConfig:
    """The model and its hyper-parameters. A null field means the model's own (MMRec) default; setting one
    the chosen model does not take is an error (see `ptmrec.recommenders.hyperparameters`)."""

    name: str = "vbpr"  # see `ptmrec.recommenders.available_recommenders()`
    # content models: the item features they use, e.g. [image] for an image-only ablation; null = every
    # modality the data has
    modalities: Optional[list[str]] = None
    embedding_dim: int = 64
    reg_weight: Optional[float] = None
    n_layers: Optional[int] = None  # lightgcn
    knn_k: Optional[int] = None  # freedom: neighbours in the item-item graph
    mm_image_weight: Optional[float] = None  # freedom: image graph's share when both modalities exist
    n_mm_layers: Optional[int] = None  # freedom
    n_ui_layers: Optional[int] = None  # freedom
    dropout: Optional[float] = None  # freedom: degree-sensitive edge pruning ratio


@dataclass
class Stage1Config:
    epochs: int = 1000
    patience: int = 20
    batch_size: int = 2048  # BPR triples per optimizer step, over all workers
    lr: float = 0.001
    eval_every: int = 1
    num_workers: int = 2
    zero_stage: Literal[0, 1, 2] = 0  # the recommenders are small: ZeRO-3's partitioned weights buy nothing
    # adam: dense Adam, as MMRec trains (every step touches every embedding row: its cost grows with the
    # catalogue). lazy_adam: the batch's embedding rows arrive as sparse gradients and only they (and their
    # moments) are updated, so a step costs the batch; for catalogues past ~10^5 items (BPR, VBPR; ZeRO-0)
    optimizer: Literal["adam", "lazy_adam"] = "adam"


@dataclass
class AdapterConfig:
    """The adapter inserted into the encoders in stage 2. A field the chosen adapter does not use must stay at
    its default (see `ptmrec.encoders.adapters.adapter_options`)."""

    name: str = "prompt"  # see `ptmrec.encoders.adapters.available_adapters()`: prompt | lora | ia3 | dora | ... | full | none
    # prompt: deep prompt tokens in transformer towers
    prompt_length: int = 4  # prompt tokens per layer, in both towers
    prompt_depth: Optional[int] = None  # layers that receive fresh prompts, from the first; null = all
    text_prompt_length: Optional[int] = None  # the text tower's own prompt_length; null = prompt_length
    text_prompt_depth: Optional[int] = None  # the text tower's own prompt_depth; null = prompt_depth
    image_prompt_length: Optional[int] = None  # a transformer image tower's own prompt_length; null = prompt_length
    image_prompt_depth: Optional[int] = None  # a transformer image tower's own prompt_depth; null = prompt_depth
    prompt_pad: int = 30  # prompt, CNN image towers (EfficientNet): width in pixels of the learnable image border
    prompt_init_std: float = 0.02  # prompt: std of the prompt tokens' normal init; 0 = zeros
    # prompt: gated = prefix prompts behind zero gates (+ a zero CNN border): starts exactly at the frozen
    # encoder; inserted = tokens inserted into the sequence (VPT-deep; shifts positions, border ~ init_std)
    prompt_style: Literal["gated", "inserted"] = "gated"
    # peft methods (lora, dora, loha, lokr, vera, oft, boft, hra; ia3 takes only target_modules)
    rank: int = 8  # r for lora/dora/loha/lokr/vera/hra; the orthogonal block size for oft/boft
    alpha: int = 16  # scaling numerator for lora/dora/loha/lokr
    dropout: float = 0.0  # dropout on the adapter's input for lora/dora/vera
    target_modules: Optional[list[str]] = None  # module names (or name suffixes) in either tower; null = per-tower defaults
    # prompt and peft methods: only in the top k layers of each tower (EfficientNet: its 7 stages), so the layers
    # below stay frozen and `stage2.layer_cache` can run them once per item; null = every layer
    top_layers: Optional[int] = None


@dataclass
class KTConfig:
    weight: float = 1.0  # λ in BPR + λ·KT
    temperature: float = 1.0  # τ
    variant: Literal["user_item", "item_item"] = "user_item"
    # user_item: KT rows are the chunk's users (who have a positive in it, which the teacher points at)
    # plus this many users drawn uniformly from all training users per step
    sampled_users: int = 0
    standardize: bool = False  # z-score each row of teacher and student scores before the softmax


@dataclass
class Stage2Config:
    mode: Literal["ptmrec", "no_kt", "joint", "full_finetune"] = "ptmrec"
    output: Optional[str] = None  # folder under run.uri; null: stage2/ (ptmrec) or stage2-<mode>/
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    kt: KTConfig = field(default_factory=KTConfig)
    # joint (one stage) trains at stage 1's budget instead: stage1.epochs, stage1.patience, stage1.eval_every
    epochs: int = 5
    patience: int = 3  # evaluations without a better one
    # evaluate (re-encode the catalogue, rank, checkpoint) after every k-th epoch and the last: the epoch is
    # chosen among these; an evaluation costs about half an epoch on Clothing's CPU runs
    eval_every: int = 1
    items_per_step: int = 64  # items encoded per step and worker (the chunk)
    # at most this many steps (chunks per worker) per epoch, drawn uniformly as ever; null: every item once
    steps_per_epoch: Optional[int] = None
    # at most this many (user, positive, negative) triples drawn in a chunk; joint takes them all, so that its
    # epoch is stage 1's: every training interaction once
    pairs_per_step: int = 512
    lr: float = 1e-3  # adapters
    warmup_steps: int = 0  # the learning rates rise linearly over these first steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 at the last of epochs × steps
    recommender_lr: float = 1e-4  # the student recommender, warm from stage 1 (joint uses stage1.lr)
    num_workers: int = 2
    zero_stage: Literal[0, 1, 2, 3] = 2
    # as stage1.optimizer, for the student recommender's embedding rows (the adapters' gradients are dense
    # either way): with lazy_adam a step costs the chunk, not the catalogue; needs zero_stage 0
    optimizer: Literal["adam", "lazy_adam"] = "adam"
    log_every: int = 20  # steps between per-step logs (the only host synchronisations of the loss)
    # run the frozen layers below `adapter.top_layers` once per item and store their output under the run URI;
    # steps and re-encodes then run only the adapted top layers (same features, a fraction of the cost)
    layer_cache: bool = False


@dataclass
class RaySection:
    """How the stages run on Ray. Defaults come from ray_config.yaml (and its `profile`); a run config's
    `ray:` section overrides any key."""

    address: Optional[str] = None  # null: join RAY_ADDRESS or the job's cluster, else start a local one
    profile: Optional[str] = None  # a profile of ray_config.yaml, applied over its defaults
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    # DataLoader processes per worker that decode, resize and tokenise items (out of its cpus_per_worker);
    # 0 does it in the training process itself
    loader_workers: int = 0
    # restarts of the workers from the latest checkpoint after a transient failure (a worker process or node lost,
    # storage unreachable); bad input and bugs fail at once
    max_failures: int = 1
    # false: a stage asking for more CPUs/GPUs than the cluster has fails at once, naming both; true (an
    # autoscaling cluster that adds nodes on demand): it waits for them
    wait_for_resources: bool = False
    checkpoints_to_keep: int = 2
    storage_folder: str = "ray"  # Ray Train / Tune storage: <run uri>/<storage_folder>
    working_dir_excludes: list[str] = field(default_factory=lambda: ["/.venv", "/.git", "/runs", "/data", "/wandb"])
    env_vars: dict[str, str] = field(default_factory=dict)  # runtime env of submitted jobs


@dataclass
class TrackingConfig:
    """Weights & Biases: offline unless WANDB_API_KEY is set (see ptmrec/runtime/tracking.py)."""

    project: str = "ptmrec"
    dir: str = "./wandb"  # offline runs land here
    mode: Optional[Literal["online", "offline", "disabled"]] = None  # null: online iff WANDB_API_KEY is set
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    metric: str = "recall@20"  # selection metric, always on (part of) the valid split
    # Which valid users choose epochs. valid: all of them, for every stage. valid_halves: valid users split in two
    # fixed halves by id; stage 1 (and one-stage joint) choose their epoch on valid_a, stage 2 chooses between its
    # start and its epochs on valid_b. On the same users the start's valid score is inflated by stage 1's choice of
    # it (the best of many noisy evaluations), so an adapted epoch must beat luck as well as the start.
    selection: Literal["valid", "valid_halves"] = "valid"
    batch_users: int = 4096  # users ranked at once, fewer where batch × items would pass max_batch_scores
    max_batch_scores: int = 50_000_000  # scores held at once (4 bytes each + a mask): bounds memory, not items
    # Catalogues with more items than this are evaluated on `sample_users` users per split, drawn uniformly
    # (seeded, the same every evaluation), each still ranked against every item: an unbiased estimate of the
    # full-ranking mean, labelled in metrics.json (eval_protocol) and never compared with a full one. null: all
    sampled_above_items: Optional[int] = 200_000
    sample_users: int = 10_000


@dataclass
class SweepConfig:
    """A Ray Tune search (`ptmrec sweep`): `space` maps dotted config keys to the values to try."""

    name: str = "sweep"
    # stage2: Tune trials of stage 2 over stage 1 runs shared per stage-1 setting; stage1: a grid of stage-1
    # runs only (a tuned frozen baseline, e.g. recommender.reg_weight), every combination, no ASHA
    stage: Literal["stage1", "stage2"] = "stage2"
    space: dict[str, list[Any]] = field(default_factory=dict)
    # which trial is the result: valid (the honest choice) or test (MMRec's table protocol, which picks by
    # the test metric: test-set leakage, for comparing with its published numbers only; labelled as such)
    select: Literal["valid", "test"] = "valid"
    search: Literal["grid", "random"] = "grid"  # grid: every combination; random: num_samples draws
    num_samples: int = 1  # random draws (grid: repetitions of the whole grid)
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 2
    max_concurrent_trials: int = 1
    trial_cpus: float = 0.25  # the trial's own driver; its Ray Train workers take ray.cpus_per_worker each


@dataclass
class Config:
    run: RunConfig
    data: DataConfig
    storage: StorageConfig = field(default_factory=StorageConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RaySection = field(default_factory=RaySection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    source_file: Optional[str] = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (for logging and for W&B), without internal fields: the file it came from
        and any credentials code put in `storage`."""
        out = dataclasses.asdict(self)
        out.pop("source_file", None)
        for name in SECRET_KEYS:
            out["storage"].pop(name.split(".", 1)[1], None)
        return out


# --------------------------------------------------------------------------------------------------
# Loading


# config keys that would hold a secret -> where the secret belongs
SECRET_KEYS = {"storage.access_key_id": "AWS_ACCESS_KEY_ID", "storage.secret_access_key": "AWS_SECRET_ACCESS_KEY"}


def refuse_secrets(raw: dict[str, Any], where: str) -> None:
    for dotted, env in SECRET_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"{where}: {dotted}: credentials are not read from configs (configs are printed, "
                              f"logged and sent to W&B); set {env} in the environment or mount the cluster's "
                              "Secret (cluster/README.md)")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML run config, apply `a.b=value` overrides, validate, and return the `Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, where=str(path))
    refuse_secrets(raw, where=str(path))
    raw["ray"] = merged_ray_section(raw, where=str(path))
    cfg = from_dict(Config, raw, where=str(path))
    check_resources(cfg, where=str(path))
    cfg.source_file = str(path)
    resolve_local_paths(cfg)
    return cfg


def check_resources(cfg: Config, where: str) -> None:
    """Settings whose type is right but whose value cannot work together."""
    r = cfg.ray
    if r.loader_workers < 0:
        raise ConfigError(f"{where}: ray.loader_workers: expected 0 or more, got {r.loader_workers}")
    if r.loader_workers and r.loader_workers > r.cpus_per_worker - 1:
        raise ConfigError(f"{where}: ray.loader_workers: {r.loader_workers} loader processes need "
                          f"{r.loader_workers + 1} CPUs per worker with the training process; ray.cpus_per_worker "
                          f"is {r.cpus_per_worker:g}")
    for key, value in (("encoder.batch_size", cfg.encoder.batch_size), ("stage2.log_every", cfg.stage2.log_every),
                       ("eval.max_batch_scores", cfg.eval.max_batch_scores), ("eval.sample_users", cfg.eval.sample_users),
                       ("stage2.steps_per_epoch", 1 if cfg.stage2.steps_per_epoch is None else cfg.stage2.steps_per_epoch)):
        if value < 1:
            raise ConfigError(f"{where}: {key}: expected 1 or more, got {value}")
    for name, stage in (("stage1", cfg.stage1), ("stage2", cfg.stage2)):
        if stage.optimizer == "lazy_adam" and stage.zero_stage:
            raise ConfigError(f"{where}: {name}.optimizer: lazy_adam updates rows from sparse gradients, which "
                              f"ZeRO-{stage.zero_stage} partitions as dense ones; use {name}.zero_stage: 0")


def resolve_local_paths(cfg: Config) -> None:
    """Make relative local paths absolute against the working directory the config was loaded in.

    Ray workers run in their own working directories, so `file://./runs/x` must mean the same there.
    """
    import os

    for section, attr, key in ((cfg.run, "uri", "run.uri"), (cfg.data, "uri", "data.uri"),
                               (cfg.run, "features_uri", "run.features_uri")):
        try:
            if getattr(section, attr) is not None:
                setattr(section, attr, absolute_uri(getattr(section, attr)))
        except StorageError as exc:
            raise ConfigError(f"{cfg.source_file or 'config'}: {key}: {exc}") from None
    if cfg.data.path:
        cfg.data.path = os.path.abspath(os.path.expanduser(cfg.data.path))
    table = cfg.data.table
    for key in ("interactions", "items", "images"):
        if getattr(table, key):
            setattr(table, key, os.path.abspath(os.path.expanduser(getattr(table, key))))
    cfg.run.ds_config = os.path.abspath(os.path.expanduser(cfg.run.ds_config))
    model = cfg.encoder.model
    if model and (model.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(model))):
        cfg.encoder.model = os.path.abspath(os.path.expanduser(model))  # a local folder, not a hub name
    cfg.tracking.dir = os.path.abspath(os.path.expanduser(cfg.tracking.dir))


def merged_ray_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """ray_config.yaml's defaults, then its chosen profile, then the run config's own `ray:` keys."""
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    ray_file = Path(run.get("ray_config") or "ray_config.yaml")
    own = raw.get("ray") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{where}: ray: expected a mapping, got {_describe(own)}")
    base: dict[str, Any] = {}
    if ray_file.is_file():
        base = yaml.safe_load(ray_file.read_text()) or {}
        if isinstance(raw.get("run"), dict):
            raw["run"]["ray_config"] = str(ray_file.resolve())  # so that it means the same in a worker
    elif run.get("ray_config"):
        raise ConfigError(f"{where}: run.ray_config: {ray_file} not found")
    profiles = base.pop("profiles", {}) or {}
    profile = own.get("profile", base.get("profile"))
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"{where}: ray.profile: {profile!r} is not a profile of {ray_file} "
                              f"(valid: {', '.join(sorted(profiles)) or 'none'})")
        base.update(profiles[profile])
    return {**base, **own}


def pinned_overrides(cfg: Config) -> list[str]:
    """`--set` overrides that pin every path of `cfg` to its absolute value, for processes that load the
    same config file from another working directory (Ray jobs, Tune trials)."""
    import json

    pins = {"run.uri": cfg.run.uri, "run.features_uri": cfg.run.features_uri, "data.uri": cfg.data.uri,
            "data.path": cfg.data.path, "run.ds_config": cfg.run.ds_config, "run.ray_config": cfg.run.ray_config,
            "tracking.dir": cfg.tracking.dir, "encoder.model": cfg.encoder.model}
    return [f"{k}={json.dumps(v)}" for k, v in pins.items() if v is not None]


def apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    """Set `a.b.c=value` in the raw tree; the value is parsed as YAML (so `1e-3`, `[10, 20]`, `null` work)."""
    if "=" not in item:
        raise ConfigError(f"{where}: override {item!r} must look like section.key=value")
    dotted, value_text = item.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"{where}: override {item!r} has an empty key")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: override {item!r}: value is not valid YAML: {exc}") from None
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: override {item!r}: {'.'.join(keys[:depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def from_dict(cls: type, raw: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and checking every field's type."""
    label = prefix or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {label}: expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], where, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {key!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: expected one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {_describe(value)}")
        return {str(k): _convert(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, got {_describe(value)}")
        return [_convert(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        # YAML reads `1e-3` as a string (it wants `1.0e-3`); accept both, and ints.
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected a number, got {_describe(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key}: expected a number, got {_describe(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {_describe(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {_describe(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config schema: unsupported type {tp!r} for {key}")  # a bug in this file


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"
