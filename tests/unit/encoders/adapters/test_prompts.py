"""Inserted deep prompts (``prompt_style: inserted``) in transformer towers: where they sit, what pools,
what the masks see. The default gated style has its own tests (``test_gated_prompts.py``)."""

from __future__ import annotations

import copy

import functools

import pytest
import torch

from ptmrec.encoders.adapters import apply_adapter as apply_any_adapter
from ptmrec.encoders.tiny_clip import HashingTokenizer


apply_adapter = functools.partial(apply_any_adapter, prompt_style="inserted")


def eos_positions(input_ids: torch.Tensor) -> torch.Tensor:
    return (input_ids == HashingTokenizer().eos_token_id).int().argmax(dim=-1)


# --- CLIP text ------------------------------------------------------------------------------------


def test_clip_text_pools_at_the_eos_token(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt", prompt_init_std=0.5)
    text = encoder.tokenize(["a red summer dress", "shoes"])
    with torch.no_grad():
        out = encoder.text_tower(**text)
    # The prompts are cut out again: positions line up with input_ids.
    assert out.last_hidden_state.shape[:2] == text["input_ids"].shape
    at_eos = out.last_hidden_state[torch.arange(2), eos_positions(text["input_ids"])]
    torch.testing.assert_close(encoder.text_tower.text_projection(at_eos), out.text_embeds)


def test_clip_text_feature_ignores_everything_after_eos(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt", prompt_init_std=0.5)
    text = encoder.tokenize(["a red summer dress"])
    ids, mask = text["input_ids"], text["attention_mask"]
    # Append junk after EOS, once as attended tokens and once as padding.
    junk = torch.tensor([[5, 17, 900, 42]])
    longer_ids = torch.cat([ids, junk], dim=1)
    with torch.no_grad():
        reference = encoder.encode_text(ids, mask)
        attended = encoder.encode_text(longer_ids, torch.ones_like(longer_ids))
        padded = encoder.encode_text(longer_ids, torch.cat([mask, torch.zeros_like(junk)], dim=1))
    torch.testing.assert_close(attended, reference)
    torch.testing.assert_close(padded, reference)


def test_eos_sees_the_prompts(tiny_clip):
    text = tiny_clip.tokenize(["a red summer dress"])
    with torch.no_grad():
        frozen = tiny_clip.encode_text(**text)
        encoder = apply_adapter(tiny_clip, "prompt", prompt_init_std=0.5)
        prompted = encoder.encode_text(**text)
        # The second layer's prompts only (a constant shift would vanish in the layer's LayerNorm).
        encoder.text_tower.prompts.tokens[1].add_(torch.randn(4, 32))
        deeper = encoder.encode_text(**text)
    assert not torch.allclose(prompted, frozen) and not torch.allclose(deeper, prompted)


def test_text_budget_leaves_room_for_the_prompts(tiny_clip):
    positions = tiny_clip.text_tower.config.max_position_embeddings  # 64 for tiny-clip
    encoder = apply_adapter(tiny_clip, "prompt", prompt_length=6)
    assert encoder.max_text_len == positions - 6
    text = encoder.tokenize([" ".join(["word"] * 100)])
    assert text["input_ids"].shape[1] == positions - 6
    assert encoder.encode_text(**text).shape == (1, encoder.text_dim)
    too_long = torch.ones(1, positions - 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"exceed the tower's 64 positions; tokenize with max_text_len <= 58"):
        encoder.encode_text(too_long, too_long)


# --- CLIP vision ----------------------------------------------------------------------------------


def test_clip_vision_pools_at_cls_with_prompts_after_it(tiny_clip, inputs):
    pixels, _ = inputs(tiny_clip)
    with torch.no_grad():
        frozen = tiny_clip.encode_image(pixels)
        encoder = apply_adapter(tiny_clip, "prompt", prompt_init_std=0.5)
        out = encoder.image_tower(pixel_values=pixels)
    vision = encoder.image_tower.vision_model
    assert out.last_hidden_state.shape[1] == 1 + 16  # CLS + the 4x4 patches, prompts cut out
    cls = vision.post_layernorm(out.last_hidden_state[:, 0])
    torch.testing.assert_close(encoder.image_tower.visual_projection(cls), out.image_embeds)
    assert not torch.allclose(out.image_embeds, frozen)


# --- lengths and depths ---------------------------------------------------------------------------


def test_per_tower_lengths_and_depths(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt", prompt_length=3, prompt_depth=1, text_prompt_length=5,
                            image_prompt_depth=2)
    assert encoder.text_tower.prompts.tokens.shape == (1, 5, 32)
    assert encoder.image_tower.prompts.tokens.shape == (2, 3, 32)
    text = encoder.tokenize(["a red summer dress"])
    assert encoder.encode_text(**text).shape == (1, encoder.text_dim)


def test_length_and_depth_must_fit_the_tower(tiny_clip):
    with pytest.raises(ValueError, match=r"text prompts: .*depth in \[1, 2\] for this clip_text tower, got length=4, depth=3"):
        apply_adapter(tiny_clip, "prompt", text_prompt_depth=3)
    with pytest.raises(ValueError, match=r"image prompts: length must be >= 1"):
        apply_adapter(tiny_clip, "prompt", prompt_length=0)
    # the image tower was fine, but nothing was attached to it either
    assert not hasattr(tiny_clip.image_tower, "prompts") and getattr(tiny_clip, "applied_adapter", None) is None


def test_zero_prompts_start_at_zero(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt", prompt_init_std=0.0)
    assert not encoder.text_tower.prompts.tokens.any()


def test_a_deep_copy_runs_its_own_prompts(tiny_clip):
    encoder = apply_adapter(tiny_clip, "prompt")
    text = encoder.tokenize(["a red summer dress"])
    with torch.no_grad():
        before = encoder.encode_text(**text)
        twin = copy.deepcopy(encoder)
        twin.text_tower.prompts.tokens.add_(torch.randn(2, 4, 32))
        assert torch.equal(encoder.encode_text(**text), before)
        assert not torch.allclose(twin.encode_text(**text), before)


# --- BERT (MiniLM) --------------------------------------------------------------------------------


def test_bert_mean_pooling_excludes_prompts_and_padding(fresh_bundled):
    encoder = apply_adapter(fresh_bundled, "prompt", prompt_init_std=0.5)
    alone = encoder.tokenize(["a red summer dress"])
    batch = encoder.tokenize(["a red summer dress", "blue running shoes for kids, in size thirty"])
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # the first row is padded
    with torch.no_grad():
        hidden = encoder.text_tower(**batch).last_hidden_state
        torch.testing.assert_close(encoder.encode_text(**batch)[:1], encoder.encode_text(**alone),
                                   atol=1e-5, rtol=1e-4)
    assert hidden.shape[:2] == batch["input_ids"].shape  # prompts cut out before pooling
