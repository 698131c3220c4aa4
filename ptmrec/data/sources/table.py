"""Your own data → `Dataset` (`data.source: table`): interactions from a CSV or Parquet file, optionally an
item table whose columns make each item's text, and a folder of item images.

    data:
      source: table
      uri: file://./data/shop
      table: {interactions: shop/orders.csv, user: customer, item: sku, time: ordered_at, split: chronological,
              items: shop/products.parquet, text: [title, description], images: shop/photos}

Ids are strings, whatever the file holds; users and items get dense indices in sorted id order, and the
ids travel to `ids.json` so that `recommend` and `export` answer in them. The catalogue is every item of
the interactions and of the item table (an item nobody bought yet still gets its features). The split is
per user with MMRec's held-out sizes, in a seeded random order (`random`) or the latest interactions held
out (`chronological`, which needs `time`: numbers or ISO dates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ptmrec.config import TableConfig
from ptmrec.data.sources.mmrec import SourceError, image_reader
from ptmrec.data.tables import Dataset, chronological_split, mmrec_split


def load_table(cfg: TableConfig, seed: int = 2024, rating_threshold: Optional[float] = None) -> Dataset:
    if not cfg.interactions:
        raise SourceError("data.table.interactions: the table source needs a CSV or Parquet file of interactions")
    path = Path(cfg.interactions)
    columns = [c for c in (cfg.user, cfg.item, cfg.time, cfg.rating) if c]
    rows = read_columns(path, columns)
    users_raw, items_raw = rows[cfg.user], rows[cfg.item]
    keep = np.ones(len(users_raw), dtype=bool)
    if rating_threshold is not None:
        if not cfg.rating:
            raise SourceError("data.rating_threshold needs data.table.rating, the column that holds the ratings")
        keep &= _numbers(rows[cfg.rating], path, cfg.rating) >= rating_threshold
    if not keep.any():
        raise SourceError(f"{path}: no interactions" + (" at or above the rating threshold" if rating_threshold else ""))

    texts_by_id: dict[str, str] = {}
    if cfg.items:
        texts_by_id = _item_texts(Path(cfg.items), cfg.item, cfg.text)
    elif cfg.text:
        raise SourceError("data.table.text names item columns; give the item table in data.table.items")
    user_ids = sorted(set(users_raw[keep]))
    item_ids = sorted(set(items_raw[keep]) | set(texts_by_id))
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {t: i for i, t in enumerate(item_ids)}
    users = np.fromiter((user_index[u] for u in users_raw[keep]), dtype=np.int64)
    items = np.fromiter((item_index[t] for t in items_raw[keep]), dtype=np.int64)
    if cfg.split == "chronological":
        if not cfg.time:
            raise SourceError("data.table.split: chronological needs data.table.time, the column of timestamps")
        splits = chronological_split(users, _times(rows[cfg.time][keep], path, cfg.time), len(user_ids))
    else:
        splits = mmrec_split(users, len(user_ids), seed)
    return Dataset(name=path.stem, num_users=len(user_ids), num_items=len(item_ids), users=users, items=items,
                   splits=splits, item_texts=[texts_by_id.get(t, "") for t in item_ids] if cfg.items and cfg.text else None,
                   item_image=image_reader(Path(cfg.images), item_ids) if cfg.images else None,
                   user_ids=user_ids, item_ids=item_ids)


def read_columns(path: Path, columns: list[str], may_be_empty: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The named columns of a CSV or Parquet file (by suffix) as numpy arrays of strings; an empty cell is an
    error naming the row, except in `may_be_empty` columns (read as "")."""
    import pyarrow as pa

    if not path.is_file():
        raise SourceError(f"{path}: not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: not a readable CSV or Parquet file: {str(exc).splitlines()[0]}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (found: {', '.join(table.column_names)})")
    out = {}
    for c in columns:
        values = ["" if v is None else v for v in table.column(c).cast(pa.string()).to_pylist()]
        empty = next((i for i, v in enumerate(values) if v == ""), None)
        if empty is not None and c not in may_be_empty:
            raise SourceError(f"{path}, row {empty + 1}: column {c!r} is empty")
        out[c] = np.asarray(values, dtype=object)
    return out


def _item_texts(path: Path, item: str, text: list[str]) -> dict[str, str]:
    """Item id -> its text columns joined with ". " (empty cells left out)."""
    rows = read_columns(path, [item, *text], may_be_empty=tuple(text))
    return {t: ". ".join(rows[c][i] for c in text if rows[c][i]) for i, t in enumerate(rows[item])}


def _numbers(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    try:
        return values.astype(np.float64)
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise SourceError(f"{path}: column {column!r} holds {bad!r}, not a number") from None


def _times(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    if all(_is_number(v) for v in values):
        return values.astype(np.float64)
    try:
        return np.asarray(values.astype(str), dtype="datetime64[s]").astype(np.int64)
    except ValueError as exc:
        raise SourceError(f"{path}: column {column!r}: expected numbers or ISO dates ({exc})") from None


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
