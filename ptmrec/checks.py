"""Checks of a loaded config that need more than its types, run by every command before any work.

`load_config` already refuses unknown keys and wrong types. What it cannot know lives in the registries
and the data: the recommender, encoder and adapter names and their options, the metric names, whether a
value is in range, which stage-2 mode fits which model, and whether a sweep's keys
exist. Each failure is one `ConfigError` line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable

from ptmrec.config import Config, ConfigError

# (key, test, what is allowed): plain ranges, checked in this order
POSITIVE, AT_LEAST_ONE, NON_NEGATIVE = "a number above 0", "an integer of 1 or more", "0 or more"
RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    *((k, lambda v: v > 0, POSITIVE) for k in ("stage1.lr", "stage2.lr", "stage2.recommender_lr",
                                                 "stage2.kt.temperature", "encoder.image_size",
                                                 "sweep.trial_cpus")),
    *((k, lambda v: v >= 1, AT_LEAST_ONE) for k in (
        "stage1.epochs", "stage1.patience", "stage1.batch_size", "stage1.eval_every", "stage1.num_workers",
        "stage2.epochs", "stage2.patience", "stage2.eval_every", "stage2.pairs_per_step", "stage2.num_workers", "eval.batch_users",
        "data.shard_items", "data.shard_users", "encoder.max_text_len", "recommender.embedding_dim",
        "sweep.num_samples", "sweep.max_concurrent_trials")),
    ("stage2.items_per_step", lambda v: v >= 2, "an integer of 2 or more (negatives come from the chunk)"),
    ("stage2.adapter.top_layers", lambda v: v is None or v >= 1, "null (every layer) or an integer of 1 or more"),
    *((k, lambda v: v >= 0, NON_NEGATIVE) for k in ("stage2.kt.weight", "stage2.kt.sampled_users",
                                                      "stage2.warmup_steps", "ray.max_failures",
                                                      "storage.outage_budget_s")),
    ("stage2.zero_stage", lambda v: v in (0, 1, 2), "0, 1 or 2 (ZeRO-3 is not supported: evaluation reads the "
                                                    "adapted towers outside the engine)"),
]


def check_config(cfg: Config, *, stage2: bool = False) -> None:
    """Raise `ConfigError` (one line) for the first setting that cannot work. `stage2`: the command will
    run stage 2, so the model must be one it can tune."""
    where = cfg.source_file or "config"
    for key, test, allowed in RANGES:
        value = _get(cfg, key)
        if not test(value):
            raise ConfigError(f"{where}: {key}: expected {allowed}, got {value!r}")
    _check_names(cfg, where)
    _check_eval(cfg, where)
    _check_sweep(cfg, where)
    if stage2:
        problem = stage2_problem(cfg)
        if problem:
            raise ConfigError(f"{where}: {problem}")


def stage2_problem(cfg: Config) -> str | None:
    """Why stage 2 cannot run with this config (None if it can)."""
    from ptmrec.recommenders import get_recommender_class

    if not get_recommender_class(cfg.recommender.name).uses_features:
        return (f"recommender.name: {cfg.recommender.name} is ID-only; stage 2 tunes item features, so it needs "
                "a content model (vbpr, freedom)")
    return layer_cache_problem(cfg)


def layer_cache_problem(cfg: Config) -> str | None:
    """Why `stage2.layer_cache` cannot work with this config (None if it can, or is off)."""
    if not cfg.stage2.layer_cache:
        return None
    adapter = "full" if cfg.stage2.mode == "full_finetune" else cfg.stage2.adapter.name.lower()
    if adapter in ("full", "none"):
        return (f"stage2.layer_cache: true needs an adapter in the top layers, but stage2.mode "
                f"{cfg.stage2.mode} with adapter {adapter!r} {'trains every layer' if adapter == 'full' else 'trains nothing'}")
    if cfg.stage2.adapter.top_layers is None:
        return ("stage2.layer_cache: true needs stage2.adapter.top_layers (the layers it adapts, from the top); with "
                "null every layer adapts and there is nothing frozen to cache")
    return None


def _check_names(cfg: Config, where: str) -> None:
    from ptmrec.encoders import available_encoders
    from ptmrec.encoders.adapters import adapter_options
    from ptmrec.recommenders import available_recommenders, get_recommender_class
    from ptmrec.stages.common import recommender_kwargs

    if cfg.recommender.name.lower() not in available_recommenders():
        raise ConfigError(f"{where}: recommender.name: unknown {cfg.recommender.name!r}; valid: "
                          f"{', '.join(available_recommenders())}")
    if cfg.encoder.name.lower() not in available_encoders():
        raise ConfigError(f"{where}: encoder.name: unknown {cfg.encoder.name!r}; valid: {', '.join(available_encoders())}")
    chosen = cfg.recommender.modalities
    if chosen is not None and (not chosen or not set(chosen) <= {"image", "text"}
                               or not get_recommender_class(cfg.recommender.name).uses_features):
        raise ConfigError(f"{where}: recommender.modalities: {chosen!r}: a non-empty list of image and text, for a "
                          "content model (vbpr, freedom)")
    try:
        recommender_kwargs(cfg.recommender, get_recommender_class(cfg.recommender.name))
        adapter_options(cfg.stage2.adapter)
    except ValueError as exc:
        key = "stage2.adapter.name" if str(exc).startswith("unknown adapter") else None
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{exc}") from None


def _check_eval(cfg: Config, where: str) -> None:
    from ptmrec.evaluation import METRICS

    ks = cfg.eval.ks
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"{where}: eval.ks: expected cut-offs of 1 or more, got {ks}")
    match = re.fullmatch(r"([a-z]+)@(\d+)", cfg.eval.metric)
    if not match or match.group(1) not in METRICS or int(match.group(2)) not in ks:
        raise ConfigError(f"{where}: eval.metric: {cfg.eval.metric!r} is not one of "
                          f"{', '.join(f'{m}@K' for m in METRICS)} with K in eval.ks {ks}")
    num_items = _catalogue_size(cfg)
    if num_items is not None and max(ks) > num_items:
        raise ConfigError(f"{where}: eval.ks: {max(ks)} is more items than the catalogue at {cfg.data.uri} "
                          f"holds ({num_items})")


def _catalogue_size(cfg: Config) -> int | None:
    # Only when the data is already prepared and readable; prepare comes later otherwise.
    from ptmrec.data.shards import load_manifest
    from ptmrec.storage import Storage

    try:
        return int(load_manifest(Storage(cfg.storage), cfg.data.uri)["num_items"])
    except Exception:  # noqa: BLE001 - no manifest (yet), or storage not reachable: nothing to compare
        return None


def _check_sweep(cfg: Config, where: str) -> None:
    for key in cfg.sweep.space:
        if not _is_config_key(key):
            raise ConfigError(f"{where}: sweep.space.{key}: not a config key (dotted, e.g. stage2.kt.weight)")


def _is_config_key(dotted: str) -> bool:
    node: Any = Config
    for part in dotted.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        names = {f.name for f in dataclasses.fields(node) if not f.metadata.get("internal")}
        if part not in names:
            return False
        node = typing.get_type_hints(node)[part]  # the annotations are strings (postponed)
    return True


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
