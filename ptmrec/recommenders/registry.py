"""Recommenders by lowercase name.

Entries are "module:Class" paths imported when first built, so listing the names imports no model, and a
model with heavy dependencies costs nothing until it is chosen.
"""

from __future__ import annotations

import importlib

from ptmrec.recommenders.base import Recommender

_RECOMMENDERS: dict[str, str | type[Recommender]] = {}


def register_recommender(name: str, target: str | type[Recommender]) -> None:
    """Register a model class (or its "package.module:Class" path) under a lowercase name.

    Raises:
        ValueError: the name is not lowercase, or is taken.
    """
    if not name or name != name.lower():
        raise ValueError(f"recommender names are lowercase, got {name!r}")
    if name in _RECOMMENDERS:
        raise ValueError(f"recommender {name!r} is already registered ({_RECOMMENDERS[name]})")
    _RECOMMENDERS[name] = target


def available_recommenders() -> list[str]:
    """The registered names, sorted."""
    return sorted(_RECOMMENDERS)


def get_recommender_class(name: str) -> type[Recommender]:
    """The class registered under `name` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    key = name.lower()
    if key not in _RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; valid names: {', '.join(available_recommenders())}")
    target = _RECOMMENDERS[key]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _RECOMMENDERS[key] = target
    return target


def build_recommender(name: str, **kwargs) -> Recommender:
    """Build the named model: kwargs are its constructor's (num_users, num_items, train_interactions,
    features, and hyper-parameters such as embedding_dim); a wrong keyword fails in the constructor."""
    return get_recommender_class(name)(**kwargs)


register_recommender("bpr", "ptmrec.recommenders.bpr:BPR")
register_recommender("lightgcn", "ptmrec.recommenders.lightgcn:LightGCN")
register_recommender("vbpr", "ptmrec.recommenders.vbpr:VBPR")
register_recommender("freedom", "ptmrec.recommenders.freedom:FREEDOM")
