"""Pieces both stages use: building the recommender from the config, distributed evaluation, artifacts."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import zlib
from typing import Mapping, Optional

import numpy as np
import torch

from ptmrec.config import Config, ConfigError, EvalConfig, RecommenderConfig
from ptmrec.data.stream import Interactions
from ptmrec.evaluation import csr_from_pairs, evaluate_splits
from ptmrec.recommenders import Recommender, get_recommender_class
from ptmrec.storage import Storage
from ptmrec.uris import join

METRICS_FILE = "metrics.json"


def recommender_kwargs(rc: RecommenderConfig, cls: type) -> dict:
    """The hyper-parameters to pass: every non-null config field; one the model does not take is an error."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {}
    for f in dataclasses.fields(rc):
        value = getattr(rc, f.name)
        if f.name in ("name", "modalities") or value is None:  # not constructor arguments
            continue
        if f.name not in accepted:
            raise ValueError(f"recommender.{f.name} does not apply to {rc.name}; it takes "
                             f"{', '.join(sorted(accepted - {'self', 'num_users', 'num_items', 'train_interactions', 'features'}))}")
        kwargs[f.name] = value
    return kwargs


def build_configured_encoder(cfg: Config, modalities: list[str], adapter: Optional[str] = None):
    """The config's encoder for these modalities, with adapter `adapter` (and the config's options for it)
    inserted when given."""
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter

    encoder = build_encoder(cfg.encoder.name, model=cfg.encoder.model, image_size=cfg.encoder.image_size,
                            max_text_len=cfg.encoder.max_text_len, modalities=modalities)
    if adapter is not None:
        encoder = apply_adapter(encoder, adapter, **adapter_options(cfg.stage2.adapter, adapter))
    return encoder


def build_recommender_from_config(cfg: Config, inter: Interactions,
                                  features: Optional[Mapping[str, torch.Tensor]]) -> Recommender:
    cls = get_recommender_class(cfg.recommender.name)
    chosen = cfg.recommender.modalities
    if cls.uses_features and chosen is not None:
        missing = sorted(set(chosen) - set(features or {}))
        if missing:
            raise ValueError(f"recommender.modalities: {missing} not among the item features ({sorted(features or {})})")
        features = {m: f for m, f in (features or {}).items() if m in chosen}
    return cls(inter.num_users, inter.num_items, train_interactions=(inter.train_users, inter.train_items),
               features=dict(features or {}) if cls.uses_features else None,
               **recommender_kwargs(cfg.recommender, cls))


def check_lazy_adam(cfg: Config, stage: str) -> None:
    """`<stage>.optimizer: lazy_adam` needs a model whose loss reads only the batch's embedding rows; refused
    before any work (a graph model would fail in every worker, at `use_sparse_gradients`)."""
    sparse = get_recommender_class(cfg.recommender.name).takes_sparse_gradients
    if getattr(cfg, stage).optimizer == "lazy_adam" and not sparse:
        raise ConfigError(f"{cfg.source_file}: {stage}.optimizer: lazy_adam needs a model whose loss reads only the "
                          f"batch's embedding rows (bpr, vbpr); {cfg.recommender.name} propagates over all of them")


def evaluate_distributed(model: Recommender, inter: Interactions, ev: EvalConfig, rank: int,
                         world_size: int) -> dict[str, dict[str, float]]:
    """Valid and test metrics (MMRec's full ranking), each rank scoring every `world_size`-th user.

    The representations are computed once per evaluation (graph models propagate once, not per batch).
    Per-rank means are combined weighted by their user counts, so the result equals one-process evaluation.
    Past `ev.sampled_above_items` items, the users are `eval_users`' seeded sample (`eval_protocol` says so);
    at most `ev.max_batch_scores` scores are held at once, whatever the catalogue.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        user_repr, item_repr = model()
    mask = csr_from_pairs(inter.train_users, inter.train_items, inter.num_users)
    batch_users = eval_batch_users(ev, inter.num_items)

    def score(users: torch.Tensor) -> torch.Tensor:
        return user_repr[users.to(user_repr.device)] @ item_repr.T

    mine = {split: {u: truth[u] for u in eval_users(ev, inter, split) if u % world_size == rank}
            for split, truth in (("valid", inter.valid), ("test", inter.test))}
    if ev.selection == "valid_halves":
        for half in ("a", "b"):
            mine[f"valid_{half}"] = {u: t for u, t in mine["valid"].items() if valid_half(u) == half}
    metrics = evaluate_splits(score, mine, mask, ks=ev.ks, batch_users=batch_users)  # one ranking per user
    out = {}
    for split, users in mine.items():
        names = sorted(metrics[split])
        # On the model's device: NCCL reduces only device tensors.
        packed = torch.tensor([len(users)] + [metrics[split][n] * len(users) for n in names], dtype=torch.float64,
                              device=user_repr.device)
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(packed)
        total = max(packed[0].item(), 1.0)
        out[split] = {n: float(v) / total for n, v in zip(names, packed[1:].tolist())}
    model.train(was_training)
    return out


def valid_half(user: int) -> str:
    """The fixed half ("a" or "b") of the valid users a user belongs to under `eval.selection: valid_halves`: a
    hash of the id alone, so every stage, seed and rank agrees (ids in order would put old users in one half)."""
    return "ab"[zlib.crc32(int(user).to_bytes(8, "little")) & 1]


def selection_split(ev: EvalConfig, stage: str, mode: str = "ptmrec") -> str:
    """The split whose `ev.metric` chooses `stage`'s epoch ("stage1", "stage2" in `mode`): see
    `EvalConfig.selection`. joint trains from scratch, as stage 1 does, and chooses on stage 1's half."""
    if ev.selection == "valid":
        return "valid"
    return "valid_b" if stage == "stage2" and mode != "joint" else "valid_a"


def selection_fields(ev: EvalConfig, stage: str, best: dict, mode: str = "ptmrec") -> dict:
    """metrics.json's record of how the epoch was chosen: the split, and under valid_halves both halves' metrics."""
    split = selection_split(ev, stage, mode)
    return {"selection_split": split, **{k: v for k, v in best.items() if k.startswith("valid_")}}


def score_line(ev: EvalConfig, result: dict[str, dict[str, float]], split: str) -> str:
    """The log's view of an evaluation: valid and test `ev.metric`, and the half that chooses, if it is one."""
    m = ev.metric
    half = f" ({split} {result[split][m]:.4f})" if split != "valid" else ""
    return f"valid {m} {result['valid'][m]:.4f}{half} | test {m} {result['test'][m]:.4f}"


def result_metrics(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """An evaluation's metrics flat, "split/metric", for the history, the tracker and Tune."""
    return {f"{split}/{k}": v for split, m in result.items() for k, v in m.items()}


def eval_batch_users(ev: EvalConfig, num_items: int) -> int:
    """Users ranked at once: `ev.batch_users`, fewer where their scores would pass `ev.max_batch_scores`."""
    return max(1, min(ev.batch_users, ev.max_batch_scores // num_items))


def sampled_evaluation(ev: EvalConfig, num_items: int) -> bool:
    return ev.sampled_above_items is not None and num_items > ev.sampled_above_items


def eval_users(ev: EvalConfig, inter: Interactions, split: str) -> list[int]:
    """The users evaluated on `split`: all of them, or past `ev.sampled_above_items` items `ev.sample_users`
    drawn uniformly without replacement, seeded by the split alone (every evaluation, rank and stage of
    a run sees the same users, so its numbers compare)."""
    users = sorted(getattr(inter, split))
    if not sampled_evaluation(ev, inter.num_items) or len(users) <= ev.sample_users:
        return users
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    return sorted(np.asarray(users)[rng.choice(len(users), ev.sample_users, replace=False)].tolist())


def eval_protocol(ev: EvalConfig, num_items: int) -> str:
    """How metrics.json's numbers were computed: "full ranking", or of which sample, in words."""
    if not sampled_evaluation(ev, num_items):
        return "full ranking"
    return (f"full ranking, {ev.sample_users} sampled users per split ({num_items} items > "
            f"eval.sampled_above_items {ev.sampled_above_items})")


def cpu_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict: what is kept as "the best weights" and saved, whatever device
    the model trains on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def peak_memory() -> tuple[float, str]:
    """(peak MB, kind): GPU memory allocated by torch when on a GPU, else this process's peak RSS."""
    import resource

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "gpu_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"


def save_torch(storage: Storage, uri: str, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(uri, buf.getvalue())


def load_torch(storage: Storage, uri: str):
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)


# What decides each stage's result, by config section (the workers, ZeRO stage and logging do not).
_STAGE_SECTIONS = {"stage1": ("data", "encoder", "recommender", "stage1", "eval"),
                   "stage2": ("data", "encoder", "recommender", "stage1", "eval", "stage2")}
_NOT_RESULTS = {"stage1": ("num_workers", "zero_stage"), "stage2": ("num_workers", "zero_stage", "log_every")}
# Settings added after runs were made, left out of the fingerprint at the value that reproduces the behaviour
# before them, so that those runs still count as finished with the same settings.
_LATER_DEFAULTS = {"eval": {"selection": "valid"}, "stage2": {"eval_every": 1}}
# Changes of what a setting trains, with no key of their own: a run finished before one must not count as
# finished after it. joint's epoch took pairs_per_step triples a chunk until 54cacf8, every interaction since.
_BEHAVIOUR_CHANGES = {("stage2", "joint"): {"joint_epoch": "every training interaction"}}


def settings_fingerprint(cfg: Config, stage: str) -> str:
    """A hash of the settings that decide `stage`'s result ("stage1", "stage2"): written into its
    metrics.json, so that `ptmrec pipeline` can tell a finished stage from one finished with other settings."""
    import hashlib

    config = cfg.to_dict()
    picked = {"seed": config["run"]["seed"], **{name: config[name] for name in _STAGE_SECTIONS[stage]}}
    for section in ("stage1", "stage2"):
        if section in picked:
            picked[section] = {k: v for k, v in picked[section].items() if k not in _NOT_RESULTS[section]}
    for section, defaults in _LATER_DEFAULTS.items():
        if section in picked:
            picked[section] = {k: v for k, v in picked[section].items() if defaults.get(k, object()) != v}
    picked["recommender"] = _model_defaults_unset(picked["recommender"])
    picked.update(_BEHAVIOUR_CHANGES.get((stage, cfg.stage2.mode), {}))
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_defaults_unset(fields: dict) -> dict:
    """The recommender section with every null-by-default field set to the model's own default shown as null:
    `reg_weight: 0.0001` for VBPR trains as leaving it out does, so runs made either way count as the same."""
    params = inspect.signature(get_recommender_class(fields["name"]).__init__).parameters
    nullable = {f.name for f in dataclasses.fields(RecommenderConfig) if f.default is None}
    return {k: None if k in nullable and k in params and params[k].default == v else v for k, v in fields.items()}


def write_metrics(storage: Storage, stage_uri: str, metrics: dict) -> None:
    storage.write_text(join(stage_uri, METRICS_FILE), json.dumps(metrics, indent=2) + "\n")


def read_metrics(storage: Storage, stage_uri: str) -> dict:
    return json.loads(storage.read_text(join(stage_uri, METRICS_FILE)))


def epoch_triples(inter: Interactions, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This epoch's BPR triples in a shuffled order, identical on every rank (seeded by seed and epoch)."""
    from ptmrec.recommenders.sampling import sample_triples

    rng = np.random.default_rng([seed, epoch])
    users, pos, neg = sample_triples(inter.train_users, inter.train_items, inter.num_items, rng)
    order = rng.permutation(len(users))
    return users[order], pos[order], neg[order]
