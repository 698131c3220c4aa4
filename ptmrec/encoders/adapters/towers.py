"""What kind of tower an adapter is looking at, and where its layers are.

Adapters differ per architecture (where prompts go, which modules LoRA targets), so they ask here
instead of probing attribute names themselves. Kinds:

- ``clip_text``, ``clip_vision``: transformers' CLIP towers (with or without projection);
- ``bert``: BERT-style encoders (all-MiniLM-L6-v2 is one);
- ``efficientnet``: our EfficientNet-Lite (a CNN: no token sequence).
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

from ptmrec.encoders.efficientnet_lite import EfficientNetLite

TRANSFORMER_KINDS = ("clip_text", "clip_vision", "bert")
CNN_KINDS = ("efficientnet",)

# transformers' config.model_type -> our kind
_MODEL_TYPES = {"clip_text_model": "clip_text", "clip_vision_model": "clip_vision", "bert": "bert"}


def towers(encoder: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The encoder's present towers as ``(modality, tower)``, image first."""
    for modality in ("image", "text"):
        tower = getattr(encoder, f"{modality}_tower", None)
        if tower is not None:
            yield modality, tower


def tower_kind(tower: nn.Module) -> str:
    """One of ``TRANSFORMER_KINDS + CNN_KINDS``; a ``TypeError`` naming the class for anything else."""
    if isinstance(tower, EfficientNetLite):
        return "efficientnet"
    model_type = getattr(getattr(tower, "config", None), "model_type", None)
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise TypeError(
        f"no adapter support for a {type(tower).__name__} tower (model_type={model_type!r}); "
        f"known: CLIP text/vision, BERT, EfficientNet-Lite"
    )


def transformer_layers(tower: nn.Module) -> nn.ModuleList:
    """The tower's stack of transformer layers, in order (CLIP: ``encoder.layers``, BERT: ``encoder.layer``)."""
    kind = tower_kind(tower)
    if kind not in TRANSFORMER_KINDS:
        raise TypeError(f"a {kind} tower has no transformer layers")
    # The WithProjection CLIP towers keep the transformer one level down.
    inner = tower
    for name in ("text_model", "vision_model"):
        if getattr(tower, name, None) is not None:
            inner = getattr(tower, name)
    return inner.encoder.layer if kind == "bert" else inner.encoder.layers


def prompted_layers(tower: nn.Module, depth: int | None) -> tuple[str, nn.ModuleList, int]:
    """``(kind, layers, depth)`` for prompts in the first ``depth`` layers (None: every layer); a
    ``ValueError`` when the depth does not fit the tower."""
    kind = tower_kind(tower)
    layers = transformer_layers(tower)
    depth = len(layers) if depth is None else depth
    if not 1 <= depth <= len(layers):
        raise ValueError(f"prompt depth must be in [1, {len(layers)}] for this {kind} tower, got {depth}")
    return kind, layers, depth


def max_positions(tower: nn.Module) -> int | None:
    """How many tokens a text tower's position embeddings cover; None for image towers."""
    if tower_kind(tower) in ("clip_text", "bert"):
        return tower.config.max_position_embeddings
    return None
