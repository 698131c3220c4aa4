"""The stage-2 sweep's scheduler: ASHA, but a trial's last epoch is never stopped (it still saves its outputs)."""

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from ptmrec.runtime.scheduler import LastEpochFinishes


def _result(score: float, last: bool) -> dict:
    return {"training_iteration": 1, "valid/recall@20": score, "last_epoch": last}


def test_asha_stops_a_weak_trial_mid_run_but_never_at_its_last_epoch():
    scheduler = LastEpochFinishes(metric="valid/recall@20", mode="max", grace_period=1, reduction_factor=2)
    strong, weak, weak_last = (Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(3))
    for trial in (strong, weak, weak_last):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, strong, _result(0.5, last=False)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak, _result(0.1, last=False)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, weak_last, _result(0.1, last=True)) == TrialScheduler.CONTINUE


def test_a_rung_ranks_each_trial_by_its_best_epoch_so_far_not_its_latest():
    scheduler = LastEpochFinishes(metric="valid/recall@20", mode="max", grace_period=1, reduction_factor=2)
    peaked, steady = (Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(2))
    for trial in (peaked, steady):
        scheduler.on_trial_add(None, trial)

    def report(trial, epoch, score):
        return scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "valid/recall@20": score})

    assert report(steady, 1, 0.40) == TrialScheduler.CONTINUE
    assert report(peaked, 1, 0.60) == TrialScheduler.CONTINUE
    assert report(steady, 2, 0.50) == TrialScheduler.CONTINUE
    # below the other trial at this rung on its latest epoch (0.45 < 0.50), above it on its best (0.60): kept
    assert report(peaked, 2, 0.45) == TrialScheduler.CONTINUE
