"""Stage 1 for real: 2 Ray Train workers on CPU, DeepSpeed (gloo), the smoke config; and resume after a kill."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.integration.conftest import ENV, copy_run, ptmrec

pytestmark = pytest.mark.slow


def test_smoke_trains_with_two_workers_through_deepspeed(repo, smoke_data, smoke_stage1, tmp_path):
    run = tmp_path / "run"
    copy_run(smoke_stage1, run)  # the session's stage 1 of the smoke config, logged to W&B offline
    stderr = (smoke_stage1.parent / "stderr.txt").read_text()
    metrics = json.loads((run / "stage1" / "metrics.json").read_text())
    assert metrics["stage"] == "stage1" and metrics["model"] == "vbpr" and metrics["num_workers"] == 2
    assert set(metrics) >= {"valid", "test", "best_epoch", "trainable_params", "total_params", "wall_s", "items_per_s"}
    assert metrics["valid"]["recall@20"] > 0 and len(metrics["history"]) == 3
    # the synthetic users follow their colour/shape taste: better than chance (20/120) after 3 epochs
    assert metrics["test"]["recall@20"] > 20 / 120
    assert (run / "stage1" / "teacher.pt").is_file() and (run / "stage1" / "model.pt").is_file()
    assert "DeepSpeed" in stderr and "gloo" in stderr.lower() or "deepspeed" in stderr.lower()
    assert "PlacementGroupCleaner" not in stderr  # no warning a second, no traceback (quiet_local_actors)
    # W&B (offline): one run for the stage, from rank 0 only, with every evaluation and the final summary
    from tests.wandb_reader import read_run

    runs = list((smoke_stage1.parent / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_run(runs[0])
    assert logged["name"] == "smoke-stage1" and logged["group"] == "smoke"
    assert [h["epoch"] for h in logged["history"]] == [1, 2, 3]
    assert all("valid/recall@20" in h and "loss/bpr" in h for h in logged["history"])
    assert logged["summary"]["best/test/recall@20"] == pytest.approx(metrics["test"]["recall@20"])
    models = [a for a in logged["artifacts"] if a["type"] == "model"]  # (W&B keeps the table as one too)
    assert models == [{"name": "smoke-stage1-model", "type": "model", "files": ["model.pt", "teacher.pt"]}]
    # recommendations out of the finished stage: k items per user, none of the user's training items
    proc = ptmrec(repo, "-q", "recommend", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}", "--user", "3", "--user", "17", "--k", "20", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from ptmrec.config import load_config
    from ptmrec.stages.recommend import train_items_of

    cfg = load_config(repo / "configs/smoke.yaml", [f"data.uri={smoke_data}", f"run.uri={run}"])
    for line, user in zip(proc.stdout.splitlines(), ["3", "17"]):
        rec = json.loads(line)
        assert rec["user"] == user and len(rec["items"]) == len(set(rec["items"])) == 20
        assert rec["scores"] == sorted(rec["scores"], reverse=True)
        assert not set(rec["items"]) & train_items_of(cfg, user)
    # new items from a file (text + picture), scored through the frozen encoder and VBPR's content half
    check_new_items(repo, cfg, smoke_data, run, tmp_path)
    # serving files: Parquet rows equal the representations evaluation scores with; the index agrees with exact
    proc = ptmrec(repo, "-q", "export", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}", "--k", "10", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recall@10 against exact scoring" in proc.stdout
    check_export(cfg, run / "stage1" / "export")


def check_export(cfg, folder) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from ptmrec.data.shards import load_manifest, read_ids
    from ptmrec.data.stream import read_interactions
    from ptmrec.stages.evaluate import load_stage_model
    from ptmrec.stages.export import load_index
    from ptmrec.storage import Storage

    summary = json.loads((folder / "export.json").read_text())
    storage = Storage()
    model = load_stage_model(cfg, "stage1", storage, read_interactions(storage, cfg.data.uri))
    with torch.no_grad():
        users, items = (t.numpy() for t in model())
    ids = read_ids(storage, cfg.data.uri, load_manifest(storage, cfg.data.uri))
    user_table, item_table = pq.read_table(folder / "users.parquet"), pq.read_table(folder / "items.parquet")
    assert user_table.column("id").to_pylist() == ids["users"] and item_table.column("id").to_pylist() == ids["items"]
    np.testing.assert_array_equal(np.stack(user_table.column("embedding").to_numpy(zero_copy_only=False)), users)
    np.testing.assert_array_equal(np.stack(item_table.column("embedding").to_numpy(zero_copy_only=False)), items)
    assert {"feature_image", "feature_text"} <= set(item_table.column_names)  # vbpr on both modalities
    index = load_index((folder / "items.faiss").read_bytes())
    assert index.ntotal == len(items) and summary["index"]["recall@10"] >= 0.9


def check_new_items(repo, cfg, smoke_data, run, tmp_path) -> None:
    from ptmrec.data.sources.synthetic import make_synthetic

    data = make_synthetic(num_users=cfg.data.synthetic_users, num_items=cfg.data.synthetic_items,
                          seed=cfg.data.split_seed)
    lines = ["item,text,image"]
    for i in (4, 9, 30):
        data.item_image(i).save(tmp_path / f"new-{i}.png")
        lines.append(f"new-{i},{data.item_texts[i]},new-{i}.png")
    (tmp_path / "new.csv").write_text("\n".join(lines) + "\n")
    proc = ptmrec(repo, "-q", "recommend", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}", "--user", "3", "--items-file", str(tmp_path / "new.csv"),
                  "--k", "3", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert sorted(rec["items"]) == ["new-30", "new-4", "new-9"] and rec["scores"] == sorted(rec["scores"], reverse=True)


def test_a_worker_error_reaches_the_user_as_one_line(repo, smoke_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(smoke_data, data)
    shard = data / "interactions" / "users-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-3000])  # cut short, as by an interrupted copy
    env = {k: v for k, v in ENV.items() if k != "PTMREC_TRACEBACK"}  # as a user runs it
    proc = subprocess.run([sys.executable, "-m", "ptmrec.cli", "-q", "stage1", "--config", "configs/smoke.yaml",
                           "--set", f"data.uri={data}", "--set", f"run.uri={tmp_path / 'run'}",
                           "--set", "tracking.mode=disabled"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ptmrec stage1: error: ")]
    # whichever rank reads the damaged shard first names it (the other may only see the group break up)
    assert len(ours) == 1 and re.search(r"stage1 failed: rank \d: ", ours[0]) and "users-000000.tar: sha256" in ours[0]
    assert "run_trainer" not in proc.stderr  # no traceback through our own code
    assert not (tmp_path / "run" / "stage1" / "metrics.json").exists()
