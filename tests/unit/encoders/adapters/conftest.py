"""Fresh encoders for adapter tests: ``apply_adapter`` changes an encoder in place, so no test may
adapt the session-wide ``bundled`` / ``tiny`` encoders themselves."""

from __future__ import annotations

import copy

import pytest
import torch

from ptmrec.encoders import build_encoder

TEXTS = ["a red summer dress", "blue running shoes for kids, size 30"]


@pytest.fixture()
def tiny_clip():
    """A new tiny CLIP (both towers, eval mode, seed 0) per test: building one takes milliseconds."""
    return build_encoder("tiny-clip")


@pytest.fixture()
def fresh_bundled(bundled):
    """A deep copy of the session's bundled encoder (MiniLM + EfficientNet-Lite0), about 0.1 s."""
    return copy.deepcopy(bundled)


@pytest.fixture()
def inputs():
    """``inputs(encoder)`` -> ``(pixel_values [2, 3, S, S], tokenized TEXTS)``, the same pixels per seed."""

    def make(encoder, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(2, 3, encoder.image_size, encoder.image_size, generator=generator)
        return pixels, encoder.tokenize(TEXTS)

    return make
