"""What each stage-2 mode means for the adapter, KT, the recommender's start and the budget."""

from __future__ import annotations

from ptmrec.config import load_config
from ptmrec.stages.knowledge import effective_settings


def test_joint_trains_at_stage_1s_budget_from_a_fresh_recommender(repo):
    cfg = load_config(repo / "configs/smoke.yaml", ["stage2.mode=joint", "stage1.epochs=40", "stage1.patience=7",
                                                     "stage2.epochs=3", "stage2.patience=1"])
    joint = effective_settings(cfg)
    assert (joint["epochs"], joint["patience"], joint["kt_weight"], joint["from_stage1"]) == (40, 7, 0.0, False)
    assert joint["recommender_lr"] == cfg.stage1.lr
    assert joint["pairs_per_step"] is None  # every training interaction once an epoch, as in stage 1
    cfg.stage1.eval_every, cfg.stage2.eval_every = 5, 2
    assert effective_settings(cfg)["eval_every"] == 5  # joint evaluates on stage 1's cadence too
    cfg.stage2.mode = "ptmrec"
    two_stage = effective_settings(cfg)
    assert (two_stage["epochs"], two_stage["patience"], two_stage["from_stage1"]) == (3, 1, True)
    assert two_stage["eval_every"] == 2 and two_stage["pairs_per_step"] == cfg.stage2.pairs_per_step
    assert two_stage["kt_weight"] == cfg.stage2.kt.weight and two_stage["adapter"] == cfg.stage2.adapter.name


def test_a_setting_added_later_leaves_the_fingerprint_alone_at_its_old_behaviour(repo):
    from ptmrec.stages.common import settings_fingerprint

    # data.uri is pinned: a relative uri resolves to an absolute one, which would tie the hash to the checkout
    cfg = load_config(repo / "configs/smoke.yaml", ["data.uri=file:///srv/ptmrec/data/synthetic"])
    # the fingerprint stage 1 of configs/smoke.yaml had before eval.selection existed (seed 7, computed at 011d9ea)
    assert settings_fingerprint(cfg, "stage1") == "0dd01475a32622b0"
    halves = load_config(repo / "configs/smoke.yaml", ["data.uri=file:///srv/ptmrec/data/synthetic",
                                                       "eval.selection=valid_halves"])
    assert settings_fingerprint(halves, "stage1") != settings_fingerprint(cfg, "stage1")
    # stage 2's, from before stage2.eval_every existed (computed at ef295f3): every epoch evaluated, as then
    assert settings_fingerprint(cfg, "stage2") == "325cb1f7057cc770"
    sparse = load_config(repo / "configs/smoke.yaml", ["data.uri=file:///srv/ptmrec/data/synthetic",
                                                       "stage2.eval_every=2"])
    assert settings_fingerprint(sparse, "stage2") != settings_fingerprint(cfg, "stage2")


def test_a_joint_run_from_before_its_epoch_took_every_interaction_is_not_taken_as_finished(repo):
    from ptmrec.stages.common import settings_fingerprint

    joint = load_config(repo / "configs/smoke.yaml", ["data.uri=file:///srv/ptmrec/data/synthetic", "stage2.mode=joint"])
    # joint's stage-2 fingerprint when its epoch took pairs_per_step triples a chunk (computed at cef60d6)
    assert settings_fingerprint(joint, "stage2") != "c4a808c52e4dc379"
    # stage 1, and the other modes' stage 2 (the golden values above), keep theirs
    assert settings_fingerprint(joint, "stage1") == "0dd01475a32622b0"


def test_a_hyperparameter_set_to_the_models_default_fingerprints_as_left_out(repo):
    from ptmrec.stages.common import settings_fingerprint

    sets = ["data.uri=file:///srv/ptmrec/data/synthetic", "recommender.name=vbpr"]
    unset = load_config(repo / "configs/smoke.yaml", sets)
    default = load_config(repo / "configs/smoke.yaml", [*sets, "recommender.reg_weight=0.0001"])  # VBPR's own
    tuned = load_config(repo / "configs/smoke.yaml", [*sets, "recommender.reg_weight=0.1"])
    assert settings_fingerprint(default, "stage1") == settings_fingerprint(unset, "stage1")
    assert settings_fingerprint(tuned, "stage1") != settings_fingerprint(unset, "stage1")
    assert settings_fingerprint(tuned, "stage2") != settings_fingerprint(unset, "stage2")
