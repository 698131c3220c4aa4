"""Gated deep prompts (the ``prompt`` adapter's default style): the frozen tower at the start, its
positions and pooling kept, and a way out of the start that training can take."""

from __future__ import annotations

import copy

import torch

from ptmrec.encoders.adapters import apply_adapter


def test_closed_gates_are_exactly_the_frozen_tower(tiny_clip, fresh_bundled, inputs):
    for encoder in (tiny_clip, fresh_bundled):
        pixels, text = inputs(encoder)
        with torch.no_grad():
            frozen = encoder.encode_image(pixels), encoder.encode_text(**text)
            apply_adapter(encoder, "prompt", prompt_init_std=0.5)  # large tokens: the gates alone hold them back
            assert torch.equal(encoder.encode_image(pixels), frozen[0])
            assert torch.equal(encoder.encode_text(**text), frozen[1])


def test_the_gates_get_a_gradient_at_the_start(tiny_clip, inputs):
    pixels, text = inputs(tiny_clip)
    encoder = apply_adapter(tiny_clip, "prompt")
    (encoder.encode_image(pixels).square().sum() + encoder.encode_text(**text)[:, 0].sum()).backward()
    for tower in (encoder.image_tower, encoder.text_tower):
        assert tower.prompts.gates.grad.abs().sum() > 0
        # the tokens wait for a gate to open: their gradient passes through tanh(0) = 0
        assert not tower.prompts.tokens.grad.any()


def test_open_gates_change_every_prompted_layer(tiny_clip, inputs):
    pixels, text = inputs(tiny_clip)
    encoder = apply_adapter(tiny_clip, "prompt", prompt_depth=1)
    with torch.no_grad():
        start = encoder.encode_text(**text)
        encoder.text_tower.prompts.gates.fill_(1.0)
        opened = encoder.encode_text(**text)
        encoder.text_tower.prompts.tokens.add_(torch.randn_like(encoder.text_tower.prompts.tokens))
        moved = encoder.encode_text(**text)
    assert encoder.text_tower.prompts.tokens.shape == (1, 4, 32)
    assert not torch.allclose(opened, start) and not torch.allclose(moved, opened)


def test_positions_and_text_budget_are_the_frozen_towers(tiny_clip):
    budget = tiny_clip.max_text_len
    encoder = apply_adapter(tiny_clip, "prompt", prompt_length=16)
    assert encoder.max_text_len == budget  # no slots taken from the text
    text = encoder.tokenize(["a red summer dress"])
    with torch.no_grad():
        encoder.text_tower.prompts.gates.fill_(1.0)
        out = encoder.text_tower(**text)
    assert out.last_hidden_state.shape[:2] == text["input_ids"].shape


def test_padding_does_not_change_a_prompted_bert_feature(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "prompt")
    with torch.no_grad():
        encoder.text_tower.prompts.gates.fill_(1.0)
        alone = encoder.encode_text(**encoder.tokenize(["a red summer dress"]))
        batch = encoder.encode_text(**encoder.tokenize(["a red summer dress", "blue running shoes for kids, size 30"]))
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-4)


def test_a_deep_copy_runs_its_own_prompts(tiny_clip, inputs):
    _, text = inputs(tiny_clip)
    encoder = apply_adapter(tiny_clip, "prompt")
    with torch.no_grad():
        twin = copy.deepcopy(encoder)
        twin.text_tower.prompts.gates.fill_(1.0)
        assert not torch.allclose(twin.encode_text(**text), encoder.encode_text(**text))
