from __future__ import annotations

import pytest
import torch
from PIL import Image

from ptmrec.encoders import build_encoder
from ptmrec.encoders.tiny_clip import HashingTokenizer, tiny_clip_config


def _inputs(encoder):
    images = [Image.new("RGB", (64, 48), "red"), Image.new("RGBA", (20, 90)), Image.new("L", (33, 33), 128)]
    return encoder.preprocess_images(images), encoder.tokenize(["a red shoe", "Blue dress, long sleeves!", ""])


def test_shapes_and_dtypes(tiny):
    pixels, batch = _inputs(tiny)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    with torch.no_grad():
        image, text = tiny.encode_image(pixels), tiny.encode_text(**batch)
    assert image.shape == (3, tiny.image_dim) and text.shape == (3, tiny.text_dim)
    assert image.dtype == text.dtype == torch.float32
    assert tiny.image_dim == tiny.text_dim == 16


def test_same_seed_same_encoder_and_rng_untouched(tiny):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = build_encoder("tiny-clip", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    other = build_encoder("tiny-clip", seed=1)
    pixels, batch = _inputs(tiny)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(pixels), tiny.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(again.encode_text(**batch), tiny.encode_text(**batch), rtol=0, atol=0)
        assert not torch.allclose(other.encode_text(**batch), tiny.encode_text(**batch))


def test_hashing_tokenizer_is_deterministic_with_special_ids():
    tokenizer = HashingTokenizer(vocab_size=50)
    batch = tokenizer(["Hello, world", "hello"], max_length=8)
    ids = batch["input_ids"]
    assert ids[:, 0].tolist() == [48, 48]
    assert ids[0].tolist()[1] == ids[1].tolist()[1]  # lowercased
    assert ids[0, 4].item() == 49 and ids[1].tolist()[2:] == [49, 0, 0]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert ((ids > 0) & (ids < 48)).sum() == 4
    truncated = tokenizer(["one two three four five six"], max_length=4)["input_ids"]
    assert truncated.shape == (1, 4) and truncated[0, -1].item() == 49


def test_text_is_pooled_at_the_eos_token(tiny):
    config = tiny_clip_config()
    assert config.text_config.eos_token_id == tiny.tokenizer.eos_token_id != 2
    batch = tiny.tokenize(["short", "a somewhat longer text"])
    with torch.no_grad():
        out = tiny.text_tower(**batch)
        eos = batch["attention_mask"].sum(dim=1) - 1
        expected = tiny.text_tower.text_projection(out.last_hidden_state[torch.arange(2), eos])
    torch.testing.assert_close(out.text_embeds, expected)


def test_padding_does_not_change_a_text_embedding(tiny):
    with torch.no_grad():
        alone = tiny.encode_text(**tiny.tokenize(["short"]))
        batched = tiny.encode_text(**tiny.tokenize(["short", "a much longer text than the first one"]))
    torch.testing.assert_close(batched[:1], alone, atol=1e-6, rtol=0)


def test_any_image_size_keeps_a_four_by_four_patch_grid():
    encoder = build_encoder("tiny-clip", image_size=224)
    assert encoder.image_tower.config.patch_size == 56 and not encoder.interpolate_pos_encoding
    pixels = encoder.preprocess_images([Image.new("RGB", (300, 200))])
    with torch.no_grad():
        assert encoder.encode_image(pixels).shape == (1, 16)


def test_forward_returns_both_modalities_and_gradients_reach_the_towers(tiny):
    pixels, batch = _inputs(tiny)
    features = tiny(pixel_values=pixels, input_ids=batch["input_ids"])  # mask defaults to all ones
    assert set(features) == {"image", "text"}
    (features["image"].sum() + features["text"].sum()).backward()
    q_proj = tiny.image_tower.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert q_proj.grad is not None and q_proj.grad.abs().sum() > 0
    assert tiny.text_tower.text_projection.weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_single_modality():
    encoder = build_encoder("tiny-clip", modalities=["text"])
    assert encoder.modalities == ("text",) and encoder.image_tower is None
    with pytest.raises(RuntimeError, match="without the image tower"):
        encoder.encode_image(torch.zeros(1, 3, 32, 32))
