"""The adapter contract, for every registered adapter: what trains, what gets gradients, what saves."""

from __future__ import annotations

import pytest
import torch

from ptmrec.config import AdapterConfig
from ptmrec.encoders import build_encoder
from ptmrec.encoders.adapters import (
    adapter_options,
    adapter_state_dict,
    apply_adapter,
    available_adapters,
    count_parameters,
    load_adapter_state,
    register_adapter,
)

BUILT_IN = ["boft", "dora", "full", "hra", "ia3", "loha", "lokr", "lora", "none", "oft", "prompt", "vera"]
TRAINING = [name for name in BUILT_IN if name != "none"]


def features_loss(encoder, pixels, text) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encode both modalities; a loss that depends on every feature direction (L2-normalized text
    features make a plain sum of squares constant)."""
    features = {"image": encoder.encode_image(pixels), "text": encoder.encode_text(**text)}
    generator = torch.Generator().manual_seed(1)
    loss = sum((f * torch.randn(f.shape, generator=generator)).sum() for f in features.values())
    return loss, features


def check_gradients_reach_only_the_adapter(encoder) -> None:
    frozen_with_grad = [n for n, p in encoder.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []
    nonzero = [n for n, p in encoder.named_parameters()
               if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    assert nonzero, "no adapter parameter got a gradient"


def test_registry_lists_the_built_in_adapters():
    assert available_adapters() == BUILT_IN


def test_unknown_name_lists_the_valid_ones(tiny_clip):
    with pytest.raises(ValueError, match=r"unknown adapter 'lorra'; valid names: .*lora.*prompt"):
        apply_adapter(tiny_clip, "lorra")


def test_names_are_lowercase_and_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("lora")(lambda encoder: None)
    with pytest.raises(ValueError, match="lowercase"):
        register_adapter("LoRA2")


def test_lookup_is_case_insensitive(tiny_clip):
    assert apply_adapter(tiny_clip, "LoRA").applied_adapter.name == "lora"


def test_unknown_option_and_second_adapter_fail(tiny_clip):
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['prompt_length'\]; its options: .*rank"):
        apply_adapter(tiny_clip, "lora", prompt_length=4)
    apply_adapter(tiny_clip, "lora")
    with pytest.raises(ValueError, match="already has adapter 'lora'"):
        apply_adapter(tiny_clip, "prompt")


@pytest.mark.parametrize("name", TRAINING)
def test_gradients_reach_only_the_adapter_on_tiny_clip(name, tiny_clip, inputs):
    pixels, text = inputs(tiny_clip)
    encoder = apply_adapter(tiny_clip, name)
    loss, features = features_loss(encoder, pixels, text)
    assert features["image"].shape == (2, encoder.image_dim) and features["text"].shape == (2, encoder.text_dim)
    loss.backward()
    check_gradients_reach_only_the_adapter(encoder)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state_dict(encoder))
    if name == "full":
        assert all(p.grad is not None for p in encoder.parameters())
    else:
        assert 0 < count_parameters(encoder)[0] < 0.1 * count_parameters(encoder)[1]


@pytest.mark.parametrize("encoder_name", ["tiny-clip", "bundled"])
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_adapter_starts_at_the_frozen_encoder(name, encoder_name, tiny_clip, fresh_bundled, inputs):
    # Stage 2 must start exactly at stage 1: with its default options, no adapter changes a feature
    # (that the frozen backbone also computes them in training is test_student's).
    encoder = tiny_clip if encoder_name == "tiny-clip" else fresh_bundled
    pixels, text = inputs(encoder)
    with torch.no_grad():
        frozen = encoder.encode_image(pixels), encoder.encode_text(**text)
        try:
            apply_adapter(encoder, name)
        except ValueError as error:  # e.g. no peft target in the CNN tower: nothing to compare
            pytest.skip(str(error))
        torch.testing.assert_close(encoder.encode_image(pixels), frozen[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder.encode_text(**text), frozen[1], atol=1e-5, rtol=1e-5)


def test_none_trains_nothing_and_changes_nothing(tiny_clip, inputs):
    pixels, text = inputs(tiny_clip)
    with torch.no_grad():
        before = tiny_clip.encode_image(pixels), tiny_clip.encode_text(**text)
    encoder = apply_adapter(tiny_clip, "none")
    assert count_parameters(encoder) == (0, count_parameters(encoder)[1]) and adapter_state_dict(encoder) == {}
    with torch.no_grad():
        assert torch.equal(encoder.encode_image(pixels), before[0])
        assert torch.equal(encoder.encode_text(**text), before[1])


@pytest.mark.parametrize("name", ["prompt", "lora"])
def test_bundled_gradients_reach_only_the_adapter(name, fresh_bundled, inputs):
    pixels, text = inputs(fresh_bundled)
    encoder = apply_adapter(fresh_bundled, name)
    loss, features = features_loss(encoder, pixels, text)
    assert features["image"].shape == (2, 1280) and features["text"].shape == (2, 384)
    loss.backward()
    check_gradients_reach_only_the_adapter(encoder)
    # Both towers adapt: each has adapter parameters with gradients.
    for tower in ("image_tower", "text_tower"):
        assert any(n.startswith(tower) and p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in encoder.named_parameters() if p.requires_grad)


def test_frozen_batch_norm_keeps_its_statistics_in_train_mode(fresh_bundled, inputs):
    pixels, _ = inputs(fresh_bundled)
    encoder = apply_adapter(fresh_bundled, "lora")
    with torch.no_grad():
        eval_features = encoder.encode_image(pixels)
        bn = encoder.image_tower._bn1
        running_mean = bn.running_mean.clone()
        encoder.train()
        train_features = encoder.encode_image(pixels)
    assert torch.equal(bn.running_mean, running_mean)
    assert torch.equal(train_features, eval_features)  # LoRA starts at zero, so also equal to frozen


@pytest.mark.parametrize("name", TRAINING)
def test_state_reloads_into_a_fresh_encoder(name, inputs):
    encoder = apply_adapter(build_encoder("tiny-clip"), name)
    pixels, text = inputs(encoder)
    optimizer = torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        features_loss(encoder, pixels, text)[0].backward()
        optimizer.step()
    with torch.no_grad():
        trained = encoder.encode_image(pixels), encoder.encode_text(**text)
    state = adapter_state_dict(encoder)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())

    torch.manual_seed(123)  # a different random init for the fresh adapter
    fresh = apply_adapter(build_encoder("tiny-clip"), name)
    with torch.no_grad():
        assert not torch.equal(fresh.encode_text(**text), trained[1])
        load_adapter_state(fresh, state)
        assert torch.equal(fresh.encode_image(pixels), trained[0])
        assert torch.equal(fresh.encode_text(**text), trained[1])


def test_state_dict_is_a_copy(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt")
    state = adapter_state_dict(encoder)
    state["text_tower.prompts.tokens"].add_(1.0)
    assert not torch.equal(encoder.text_tower.prompts.tokens.detach(), state["text_tower.prompts.tokens"])


def test_load_is_strict_and_names_the_keys(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt")
    state = adapter_state_dict(encoder)
    with pytest.raises(ValueError, match=r"missing keys \[text_tower.prompts.gates, text_tower.prompts.tokens\], unexpected keys none"):
        load_adapter_state(encoder, {k: v for k, v in state.items() if k.startswith("image")})
    with pytest.raises(ValueError, match=r"missing keys none, unexpected keys \[text_tower.bogus\]"):
        load_adapter_state(encoder, {**state, "text_tower.bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"wrong shapes .*text_tower.prompts.tokens: \(2, 3, 32\) vs \(2, 4, 32\)"):
        load_adapter_state(encoder, {**state, "text_tower.prompts.tokens": torch.zeros(2, 3, 32)})
    with pytest.raises(ValueError, match="has no adapter"):
        adapter_state_dict(build_encoder("tiny-clip"))


def test_prompt_on_bundled_trains_under_half_a_percent(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "prompt")
    trainable, total = count_parameters(encoder)
    # text: 6 layers x (4 tokens x 384 + a gate per head, 12); image: a 30-pixel border on 224x224x3
    assert trainable == 6 * (4 * 384 + 12) + 3 * (224 ** 2 - 164 ** 2) == 79_128
    assert trainable / total < 0.005


# --- adapter_options: AdapterConfig -> builder keywords -----------------------------------------


def test_options_from_the_default_config_are_the_prompt_fields():
    assert adapter_options(AdapterConfig()) == {
        "prompt_length": 4, "prompt_depth": None, "text_prompt_length": None, "text_prompt_depth": None,
        "image_prompt_length": None, "image_prompt_depth": None, "prompt_pad": 30, "prompt_init_std": 0.02,
        "prompt_style": "gated", "top_layers": None,
    }


def test_options_take_only_what_the_adapter_uses():
    assert adapter_options(AdapterConfig(name="lora", rank=4, target_modules=["q_proj"])) == {
        "rank": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj"], "top_layers": None}
    assert adapter_options(AdapterConfig(name="ia3")) == {"target_modules": None, "top_layers": None}
    assert adapter_options(AdapterConfig(name="none")) == {}


def test_a_set_field_the_adapter_ignores_is_an_error():
    with pytest.raises(ValueError, match=r"stage2.adapter.prompt_length=2 does not apply to adapter 'lora'"):
        adapter_options(AdapterConfig(name="lora", prompt_length=2))
    with pytest.raises(ValueError, match=r"stage2.adapter.rank=4 does not apply to adapter 'ia3'"):
        adapter_options(AdapterConfig(name="ia3", rank=4))
    with pytest.raises(ValueError, match="unknown adapter 'adapterx'"):
        adapter_options(AdapterConfig(name="adapterx"))


def test_name_override_checks_the_config_against_its_own_adapter():
    # full fine-tuning runs whatever adapter the config names; the prompt fields are not errors then
    assert adapter_options(AdapterConfig(name="prompt", prompt_length=2), "full") == {}
    assert adapter_options(AdapterConfig(name="lora", rank=4), "vera") == {
        "rank": 4, "dropout": 0.0, "target_modules": None, "top_layers": None}


def test_full_fine_tuning_also_saves_batch_norm_statistics(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "full")
    state = adapter_state_dict(encoder)
    assert count_parameters(encoder)[0] == count_parameters(encoder)[1]
    # BatchNorm trains under full fine-tuning, and its running statistics move with it.
    assert {"image_tower._bn0.running_mean", "image_tower._bn0.running_var"} <= set(state)
    assert not any(".position_ids" in name for name in state)  # non-persistent buffers stay out
