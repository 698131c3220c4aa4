"""A tower run in two parts: the frozen bottom layers, and the rest.

With an adapter only in a tower's top layers (``top_layers``), everything below the lowest adapted layer
computes the same thing for an item in every step of every epoch. Stage 2's layer cache runs that part
once (``lower``) and stores its output; training and evaluation then run only ``upper`` on the stored
states. ``upper(lower(x))`` equals the tower's own forward (``encode_image`` / ``encode_text``) up to float
rounding (tested for every tower kind), because both parts call the tower's own modules with the masks
transformers builds for them.

``cut`` is a layer index as ``towers.num_layers`` counts layers (EfficientNet: stages): ``lower`` runs the
embeddings (the CNN's stem) and layers ``[0, cut)``, ``upper`` layers ``[cut, num_layers)``, the final norm,
pooling and projection (the CNN's head). ``encoder.applied_adapter.frozen_layers`` gives each tower's cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptmrec.encoders.adapters.towers import CNN_KINDS, num_layers, tower_kind, transformer_layers


@dataclass
class TowerState:
    """What ``lower`` hands to ``upper`` for a batch."""

    hidden: torch.Tensor  # [B, T, D] token states (transformers) or [B, C, H, W] feature maps (CNN)
    mask: Optional[torch.Tensor] = None  # long [B, T], text towers: 1 on the text's own tokens
    pool_index: Optional[torch.Tensor] = None  # long [B], CLIP text: the position the tower pools at (EOS)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TowerState":
        """A copy with ``fn`` applied to every tensor (``.to(device)``, pinning)."""
        return TowerState(fn(self.hidden), *(fn(t) if t is not None else None for t in (self.mask, self.pool_index)))


def lower(encoder: nn.Module, modality: str, cut: int, *, pixel_values: Optional[torch.Tensor] = None,
          input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None) -> TowerState:
    """The tower of ``modality`` up to (not including) layer ``cut``, for raw inputs as ``encode_*`` takes them."""
    tower, kind = _tower(encoder, modality, cut)
    if kind in CNN_KINDS:
        h = F.relu6(tower._bn0(tower._conv_stem(encoder._pixels(pixel_values))))
        for block in tower._blocks[:_block_start(tower, cut)]:
            h = block(h)
        return TowerState(h)
    inner = _inner(tower)
    layers = transformer_layers(tower)[:cut]
    if kind == "clip_vision":
        hidden = inner.pre_layrnorm(inner.embeddings(encoder._pixels(pixel_values),
                                                     interpolate_pos_encoding=encoder.interpolate_pos_encoding))
        return TowerState(_run(layers, hidden, None))
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = inner.embeddings(input_ids=input_ids)
    if kind == "bert":
        return TowerState(_run(layers, hidden, _text_mask(tower, kind, hidden, attention_mask)), attention_mask)
    hidden = _run(layers, hidden, _text_mask(tower, kind, hidden, attention_mask), is_causal=True)
    return TowerState(hidden, attention_mask, _eos_positions(inner, input_ids))


def upper(encoder: nn.Module, modality: str, cut: int, state: TowerState) -> torch.Tensor:
    """The tower of ``modality`` from layer ``cut`` on, over ``lower``'s states: ``[B, dim]`` features."""
    tower, kind = _tower(encoder, modality, cut)
    if state.hidden.dtype != torch.float32:  # states stored in half precision continue in float32, as the tower does
        state = TowerState(state.hidden.float(), state.mask, state.pool_index)
    if kind in CNN_KINDS:
        h = state.hidden
        for block in tower._blocks[_block_start(tower, cut):]:
            h = block(h)
        return F.relu6(tower._bn1(tower._conv_head(h))).mean(dim=(2, 3))
    inner = _inner(tower)
    layers = transformer_layers(tower)[cut:]
    if kind == "clip_vision":
        hidden = _run(layers, state.hidden, None)
        return tower.visual_projection(inner.post_layernorm(hidden[:, 0]))
    mask = _text_mask(tower, kind, state.hidden, state.mask)
    if kind == "bert":
        return encoder.pool_text(_run(layers, state.hidden, mask), state.mask)
    hidden = inner.final_layer_norm(_run(layers, state.hidden, mask, is_causal=True))
    return tower.text_projection(hidden[torch.arange(hidden.shape[0], device=hidden.device), state.pool_index])


def upper_all(encoder: nn.Module, states: dict[str, TowerState]) -> dict[str, torch.Tensor]:
    """``upper`` for every modality of ``states``, each tower from its adapter's cut
    (``encoder.applied_adapter.frozen_layers``): modality -> ``[B, dim]``."""
    cuts = encoder.applied_adapter.frozen_layers
    return {m: upper(encoder, m, cuts[m], state) for m, state in states.items()}


# --------------------------------------------------------------------------------------------------


def _tower(encoder: nn.Module, modality: str, cut: int) -> tuple[nn.Module, str]:
    tower = encoder._require(modality)
    kind = tower_kind(tower)
    if not 0 <= cut <= num_layers(tower):
        raise ValueError(f"cut must be in [0, {num_layers(tower)}] for this {kind} tower, got {cut}")
    return tower, kind


def _inner(tower: nn.Module) -> nn.Module:
    # CLIP's WithProjection towers keep the transformer one level down; BERT is its own.
    return getattr(tower, "text_model", None) or getattr(tower, "vision_model", None) or tower


def _block_start(tower: nn.Module, cut: int) -> int:
    return tower.stage_starts[cut] if cut < len(tower.stage_starts) else len(tower._blocks)


def _run(layers, hidden: torch.Tensor, mask, **kwargs) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, mask, **kwargs)
    return hidden


def _text_mask(tower: nn.Module, kind: str, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The attention mask the tower's own forward builds (in the form its attention implementation wants)."""
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    if kind == "bert":
        return create_bidirectional_mask(config=tower.config, inputs_embeds=hidden, attention_mask=attention_mask)
    return create_causal_mask(config=_inner(tower).config, inputs_embeds=hidden, attention_mask=attention_mask,
                              cache=None)


def _eos_positions(text_model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # transformers' CLIPTextModel rule: the first EOS, or (configs from before its fix, eos id 2) the largest id.
    ids = input_ids.to(torch.int)
    if text_model.eos_token_id == 2:
        return ids.argmax(dim=-1).long()
    return (ids == text_model.eos_token_id).int().argmax(dim=-1).long()
