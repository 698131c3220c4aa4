"""Where encoder outputs live: seed-independent ones shared through run.features_uri, adapted ones per run."""

from __future__ import annotations

from ptmrec.config import load_config
from ptmrec.stages.features import feature_dir
from ptmrec.sweep import trial_config

MANIFEST = {"shards": {"items": [{"sha256": "ab"}]}}


def test_frozen_features_and_caches_follow_features_uri_adapted_ones_stay_in_the_run(repo, tmp_path):
    cfg = load_config(repo / "configs/smoke.yaml", [f"run.uri={tmp_path}/seed1"])
    own = feature_dir(cfg, MANIFEST)
    assert own.startswith(f"file://{tmp_path}/seed1/features/frozen/")
    cfg = load_config(repo / "configs/smoke.yaml", [f"run.uri={tmp_path}/seed1", f"run.features_uri={tmp_path}/shared"])
    assert feature_dir(cfg, MANIFEST) == own.replace("seed1/features", "shared")  # same key: same settings
    assert feature_dir(cfg, MANIFEST, kind="layers-text4").startswith(f"file://{tmp_path}/shared/layers-text4/")
    assert feature_dir(cfg, MANIFEST, kind="adapted-stage2", per_run=True).startswith(
        f"file://{tmp_path}/seed1/features/adapted-stage2/")


def test_sweep_trials_share_the_base_runs_features(repo, tmp_path):
    path = repo / "configs/smoke.yaml"
    base = load_config(path, [f"run.uri={tmp_path}/base"])
    trials = [trial_config(str(path), [f"run.uri={tmp_path}/base"], base, {"recommender.reg_weight": w})
              for w in (0.1, 0.01)]
    assert trials[0].run.uri != trials[1].run.uri
    assert {feature_dir(t, MANIFEST) for t in trials} == {feature_dir(base, MANIFEST)}
