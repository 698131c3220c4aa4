"""Every command checks its config before any work: one line naming the key, exit status 2."""

from __future__ import annotations

import pytest

from ptmrec.cli import main

BAD = {
    "recommender.name=sasrec": "recommender.name: unknown 'sasrec'; valid: bpr, freedom, lightgcn, vbpr",
    "stage2.adapter.name=lorra": "stage2.adapter.name: unknown adapter 'lorra'",
    "encoder.name=clipp": "encoder.name: unknown 'clipp'",
    "eval.metric=hitrate@20": "eval.metric: 'hitrate@20' is not one of recall@K",
    "eval.ks=[10,20,200000]": "eval.ks: 200000 is more items than the catalogue",
    "stage1.lr=-1": "stage1.lr: expected a number above 0, got -1.0",
    "stage1.epochs=-1": "stage1.epochs: expected an integer of 1 or more, got -1",
    "data.shard_items=0": "data.shard_items: expected an integer of 1 or more, got 0",
    "storage.outage_budget_s=-5": "storage.outage_budget_s: expected 0 or more, got -5",
    "sweep.trial_cpus=0": "sweep.trial_cpus: expected a number above 0, got 0",
    "stage1.num_workers=0": "stage1.num_workers: expected an integer of 1 or more, got 0",
    "stage2.zero_stage=3": "stage2.zero_stage: expected 0, 1 or 2",
    "sweep.space={stage2.kt.weigth: [1.0]}": "sweep.space.stage2.kt.weigth: not a config key",
    "run.uri=gs://bucket/run": "run.uri: gs://bucket/run: unsupported URI scheme",
    "recommender.reg_weight=0.1": None,  # fine for vbpr
    "recommender.knn_k=5": "recommender.knn_k does not apply to vbpr",
    "stage2.items_per_step=1": "stage2.items_per_step: expected an integer of 2 or more",
    "recommender.modalities=[audio]": "recommender.modalities: ['audio']: a non-empty list of image and text",
    "recommender.modalities=[image]": None,
    "stage2.adapter.top_layers=0": "stage2.adapter.top_layers: expected null (every layer) or an integer of 1 or more",
}


@pytest.fixture()
def prepared_catalogue(tmp_path):
    """A manifest of 50 items where the config's data.uri points, as `ptmrec prepare` leaves it."""
    from ptmrec.config import DataConfig
    from ptmrec.data.shards import write_shards
    from ptmrec.data.sources.synthetic import make_synthetic
    from ptmrec.storage import Storage

    uri = str(tmp_path / "data")
    write_shards(make_synthetic(num_users=30, num_items=50, seed=1), DataConfig(source="synthetic", uri=uri), Storage(),
                 progress=False)
    return uri


@pytest.mark.parametrize("setting", list(BAD))
def test_check_config_refuses_a_bad_value_in_one_line(setting, repo, tmp_path, prepared_catalogue, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(repo)
    run = tmp_path / "run"
    code = main(["check-config", "--config", "configs/smoke.yaml", "--set", f"data.uri={prepared_catalogue}",
                 "--set", f"run.uri={run}", "--set", "eval.ks=[10,20]", "--set", setting])
    err = capsys.readouterr().err.strip()
    if BAD[setting] is None:
        assert code == 0, err
        return
    assert code == 2 and len(err.splitlines()) == 1 and BAD[setting] in err, err
    assert not run.exists()  # nothing written


def test_an_id_only_model_is_fine_for_stage_1_and_refused_before_stage_2(repo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    sets = ["--set", "recommender.name=bpr", "--set", f"run.uri={tmp_path / 'run'}"]
    assert main(["check-config", "--config", "configs/smoke.yaml", *sets]) == 0
    assert "note: stage 2 cannot run: recommender.name: bpr is ID-only" in capsys.readouterr().err
    assert main(["pipeline", "--config", "configs/smoke.yaml", *sets]) == 2  # before stage 1 trains
    assert "bpr is ID-only" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("stage2.layer_cache=true", "stage2.layer_cache: true needs stage2.adapter.top_layers"),
    ("stage2={layer_cache: true, mode: full_finetune, adapter: {top_layers: 1}}",
     "stage2.mode full_finetune with adapter 'full' trains every layer"),
])
def test_a_layer_cache_without_frozen_layers_is_refused_before_stage_2(setting, message, repo, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(repo)
    sets = ["--set", setting, "--set", f"run.uri={tmp_path / 'run'}"]
    assert main(["stage2", "--config", "configs/smoke.yaml", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
