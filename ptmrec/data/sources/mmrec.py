"""A directory in MMRec's format → `Dataset`.

Expected layout (as MMRec's preprocessed Amazon data sets):
- `<name>.inter`: tab-separated with a header; columns `userID itemID x_label` (0 = train, 1 = valid,
  2 = test), extra columns ignored. Ids are dense integers; counts are max id + 1, as MMRec computes them.
- optional `<name>_item_text.tsv`: header `itemID asin title brand categories description`; the item text
  is its non-empty fields (title, brand, categories, description) joined, HTML entities unescaped.
- optional `images/<itemID>.jpg` (or .png): one product image per item.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ptmrec.config import InputError
from ptmrec.data.tables import Dataset

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
TEXT_FIELDS = ("title", "brand", "categories", "description")
X_LABELS = {"0": 0, "1": 1, "2": 2}


class SourceError(InputError):
    """Raw input that does not match the expected format; the message names the file and row."""


def load_mmrec(path: str | Path) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory (data.path must name an MMRec data directory)")
    inters = sorted(root.glob("*.inter"))
    if len(inters) != 1:
        found = ", ".join(p.name for p in inters) or "none"
        raise SourceError(f"{root}: expected exactly one <name>.inter file, found {found}")
    inter = inters[0]
    name = inter.stem
    users, items, splits = read_inter(inter)
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1

    texts, meta = None, None
    text_file = root / f"{name}_item_text.tsv"
    if text_file.is_file():
        texts, meta = read_item_text(text_file, num_items)
        num_items = len(texts)

    image_dir = root / "images"
    item_image = image_reader(image_dir) if image_dir.is_dir() else None
    return Dataset(name=name, num_users=num_users, num_items=num_items, users=users, items=items,
                   splits=splits, item_texts=texts, item_image=item_image, item_meta=meta,
                   user_ids=read_id_mapping(root / "u_id_mapping.csv", "userID", num_users),
                   item_ids=read_id_mapping(root / "i_id_mapping.csv", "itemID", num_items))


def read_id_mapping(path: Path, index_column: str, count: int) -> list[str] | None:
    """MMRec's `{u,i}_id_mapping.csv` (tab-separated: original id, dense index) as the original ids in index
    order; None when the file is absent (the dense ids are then the ids)."""
    if not path.is_file():
        return None
    ids: list[str | None] = [None] * count
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, [])
        if len(header) < 2 or header[1] != index_column:
            raise SourceError(f"{path}: expected a header '<original id><TAB>{index_column}', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or not row[1].isdigit() or int(row[1]) >= count:
                raise SourceError(f"{path}, line {line_no}: expected '<id><TAB><{index_column} below {count}>', "
                                  f"got {row!r}")
            ids[int(row[1])] = row[0]
    return [original if original is not None else str(i) for i, original in enumerate(ids)]


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read an `.inter` file; every bad row fails with the file, line number and what was expected."""
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise SourceError(f"{path}: empty file; expected a header with columns {' '.join(REQUIRED_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column {missing[0]!r}; expected tab-separated columns "
                              f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(header)})")
        cu, ci, cx = (header.index(c) for c in REQUIRED_COLUMNS)
        users, items, splits = [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise SourceError(f"{path}, line {line_no}: expected {len(header)} tab-separated fields, "
                                  f"got {len(row)}")
            users.append(_int_id(row[cu], path, line_no, "userID"))
            items.append(_int_id(row[ci], path, line_no, "itemID"))
            label = X_LABELS.get(row[cx].strip())
            if label is None:
                raise SourceError(f"{path}, line {line_no}: x_label {row[cx]!r} is not one of "
                                  "0 (train), 1 (valid), 2 (test)")
            splits.append(label)
    if not users:
        raise SourceError(f"{path}: no interactions below the header")
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(splits, dtype=np.int8))


def read_item_text(path: Path, num_items: int) -> tuple[list[str], list[dict]]:
    """Item texts by item id; items missing from the file get ""."""
    texts = [""] * num_items
    meta: list[dict] = [{} for _ in range(num_items)]
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or "itemID" not in reader.fieldnames:
            raise SourceError(f"{path}: missing column 'itemID'; expected a header "
                              "itemID asin title brand categories description")
        for line_no, row in enumerate(reader, start=2):
            item = _int_id(row["itemID"], path, line_no, "itemID")
            if item >= len(texts):  # items with text but no interaction still belong to the catalogue
                texts.extend([""] * (item + 1 - len(texts)))
                meta.extend({} for _ in range(item + 1 - len(meta)))
            fields = [html.unescape((row.get(k) or "").strip()) for k in TEXT_FIELDS]
            texts[item] = ". ".join(f for f in fields if f)
            meta[item] = {"asin": row.get("asin") or ""}
    return texts, meta


def _int_id(text: str, path: Path, line_no: int, column: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SourceError(f"{path}, line {line_no}: {column} {text!r} is not an integer id") from None
    if value < 0:
        raise SourceError(f"{path}, line {line_no}: {column} {value} is negative; ids start at 0")
    return value


def image_reader(image_dir: Path, names: Optional[list[str]] = None):
    """`item -> image or None`, from `<image_dir>/<name>.jpg|.jpeg|.png`, the name being `names[item]` (the
    item's own id) or the dense index."""

    def item_image(item: int) -> Optional[Image.Image]:
        name = names[item] if names is not None else str(item)
        for ext in (".jpg", ".jpeg", ".png"):
            p = image_dir / f"{name}{ext}"
            if p.is_file():
                try:
                    with Image.open(p) as im:
                        return im.convert("RGB")
                except OSError as exc:
                    raise SourceError(f"{p}: not a readable image: {exc}") from None
        return None

    return item_image
