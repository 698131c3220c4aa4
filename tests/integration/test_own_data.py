"""The README's "Bring your own data", command for command: the example shop's CSVs (string ids, dates)
through prepare, stage 1 and recommend, answered in the shop's own ids."""

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import ptmrec

pytestmark = pytest.mark.slow


def readme_commands(repo: Path) -> list[list[str]]:
    text = (repo / "README.md").read_text()
    block = text.split("## Bring your own data", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [re.split(r"\s+", line.strip())[1:] for line in block.strip().splitlines()]


def test_the_example_shop_goes_in_and_comes_back_in_its_own_ids(repo, tmp_path):
    commands = readme_commands(repo)
    assert [c[0] for c in commands] == ["prepare", "stage1", "recommend"]
    where = ["--set", f"data.uri={tmp_path / 'data'}", "--set", f"run.uri={tmp_path / 'run'}",
             "--set", "tracking.mode=disabled"]
    for command in commands[:2]:
        proc = ptmrec(repo, "-q", *command, *where, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert (manifest["num_users"], manifest["num_items"]) == (80, 30) and manifest["modalities"] == ["text"]
    ids = json.loads((tmp_path / "data" / "ids.json").read_text())
    assert ids["users"][0] == "C1000" and "SKU-BLU-DRE" in ids["items"]

    proc = ptmrec(repo, "-q", *commands[2], *where, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["user"] == "C1003" and len(rec["items"]) == 5 and all(i in ids["items"] for i in rec["items"])
    from ptmrec.config import load_config
    from ptmrec.stages.recommend import train_items_of

    cfg = load_config(repo / "configs/example-shop.yaml", [f"data.uri={tmp_path / 'data'}", f"run.uri={tmp_path / 'run'}"])
    bought = train_items_of(cfg, "C1003")
    ordered = {line.split(",")[1] for line in (repo / "examples/shop/orders.csv").read_text().splitlines()[1:]
               if line.startswith("C1003,")}
    assert bought and bought <= ordered and not set(rec["items"]) & bought  # what was bought is not offered again
    metrics = json.loads((tmp_path / "run" / "stage1" / "metrics.json").read_text())
    assert metrics["test"]["recall@10"] > 10 / 30  # the colour in the text helps: better than chance
