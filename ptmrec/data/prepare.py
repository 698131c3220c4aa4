"""The prepare job: read the raw source that the config names and write its shards and manifest."""

from __future__ import annotations

import logging
import time

from ptmrec.config import Config
from ptmrec.data.shards import write_shards
from ptmrec.data.sources import load_source
from ptmrec.storage import Storage

log = logging.getLogger(__name__)


def prepare(cfg: Config, progress: bool = True) -> dict:
    """Raw data → `<data.uri>/` shards + manifest.json; returns the manifest."""
    start = time.perf_counter()
    dataset = load_source(cfg.data)
    counts = dataset.split_counts()
    if not counts["train"] or not (counts["valid"] + counts["test"]):
        where = cfg.data.path or cfg.data.table.interactions or cfg.data.source
        raise ValueError(f"{where}: {dataset.name} has {counts['train']} training and "
                         f"{counts['valid'] + counts['test']} held-out interactions; a recommender needs both "
                         "(users with two or more interactions)")
    log.info("read %s: %d users, %d items, %d interactions, modalities %s (%.1f s)", dataset.name,
             dataset.num_users, dataset.num_items, len(dataset.users), dataset.modalities or "none",
             time.perf_counter() - start)
    manifest = write_shards(dataset, cfg.data, Storage(cfg.storage), progress=progress)
    log.info("prepared %s in %.1f s", cfg.data.uri, time.perf_counter() - start)
    return manifest
