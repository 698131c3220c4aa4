"""uint8 pixels on the host, normalization on the device: the same numbers as the float path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ptmrec.encoders import efficientnet_lite
from ptmrec.encoders.base import TextTokenizer
from ptmrec.encoders.clip import CLIP_MEAN, CLIP_STD
from ptmrec.encoders.images import ImageTransform, resize_center_crop, to_rgb

TRANSFORMS = {
    "clip-224": ImageTransform(224, CLIP_MEAN, CLIP_STD),
    "clip-32": ImageTransform(32, CLIP_MEAN, CLIP_STD),
    "bundled": ImageTransform(224, efficientnet_lite.IMAGE_MEAN, efficientnet_lite.IMAGE_STD,
                              efficientnet_lite.CROP_FRACTION),
}


def _images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(640, 480), (57, 301)]]
    return [*noise, noise[0].convert("L"), noise[1].convert("RGBA"), Image.new("RGB", (224, 224), "orange")]


def _float_path(transform: ImageTransform, images) -> torch.Tensor:
    """What ``ImageTransform.__call__`` computed before the uint8 split (numpy, float32)."""
    mean = np.asarray(transform.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(transform.std, dtype=np.float32).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, transform.size, transform.size), dtype=np.float32)
    for i, image in enumerate(images):
        pixels = resize_center_crop(to_rgb(image), transform.size, transform.crop_fraction)
        chw = np.asarray(pixels, dtype=np.float32).transpose(2, 0, 1) / 255.0
        batch[i] = (chw - mean) / std
    return torch.from_numpy(batch)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_pixels_then_normalize_is_the_float_path(name):
    transform, images = TRANSFORMS[name], _images()
    pixels = transform.pixels(images)
    assert pixels.dtype == torch.uint8 and pixels.shape == (len(images), 3, transform.size, transform.size)
    expected = _float_path(transform, images)
    normalized = transform.normalize(pixels)
    assert normalized.dtype == torch.float32
    torch.testing.assert_close(normalized, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(transform(images), expected, atol=1e-6, rtol=0)


def test_pixels_are_the_cropped_rgb_image():
    transform = TRANSFORMS["bundled"]
    image = _images()[0]
    want = np.asarray(resize_center_crop(image, 224, efficientnet_lite.CROP_FRACTION)).transpose(2, 0, 1)
    assert np.array_equal(transform.pixels([image])[0].numpy(), want)


def test_empty_and_wrong_dtype():
    transform = TRANSFORMS["clip-32"]
    assert transform.pixels([]).shape == (0, 3, 32, 32) and transform.pixels([]).dtype == torch.uint8
    assert transform([]).shape == (0, 3, 32, 32) and transform([]).dtype == torch.float32
    with pytest.raises(TypeError, match="uint8"):
        transform.normalize(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["tiny", "bundled"])
def test_encode_image_takes_uint8_or_normalized_pixels(request, name):
    encoder = request.getfixturevalue(name)
    images = _images()[:3]
    pixels = encoder.image_transform.pixels(images)
    with torch.no_grad():
        from_uint8 = encoder.encode_image(pixels)
        from_float = encoder.encode_image(encoder.preprocess_images(images))
        through_forward = encoder(pixel_values=pixels)["image"]
    torch.testing.assert_close(from_uint8, from_float, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(through_forward, from_uint8, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "bundled"])
def test_text_tokenizer_pickles_and_equals_tokenize(request, name):
    encoder = request.getfixturevalue(name)
    texts = ["a red shoe", "Blue dress, long sleeves! " * 20, ""]
    tokenizer = pickle.loads(pickle.dumps(encoder.text_tokenizer()))
    assert isinstance(tokenizer, TextTokenizer) and tokenizer.max_text_len == encoder.max_text_len
    got, want = tokenizer(texts), encoder.tokenize(texts)
    assert set(got) == set(want) == {"input_ids", "attention_mask"}
    for key in want:
        assert torch.equal(got[key], want[key])
    assert len(pickle.dumps(tokenizer)) < 5_000_000  # the tokenizer only, no tower weights
