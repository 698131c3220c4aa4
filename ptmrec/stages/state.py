"""What both training stages carry across epochs and checkpoints: the early-stopping state, and one
checkpoint layout (DeepSpeed shards from every rank + state.json + the best epoch's weights from rank 0)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch


@dataclass
class TrainState:
    """What a checkpoint restores besides the DeepSpeed engine."""

    epoch: int = 0  # epochs completed
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations since the last improvement
    best: dict = field(default_factory=dict)  # {"valid": {...}, "test": {...}} at best_epoch
    history: list = field(default_factory=list)
    resumed_from_epoch: Optional[int] = None

    def progress(self, epochs: int, patience: int, seconds_per_epoch: float, epochs_per_eval: int = 1) -> str:
        """"k/N" and how long at most until early stopping (`patience` evaluations without a better one) or
        the last epoch, for the epoch log line."""
        last = min(epochs, self.epoch + max(0, patience - self.bad_evals) * epochs_per_eval)
        left = (last - self.epoch) * seconds_per_epoch
        eta = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
        return f"{self.epoch}/{epochs}" + (f", stops by {last} (≤ {eta})" if last > self.epoch else "")

    def observe(self, result: dict[str, dict[str, float]], metric: str, split: str = "valid") -> bool:
        """Record an evaluation of epoch `self.epoch`; True if it is the best so far on `split`'s `metric`
        (valid, or a half of it: `selection_split`)."""
        score = result[split][metric]
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_evals, self.best = score, self.epoch, 0, result
            return True
        self.bad_evals += 1
        return False

    def summary(self) -> dict[str, Any]:
        """The run's result for the tracker's summary: the chosen epoch and its metrics, flat."""
        return {"best_epoch": self.best_epoch,
                **{f"best/{split}/{k}": v for split, metrics in self.best.items() for k, v in metrics.items()}}


def save_checkpoint(engine, state: TrainState, directory: str, rank: int, best: Optional[Any],
                    exclude_frozen: bool = False) -> None:
    """Every rank saves its DeepSpeed shard (optimizer partitions under ZeRO; Ray merges the ranks' files).

    Every checkpoint carries the best epoch's weights, since older checkpoints are pruned
    (checkpoints_to_keep). `exclude_frozen` leaves out the frozen backbone (stage 2).
    """
    engine.save_checkpoint(str(Path(directory) / "deepspeed"), tag="step", exclude_frozen_parameters=exclude_frozen)
    if rank == 0:
        Path(directory, "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
        if best is not None:
            torch.save(best, Path(directory) / "best.pt")


def restore_checkpoint(engine, directory: Path, rank: int, exclude_frozen: bool = False) -> tuple[TrainState, Any]:
    """The engine restored in place, and (state, rank 0's best weights or None)."""
    # A checkpoint without the frozen backbone cannot be loaded strictly; a full one can.
    engine.load_checkpoint(str(directory / "deepspeed"), tag="step", load_module_strict=not exclude_frozen)
    state = TrainState(**json.loads((directory / "state.json").read_text()))
    state.resumed_from_epoch = state.epoch
    path = directory / "best.pt"
    best = torch.load(path, map_location="cpu", weights_only=False) if rank == 0 and path.is_file() else None
    return state, best
