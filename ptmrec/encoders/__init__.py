"""Two-tower encoders (image tower + text tower) by name.

    from ptmrec.encoders import build_encoder
    encoder = build_encoder("bundled")               # or "clip" (model=...), "tiny-clip"
    pixels = encoder.preprocess_images(pil_images)   # [B, 3, S, S]
    batch = encoder.tokenize(texts)                  # input_ids, attention_mask: [B, L]
    image_features = encoder.encode_image(pixels)    # [B, image_dim]
    text_features = encoder.encode_text(**batch)     # [B, text_dim]

Importing this package does not import transformers or load weights; building does.
"""

from ptmrec.encoders.base import MODALITIES, TwoTowerEncoder
from ptmrec.encoders.registry import ENCODERS, available_encoders, build_encoder, register_encoder

# Importing the built-in encoders registers them.
from ptmrec.encoders import bundled, clip, tiny_clip  # noqa: E402,F401  isort: skip

__all__ = ["ENCODERS", "MODALITIES", "TwoTowerEncoder", "available_encoders", "build_encoder", "register_encoder"]
