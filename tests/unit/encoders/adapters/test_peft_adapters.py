"""peft methods inside the towers: targets per tower, identity at the start, towers peft cannot take."""

from __future__ import annotations

import logging

import pytest
import torch

from ptmrec.encoders.adapters import apply_adapter

PEFT_METHODS = ["boft", "dora", "hra", "ia3", "loha", "lokr", "lora", "oft", "vera"]


def adapted_modules(tower, marker: str) -> list[str]:
    """Names of the tower's modules that peft replaced (they own parameters named ``<marker>...``)."""
    return sorted({n.rsplit(f".{marker}", 1)[0] for n, _ in tower.named_parameters() if f".{marker}" in n})


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_every_method_starts_at_the_frozen_encoder(name, tiny_clip, inputs):
    pixels, text = inputs(tiny_clip)
    with torch.no_grad():
        frozen = tiny_clip.encode_image(pixels), tiny_clip.encode_text(**text)
        encoder = apply_adapter(tiny_clip, name)
        torch.testing.assert_close(encoder.encode_image(pixels), frozen[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder.encode_text(**text), frozen[1], atol=1e-5, rtol=1e-5)


def test_lora_defaults_on_clip_are_q_and_v(tiny_clip):
    encoder = apply_adapter(tiny_clip, "lora", rank=2)
    for tower, model in ((encoder.image_tower, "vision_model"), (encoder.text_tower, "text_model")):
        assert adapted_modules(tower, "lora_A") == [
            f"{model}.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert encoder.text_tower.text_model.encoder.layers[0].self_attn.q_proj.lora_A["default"].weight.shape == (2, 32)


def test_lora_defaults_on_bundled_are_query_value_and_the_1x1_convs(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "lora")
    text = adapted_modules(encoder.text_tower, "lora_A")
    assert len(text) == 12 and all(n.endswith((".query", ".value")) for n in text)
    image = adapted_modules(encoder.image_tower, "lora_A")
    # 15 expansions (the first block has none) + 16 projections + the head
    assert len(image) == 32 and "_conv_head" in image and not any("_depthwise_conv" in n for n in image)


def test_ia3_scales_the_ffn_input_not_the_attention_output(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "ia3")
    layer = encoder.text_tower.encoder.layer[0]
    assert layer.output.dense.is_feedforward
    assert not hasattr(layer.attention.output.dense, "ia3_l")
    assert not layer.attention.self.key.is_feedforward


def test_vera_leaves_the_cnn_frozen_and_says_so(fresh_bundled, caplog):
    with caplog.at_level(logging.WARNING, logger="ptmrec.encoders.adapters"):
        encoder = apply_adapter(fresh_bundled, "vera")
    assert "peft has no Conv2d layer for this method, so the image tower (efficientnet) stays frozen" in caplog.text
    assert not any(p.requires_grad for p in encoder.image_tower.parameters())
    assert len(adapted_modules(encoder.text_tower, "vera_lambda_b")) == 12


def test_target_modules_apply_to_the_towers_that_have_them(fresh_bundled, caplog):
    with caplog.at_level(logging.WARNING, logger="ptmrec.encoders.adapters"):
        encoder = apply_adapter(fresh_bundled, "lora", target_modules=["query"])
    assert "none of target_modules ['query'] is in the image tower; it stays frozen" in caplog.text
    assert len(adapted_modules(encoder.text_tower, "lora_A")) == 6
    assert not any(p.requires_grad for p in encoder.image_tower.parameters())


def test_a_target_found_nowhere_is_an_error(tiny_clip, fresh_bundled):
    with pytest.raises(ValueError, match=r"lora: target_modules \['qproj'\] match no module in any tower"):
        apply_adapter(tiny_clip, "lora", target_modules=["q_proj", "qproj"])
    with pytest.raises(ValueError, match=r"vera: target_modules \['_conv_head'\] match no module"):
        apply_adapter(fresh_bundled, "vera", target_modules=["query", "_conv_head"])
    # Nothing changed: the options are checked before any tower is touched.
    assert getattr(tiny_clip, "applied_adapter", None) is None
    assert all(p.requires_grad for p in tiny_clip.parameters())
    assert not any("lora" in n for n, _ in tiny_clip.named_modules())


def test_rank_is_the_block_size_for_oft(tiny_clip):
    encoder = apply_adapter(tiny_clip, "oft", rank=4)
    q_proj = encoder.text_tower.text_model.encoder.layers[0].self_attn.q_proj
    # 32 inputs in blocks of 4: 8 blocks, each a 4x4 skew-symmetric matrix (6 free values)
    assert q_proj.oft_R["default"].weight.shape == (8, 6)
