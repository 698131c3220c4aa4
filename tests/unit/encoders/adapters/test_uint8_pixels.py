"""Adapters see normalized pixels whether the encoder is given uint8 or float pixels."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ptmrec.encoders.adapters import apply_adapter


def _images():
    return [Image.new("RGB", (300, 200), (200, 30, 60)), Image.effect_noise((240, 240), 60).convert("RGB")]


def _same_features(encoder):
    images = _images()
    with torch.no_grad():
        from_uint8 = encoder.encode_image(encoder.image_transform.pixels(images))
        from_float = encoder.encode_image(encoder.preprocess_images(images))
    torch.testing.assert_close(from_uint8, from_float, atol=1e-5, rtol=1e-5)


def test_padding_prompt_on_the_cnn(fresh_bundled):
    # A non-zero border, added to normalized pixels inside the tower.
    _same_features(apply_adapter(fresh_bundled, "prompt", prompt_pad=8, prompt_init_std=0.5, prompt_style="inserted"))


@pytest.mark.parametrize(("name", "options"), [("prompt", {"prompt_init_std": 0.5}), ("lora", {}), ("ia3", {})])
def test_transformer_adapters(tiny_clip, name, options):
    encoder = apply_adapter(tiny_clip, name, **options)
    for p in encoder.parameters():  # move every adapter off its identity start
        if p.requires_grad:
            p.data.add_(0.1 * torch.randn_like(p))
    _same_features(encoder)


def test_text_tokenizer_follows_the_prompt_adapters_text_budget(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt", prompt_length=8, prompt_style="inserted")
    tokenizer = encoder.text_tokenizer()
    assert tokenizer.max_text_len == encoder.max_text_len == 64 - 8
    texts = ["word " * 100]
    assert torch.equal(tokenizer(texts)["input_ids"], encoder.tokenize(texts)["input_ids"])
