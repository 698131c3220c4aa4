import pytest

from ptmrec.cli import main


def test_compare_refuses_a_named_stage2_folder_before_any_work(capsys, tmp_path):
    # compare keeps each mode in stage2/ or stage2-<mode>/: a named folder would be skipped or overwritten
    code = main(["-q", "compare", "--config", "configs/smoke.yaml", "--set", f"run.uri=file://{tmp_path}/run",
                 "--set", "stage2.output=stage2-other"])
    err = capsys.readouterr().err
    assert code == 2
    assert "stage2.output" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_compare_reuses_only_stages_finished_with_the_same_settings(monkeypatch, capsys, tmp_path, repo):
    import json

    import ptmrec.stages.knowledge as knowledge
    import ptmrec.stages.recommendation as recommendation
    from ptmrec.cli import _compare_one
    from ptmrec.config import load_config
    from ptmrec.stages.common import settings_fingerprint

    ran = []
    monkeypatch.setattr(recommendation, "run_recommendation_stage", lambda cfg, progress: ran.append("stage1"))
    monkeypatch.setattr(knowledge, "run_knowledge_stage", lambda cfg, progress: ran.append(cfg.stage2.mode))
    cfg = load_config(repo / "configs/smoke.yaml", [f"run.uri=file://{tmp_path}", "stage2.epochs=3"])
    one_epoch = load_config(repo / "configs/smoke.yaml", [f"run.uri=file://{tmp_path}", "stage2.epochs=1"])
    for folder, settings in (("stage1", settings_fingerprint(cfg, "stage1")),
                             ("stage2", settings_fingerprint(one_epoch, "stage2")),  # another stage 2 setting
                             ("stage2-no_kt", "0000000000000000")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps({"settings": settings}))
    monkeypatch.setattr("ptmrec.stages.report.write_report", lambda *a, **k: "report")
    _compare_one(cfg, ["ptmrec", "no_kt"], quiet=True)
    assert ran == ["ptmrec", "no_kt"]  # stage 1 reused; both stage-2 folders hold other settings
    out = capsys.readouterr().out
    assert "stage 1 already finished" in out and out.count("holds a run with other settings") == 2
    ran.clear()
    _compare_one(one_epoch, ["ptmrec"], quiet=True)
    assert ran == []  # the 1-epoch stage 2 is this config's


@pytest.fixture
def ran_stages(monkeypatch):
    """The stages compare starts, recorded instead of trained: stage 1 as its seed, stage 2 as its mode."""
    import ptmrec.stages.knowledge as knowledge
    import ptmrec.stages.recommendation as recommendation

    ran = []
    monkeypatch.setattr(recommendation, "run_recommendation_stage", lambda cfg, progress: ran.append(cfg.run.seed))
    monkeypatch.setattr(knowledge, "run_knowledge_stage", lambda cfg, progress: ran.append(cfg.stage2.mode))
    monkeypatch.setattr("ptmrec.stages.report.write_report", lambda *a, **k: "report")
    monkeypatch.setattr("ptmrec.stages.report.collect", lambda storage, uri: [])
    return ran


def test_compare_with_no_modes_trains_stage1_only(ran_stages, tmp_path, repo):
    # `--modes` alone: the frozen baseline over the seeds, no stage 2 started
    ran = ran_stages
    code = main(["-q", "compare", "--config", str(repo / "configs/smoke.yaml"), "--set", f"run.uri=file://{tmp_path}/run",
                 "--seeds", "1", "2", "--modes"])
    assert code == 0 and ran == [1, 2]


def test_compare_takes_an_id_only_model_for_stage1_only_and_refuses_it_with_a_mode(ran_stages, capsys, tmp_path,
                                                                                  repo):
    # an IDs-only baseline over seeds (`--modes` alone) is a stage-1 run; stage 2 needs a content model
    ran = ran_stages
    args = ["-q", "compare", "--config", str(repo / "configs/smoke.yaml"), "--set", f"run.uri=file://{tmp_path}/run",
            "--set", "recommender.name=bpr", "--seeds", "1", "--modes"]
    assert main(args) == 0 and ran == [1]
    assert main([*args, "ptmrec"]) == 2 and ran == [1]
    assert "bpr is ID-only" in capsys.readouterr().err


def test_compare_against_a_run_that_is_not_there_fails_in_one_line_before_any_work(ran_stages, capsys, tmp_path,
                                                                                    repo):
    args = ["-q", "compare", "--config", str(repo / "configs/smoke.yaml"), "--set", f"run.uri=file://{tmp_path}/run",
            "--against", f"file://{tmp_path}/nothing"]
    assert main([*args, "--seeds", "1", "2"]) == 2 and ran_stages == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing" in err and "nothing-seed1: no finished stage 1" in err
    assert main(args) == 2 and "give --seeds too" in capsys.readouterr().err
