"""The layer cache's sample format: what one batch stores per item reads back, in any batching, to the same
features as the encoder's own forward."""

from __future__ import annotations

import pytest
import torch

from ptmrec.encoders import build_encoder
from ptmrec.encoders.adapters import apply_adapter
from ptmrec.encoders.layer_split import lower, upper_all
from ptmrec.config import load_config
from ptmrec.stages.layer_cache import cache_dir, collate_states, decode_sample, item_samples

TEXTS = ["a red summer dress", "blue running shoes for kids, size 30, with laces", "socks", "a wool hat"]


@pytest.fixture(scope="module")
def encoder():
    encoder = apply_adapter(build_encoder("tiny-clip"), "lora", top_layers=1)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return encoder.eval()


def stored_samples(encoder, dtype: str = "fp32") -> list[dict]:
    """The cache samples of the 4 items, encoded as one batch, as the shard reader hands them over."""
    tokens = encoder.tokenize(TEXTS)
    pixels = torch.randn(4, 3, encoder.image_size, encoder.image_size, generator=torch.Generator().manual_seed(0))
    cuts = encoder.applied_adapter.frozen_layers
    with torch.no_grad():
        states = {"text": lower(encoder, "text", cuts["text"], **tokens),
                  "image": lower(encoder, "image", cuts["image"], pixel_values=pixels)}
        full = {"text": encoder.encode_text(**tokens), "image": encoder.encode_image(pixels)}
    stored = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    samples = [{"__key__": key, "__url__": "cache/items-000000.tar", **files}
               for key, files in item_samples([10, 11, 12, 13], states, stored)]
    return samples, full


@pytest.mark.parametrize("groups", [[[0, 1, 2, 3]], [[2, 0], [3, 1]], [[1], [0, 2, 3]]])
def test_stored_states_give_the_full_features_in_any_batching(groups, encoder):
    samples, full = stored_samples(encoder)
    decoded = [decode_sample(s, "fp32", ("image", "text")) for s in samples]
    for group in groups:
        batch = collate_states([decoded[i] for i in group])
        assert batch.item.tolist() == [10 + i for i in group]
        with torch.no_grad():
            features = upper_all(encoder, batch.states)
        for m in ("text", "image"):
            torch.testing.assert_close(features[m], full[m][group], rtol=1e-5, atol=1e-6)


def test_text_is_stored_without_its_padding(encoder):
    samples, _ = stored_samples(encoder)
    lengths = encoder.tokenize(TEXTS)["attention_mask"].sum(dim=1).tolist()
    decoded = [decode_sample(s, "fp32", ("text",)) for s in samples]
    assert [d["states"]["text"][0].shape[0] for d in decoded] == lengths


def test_bf16_storage_reads_back_close(encoder):
    samples, full = stored_samples(encoder, "bf16")
    decoded = [decode_sample(s, "bf16", ("image", "text")) for s in samples]
    assert decoded[0]["states"]["text"][0].dtype == torch.bfloat16
    with torch.no_grad():
        features = upper_all(encoder, collate_states(decoded).states)
    torch.testing.assert_close(features["text"], full["text"], rtol=0.05, atol=0.05)


def test_a_sample_without_its_states_names_the_shard(encoder):
    samples, _ = stored_samples(encoder)
    broken = {k: v for k, v in samples[0].items() if k != "text.npy"}
    with pytest.raises(ValueError, match=r"cache/items-000000.tar: sample '000000010' is not a layer-cache sample"):
        decode_sample(broken, "fp32", ("image", "text"))


def test_the_cache_is_keyed_by_encoder_placement_precision_and_data():
    manifest = {"shards": {"items": [{"sha256": "a" * 64}, {"sha256": "b" * 64}]}}
    cfg = load_config("configs/smoke.yaml")
    base = cache_dir(cfg, manifest, {"image": 1, "text": 1})
    assert base == cache_dir(load_config("configs/smoke.yaml"), manifest, {"image": 1, "text": 1})
    assert base.split("/")[-2] == "layers-image1-text1"
    others = {
        cache_dir(cfg, manifest, {"image": 0, "text": 1}),  # placement
        cache_dir(load_config("configs/smoke.yaml", ["encoder.max_text_len=12"]), manifest, {"image": 1, "text": 1}),
        cache_dir(load_config("configs/smoke.yaml", ["encoder.image_size=48"]), manifest, {"image": 1, "text": 1}),
        cache_dir(load_config("configs/smoke.yaml", ["ray.use_gpu=true"]), manifest, {"image": 1, "text": 1}),
        cache_dir(cfg, {"shards": {"items": [{"sha256": "a" * 64}, {"sha256": "c" * 64}]}}, {"image": 1, "text": 1}),
    }
    assert base not in others and len(others) == 5
