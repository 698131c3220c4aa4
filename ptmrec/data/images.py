"""Image decoding for the streams: JPEG bytes → normalized float tensors, with PIL and numpy only.

(torchvision does not import beside the pinned CPU torch here, and PIL is all we need: resize the short
side, center-crop, scale to [0, 1], normalize per channel.)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# CLIP's statistics; encoders pass their own (EfficientNet-Lite uses 0.498 / 0.502 on every channel).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image or encoded bytes → Tensor[3, size, size] (resize short side, center crop, normalize)."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, image: Image.Image | bytes) -> torch.Tensor:
        if isinstance(image, (bytes, bytearray)):
            with Image.open(io.BytesIO(image)) as im:
                im.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale when it can
                image = im.convert("RGB")
        else:
            image = image.convert("RGB")
        w, h = image.size
        scale = self.size / min(w, h)
        if scale != 1:
            image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                                 Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def batch(self, images: list) -> torch.Tensor:
        """A list of PIL images or bytes → Tensor[B, 3, size, size]."""
        return torch.stack([self(im) for im in images])
