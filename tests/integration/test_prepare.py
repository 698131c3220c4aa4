"""`ptmrec prepare` end to end on the real data sets, to local files and to the local S3 server."""

import json
import subprocess
import sys

from ptmrec.cli import main
from ptmrec.config import load_config
from ptmrec.data.prepare import prepare
from ptmrec.data.shards import load_manifest
from ptmrec.data.stream import items_from_manifest, read_interactions

BABY = {"num_users": 19445, "num_items": 7050, "num_interactions": 160792,
        "splits": {"train": 118551, "valid": 20559, "test": 21682}}


def config(repo, name, *overrides):
    return load_config(repo / "configs" / name, list(overrides))


def test_amazon_baby_to_file_and_to_s3(repo, shared_data, tmp_path, s3_server, s3_storage, monkeypatch):
    monkeypatch.chdir(repo)
    local = prepare(config(repo, "amazon-baby.yaml", f"data.uri=file://{tmp_path}/baby"), progress=False)
    for key, value in BABY.items():
        assert local[key] == value

    s3_uri = f"s3://{s3_storage.bucket}/data/baby"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # credentials come from the environment, never the config
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = config(repo, "amazon-baby.yaml", f"data.uri={s3_uri}", f"storage.endpoint_url={s3_server.endpoint_url}")
    remote = prepare(cfg, progress=False)
    assert remote == local  # same bytes, same hashes
    assert load_manifest(s3_storage, s3_uri) == local
    # and it streams back from S3 exactly like from disk
    from_s3 = sorted(i for b in items_from_manifest(s3_storage, s3_uri, batch_size=1000) for i in b.item.tolist())
    assert from_s3 == list(range(7050))
    inter = read_interactions(s3_storage, s3_uri)
    assert len(inter.train_users) == 118551 and sum(map(len, inter.test.values())) == 21682


def test_amazon_clothing_has_text(repo, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    m = prepare(config(repo, "amazon-clothing.yaml", f"data.uri={tmp_path}/clothing"), progress=False)
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (39387, 23033, 278677)
    assert m["modalities"] == ["text"]


def test_movielens_through_the_cli(repo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    rc = main(["-q", "prepare", "--config", "configs/demo-ml100k.yaml", "--set", f"data.uri={tmp_path}/ml"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["num_users"], summary["num_items"], summary["num_interactions"]) == (943, 1682, 100000)


def test_cli_reports_bad_input_in_one_line(repo, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.inter").write_text("userID\titemID\tx_label\n0\t1\t9\n")
    proc = subprocess.run([sys.executable, "-m", "ptmrec.cli", "prepare", "--config", str(repo / "configs/amazon-baby.yaml"),
                           "--set", f"data.path={bad}", "--set", f"data.uri={tmp_path}/out"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("ptmrec prepare: bad input: ")  # the user's to fix
    assert "x.inter, line 2: x_label '9' is not one of 0 (train), 1 (valid), 2 (test)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ptmrec.cli", "prepare", "--config", str(repo / "configs/amazon-baby.yaml"),
                           "--set", "stage1.epochz=3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown key 'stage1.epochz'" in proc.stderr
