"""The Tune scheduler of stage-2 sweeps (imports Ray: load it only where Tune runs)."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class LastEpochFinishes(ASHAScheduler):
    """ASHA on the valid metric, except that a trial's last epoch is never stopped. Tune stops a trial by killing
    it, and after its last report (`last_epoch` in the result) a trial still saves its outputs (metrics.json,
    adapters, features): a stop then would lose a finished trial. The result still counts in ASHA's rungs.

    A rung compares each trial's best epoch so far, not its latest: stage 2 hands back its best epoch, so a trial
    that peaked early and dipped after is still worth what it would return if it ended now (a FREEDOM sweep lost
    the trial with the best valid epoch of all to a dip in the next one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._best: dict[str, float] = {}  # trial id → best signed metric reported so far

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric in result:
            signed = self._metric_op * result[self._metric]
            best = self._best[trial.trial_id] = max(signed, self._best.get(trial.trial_id, signed))
            result = {**result, self._metric: self._metric_op * best}
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if result.get("last_epoch") else action

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._best.pop(trial.trial_id, None)
        super().on_trial_remove(tune_controller, trial)
