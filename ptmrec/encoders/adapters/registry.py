"""Adapters by name: insert one into an encoder, freeze the rest, save and restore what it trains.

    encoder = apply_adapter(build_encoder("bundled"), "prompt", prompt_length=4)
    trainable, total = count_parameters(encoder)
    state = adapter_state_dict(encoder)          # only what the adapter trains
    load_adapter_state(other_encoder_with_same_adapter, state)

Each entry is a builder ``(encoder, **options) -> None`` registered with ``@register_adapter(name)``:
it adds its modules to the towers in place, with trainable parameters; ``apply_adapter`` has frozen
everything else before. Builders import their heavy dependencies (peft) only when called.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ptmrec.registry import registrar

if TYPE_CHECKING:
    from ptmrec.encoders.base import TwoTowerEncoder

log = logging.getLogger(__name__)

Builder = Callable[..., None]

_ADAPTERS: dict[str, Builder] = {}
ADAPTERS = MappingProxyType(_ADAPTERS)  # read-only view: name -> builder


@dataclass(frozen=True)
class AppliedAdapter:
    """What ``apply_adapter`` leaves on the encoder (as ``encoder.applied_adapter``)."""

    name: str
    options: dict[str, Any]
    state_names: tuple[str, ...]  # the tensors adapter_state_dict saves, named as in encoder.state_dict()
    # modality -> how many of the tower's bottom layers (see towers.num_layers) run exactly as frozen: 0 when
    # the adapter reaches the first layer, all of them when the tower is frozen (the layer cache stores their
    # output once per item)
    frozen_layers: dict[str, int] = dataclasses.field(default_factory=dict)


# Decorator adding a builder under ``name`` (lowercase); a name can be registered once.
register_adapter = registrar(_ADAPTERS, "adapter")


def available_adapters() -> list[str]:
    """The registered names, sorted."""
    return sorted(_ADAPTERS)


def apply_adapter(encoder: TwoTowerEncoder, name: str, **options: Any) -> TwoTowerEncoder:
    """Insert adapter ``name`` into ``encoder``'s towers in place and freeze every other parameter.

    Returns the same encoder; its ``encode_image`` / ``encode_text`` now run through the adapter.
    ``options`` are the builder's keywords (see ``adapter_options`` to get them from the config).
    Frozen BatchNorm layers keep normalizing with their running statistics in train mode too.
    """
    key, builder = _lookup(name)
    accepted = _option_names(builder)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"adapter {key!r} takes no option(s) {unknown}; its options: {sorted(accepted) or 'none'}")
    if getattr(encoder, "applied_adapter", None) is not None:
        raise ValueError(f"this encoder already has adapter {encoder.applied_adapter.name!r}; build a fresh one")
    requires_grad = {p: p.requires_grad for p in encoder.parameters()}
    encoder.requires_grad_(False)
    try:
        builder(encoder, **options)
    except Exception:
        # Builders check their options before changing a tower; undo the freeze too.
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        raise
    _keep_frozen_batch_norm_statistics(encoder)
    encoder.applied_adapter = AppliedAdapter(key, dict(options), _state_names(encoder),
                                             _frozen_layers(encoder, options.get("top_layers")))
    trainable, total = count_parameters(encoder)
    log.info("adapter %s: %s of %s encoder parameters train (%.3f %%)", key, f"{trainable:,}", f"{total:,}",
             100.0 * trainable / max(total, 1))
    return encoder


def set_train_mode(encoder: nn.Module, mode: bool = True) -> None:
    """Train mode for an adapted encoder: what trains follows `mode`; the frozen backbone stays in eval
    mode (dropout off, BatchNorm on its running statistics), so that in training it computes exactly the
    features stage 1, the teacher and evaluation see. Under ``full`` (or with no adapter) every module
    follows `mode`, as in ordinary fine-tuning.

    Adapter modules are the peft tuner layers (their own dropout, e.g. ``lora_dropout``, stays active) and
    every module that owns a trainable parameter (deep prompts, the CNN padding prompt).
    """
    applied = getattr(encoder, "applied_adapter", None)
    if applied is None or applied.name == "full":
        encoder.train(mode)
        return
    encoder.train(False)
    if not mode:
        return
    tuner_layer = _peft_tuner_layer_class()
    for module in encoder.modules():
        owns_trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        if owns_trainable or (tuner_layer is not None and isinstance(module, tuner_layer)):
            module.train(True)


def _peft_tuner_layer_class():
    # Only if peft was imported: an encoder cannot hold peft layers otherwise (and importing it is slow).
    module = sys.modules.get("peft.tuners.tuners_utils")
    return getattr(module, "BaseTunerLayer", None)


def count_parameters(encoder: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters once; buffers not counted)."""
    params = list(encoder.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_state_dict(encoder: TwoTowerEncoder) -> dict[str, torch.Tensor]:
    """The adapter's trained tensors, detached copies on CPU, keyed as in ``encoder.state_dict()``.

    That is the trainable parameters, plus the running statistics of BatchNorm layers that train
    (only under ``full``), which training changes too.
    """
    tensors = _tensors(encoder)
    return {name: tensors[name].detach().to("cpu", copy=True) for name in _applied(encoder).state_names}


def load_adapter_state(encoder: TwoTowerEncoder, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from ``adapter_state_dict``) into an encoder that has the same adapter.

    Strict: missing or unexpected keys and shape mismatches raise, naming them.
    """
    expected = set(_applied(encoder).state_names)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"adapter state does not fit adapter {encoder.applied_adapter.name!r}: "
                         f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}")
    tensors = _tensors(encoder)
    wrong = [f"{n}: {tuple(state[n].shape)} vs {tuple(tensors[n].shape)}" for n in sorted(expected)
             if state[n].shape != tensors[n].shape]
    if wrong:
        raise ValueError(f"adapter state has wrong shapes (given vs encoder): {_few(wrong)}")
    with torch.no_grad():
        for name in expected:
            tensors[name].copy_(state[name])


def adapter_takes(name: str) -> set[str]:
    """The option names (``AdapterConfig`` fields) the adapter ``name`` uses."""
    return _option_names(_lookup(name)[1])


def adapter_options(adapter_config: Any, name: str | None = None) -> dict[str, Any]:
    """``AdapterConfig`` -> the keyword arguments of the adapter's builder.

    ``name`` overrides ``adapter_config.name`` (a stage that runs e.g. ``full`` whatever the config
    says); the config is still checked against its own adapter: a field that adapter does not use
    must be at its default, else a ``ValueError`` names ``stage2.adapter.<field>``.
    """
    configured, _ = _lookup(adapter_config.name)
    configured_takes = _option_names(_ADAPTERS[configured])
    _, builder = _lookup(name if name is not None else adapter_config.name)
    takes = _option_names(builder)
    options = {}
    for f in dataclasses.fields(adapter_config):
        if f.name == "name":
            continue
        value = getattr(adapter_config, f.name)
        if f.name not in configured_takes and value != _default(f):
            raise ValueError(f"stage2.adapter.{f.name}={value!r} does not apply to adapter {configured!r} "
                             f"(it takes {sorted(configured_takes) or 'no options'}); remove it")
        if f.name in takes:
            options[f.name] = list(value) if isinstance(value, list) else value
    return options


# --------------------------------------------------------------------------------------------------


def _lookup(name: str) -> tuple[str, Builder]:
    key = name.lower()
    if key not in _ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; valid names: {', '.join(available_adapters())}")
    return key, _ADAPTERS[key]


def _option_names(builder: Builder) -> set[str]:
    return set(list(inspect.signature(builder).parameters)[1:])  # all but the encoder


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _applied(encoder: nn.Module) -> AppliedAdapter:
    applied = getattr(encoder, "applied_adapter", None)
    if applied is None:
        raise ValueError("this encoder has no adapter; call apply_adapter first")
    return applied


def _tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(encoder.named_buffers()), **dict(encoder.named_parameters())}


def _state_names(encoder: nn.Module) -> tuple[str, ...]:
    """Trainable parameters + persistent buffers of modules that own a trainable parameter.

    The buffers matter for BatchNorm under ``full``: its running statistics move as it trains. Frozen
    modules' buffers (and peft's fixed random projections, e.g. VeRA's, which it rebuilds from a seed)
    are left out.
    """
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    owners = {name.rpartition(".")[0] for name in trainable}
    buffers = {name for name, _ in encoder.named_buffers()}
    persistent = [key for key in encoder.state_dict(keep_vars=True) if key in buffers]
    return tuple(trainable + [key for key in persistent if key.rpartition(".")[0] in owners])


def _frozen_layers(encoder: nn.Module, top_layers: int | None) -> dict[str, int]:
    """Per tower, the bottom layers no trainable parameter lives in (checked against what ``top_layers`` asked)."""
    from ptmrec.encoders.adapters.towers import layer_of, num_layers, towers

    out = {}
    for modality, tower in towers(encoder):
        trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
        if not trainable:
            out[modality] = num_layers(tower)
            continue
        if top_layers is None:  # the adapter reaches the first layer (`full`: the embeddings too)
            out[modality] = 0
            continue
        cut = num_layers(tower) - top_layers
        # Gated prompts keep their tensors on the tower (`prompts.*`); their hooks sit in the top layers.
        below = [n for n in trainable if not n.startswith("prompts.") and layer_of(tower, n) < cut]
        if below:
            raise RuntimeError(f"top_layers={top_layers} but the {modality} tower trains {_few(below)} below "
                               f"layer {cut}")
        out[modality] = cut
    return out


def _keep_frozen_batch_norm_statistics(encoder: nn.Module) -> None:
    # In train mode BatchNorm would normalize with the statistics of a few catalogue images and
    # overwrite the ImageNet running statistics: the "frozen" backbone would drift. A frozen BN
    # switches itself to eval mode on every call instead.
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters(recurse=False)
        ):
            module.register_forward_pre_hook(_use_running_statistics)


def _use_running_statistics(module: nn.Module, args: tuple) -> None:
    module.train(False)


def _few(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"
