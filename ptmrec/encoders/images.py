"""Image preprocessing with PIL and numpy only.

torchvision does not import beside the CPU torch build we pin, and transformers' default
``CLIPImageProcessor`` needs it, so every image tower shares these few steps instead:
convert to RGB -> resize the short side (bicubic) -> center crop -> scale to [0, 1] -> normalize.
The first three run on the host (``ImageTransform.pixels``: uint8, in DataLoader workers), the
last two wherever the pixels are (``ImageTransform.normalize``, on the accelerator in training).
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
        """PIL images of any size and mode -> float32 tensor [B, 3, size, size] (``normalize(pixels(images))``)."""
        return self.normalize(self.pixels(images))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size and mode -> uint8 RGB tensor [B, 3, size, size], resized and cropped.

        The host-side half of ``__call__``: a quarter of the float32 bytes to copy to a device,
        where ``normalize`` finishes the job.
        """
        batch = np.empty((len(images), 3, self.size, self.size), dtype=np.uint8)
        for i, image in enumerate(images):
            batch[i] = np.asarray(resize_center_crop(to_rgb(image), self.size, self.crop_fraction)).transpose(2, 0, 1)
        return torch.from_numpy(batch)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] (as ``pixels`` returns) -> float32 ``(x / 255 - mean) / std``, on their device."""
        if pixels.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 pixels (ImageTransform.pixels), got {pixels.dtype}")
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1).to(pixels.device, non_blocking=True)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1).to(pixels.device, non_blocking=True)
        return (pixels.to(torch.float32) / 255.0 - mean) / std


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
