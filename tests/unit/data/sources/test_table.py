"""Your own data: a CSV of interactions with string ids and timestamps, an item table, a photo folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ptmrec.config import TableConfig
from ptmrec.data.sources.mmrec import SourceError
from ptmrec.data.sources.table import load_table
from ptmrec.data.tables import TEST, TRAIN, VALID


def write_shop(folder, rows=None):
    """orders.csv: 12 customers x 12 orders over 8 SKUs, dated; products.csv: text for 9 SKUs."""
    folder.mkdir(exist_ok=True)
    if rows is None:
        rows = [(f"cust-{c:02d}", f"SKU-{(c + k) % 8}", f"2024-01-{1 + k:02d}T10:00:00") for c in range(12) for k in range(12)]
    (folder / "orders.csv").write_text("customer,sku,ordered_at\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (folder / "products.csv").write_text("sku,title,colour\n" + "".join(
        f"SKU-{i},Shirt {i},{'' if i == 3 else 'blue'}\n" for i in range(9)))
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(photos / "SKU-1.jpg")
    return folder


def config(folder, **kw) -> TableConfig:
    return TableConfig(interactions=str(folder / "orders.csv"), user="customer", item="sku", time="ordered_at",
                       items=str(folder / "products.csv"), text=["title", "colour"], images=str(folder / "photos"), **kw)


def test_ids_texts_images_and_a_chronological_split(tmp_path):
    d = load_table(config(write_shop(tmp_path / "shop"), split="chronological"))
    assert d.user_ids[:2] == ["cust-00", "cust-01"] and d.num_users == 12
    assert d.item_ids == [f"SKU-{i}" for i in range(9)]  # SKU-8 only in the item table: a cold item
    assert d.item_texts[1] == "Shirt 1. blue" and d.item_texts[3] == "Shirt 3"
    assert d.item_image(1).size == (20, 20) and d.item_image(2) is None
    # per user: 12 orders -> 2 held out, the latest (Jan 12) is test, Jan 11 is valid
    user0 = np.flatnonzero(d.users == 0)
    labels = d.splits[user0]
    assert list(labels[:10]) == [TRAIN] * 10 and labels[10] == VALID and labels[11] == TEST
    random = load_table(config(tmp_path / "shop", split="random"))
    assert random.split_counts() == d.split_counts() and not np.array_equal(random.splits, d.splits)


def test_parquet_works_as_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shop = write_shop(tmp_path / "shop")
    pq.write_table(pa.table({"customer": [1, 1, 2], "sku": ["a", "b", "a"], "ordered_at": [3, 1, 2]}), shop / "o.parquet")
    d = load_table(TableConfig(interactions=str(shop / "o.parquet"), user="customer", item="sku", time="ordered_at",
                               split="chronological"))
    assert d.user_ids == ["1", "2"] and d.item_ids == ["a", "b"] and d.item_texts is None


@pytest.mark.parametrize(("change", "message"), [
    ({"user": "client"}, r"orders.csv: no column 'client' \(found: customer, sku, ordered_at\)"),
    ({"time": None, "split": "chronological"}, "split: chronological needs data.table.time"),
    ({"text": ["size"]}, r"products.csv: no column 'size'"),
    ({"interactions": "/nowhere/orders.csv"}, "/nowhere/orders.csv: not found"),
])
def test_bad_input_names_the_file_and_column(tmp_path, change, message):
    shop = write_shop(tmp_path / "shop")
    cfg = config(shop)
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(SourceError, match=message):
        load_table(cfg)


def test_an_empty_id_and_a_bad_date_name_their_row(tmp_path):
    shop = write_shop(tmp_path / "shop", rows=[("a", "x", "2024-01-01"), ("", "y", "2024-01-02")])
    with pytest.raises(SourceError, match=r"orders.csv, row 2: column 'customer' is empty"):
        load_table(config(shop))
    write_shop(shop, rows=[("a", "x", "2024-01-01"), ("a", "y", "yesterday")])
    with pytest.raises(SourceError, match=r"column 'ordered_at': expected numbers or ISO dates"):
        load_table(config(shop, split="chronological"))


def test_a_data_set_nothing_can_be_learned_from_is_refused_before_any_shard(tmp_path):
    from ptmrec.config import Config, DataConfig, RunConfig
    from ptmrec.data.prepare import prepare

    shop = write_shop(tmp_path / "shop", rows=[("a", "x", "2024-01-01"), ("b", "y", "2024-01-02")])  # one each
    cfg = Config(run=RunConfig(name="t", uri=str(tmp_path / "run")),
                 data=DataConfig(source="table", uri=str(tmp_path / "data"), table=config(shop)))
    with pytest.raises(ValueError, match=r"orders.csv: orders has 2 training and 0 held-out interactions"):
        prepare(cfg, progress=False)
    assert not (tmp_path / "data").exists()


def test_prepare_refuses_an_empty_table_in_one_line_with_status_2(repo, tmp_path, capsys, monkeypatch):
    from ptmrec.cli import main

    (tmp_path / "orders.csv").write_text("customer,sku\n")
    monkeypatch.chdir(repo)
    data = tmp_path / "data"
    code = main(["-q", "prepare", "--config", "configs/smoke.yaml", "--set", f"data.uri={data}",
                 "--set", "data.source=table", "--set", f"data.table.interactions={tmp_path / 'orders.csv'}",
                 "--set", "data.table.user=customer", "--set", "data.table.item=sku"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"ptmrec prepare: bad input: {tmp_path / 'orders.csv'}: no interactions", err
    assert not data.exists()  # nothing a later stage could take for a prepared data set
