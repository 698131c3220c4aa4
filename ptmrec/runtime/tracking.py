"""Weights & Biases tracking, from rank 0 only (Ray Train V2 would start a run on every worker otherwise).

Offline by default: no account needed, runs land in `tracking.dir` (./wandb) and can be uploaded later
with `wandb sync`. Online when WANDB_API_KEY is set (or WANDB_MODE says so). One W&B run per stage job,
grouped by the run name, with the resolved config, per-step loss terms, learning rates, throughput, every
evaluation's metrics, the final table, for stage 2 the report plot, and the stage's weights as an artifact
(stage 1: model.pt and teacher.pt; stage 2: adapter.pt and recommender.pt).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Optional

from ptmrec.config import Config

log = logging.getLogger(__name__)


def wandb_mode(configured: Optional[str]) -> str:
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A W&B run on rank 0; every method is a no-op elsewhere or when tracking is disabled."""

    def __init__(self, cfg: Config, stage: str, rank: int, tags: tuple[str, ...] = ()):
        self.run = None
        mode = wandb_mode(cfg.tracking.mode)
        if rank != 0 or mode == "disabled":
            return
        import wandb

        os.makedirs(cfg.tracking.dir, exist_ok=True)
        self.run = wandb.init(project=cfg.tracking.project, group=cfg.run.name, name=f"{cfg.run.name}-{stage}",
                              job_type=stage, config=cfg.to_dict(), dir=cfg.tracking.dir, mode=mode,
                              tags=[stage, *cfg.tracking.tags, *tags], reinit="finish_previous")
        log.info("W&B run %s (%s) in %s", self.run.name, mode, cfg.tracking.dir)

    def log(self, metrics: dict, step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, final: dict, table: Optional[dict[str, dict]] = None, image_png: Optional[bytes] = None,
               artifact: Optional[tuple[str, list[str]]] = None) -> None:
        """Write the final metrics to the summary, the per-split table, an image, and an artifact `(type,
        [file URIs])` named after the run; close the run."""
        if self.run is None:
            return
        import wandb

        if artifact is not None:
            self.run.log_artifact(_artifact(f"{self.run.name}-{artifact[0]}", *artifact))
        for key, value in final.items():
            self.run.summary[key] = value
        if table:
            cols = sorted({c for row in table.values() for c in row})
            self.run.log({"final/table": wandb.Table(columns=["split", *cols],
                                                     data=[[split, *(row.get(c) for c in cols)] for split, row in table.items()])})
        if image_png:
            from PIL import Image

            self.run.log({"report": wandb.Image(Image.open(io.BytesIO(image_png)))})
        self.run.finish()
        self.run = None


def _artifact(name: str, kind: str, uris: list[str]):
    """A W&B artifact of the stage's outputs: local files are copied in; objects on S3 are referenced (not
    checksummed: W&B would have to reach the store with its own client)."""
    import wandb

    from ptmrec.uris import parse_uri

    art = wandb.Artifact(name, type=kind)
    for uri in uris:
        loc = parse_uri(uri)
        if loc.scheme == "file":
            art.add_file(loc.path)
        else:
            art.add_reference(uri, checksum=False)
    return art
