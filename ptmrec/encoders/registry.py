"""Encoders by name.

Each entry is a builder ``(*, model, image_size, max_text_len, modalities, **options) ->
TwoTowerEncoder``, registered with ``@register_encoder(name)`` in its own module (the built-in
ones are imported by ``ptmrec/encoders/__init__.py``). Builders import transformers and load
weights only when called, which keeps ``import ptmrec.encoders`` light.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ptmrec.registry import registrar

if TYPE_CHECKING:
    from ptmrec.encoders.base import TwoTowerEncoder

Builder = Callable[..., "TwoTowerEncoder"]

_ENCODERS: dict[str, Builder] = {}
ENCODERS = MappingProxyType(_ENCODERS)  # read-only view: name -> builder
_COMMON_ARGS = ("model", "image_size", "max_text_len", "modalities")


# Decorator adding a builder under ``name`` (lowercase); a name can be registered once.
register_encoder = registrar(_ENCODERS, "encoder")


def available_encoders() -> list[str]:
    """The registered names, sorted."""
    return sorted(_ENCODERS)


def build_encoder(
    name: str,
    *,
    model: str | None = None,
    image_size: int | None = None,
    max_text_len: int = 64,
    modalities: Sequence[str] = ("image", "text"),
    **options: Any,
) -> "TwoTowerEncoder":
    """Build the encoder registered as ``name``.

    Args:
        name: a registered name (see ``available_encoders()``); case-insensitive.
        model: hub name or local path for encoders that load one (``clip``); None otherwise.
        image_size: side of the square images the image tower receives; None for the
            encoder's native size (224 for bundled and CLIP ViT-B/16, the checkpoint's own for
            clip, 32 for tiny-clip).
        max_text_len: token budget per text, special tokens included.
        modalities: which towers to build, a non-empty subset of ("image", "text").
        options: builder-specific keywords (``normalize_text`` for bundled, ``seed`` for tiny-clip).
    """
    key = name.lower()
    if key not in _ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(available_encoders())}")
    builder = _ENCODERS[key]
    accepted = set(inspect.signature(builder).parameters) - set(_COMMON_ARGS)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"encoder {key!r} takes no option(s) {unknown}; its options: {sorted(accepted) or 'none'}")
    return builder(model=model, image_size=image_size, max_text_len=max_text_len, modalities=modalities, **options)

