"""The Tune scheduler of stage-2 sweeps (imports Ray: load it only where Tune runs)."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class LastEpochFinishes(ASHAScheduler):
    """ASHA on the valid metric, except that a trial's last epoch is never stopped. Tune stops a trial by killing
    it, and after its last report (`last_epoch` in the result) a trial still saves its outputs (metrics.json,
    adapters, features): a stop then would lose a finished trial. The result still counts in ASHA's rungs."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if result.get("last_epoch") else action
