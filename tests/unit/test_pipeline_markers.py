"""When `ptmrec pipeline` takes a stage as done: its output exists *for these settings*."""

from __future__ import annotations

import json

from ptmrec.config import load_config
from ptmrec.pipeline import JOBS, finished
from ptmrec.stages.common import settings_fingerprint
from ptmrec.storage import Storage


def config(repo, tmp_path, *sets):
    return load_config(repo / "configs/smoke.yaml", [f"run.uri={tmp_path / 'run'}", f"data.uri={tmp_path / 'data'}", *sets])


def write_metrics(tmp_path, folder, settings):
    (tmp_path / "run" / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / folder / "metrics.json").write_text(json.dumps({"settings": settings}))


def test_a_stage_is_done_only_for_the_settings_it_ran_with(repo, tmp_path):
    cfg = config(repo, tmp_path)
    stage1, stage2 = JOBS[1], JOBS[2]
    assert finished(Storage(), cfg, stage1)[1] is None  # nothing yet
    write_metrics(tmp_path, "stage1", settings_fingerprint(cfg, "stage1"))
    assert finished(Storage(), cfg, stage1)[1] is True
    # the workers or the ZeRO stage do not change a result; the learning rate does
    assert finished(Storage(), config(repo, tmp_path, "stage1.num_workers=1"), stage1)[1] is True
    assert finished(Storage(), config(repo, tmp_path, "stage1.lr=0.5"), stage1)[1] is False
    # stage 2's marker is the mode's own folder, and stage 1's settings are part of stage 2's
    write_metrics(tmp_path, "stage2-no_kt", settings_fingerprint(config(repo, tmp_path, "stage2.mode=no_kt"), "stage2"))
    assert finished(Storage(), cfg, stage2) == (f"file://{tmp_path}/run/stage2/metrics.json", None)
    no_kt = config(repo, tmp_path, "stage2.mode=no_kt")
    assert finished(Storage(), no_kt, stage2)[1] is True
    assert finished(Storage(), config(repo, tmp_path, "stage2.mode=no_kt", "stage1.lr=0.5"), stage2)[1] is False
    assert settings_fingerprint(cfg, "stage1") == settings_fingerprint(config(repo, tmp_path, "stage2.epochs=9"), "stage1")
