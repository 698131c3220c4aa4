"""Raw inputs → `Dataset`. One module per source, selected by `data.source` in the run config."""

from __future__ import annotations

from ptmrec.config import DataConfig
from ptmrec.data.tables import Dataset


def load_source(cfg: DataConfig) -> Dataset:
    """Read the raw data that `cfg.source` names (lazy imports: each source pulls in only what it needs)."""
    if cfg.source == "mmrec":
        from ptmrec.data.sources.mmrec import load_mmrec

        if not cfg.path:
            raise ValueError("data.path: the mmrec source needs the path of an MMRec directory")
        return load_mmrec(cfg.path)
    if cfg.source == "movielens":
        from ptmrec.data.sources.movielens import load_movielens

        return load_movielens(path=cfg.path, seed=cfg.split_seed, rating_threshold=cfg.rating_threshold)
    if cfg.source == "synthetic":
        from ptmrec.data.sources.synthetic import make_power_law, make_synthetic

        if cfg.synthetic_kind == "power_law":
            return make_power_law(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items, seed=cfg.split_seed)
        return make_synthetic(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items, seed=cfg.split_seed)
    if cfg.source == "table":
        from ptmrec.data.sources.table import load_table

        return load_table(cfg.table, seed=cfg.split_seed, rating_threshold=cfg.rating_threshold)
    raise ValueError(f"data.source: unknown source {cfg.source!r}; valid: mmrec, movielens, synthetic, table")
