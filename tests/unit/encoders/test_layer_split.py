"""`upper(lower(x))` is the tower's own forward, for every tower kind, at every cut, with trained adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from ptmrec.encoders.adapters import apply_adapter
from ptmrec.encoders.adapters.towers import num_layers
from ptmrec.encoders.layer_split import TowerState, lower, upper, upper_all

TEXTS = ["a red summer dress", "blue running shoes for kids, size 30, with laces", "socks"]


def perturbed(encoder, adapter: str, **options):
    """A copy of `encoder` with `adapter` whose weights moved away from the identity (as after training)."""
    encoder = apply_adapter(copy.deepcopy(encoder), adapter, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return encoder.eval()


def full_and_split(encoder, modality: str, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if modality == "image":
        inputs = {"pixel_values": torch.randn(3, 3, encoder.image_size, encoder.image_size, generator=generator)}
        full = encoder.encode_image(**inputs)
    else:
        inputs = encoder.tokenize(TEXTS)
        full = encoder.encode_text(**inputs)
    return full, upper(encoder, modality, cut, lower(encoder, modality, cut, **inputs))


@pytest.mark.parametrize("adapter, options", [("lora", {"top_layers": 1}), ("prompt", {"top_layers": 2}),
                                              ("ia3", {"top_layers": 2})])
def test_tiny_clip_towers_split_exactly(adapter, options, tiny):
    encoder = perturbed(tiny, adapter, **options)
    for modality, cut in encoder.applied_adapter.frozen_layers.items():
        with torch.no_grad():
            full, split = full_and_split(encoder, modality, cut)
        torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("top_layers", [1, 2, 3])
def test_minilm_and_efficientnet_split_exactly(top_layers, bundled):
    encoder = perturbed(bundled, "lora", top_layers=top_layers)
    assert encoder.applied_adapter.frozen_layers == {"image": 7 - top_layers, "text": 6 - top_layers}
    for modality, cut in encoder.applied_adapter.frozen_layers.items():
        with torch.no_grad():
            full, split = full_and_split(encoder, modality, cut)
        torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)


def test_every_cut_of_the_frozen_towers_gives_the_frozen_features(tiny, bundled):
    for encoder in (tiny, bundled):
        for modality in encoder.modalities:
            tower = encoder.image_tower if modality == "image" else encoder.text_tower
            for cut in range(num_layers(tower) + 1):
                with torch.no_grad():
                    full, split = full_and_split(encoder, modality, cut)
                torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_upper_part_only(bundled):
    encoder = perturbed(bundled, "lora", top_layers=2)
    encoder.train()
    with torch.no_grad():
        state = lower(encoder, "text", 4, **encoder.tokenize(TEXTS))
    upper_all(encoder, {"text": state})["text"].sum().backward()
    got = {n for n, p in encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got and all(".layer.4." in n or ".layer.5." in n for n in got)


def test_half_precision_states_continue_in_float32(tiny):
    encoder = perturbed(tiny, "lora", top_layers=1)
    with torch.no_grad():
        state = lower(encoder, "text", 1, **encoder.tokenize(TEXTS))
        halved = TowerState(state.hidden.to(torch.bfloat16), state.mask, state.pool_index)
        out = upper(encoder, "text", 1, halved)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, upper(encoder, "text", 1, state), rtol=0.05, atol=0.02)


def test_a_cut_outside_the_tower_is_refused(tiny):
    with pytest.raises(ValueError, match=r"cut must be in \[0, 2\]"):
        lower(tiny, "text", 3, **tiny.tokenize(TEXTS))
