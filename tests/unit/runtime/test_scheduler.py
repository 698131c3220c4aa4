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
