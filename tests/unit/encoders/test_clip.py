"""The ``clip`` encoder, loaded from a local directory: a tiny CLIPModel saved with
``save_pretrained`` beside a real ``CLIPTokenizer`` with a byte-level vocabulary and no merges."""

from __future__ import annotations

import pytest
import torch

from ptmrec.encoders import build_encoder
from ptmrec.encoders.clip import CLIPEncoder, projected_features
from ptmrec.encoders.tiny_clip import tiny_clip_config, tiny_clip_model

transformers = pytest.importorskip("transformers")


def _byte_level_clip_tokenizer():
    """CLIP's tokenizer over single bytes: 256 symbols, 256 word-final symbols, then BOS and EOS.

    EOS gets the largest id (513), as in CLIP's real vocabulary."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, the CLIPModel saved there)."""
    path = tmp_path_factory.mktemp("tiny-clip-checkpoint")
    model = tiny_clip_model(tiny_clip_config(vocab_size=514), seed=7)
    model.save_pretrained(path)
    _byte_level_clip_tokenizer().save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return build_encoder("clip", model=str(checkpoint[0]))


def test_features_equal_clipmodel_get_features(checkpoint, encoder):
    _, reference = checkpoint
    texts = ["a photo of a cat", "red shoes", ""]
    batch = encoder.tokenize(texts)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image = encoder.encode_image(pixels)
        text = encoder.encode_text(**batch)
        # get_*_features returns a tensor (transformers 4) or an output object (5): compare either way.
        expected_image = projected_features(reference.get_image_features(pixel_values=pixels), "image_embeds")
        expected_text = projected_features(reference.get_text_features(**batch), "text_embeds")
    torch.testing.assert_close(image, expected_image)
    torch.testing.assert_close(text, expected_text)
    assert image.shape == (3, 16) and text.shape == (3, 16)


def test_tokenizer_is_clips_own(encoder):
    assert isinstance(encoder, CLIPEncoder)
    batch = encoder.tokenize(["ab", "abcd efg"])
    ids = batch["input_ids"]
    assert ids.dtype == torch.long and ids.shape == (2, 9)  # BOS + 7 byte symbols + EOS
    assert ids[:, 0].tolist() == [512, 512]
    assert ids[0, 3].item() == 513 and ids[1, -1].item() == 513  # EOS after the last symbol
    assert ids[0, 4:].tolist() == [513] * 5  # CLIP pads with EOS; pooling takes the first one
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 9]


def test_truncation_keeps_the_eos_token(checkpoint):
    encoder = build_encoder("clip", model=str(checkpoint[0]), max_text_len=8, modalities=("text",))
    ids = encoder.tokenize(["a very long product title"])["input_ids"]
    assert ids.shape == (1, 8) and ids[0, -1].item() == 513


def test_logit_scale_stays_out_of_the_module_tree(encoder):
    names = [name for name, _ in encoder.named_parameters()]
    assert "logit_scale" not in " ".join(names)
    assert all(p.dim() > 0 for p in encoder.parameters())  # deepspeed.initialize rejects 0-dim params
    assert isinstance(encoder.image_tower, transformers.CLIPVisionModelWithProjection)
    assert isinstance(encoder.text_tower, transformers.CLIPTextModelWithProjection)


def test_image_size_defaults_to_the_checkpoints_and_other_sizes_interpolate(checkpoint, encoder):
    assert encoder.image_size == 32 and not encoder.interpolate_pos_encoding
    bigger = build_encoder("clip", model=str(checkpoint[0]), image_size=48, modalities=("image",))
    assert bigger.interpolate_pos_encoding and bigger.text_tower is None and bigger.text_dim is None
    with torch.no_grad():
        assert bigger.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 16)


def test_max_text_len_beyond_positions_raises(checkpoint):
    with pytest.raises(ValueError, match="max_text_len"):
        build_encoder("clip", model=str(checkpoint[0]), max_text_len=65)


def test_projected_features_accepts_every_return_type():
    x = torch.randn(2, 4)
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

    assert projected_features(x, "image_embeds") is x
    assert projected_features((x, None), "image_embeds") is x
    assert projected_features(BaseModelOutputWithPooling(pooler_output=x), "image_embeds") is x
    assert projected_features(CLIPVisionModelOutput(image_embeds=x), "image_embeds") is x
    with pytest.raises(TypeError):
        projected_features(object(), "image_embeds")
