from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ptmrec.encoders.clip import CLIP_MEAN, CLIP_STD
from ptmrec.encoders.images import ImageTransform, resize_center_crop, to_rgb


def _noise(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"])
@pytest.mark.parametrize("size", [(640, 480), (31, 200), (224, 224), (5, 3)])
def test_any_mode_and_size_gives_a_normalized_square_batch(mode, size):
    transform = ImageTransform(48, CLIP_MEAN, CLIP_STD)
    batch = transform([_noise(size, mode), _noise((100, 100))])
    assert batch.shape == (2, 3, 48, 48) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all()
    pixels = batch * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (20, 30), (0, 0, 0, 0))
    batch = ImageTransform(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))([clear])
    assert torch.allclose(batch, torch.ones_like(batch))


def test_grayscale_is_repeated_over_channels():
    batch = ImageTransform(16, (0.5,) * 3, (0.5,) * 3)([_noise((40, 40), "L")])
    assert torch.equal(batch[0, 0], batch[0, 1]) and torch.equal(batch[0, 1], batch[0, 2])


def test_to_rgb_keeps_rgb_as_is():
    image = _noise((10, 10))
    assert to_rgb(image) is image


@pytest.mark.parametrize(("size", "fraction", "resized_short"), [(224, 1.0, 224), (224, 0.875, 256)])
def test_resize_then_center_crop(size, fraction, resized_short):
    # A vertical gradient: after the crop, the middle row tells which rows were kept.
    image = Image.fromarray(np.repeat(np.linspace(0, 255, 600, dtype=np.uint8)[:, None], 300, axis=1)).convert("RGB")
    out = resize_center_crop(image, size, fraction)
    assert out.size == (size, size)
    # 300x600 -> short side resized_short, long side 2x that; the crop is centered.
    assert abs(int(np.asarray(out)[size // 2, 0, 0]) - 127) <= 2
    top_row = int(np.asarray(out)[0, 0, 0])
    expected_top = (2 * resized_short - size) // 2 / (2 * resized_short) * 255
    assert abs(top_row - expected_top) <= 3


def test_empty_batch():
    assert ImageTransform(32, CLIP_MEAN, CLIP_STD)([]).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(size=32, crop_fraction=0.0), dict(size=32, crop_fraction=1.5)])
def test_bad_transform_arguments(kwargs):
    with pytest.raises(ValueError):
        ImageTransform(mean=CLIP_MEAN, std=CLIP_STD, **kwargs)


def test_matches_transformers_clip_image_processor():
    pil_processor = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    processor = pil_processor.CLIPImageProcessorPil()  # the PIL backend: no torchvision needed
    images = [_noise((640, 480), seed=1), _noise((123, 457), seed=2), _noise((224, 224), seed=3)]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = ImageTransform(224, CLIP_MEAN, CLIP_STD)(images)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected.float(), atol=1e-5, rtol=0)
