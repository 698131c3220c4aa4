"""The two ends the paper compares against: ``full`` (every tower weight trains) and ``none`` (frozen)."""

from __future__ import annotations

from torch import nn

from ptmrec.encoders.adapters.registry import register_adapter


@register_adapter("full")
def full(encoder: nn.Module) -> None:
    """Full fine-tuning: unfreeze both towers. BatchNorm layers then train as usual (batch statistics)."""
    encoder.requires_grad_(True)


@register_adapter("none")
def none(encoder: nn.Module) -> None:
    """Nothing trains: the frozen encoder of stage 1, for baselines that still run the stage-2 loop."""
