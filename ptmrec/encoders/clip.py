"""CLIP (Hugging Face ``CLIPModel``) as a two-tower encoder.

The towers are transformers' ``CLIPVisionModelWithProjection`` and
``CLIPTextModelWithProjection``, assembled from a loaded ``CLIPModel``'s own submodules, so
features equal ``CLIPModel.get_image_features`` / ``get_text_features`` (unnormalized
projections, as there). The ``CLIPModel`` itself is dropped, and with it the scalar
``logit_scale`` parameter: the method never uses it, and a 0-dim parameter breaks
``deepspeed.initialize``.

Preprocessing is CLIPImageProcessor's (bicubic resize of the short side, center crop, CLIP
mean/std) done with PIL + numpy, since the default processor wants torchvision.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from ptmrec.encoders.base import TwoTowerEncoder, check_modalities
from ptmrec.encoders.images import ImageTransform
from ptmrec.encoders.registry import register_encoder

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPEncoder(TwoTowerEncoder):
    """CLIP's vision and text towers, each with its projection.

    ``encode_image``: ``[B, 3, S, S]`` -> ``[B, projection_dim]``.
    ``encode_text``: ``[B, L]`` ids + mask -> ``[B, projection_dim]``, pooled at the first EOS
    token (transformers' rule when ``config.eos_token_id != 2``; with the legacy id 2 it pools at
    the largest id, which is EOS for CLIP's vocabulary).

    ``tokenizer`` is any callable with the Hugging Face call contract
    (``tokenizer(texts, padding=, truncation=, max_length=, return_tensors="pt")``).
    When ``image_size`` differs from the checkpoint's, position embeddings are interpolated.
    """

    def __init__(
        self,
        image_tower: nn.Module | None,
        text_tower: nn.Module | None,
        tokenizer: Any,
        *,
        image_size: int,
        max_text_len: int,
    ) -> None:
        super().__init__(
            image_tower=image_tower,
            text_tower=text_tower,
            image_dim=image_tower.config.projection_dim if image_tower is not None else None,
            text_dim=text_tower.config.projection_dim if text_tower is not None else None,
            image_transform=ImageTransform(image_size, CLIP_MEAN, CLIP_STD, crop_fraction=1.0),
            max_text_len=max_text_len,
        )
        self.tokenizer = tokenizer
        self.interpolate_pos_encoding = image_tower is not None and image_size != image_tower.config.image_size
        if text_tower is not None and max_text_len > text_tower.config.max_position_embeddings:
            raise ValueError(
                f"max_text_len={max_text_len} exceeds the text tower's "
                f"{text_tower.config.max_position_embeddings} positions"
            )

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self._require("image")
        out = tower(pixel_values=self._pixels(pixel_values), interpolate_pos_encoding=self.interpolate_pos_encoding)
        return projected_features(out, "image_embeds")

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # CLIPTextModel (transformers 5.24) takes no inputs_embeds and finds the EOS position
        # from input_ids, so deep prompts should replace reserved token positions (e.g. via a
        # hook on text_model.embeddings) rather than lengthen the sequence.
        out = self._require("text")(input_ids=input_ids, attention_mask=attention_mask)
        return projected_features(out, "text_embeds")


def projected_features(output: Any, key: str) -> torch.Tensor:
    """The ``[B, D]`` features from a CLIP call, whatever its return type.

    transformers returns a plain tensor from ``get_*_features`` in 4.x, a
    ``BaseModelOutputWithPooling`` (projection in ``pooler_output``) in 5.x, a
    ``CLIP*ModelOutput`` (``image_embeds`` / ``text_embeds``) from the WithProjection models, and
    tuples when ``return_dict`` is off (the embeds come first).
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    for name in (key, "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"no {key!r} or pooler_output in {type(output).__name__}")


def split_clip_model(clip: nn.Module, modalities: Sequence[str] = ("image", "text")):
    """``CLIPModel`` -> (``CLIPVisionModelWithProjection`` | None, ``CLIPTextModelWithProjection`` | None).

    The towers reuse ``clip``'s submodules (no copy, no re-initialisation); ``logit_scale`` is
    left behind with ``clip``.
    """
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    modalities = check_modalities(modalities)
    vision, text = None, None
    if "image" in modalities:
        vision = _empty_tower(CLIPVisionModelWithProjection, clip.config.vision_config, clip.config.projection_dim)
        vision.vision_model = clip.vision_model
        vision.visual_projection = clip.visual_projection
    if "text" in modalities:
        text = _empty_tower(CLIPTextModelWithProjection, clip.config.text_config, clip.config.projection_dim)
        text.text_model = clip.text_model
        text.text_projection = clip.text_projection
    for tower in (vision, text):
        if tower is not None:
            _check_materialized(tower)
            tower.train(clip.training)
    return vision, text


def _empty_tower(cls, sub_config, projection_dim: int) -> nn.Module:
    # Sub-configs carry their own projection_dim, defaulting to 512 whatever the checkpoint's
    # CLIPConfig says; the top-level value is the true one. The tower is built on the meta
    # device because its random weights are about to be replaced by the loaded ones.
    config = copy.deepcopy(sub_config)
    config.projection_dim = projection_dim
    with torch.device("meta"):
        return cls(config)


def _check_materialized(tower: nn.Module) -> None:
    leftover = [name for name, t in [*tower.named_parameters(), *tower.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"{type(tower).__name__} kept uninitialised tensors: {leftover[:5]}")


@register_encoder("clip")
def build_clip(
    *,
    model: str | None = None,
    image_size: int | None = None,
    max_text_len: int = 64,
    modalities: Sequence[str] = ("image", "text"),
) -> CLIPEncoder:
    """Load ``model`` (a hub name or a local directory; default ``DEFAULT_MODEL``) with its tokenizer.

    ``image_size`` None means the checkpoint's own (``vision_config.image_size``).
    """
    from transformers import AutoTokenizer, CLIPModel

    name = model or DEFAULT_MODEL
    modalities = check_modalities(modalities)
    clip = CLIPModel.from_pretrained(name).eval()
    tokenizer = AutoTokenizer.from_pretrained(name)
    vision, text = split_clip_model(clip, modalities)
    image_size = image_size or clip.config.vision_config.image_size
    return CLIPEncoder(vision, text, tokenizer, image_size=image_size, max_text_len=max_text_len)
