"""Prompt tuning for a CNN image tower (EfficientNet-Lite): a learnable border around the image.

A CNN has no token sequence to put prompt tokens into, so "prompt" has to mean something else here.
We use *visual prompt padding* (Bahng et al. 2022, "Exploring Visual Prompts for Adapting
Large-Scale Models", which prompted CLIP's ResNet towers this way): a learnable frame of
``width`` pixels, added to the normalized image's border, while the middle stays the image's own.

Why this and not the alternatives:
- it is the published way to prompt a frozen CNN, and it keeps what makes prompt tuning prompt
  tuning: extra learnable *input* that the frozen network reads alongside the item's content,
  with no change to any weight;
- it is additive, so zeros are an exact identity (tested): the adapted tower can start exactly at
  the frozen one;
- learnable per-channel vectors added to feature maps at chosen stages would be "deep", but a
  spatially constant offset before a 1x1 conv + frozen BatchNorm is just a bias shift (BitFit by
  another name), and border frames on the early, high-resolution feature maps cost more
  parameters than the whole text side's prompts (at 112x112x32 one frame of 4 pixels is 55k);
  so depth does not apply to this tower.

Cost: ``3 * (S^2 - (S - 2w)^2)`` parameters, 69,840 for S=224, w=30 (0.27 % of the bundled
encoder). The frame is sized for one input side ``S`` (the encoder's ``image_size``).
"""

from __future__ import annotations

import torch
from torch import nn

from ptmrec.encoders.efficientnet_lite import EfficientNetLite


class PaddingPrompt(nn.Module):
    """A learnable ``width``-pixel frame for ``[B, 3, S, S]`` normalized images.

    Parameters (normal(0, ``init_std``), zeros when 0): ``top``/``bottom`` ``[3, w, S]``,
    ``left``/``right`` ``[3, S - 2w, w]``.
    """

    def __init__(self, *, image_size: int, width: int, init_std: float, channels: int = 3) -> None:
        super().__init__()
        if width < 1 or image_size - 2 * width < 1:
            raise ValueError(f"the prompt border must be 1..{(image_size - 1) // 2} pixels wide "
                             f"for {image_size}-pixel images, got {width}")
        self.image_size, self.width = image_size, width
        inner = image_size - 2 * width
        self.top = nn.Parameter(torch.zeros(channels, width, image_size))
        self.bottom = nn.Parameter(torch.zeros(channels, width, image_size))
        self.left = nn.Parameter(torch.zeros(channels, inner, width))
        self.right = nn.Parameter(torch.zeros(channels, inner, width))
        if init_std > 0:
            for part in (self.top, self.bottom, self.left, self.right):
                nn.init.normal_(part, std=init_std)

    def frame(self) -> torch.Tensor:
        """The whole additive prompt, ``[3, S, S]``, zero inside the border."""
        channels, inner = self.left.shape[0], self.left.shape[1]
        middle = self.left.new_zeros(channels, inner, inner)
        return torch.cat([self.top, torch.cat([self.left, middle, self.right], dim=2), self.bottom], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, 3, S, S]`` with the frame added."""
        if pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"the padding prompt was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(pixel_values.shape[-2:])}")
        return pixel_values + self.frame().to(pixel_values.dtype)

    def before_stem(self, stem: nn.Module, args: tuple) -> tuple:
        """Pre-hook on the tower's stem conv: the first thing that sees the pixels."""
        return (self(args[0]), *args[1:])


def add_padding_prompt(tower: EfficientNetLite, *, image_size: int, width: int, init_std: float) -> PaddingPrompt:
    """Attach a ``PaddingPrompt`` to the tower, in place, as ``tower.prompts``; returns it."""
    prompt = PaddingPrompt(image_size=image_size, width=width, init_std=init_std)
    tower.prompts = prompt
    # ``encode_image`` calls ``forward_features``, which module hooks on the tower itself never see;
    # the stem conv is called as a module, so a pre-hook there catches every path into the tower.
    tower._conv_stem.register_forward_pre_hook(prompt.before_stem)
    return prompt
