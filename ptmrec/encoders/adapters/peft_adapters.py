"""peft methods as adapters: LoRA, DoRA, IA3, LoHa, LoKr, VeRA, OFT, BOFT, HRA.

Each tower gets its own peft injection, in place (``inject_adapter_in_model``; VeRA needs
``get_peft_model``, whose wrapper we drop: the tower keeps the injected layers). The towers keep
their classes, so the encoders' ``encode_*`` run unchanged, and the only new parameters are
peft's. Every method here starts as the identity (LoRA's B, VeRA's λ_b at zero, IA3's scales at
one, OFT/BOFT/HRA's rotations at I), so the adapted encoder starts at the frozen one.

Default targets per tower (``target_modules`` None):

==============  ===============================  ==========================================
tower           most methods                     ia3 (keys, values, FFN; * = feedforward)
==============  ===============================  ==========================================
CLIP text/ViT   q_proj, v_proj                   k_proj, v_proj, mlp.fc2*
BERT (MiniLM)   attention query, value           key, value, layer.N.output.dense*
EfficientNet    1x1 convs: _expand_conv,         same, _project_conv*
                _project_conv, _conv_head
==============  ===============================  ==========================================

EfficientNet's 1x1 convs are ``Conv2d`` subclasses that pad "SAME" themselves; peft wraps them
unchanged (its side branch needs no padding at 1x1). VeRA has no Conv2d layer in peft 0.21, so
with VeRA the CNN tower stays frozen and only the text tower adapts (logged). With explicit
``target_modules`` (names or name suffixes, peft's rule), each tower adapts the ones it has; a
name found in no tower is an error.

``top_layers`` k places the adapter in each tower's top k layers only (EfficientNet: stages; modules
above the stack, e.g. ``_conv_head``, count as top), so that everything below stays the frozen tower
and can be computed once per item (stage 2's layer cache).

Option mapping: ``rank`` is r (lora, dora, loha, lokr, vera, hra) or the orthogonal block size
(oft, boft: capacity grows with it as with r); ``alpha`` is the scaling numerator (lora, dora,
loha, lokr); ``dropout`` is the dropout on the adapter's input (lora, dora, vera).
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

from torch import nn

from ptmrec.encoders.adapters.registry import register_adapter
from ptmrec.encoders.adapters.towers import CNN_KINDS, first_adapted_layer, layer_of, tower_kind, towers

log = logging.getLogger(__name__)

# Default targets as regular expressions over module names (full match), per tower kind.
_ATTENTION = r".*\.self_attn\.(q_proj|v_proj)"
_CONVS_1X1 = r"(.*\.)?(_expand_conv|_project_conv|_conv_head)"
DEFAULT_TARGETS = {
    "clip_text": _ATTENTION,
    "clip_vision": _ATTENTION,
    "bert": r".*\.attention\.self\.(query|value)",
    "efficientnet": _CONVS_1X1,
}
# IA3 scales keys, values and the FFN's hidden activations (the input of its second layer).
IA3_TARGETS = {
    "clip_text": r".*\.self_attn\.(k_proj|v_proj)|.*\.mlp\.fc2",
    "clip_vision": r".*\.self_attn\.(k_proj|v_proj)|.*\.mlp\.fc2",
    "bert": r".*\.attention\.self\.(key|value)|.*\.layer\.\d+\.output\.dense",  # not attention.output.dense
    "efficientnet": _CONVS_1X1,
}
IA3_FEEDFORWARD = {
    "clip_text": r".*\.mlp\.fc2",
    "clip_vision": r".*\.mlp\.fc2",
    "bert": r".*\.layer\.\d+\.output\.dense",
    "efficientnet": r"(.*\.)?_project_conv",  # scales the expanded channels, the CNN's "FFN hidden"
}
VERA_SEED = 0  # VeRA's frozen random projections come from this seed, so a fresh encoder rebuilds them

MakeConfig = Callable[[list[str], str], object]  # (module names in one tower, tower kind) -> peft config


@register_adapter("lora")
def lora(encoder: nn.Module, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0,
         target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """LoRA: ``W x + (alpha / rank) B A x`` on each target."""
    from peft import LoraConfig

    inject(encoder, "lora", target_modules, top_layers, lambda names, kind: LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names))


@register_adapter("dora")
def dora(encoder: nn.Module, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0,
         target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """DoRA: LoRA on the direction of each weight, plus a trainable magnitude per output."""
    from peft import LoraConfig

    inject(encoder, "dora", target_modules, top_layers, lambda names, kind: LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, use_dora=True))


@register_adapter("ia3")
def ia3(encoder: nn.Module, *, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """IA3: learned per-channel scales on keys, values and FFN activations."""
    from peft import IA3Config

    def make(names: list[str], kind: str):
        feedforward = [n for n in names if re.fullmatch(IA3_FEEDFORWARD[kind], n)]
        return IA3Config(target_modules=names, feedforward_modules=feedforward)

    inject(encoder, "ia3", target_modules, top_layers, make, defaults=IA3_TARGETS)


@register_adapter("loha")
def loha(encoder: nn.Module, *, rank: int = 8, alpha: int = 16, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """LoHa: a Hadamard product of two low-rank updates."""
    from peft import LoHaConfig

    inject(encoder, "loha", target_modules, top_layers, lambda names, kind: LoHaConfig(r=rank, alpha=alpha, target_modules=names))


@register_adapter("lokr")
def lokr(encoder: nn.Module, *, rank: int = 8, alpha: int = 16, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """LoKr: a Kronecker product update with a low-rank factor."""
    from peft import LoKrConfig

    inject(encoder, "lokr", target_modules, top_layers, lambda names, kind: LoKrConfig(r=rank, alpha=alpha, target_modules=names))


@register_adapter("vera")
def vera(encoder: nn.Module, *, rank: int = 8, dropout: float = 0.0,
         target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """VeRA: frozen shared random low-rank matrices, trainable scaling vectors (Linear layers only)."""
    from peft import VeraConfig

    inject(encoder, "vera", target_modules, top_layers, lambda names, kind: VeraConfig(
        r=rank, vera_dropout=dropout, projection_prng_key=VERA_SEED, target_modules=names),
        conv2d=False, needs_tuner=True)


@register_adapter("oft")
def oft(encoder: nn.Module, *, rank: int = 8, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """OFT: a block-diagonal orthogonal rotation of each weight's input; ``rank`` = block size."""
    from peft import OFTConfig

    inject(encoder, "oft", target_modules, top_layers, lambda names, kind: OFTConfig(
        r=0, oft_block_size=rank, target_modules=names))


@register_adapter("boft")
def boft(encoder: nn.Module, *, rank: int = 8, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """BOFT: OFT with butterfly-factorized rotations; ``rank`` = block size."""
    from peft import BOFTConfig

    inject(encoder, "boft", target_modules, top_layers, lambda names, kind: BOFTConfig(
        boft_block_size=rank, boft_block_num=0, target_modules=names))


@register_adapter("hra")
def hra(encoder: nn.Module, *, rank: int = 8, target_modules: Sequence[str] | None = None,
         top_layers: int | None = None) -> None:
    """HRA: a chain of ``rank`` Householder reflections applied to each weight."""
    from peft import HRAConfig

    inject(encoder, "hra", target_modules, top_layers, lambda names, kind: HRAConfig(r=rank, target_modules=names))


# --------------------------------------------------------------------------------------------------


def inject(encoder: nn.Module, method: str, target_modules: Sequence[str] | None, top_layers: int | None,
           make_config: MakeConfig, *,
           defaults: dict[str, str] = DEFAULT_TARGETS, conv2d: bool = True, needs_tuner: bool = False) -> None:
    """Inject peft ``method`` into each tower that has targets (those in its top ``top_layers`` layers, or
    above them, when that is given); validate everything before changing anything."""
    import peft

    plan, found = [], set()
    for modality, tower in towers(encoder):
        kind = tower_kind(tower)
        if kind in CNN_KINDS and not conv2d:
            log.warning("%s: peft has no Conv2d layer for this method, so the %s tower (%s) stays frozen; "
                        "only the other tower adapts", method, modality, kind)
            continue
        lowest = 0 if top_layers is None else first_adapted_layer(tower, top_layers)
        candidates = [n for n, _ in tower.named_modules() if layer_of(tower, n) >= lowest]
        if target_modules is None:
            names = [n for n in candidates if re.fullmatch(defaults[kind], n)]
        else:
            names = [n for n in candidates if any(_is_target(n, t) for t in target_modules)]
            found |= {t for t in target_modules if any(_is_target(n, t) for n in names)}
            if not names:
                log.warning("%s: none of target_modules %s is in the %s tower; it stays frozen",
                            method, list(target_modules), modality)
                continue
        plan.append((modality, tower, kind, names))
    missing = [t for t in (target_modules or []) if t not in found]
    if missing:
        raise ValueError(f"{method}: target_modules {missing} match no module in any tower "
                         f"(that {method} can adapt{'' if top_layers is None else f', in the top {top_layers} layers'})")
    if not plan:
        raise ValueError(f"{method}: no tower of this encoder can take it")
    for modality, tower, kind, names in plan:
        config = make_config(names, kind)
        if needs_tuner:
            # VeRA's shared projections are built by its tuner; the layers keep references to them.
            peft.get_peft_model(tower, config)
        else:
            peft.inject_adapter_in_model(config, tower)
        log.info("%s: %s tower (%s): %d modules adapted", method, modality, kind, len(names))


def _is_target(module_name: str, target: str) -> bool:
    """peft's rule for a list of target names: the whole name, or its last dotted parts."""
    return module_name == target or module_name.endswith("." + target)
