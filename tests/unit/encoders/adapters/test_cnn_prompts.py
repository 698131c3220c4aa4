"""The EfficientNet tower's prompt: a learnable border added to the image."""

from __future__ import annotations

import pytest
import torch

from ptmrec.encoders.adapters import apply_adapter, count_parameters
from ptmrec.encoders.adapters.cnn_prompts import PaddingPrompt


def test_zero_border_is_exactly_the_frozen_tower(fresh_bundled, inputs):
    pixels, _ = inputs(fresh_bundled)
    with torch.no_grad():
        frozen = fresh_bundled.encode_image(pixels)
        encoder = apply_adapter(fresh_bundled, "prompt", prompt_init_std=0.0)
        assert torch.equal(encoder.encode_image(pixels), frozen)
        encoder.train()  # frozen BatchNorm keeps its ImageNet statistics
        assert torch.equal(encoder.encode_image(pixels), frozen)
        encoder.image_tower.prompts.top.add_(0.5)
        assert not torch.equal(encoder.encode_image(pixels), frozen)


def test_the_border_frames_the_image_and_leaves_the_middle():
    prompt = PaddingPrompt(image_size=12, width=2, init_std=0.02)
    assert sum(p.numel() for p in prompt.parameters()) == 3 * (12 ** 2 - 8 ** 2)
    frame = prompt.frame()
    assert frame.shape == (3, 12, 12)
    assert not frame[:, 2:10, 2:10].any()
    assert frame[:, :2].all() and frame[:, -2:].all() and frame[:, :, :2].all() and frame[:, :, -2:].all()
    pixels = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(prompt(pixels), pixels + frame)


def test_the_border_fits_one_image_size():
    with pytest.raises(ValueError, match=r"1\.\.5 pixels wide for 12-pixel images, got 6"):
        PaddingPrompt(image_size=12, width=6, init_std=0.0)
    with pytest.raises(ValueError, match=r"built for 12x12 images, got \(16, 16\)"):
        PaddingPrompt(image_size=12, width=2, init_std=0.0)(torch.zeros(1, 3, 16, 16))


def test_token_options_do_not_apply_to_the_cnn(fresh_bundled):
    with pytest.raises(ValueError, match="image_prompt_length/depth apply to transformer towers"):
        apply_adapter(fresh_bundled, "prompt", image_prompt_length=8)
    with pytest.raises(ValueError, match=r"prompt_pad must be in \[1, 111\] for 224-pixel images, got 112"):
        apply_adapter(fresh_bundled, "prompt", prompt_pad=112)


def test_border_width_sets_the_cost(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "prompt", prompt_pad=8, text_prompt_depth=1)
    assert count_parameters(encoder)[0] == 3 * (224 ** 2 - 208 ** 2) + 4 * 384 + 12  # + a gate per text head
