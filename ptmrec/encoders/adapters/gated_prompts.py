"""Gated deep prompts for transformer towers: prompts that start exactly at the frozen tower.

Inserted prompts (``prompts.py``, VPT-deep as MaPLe uses it) change the frozen output before any
training: the input's tokens move P positions and every token attends to random prompts (on MiniLM,
4 prompt tokens leave a cosine of 0.99 to the frozen features at initialisation, 16 leave 0.96), so
stage 2 starts below the stage-1 model it is meant to improve. Here the prompts are prefix keys and
values with a zero-initialised gate, as LLaMA-Adapter does for its adaption prompts:

    attention_out = frozen_attention(tokens) + tanh(gate_h) * softmax(q_h K_p^T * scale) V_p

per head ``h``, with ``K_p = k_proj(prompts)``, ``V_p = v_proj(prompts)`` and ``q`` the layer's
own queries. The prompts get their own softmax, so the frozen attention among the input's tokens is
untouched; no slot is inserted, so positions, masks and pooling are the frozen tower's. With the
gates at zero the tower *is* the frozen tower (tested to float rounding), and the gradient reaches
the gates from the first step (the prompt tokens follow once a gate opens).

CLIP applies ``out_proj`` inside its attention module, so the gated prompt context goes through its
weight (not its bias: that is already in the frozen output); BERT's self-attention returns the
context before ``BertSelfOutput.dense``, so it is added as is.

Cost: one extra query projection per prompted layer (about 1/12 of a layer's multiply-adds) and a
``[T, P]`` attention per head.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ptmrec.encoders.adapters.prompts import LayerPrompts
from ptmrec.encoders.adapters.towers import prompted_layers


class GatedPrompts(LayerPrompts):
    """Prefix prompts gated per head: ``tokens`` ``[depth, P, D]`` and ``gates`` ``[depth, heads]``, zeros."""

    def __init__(self, *, depth: int, length: int, width: int, heads: int, init_std: float) -> None:
        super().__init__(depth=depth, length=length, width=width, init_std=init_std)
        self.gates = nn.Parameter(torch.zeros(depth, heads))

    def after_attention(self, index: int, attention: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook on a self-attention: add the gated prompt context of prompt layer ``index``."""
        hidden = args[0] if args else kwargs["hidden_states"]
        query, key, value, out_weight, heads, scale = _projections(attention)
        batch, length, _ = hidden.shape
        prompts = self.tokens[index].to(hidden.dtype)
        q = query(hidden).view(batch, length, heads, -1).transpose(1, 2)  # [B, H, T, d]
        k = key(prompts).view(self.length, heads, -1).transpose(0, 1)  # [H, P, d]
        v = value(prompts).view(self.length, heads, -1).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(-1, -2).unsqueeze(0) * scale, dim=-1)  # [B, H, T, P]
        gate = torch.tanh(self.gates[index]).to(hidden.dtype).view(1, heads, 1, 1)
        context = (gate * (weights @ v.unsqueeze(0))).transpose(1, 2).reshape(batch, length, -1)
        if out_weight is not None:
            context = context @ out_weight.T
        return (output[0] + context, *output[1:])


def _projections(attention: nn.Module):
    """``(query, key, value, out_weight or None, heads, scale)`` of a CLIP or BERT self-attention."""
    if hasattr(attention, "q_proj"):  # CLIPAttention: projects its output itself
        return (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj.weight,
                attention.num_heads, attention.scale)
    return (attention.query, attention.key, attention.value, None,
            attention.num_attention_heads, attention.scaling)


def add_gated_prompts(tower: nn.Module, *, length: int, depth: int | None, init_std: float,
                      top_layers: int | None = None) -> GatedPrompts:
    """Attach ``GatedPrompts`` to a CLIP text/vision or BERT tower, in place, as ``tower.prompts``.

    Prompts go into the first ``depth`` layers (None: every layer), or the top ``top_layers`` when that is
    given. Returns the prompts (trainable; the tower is untouched otherwise).
    """
    kind, layers, indices = prompted_layers(tower, depth, top_layers)
    prompts = GatedPrompts(depth=len(indices), length=length, width=tower.config.hidden_size,
                           heads=tower.config.num_attention_heads, init_std=init_std)
    tower.prompts = prompts
    for slot, index in enumerate(indices):
        attention = layers[index].attention.self if kind == "bert" else layers[index].self_attn
        # A bound method in a partial (not a closure), so that deepcopy and pickle carry the hook.
        attention.register_forward_hook(functools.partial(prompts.after_attention, slot), with_kwargs=True)
    return prompts
