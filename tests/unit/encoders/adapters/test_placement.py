"""Adapters in the top layers only (``top_layers``): what trains, what stays frozen below, what is refused."""

from __future__ import annotations

import pytest
import torch

from ptmrec.encoders.adapters import apply_adapter
from ptmrec.encoders.adapters.towers import layer_of, num_layers, towers

PEFT = ["lora", "dora", "ia3", "loha", "lokr", "oft", "boft", "hra"]


def trainable_layers(encoder) -> dict[str, set[int]]:
    return {m: {layer_of(t, n) for n, p in t.named_parameters() if p.requires_grad and not n.startswith("prompts.")}
            for m, t in towers(encoder)}


def test_layers_are_transformer_layers_and_efficientnet_stages(fresh_bundled, tiny_clip):
    assert num_layers(fresh_bundled.text_tower) == 6
    assert num_layers(fresh_bundled.image_tower) == 7
    assert layer_of(fresh_bundled.image_tower, "_blocks.0._depthwise_conv") == 0
    assert layer_of(fresh_bundled.image_tower, "_blocks.15._project_conv") == 6
    assert layer_of(fresh_bundled.image_tower, "_conv_stem") == -1
    assert layer_of(fresh_bundled.image_tower, "_conv_head") == 7
    assert layer_of(fresh_bundled.text_tower, "embeddings.word_embeddings") == -1
    assert layer_of(tiny_clip.text_tower, "text_projection") == 2


@pytest.mark.parametrize("name", PEFT)
def test_peft_in_the_top_layers_trains_nothing_below(name, fresh_bundled):
    encoder = apply_adapter(fresh_bundled, name, top_layers=2)
    layers = trainable_layers(encoder)
    assert min(layers["text"]) == 4 and layers["text"] <= {4, 5}
    assert min(layers["image"]) == 5 and layers["image"] <= {5, 6, 7}  # 7: the head above the stages
    assert encoder.applied_adapter.frozen_layers == {"image": 5, "text": 4}


def test_all_layers_is_the_default(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "lora")
    assert min(trainable_layers(encoder)["text"]) == 0
    assert encoder.applied_adapter.frozen_layers == {"image": 0, "text": 0}


def test_gated_prompts_in_the_top_layers_hook_only_those(tiny_clip, inputs):
    encoder = apply_adapter(tiny_clip, "prompt", top_layers=1)
    assert encoder.text_tower.prompts.tokens.shape[0] == 1
    assert encoder.applied_adapter.frozen_layers == {"image": 1, "text": 1}
    hooked = [i for i, layer in enumerate(encoder.text_tower.text_model.encoder.layers)
              if layer.self_attn._forward_hooks]
    assert hooked == [1]
    pixels, text = inputs(encoder)
    with torch.no_grad():
        encoder.text_tower.prompts.gates.fill_(1.0)
        before = encoder.encode_text(**text)
        encoder.text_tower.prompts.tokens.normal_()
        assert not torch.allclose(before, encoder.encode_text(**text))


def test_the_cnn_border_stays_frozen_with_top_layers(fresh_bundled, caplog):
    encoder = apply_adapter(fresh_bundled, "prompt", top_layers=2)
    assert not any(p.requires_grad for p in encoder.image_tower.parameters())
    assert encoder.applied_adapter.frozen_layers == {"image": 7, "text": 4}
    assert "stays frozen" in caplog.text


@pytest.mark.parametrize("options, message", [
    ({"top_layers": 3}, r"top_layers must be in \[1, 2\]"),
    ({"top_layers": 0}, r"top_layers must be in \[1, 2\]"),
    ({"top_layers": 1, "prompt_depth": 1}, "set one of them"),
    ({"top_layers": 1, "prompt_style": "inserted"}, "needs prompt_style gated"),
])
def test_bad_placements_are_refused_and_change_nothing(options, message, tiny_clip):
    with pytest.raises(ValueError, match=message):
        apply_adapter(tiny_clip, "prompt", **options)
    assert all(p.requires_grad for p in tiny_clip.parameters())
    assert not hasattr(tiny_clip.text_tower, "prompts")


def test_peft_top_layers_beyond_the_tower_is_refused(tiny_clip):
    with pytest.raises(ValueError, match=r"top_layers must be in \[1, 2\]"):
        apply_adapter(tiny_clip, "lora", top_layers=5)
