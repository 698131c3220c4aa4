"""Recommenders with MMRec's contract (see base.py), a registry by name, and BPR triple sampling."""

from ptmrec.recommenders.base import Recommender
from ptmrec.recommenders.registry import (
    available_recommenders,
    build_recommender,
    get_recommender_class,
    register_recommender,
)
from ptmrec.recommenders.sampling import sample_triples

__all__ = [
    "Recommender",
    "available_recommenders",
    "build_recommender",
    "get_recommender_class",
    "register_recommender",
    "sample_triples",
]
