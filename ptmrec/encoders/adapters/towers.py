"""What kind of tower an adapter is looking at, and where its layers are.

Adapters differ per architecture (where prompts go, which modules LoRA targets), so they ask here
instead of probing attribute names themselves. Kinds:

- ``clip_text``, ``clip_vision``: transformers' CLIP towers (with or without projection);
- ``bert``: BERT-style encoders (all-MiniLM-L6-v2 is one);
- ``efficientnet``: our EfficientNet-Lite (a CNN: no token sequence).
"""

from __future__ import annotations

import re
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


def prompted_layers(tower: nn.Module, depth: int | None,
                    top_layers: int | None = None) -> tuple[str, nn.ModuleList, list[int]]:
    """``(kind, layers, indices)`` for prompts in the first ``depth`` layers (None: every layer), or in the
    top ``top_layers`` ones when that is given; a ``ValueError`` when either does not fit the tower."""
    kind = tower_kind(tower)
    layers = transformer_layers(tower)
    if top_layers is not None:
        return kind, layers, list(range(first_adapted_layer(tower, top_layers), len(layers)))
    depth = len(layers) if depth is None else depth
    if not 1 <= depth <= len(layers):
        raise ValueError(f"prompt depth must be in [1, {len(layers)}] for this {kind} tower, got {depth}")
    return kind, layers, list(range(depth))


# --- layers as placement sees them ------------------------------------------------------------------
#
# "Layer" means a transformer layer, and for EfficientNet one of its 7 stages (blocks of one width and
# resolution: the CNN's natural unit, and what makes "top 2 of 7" cost about what "top 2 of 6" does in
# MiniLM). Modules outside the stack are either below it (embeddings, the CNN stem) or above it (final
# norms, projections, the CNN head), and adapters placed in the top layers may use those above.

_STACK = {"bert": r"(?:.*\.)?encoder\.layer\.(\d+)\..*", "clip_text": r"(?:.*\.)?encoder\.layers\.(\d+)\..*",
          "clip_vision": r"(?:.*\.)?encoder\.layers\.(\d+)\..*", "efficientnet": r"_blocks\.(\d+)\..*"}
_ABOVE = {"bert": r"(?:.*\.)?pooler\..*", "clip_text": r".*(final_layer_norm|text_projection).*",
          "clip_vision": r".*(post_layernorm|visual_projection).*", "efficientnet": r"_(conv_head|bn1)\b.*"}


def num_layers(tower: nn.Module) -> int:
    """How many layers the tower has, as placement counts them (EfficientNet: stages)."""
    if tower_kind(tower) in CNN_KINDS:
        return len(tower.stage_starts)
    return len(transformer_layers(tower))


def layer_of(tower: nn.Module, name: str) -> int:
    """The layer of the module or parameter ``name`` (as in ``tower.named_modules()``): an index in
    ``[0, num_layers)``, -1 below the stack (embeddings, stem), ``num_layers`` above it (norms, head)."""
    kind = tower_kind(tower)
    layers = num_layers(tower)
    match = re.fullmatch(_STACK[kind], name + ".")
    if match:
        index = int(match.group(1))
        if kind in CNN_KINDS:  # a block's stage
            return sum(1 for start in tower.stage_starts if start <= index) - 1
        return index
    return layers if re.fullmatch(_ABOVE[kind], name + ".") else -1


def first_adapted_layer(tower: nn.Module, top_layers: int) -> int:
    """The lowest layer an adapter in the top ``top_layers`` layers uses; a ``ValueError`` when it does not fit."""
    layers = num_layers(tower)
    if not 1 <= top_layers <= layers:
        raise ValueError(f"top_layers must be in [1, {layers}] for this {tower_kind(tower)} tower, got {top_layers}")
    return layers - top_layers


def max_positions(tower: nn.Module) -> int | None:
    """How many tokens a text tower's position embeddings cover; None for image towers."""
    if tower_kind(tower) in ("clip_text", "bert"):
        return tower.config.max_position_embeddings
    return None
