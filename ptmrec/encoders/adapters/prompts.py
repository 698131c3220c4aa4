"""Deep prompt tuning for transformer towers (VPT-deep, as MaPLe uses it in both CLIP towers), by hand.

peft's prompt/prefix methods cannot drive CLIP (its text model takes no ``inputs_embeds``), so the
prompts are inserted with forward hooks on the unchanged transformers modules; the tower keeps its
class and its call signature, and the encoders' ``encode_*`` need no change.

Layout: ``P`` prompt tokens sit right after the first token (CLS for vision and BERT, BOS for CLIP
text)::

    position:  0      1 .. P           P+1 ..
    token:     CLS    prompt tokens    the input's own tokens (patches / words), shifted by P

and before each of the first ``depth`` layers their hidden states are *replaced* by that layer's own
learnable tokens (deep prompts; VPT-shallow is depth 1). From layer ``depth`` on they travel like any
other token. At the end they are cut out of ``last_hidden_state``, so callers see their usual
``[B, L, D]``.

Why there:
- vision: pooling reads token 0 (CLS), which stays put;
- CLIP text: attention is causal, so every word and the EOS token (where CLIP pools) see the
  prompts, while BOS, the only token before them, does not need to. The slots are reserved in
  ``input_ids`` (as copies of the first id, never EOS) and ``attention_mask`` *before* the tower
  runs, so transformers builds the causal+padding mask and finds the EOS position (now shifted by
  P) from consistent inputs;
- BERT: same reserved slots with mask 1 (every token attends to them); they are cut out before the
  encoder's mean pooling, which then averages exactly the text's own tokens.

The input's tokens move P positions to the right, as in CoOp/MaPLe, so a text may hold at most
``max_position_embeddings - P`` tokens (the ``prompt`` adapter lowers the encoder's ``max_text_len``
to fit). Intermediate ``hidden_states`` (``output_hidden_states=True``) keep the prompt positions.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ptmrec.encoders.adapters.towers import max_positions, prompted_layers

PROMPT_START = 1  # prompts follow the first (CLS / BOS) token


class LayerPrompts(nn.Module):
    """Learnable prompt tokens for the first ``depth`` layers of one transformer tower: ``tokens``
    ``[depth, P, D]``, normal(0, ``init_std``) (zeros when ``init_std`` is 0)."""

    def __init__(self, *, depth: int, length: int, width: int, init_std: float) -> None:
        super().__init__()
        if length < 1 or depth < 1:
            raise ValueError(f"prompt length and depth must be >= 1, got length={length}, depth={depth}")
        self.tokens = nn.Parameter(torch.zeros(depth, length, width))
        if init_std > 0:
            nn.init.normal_(self.tokens, std=init_std)

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    @property
    def depth(self) -> int:
        return self.tokens.shape[0]


class DeepPrompts(LayerPrompts):
    """Prompt tokens inserted into the sequence (small ``init_std``, so that the prompted tower starts
    near the frozen one)."""

    def __init__(self, *, depth: int, length: int, width: int, init_std: float, reserve_in_input: bool,
                 max_positions: int | None = None) -> None:
        super().__init__(depth=depth, length=length, width=width, init_std=init_std)
        # Text towers get slots reserved in input_ids; vision towers get them inserted before layer 0.
        self.reserve_in_input = reserve_in_input
        self.max_positions = max_positions

    # --- hooks --------------------------------------------------------------------------------

    def reserve_slots(self, tower: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Tower pre-hook (text): ``input_ids``, ``attention_mask`` ``[B, L]`` -> ``[B, L + P]``."""
        kwargs = {**dict(zip(("input_ids", "attention_mask"), args)), **kwargs}
        input_ids = kwargs["input_ids"]
        batch, length = input_ids.shape
        if self.max_positions is not None and length + self.length > self.max_positions:
            raise ValueError(
                f"{length} tokens + {self.length} prompt tokens exceed the tower's {self.max_positions} positions; "
                f"tokenize with max_text_len <= {self.max_positions - self.length}"
            )
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        # Copies of the first id (BOS/CLS): any id but EOS works, since the embeddings of these slots
        # are overwritten before layer 0, and CLIP pools at the first EOS (or, legacy, the largest id).
        slots = input_ids[:, :PROMPT_START].expand(batch, self.length)
        kwargs["input_ids"] = _insert(input_ids, slots)
        kwargs["attention_mask"] = _insert(mask, mask.new_ones(batch, self.length))
        return (), kwargs

    def before_layer(self, index: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Layer pre-hook: hidden states ``[B, T, D]`` with layer ``index``'s prompts in slots 1..P."""
        hidden = args[0] if args else kwargs["hidden_states"]
        prompts = self.tokens[index].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        if index == 0 and not self.reserve_in_input:
            hidden = _insert(hidden, prompts)  # vision: the sequence grows by P here
        else:
            hidden = torch.cat([hidden[:, :PROMPT_START], prompts, hidden[:, PROMPT_START + self.length:]], dim=1)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def strip(self, tower: nn.Module, args: tuple, kwargs: dict, output):
        """Tower hook: drop the prompt positions from ``last_hidden_state`` (``[B, L + P, D]`` -> ``[B, L, D]``)."""
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            raise TypeError(f"prompted {type(tower).__name__} returned {type(output).__name__} without "
                            "last_hidden_state; call it with return_dict=True")
        output.last_hidden_state = torch.cat([hidden[:, :PROMPT_START], hidden[:, PROMPT_START + self.length:]], dim=1)
        return output


def _insert(sequence: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """``[B, L, ...]`` and ``[B, P, ...]`` -> ``[B, L + P, ...]`` with the prompts after position 0."""
    return torch.cat([sequence[:, :PROMPT_START], prompts, sequence[:, PROMPT_START:]], dim=1)


def add_deep_prompts(tower: nn.Module, *, length: int, depth: int | None, init_std: float) -> DeepPrompts:
    """Attach ``DeepPrompts`` to a CLIP text/vision or BERT tower, in place, as ``tower.prompts``.

    ``depth`` None means every layer. Returns the prompts (trainable; the tower is untouched otherwise).
    """
    kind, layers, indices = prompted_layers(tower, depth)
    depth = len(indices)
    width = tower.config.hidden_size
    is_text = kind in ("clip_text", "bert")
    prompts = DeepPrompts(depth=depth, length=length, width=width, init_std=init_std,
                          reserve_in_input=is_text, max_positions=max_positions(tower))
    tower.prompts = prompts
    # Bound methods (not closures) so that deepcopy and pickle carry the hooks to the copy's prompts.
    if is_text:
        tower.register_forward_pre_hook(prompts.reserve_slots, with_kwargs=True)
    for index in range(depth):
        layers[index].register_forward_pre_hook(functools.partial(prompts.before_layer, index), with_kwargs=True)
    tower.register_forward_hook(prompts.strip, with_kwargs=True)
    return prompts
