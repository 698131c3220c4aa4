"""Image preprocessing with PIL and numpy only.

torchvision does not import beside the CPU torch build we pin, and transformers' default
``CLIPImageProcessor`` needs it, so every image tower shares these few steps instead:
convert to RGB -> resize the short side (bicubic) -> center crop -> scale to [0, 1] -> normalize.
The rounding follows transformers' ``CLIPImageProcessorPil`` so that CLIP sees exactly the
pixels it would see through Hugging Face (a unit test checks this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ImageTransform:
    """How one image tower wants its pixels.

    Args:
        size: side of the square crop fed to the tower.
        mean, std: per-channel normalization applied to [0, 1] pixels.
        crop_fraction: the crop covers this fraction of the resized short side. 1.0 is CLIP's
            "resize the short side to ``size``, crop ``size``"; 0.875 is the ImageNet eval
            convention (resize to size / 0.875, e.g. 256, then crop 224).
    """

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be positive, got {self.size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size and mode -> float32 tensor [B, 3, size, size]."""
        if len(images) == 0:
            return torch.empty(0, 3, self.size, self.size)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        batch = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, image in enumerate(images):
            pixels = resize_center_crop(to_rgb(image), self.size, self.crop_fraction)
            chw = np.asarray(pixels, dtype=np.float32).transpose(2, 0, 1) / 255.0
            batch[i] = (chw - mean) / std
        return torch.from_numpy(batch)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited onto ``background``.

    A plain ``convert("RGB")`` keeps whatever colour hides under transparent pixels (often
    black); product photos with transparent backgrounds are meant to be seen on white.
    """
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def resize_center_crop(image: Image.Image, size: int, crop_fraction: float = 1.0) -> Image.Image:
    """Resize so the short side is ``round(size / crop_fraction)`` (bicubic), then crop the center.

    The long side is ``int(short_target * long / short)`` and the crop offset is
    ``(side - size) // 2``, as in transformers' image transforms.
    """
    width, height = image.size
    short_target = int(round(size / crop_fraction))
    if width <= height:
        new_w, new_h = short_target, int(short_target * height / width)
    else:
        new_w, new_h = int(short_target * width / height), short_target
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))
