"""The two-tower interface every encoder implements.

An encoder owns an image tower and a text tower (either may be absent), the host-side
preprocessing each tower needs, and the pooling that turns a tower's hidden states into one
vector per item. The towers are real ``nn.Module``s (transformers models or our EfficientNet)
exposed as ``image_tower`` / ``text_tower`` so that adapters (peft LoRA/IA3, deep prompts) can be
inserted into them in place; the encode methods are short and meant to be overridden.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from ptmrec.encoders.images import ImageTransform

MODALITIES = ("image", "text")


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Validate a modality selection; returns it as a tuple in canonical order."""
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ValueError(
            f"modalities must be a non-empty subset of {list(MODALITIES)}, got {list(modalities)}"
        )
    return tuple(m for m in MODALITIES if m in modalities)


def hf_tokenize(tokenizer, texts: Sequence[str], max_text_len: int) -> dict[str, torch.Tensor]:
    """Texts → input_ids / attention_mask ``[B, L]`` with a Hugging Face tokenizer (padded to the longest)."""
    if len(texts) == 0:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    batch = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_text_len, return_tensors="pt")
    # token_type_ids are all zero for single sentences, which BERT assumes when they are absent.
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


class TextTokenizer:
    """``texts -> {"input_ids", "attention_mask"}``, the same as ``TwoTowerEncoder.tokenize``, without the model.

    Holds only the tokenizer (a Hugging Face tokenizer or ``HashingTokenizer``) and the length limit,
    so it pickles cheaply into DataLoader worker processes (``TwoTowerEncoder.text_tokenizer``).
    """

    def __init__(self, tokenizer: Any, max_text_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return hf_tokenize(self.tokenizer, texts, self.max_text_len)

    def __repr__(self) -> str:
        return f"TextTokenizer({type(self.tokenizer).__name__}, max_text_len={self.max_text_len})"


class TwoTowerEncoder(nn.Module):
    """Image tower + text tower with their preprocessing.

    Attributes:
        image_tower, text_tower: the underlying modules, ``None`` when that modality was not built.
        image_dim, text_dim: feature sizes of ``encode_image`` / ``encode_text``, ``None`` when
            the tower is absent.
        image_size: side of the square images ``preprocess_images`` returns.
        max_text_len: ``tokenize`` truncates to this many tokens, special tokens included.

    Subclasses set the towers and ``self.tokenizer`` (a Hugging Face-style tokenizer; ``tokenize``
    and ``text_tokenizer`` use it) and implement ``encode_image`` and ``encode_text``;
    ``preprocess_images`` is driven by the ``image_transform`` they pass in.

    Images reach ``encode_image`` in one of two forms, told apart by dtype (``_pixels``):
    float32 already normalized (``preprocess_images``), or uint8 as ``image_transform.pixels``
    returns them, normalized on their own device (a quarter of the bytes cross to the accelerator).
    """

    tokenizer: Any = None

    image_dim: int | None
    text_dim: int | None

    def __init__(
        self,
        *,
        image_tower: nn.Module | None,
        text_tower: nn.Module | None,
        image_dim: int | None,
        text_dim: int | None,
        image_transform: ImageTransform,
        max_text_len: int,
    ) -> None:
        super().__init__()
        if max_text_len < 2:
            raise ValueError(f"max_text_len must leave room for the special tokens, got {max_text_len}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_dim = image_dim if image_tower is not None else None
        self.text_dim = text_dim if text_tower is not None else None
        self.image_transform = image_transform
        self.image_size = image_transform.size
        self.max_text_len = max_text_len

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this encoder has a tower for, e.g. ``("image", "text")``."""
        present = {"image": self.image_tower is not None, "text": self.text_tower is not None}
        return tuple(m for m in MODALITIES if present[m])

    # --- host side: raw inputs -> tensors -------------------------------------------------

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any size, any mode) -> float32 ``[B, 3, image_size, image_size]`` on CPU."""
        return self.image_transform(images)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> ``{"input_ids": long [B, L], "attention_mask": long [B, L]}`` on CPU.

        ``L`` is the longest tokenized text in the batch, at most ``max_text_len``.
        """
        return self.text_tokenizer()(texts)

    def text_tokenizer(self) -> TextTokenizer:
        """A picklable, model-free callable equal to ``tokenize``: what DataLoader workers get.

        It captures ``max_text_len`` now, so take it after any adapter that lowers it (``prompt``).
        """
        if self.tokenizer is None:
            raise NotImplementedError(f"{type(self).__name__} has no tokenizer")
        return TextTokenizer(self.tokenizer, self.max_text_len)

    # --- device side: tensors -> features ------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float (as ``preprocess_images`` returns) or uint8 (as
        ``image_transform.pixels`` returns) -> ``[B, image_dim]``.

        Implementations start with ``pixel_values = self._pixels(pixel_values)``.
        """
        raise NotImplementedError

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the image tower reads: uint8 pixels normalized on their device; float pixels as they are.

        Normalizing here, before the tower is called, keeps adapters that work on normalized pixels
        (the CNN's padding prompt, a pre-hook inside the tower) unchanged.
        """
        if pixel_values.dtype == torch.uint8:
            return self.image_transform.normalize(pixel_values)
        return pixel_values

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask``: ``[B, L]`` -> ``[B, text_dim]``."""
        raise NotImplementedError

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode whichever inputs are given: ``{"image": [B, image_dim], "text": [B, text_dim]}``.

        Training engines (DeepSpeed) call the module itself, so both towers are reachable
        through one forward.
        """
        features = {}
        if pixel_values is not None:
            features["image"] = self.encode_image(pixel_values)
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            features["text"] = self.encode_text(input_ids, attention_mask)
        return features

    def _require(self, modality: str) -> nn.Module:
        """The tower for ``modality``; a clear error if this encoder was built without it."""
        tower = self.image_tower if modality == "image" else self.text_tower
        if tower is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without the {modality} tower "
                f"(modalities={list(self.modalities)})"
            )
        return tower
