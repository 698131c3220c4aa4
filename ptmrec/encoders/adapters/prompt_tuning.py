"""The ``prompt`` adapter (the paper's choice): prompts in both towers, each in its own way.

Transformer towers (CLIP text/vision, BERT/MiniLM) get deep prompts in one of two styles:

- ``gated`` (default): prefix keys and values behind zero-initialised gates (``gated_prompts.py``);
  the adapted tower starts exactly at the frozen one, so stage 2 starts exactly at stage 1;
- ``inserted``: prompt tokens inserted into the sequence (``prompts.py``, VPT-deep as in MaPLe); they
  move the input's positions and change the features before any training.

The EfficientNet image tower gets a learnable border on its input (``cnn_prompts.py``, where the
choice is explained), zeros in the ``gated`` style (an exact identity) and normal(0,
``prompt_init_std``) in the ``inserted`` one. Lengths and depths can differ per tower; ``None``
per-tower values fall back to the shared ``prompt_length`` / ``prompt_depth``.
"""

from __future__ import annotations

import logging

from torch import nn

from ptmrec.encoders.adapters.cnn_prompts import add_padding_prompt
from ptmrec.encoders.adapters.gated_prompts import add_gated_prompts
from ptmrec.encoders.adapters.prompts import add_deep_prompts
from ptmrec.encoders.adapters.registry import register_adapter
from ptmrec.encoders.adapters.towers import CNN_KINDS, first_adapted_layer, tower_kind, towers, transformer_layers

log = logging.getLogger(__name__)

PROMPT_STYLES = ("gated", "inserted")


@register_adapter("prompt")
def prompt(
    encoder: nn.Module,
    *,
    prompt_length: int = 4,
    prompt_depth: int | None = None,
    text_prompt_length: int | None = None,
    text_prompt_depth: int | None = None,
    image_prompt_length: int | None = None,
    image_prompt_depth: int | None = None,
    prompt_pad: int = 30,
    prompt_init_std: float = 0.02,
    prompt_style: str = "gated",
    top_layers: int | None = None,
) -> None:
    """Add prompts to every present tower.

    Args:
        prompt_length, prompt_depth: tokens per layer and how many layers (from the first) get fresh
            ones, for transformer towers; depth None = all layers.
        text_prompt_*, image_prompt_*: per-tower overrides; None = the shared value.
        prompt_pad: border width in pixels for a CNN image tower.
        prompt_init_std: std of the prompt tokens' normal init (0 = zeros); also the CNN border's in
            the ``inserted`` style.
        prompt_style: ``gated`` (starts at the frozen tower) or ``inserted`` (see the module doc).
        top_layers: gated prompts in the top k layers of each transformer tower instead of from the first
            (no depth then); a CNN tower stays frozen, since its border sits below every layer.
    """
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)}, got {prompt_style!r}")
    if top_layers is not None and prompt_style != "gated":
        raise ValueError("top_layers needs prompt_style gated: inserted prompts enter the sequence below layer 0")
    depths = (prompt_depth, text_prompt_depth, image_prompt_depth)
    if top_layers is not None and any(d is not None for d in depths):
        raise ValueError("prompt depths count from the first layer and top_layers from the last; set one of them")
    per_tower = {"text": (text_prompt_length, text_prompt_depth), "image": (image_prompt_length, image_prompt_depth)}
    plan = []  # settle every tower's settings before changing any, so that a bad option changes nothing
    for modality, tower in towers(encoder):
        kind = tower_kind(tower)
        length, depth = per_tower[modality]
        if kind in CNN_KINDS:
            if top_layers is not None:
                log.warning("prompt: the %s tower is a CNN, whose prompt is a border on its input, below every "
                            "layer: with top_layers it stays frozen; only the transformer towers adapt", modality)
                continue
            if length is not None or depth is not None:
                raise ValueError(f"{modality}_prompt_length/depth apply to transformer towers; this {modality} "
                                 "tower is a CNN, whose prompt is a border of prompt_pad pixels")
            if not 1 <= prompt_pad <= (encoder.image_size - 1) // 2:
                raise ValueError(f"prompt_pad must be in [1, {(encoder.image_size - 1) // 2}] for "
                                 f"{encoder.image_size}-pixel images, got {prompt_pad}")
        else:
            length = prompt_length if length is None else length
            depth = prompt_depth if depth is None else depth
            layers = len(transformer_layers(tower))
            if length < 1 or not 1 <= (layers if depth is None else depth) <= layers:
                raise ValueError(f"{modality} prompts: length must be >= 1 and depth in [1, {layers}] for this "
                                 f"{kind} tower, got length={length}, depth={depth}")
            if top_layers is not None:
                first_adapted_layer(tower, top_layers)  # fits this tower?
        plan.append((modality, tower, kind, length, depth))
    if not plan:
        raise ValueError("prompt: with top_layers only transformer towers take prompts, and this encoder has none")

    for modality, tower, kind, length, depth in plan:
        if kind in CNN_KINDS:
            border_std = 0.0 if prompt_style == "gated" else prompt_init_std
            add_padding_prompt(tower, image_size=encoder.image_size, width=prompt_pad, init_std=border_std)
            log.info("prompt: %s tower is a CNN: learnable %d-pixel border on its %dx%d input (no depth)",
                     modality, prompt_pad, encoder.image_size, encoder.image_size)
            continue
        if prompt_style == "gated":
            add_gated_prompts(tower, length=length, depth=depth, init_std=prompt_init_std, top_layers=top_layers)
            continue
        if modality == "text":
            _leave_room_for_prompts(encoder, tower, length)
        add_deep_prompts(tower, length=length, depth=depth, init_std=prompt_init_std)


def _leave_room_for_prompts(encoder: nn.Module, tower: nn.Module, length: int) -> None:
    # The prompts take positions from the text (CLIP has 77 in all): lower the encoder's token
    # budget so that tokenize() never returns more than the prompted tower can hold.
    room = tower.config.max_position_embeddings - length
    if encoder.max_text_len > room:
        log.warning("prompt: %d text prompt tokens leave room for %d tokens; max_text_len lowered from %d",
                    length, room, encoder.max_text_len)
        encoder.max_text_len = room
