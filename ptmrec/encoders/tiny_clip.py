"""A tiny, randomly initialised CLIP for tests: no files, no network, built from a seed.

Two layers of width 32 per tower and a 4x4 grid of image patches at any ``image_size`` (the
patch side is ``image_size // 4``), so a forward pass costs milliseconds. Texts go through
``HashingTokenizer``, which needs no vocabulary file.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import torch

from ptmrec.encoders.base import check_modalities
from ptmrec.encoders.clip import CLIPEncoder, split_clip_model
from ptmrec.encoders.registry import register_encoder

VOCAB_SIZE = 1000
HIDDEN_SIZE = 32
PROJECTION_DIM = 16
PATCH_GRID = 4

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class HashingTokenizer:
    """Lowercase words (and single punctuation marks) hashed into a fixed vocabulary.

    Ids: ``pad_token_id = 0``, words in ``[1, vocab_size - 3]``, ``bos_token_id = vocab_size - 2``,
    ``eos_token_id = vocab_size - 1``. EOS is the largest id, as in CLIP's real vocabulary, so both
    of transformers' pooling rules (first ``eos_token_id``, or legacy argmax of the ids) find it.
    crc32 rather than ``hash()`` because Python salts string hashes per process.
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE) -> None:
        if vocab_size < 4:
            raise ValueError(f"vocab_size must hold pad, bos, eos and one word, got {vocab_size}")
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.bos_token_id = vocab_size - 2
        self.eos_token_id = vocab_size - 1

    def encode(self, text: str) -> list[int]:
        """One text -> its ids without special tokens."""
        return [1 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 3) for word in _WORD.findall(text.lower())]

    def __call__(
        self,
        texts: Sequence[str],
        *,
        max_length: int,
        padding: str = "longest",
        truncation: bool = True,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """The subset of the Hugging Face tokenizer call that ``CLIPEncoder.tokenize`` uses:
        right-padded ``input_ids`` / ``attention_mask`` long tensors ``[B, L]``, ``L <= max_length``."""
        if padding != "longest" or not truncation or return_tensors != "pt":
            raise ValueError("HashingTokenizer supports padding='longest', truncation=True, return_tensors='pt' only")
        rows = [[self.bos_token_id, *self.encode(t)[: max_length - 2], self.eos_token_id] for t in texts]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def tiny_clip_config(image_size: int = 32, max_text_len: int = 64, vocab_size: int = VOCAB_SIZE):
    """A ``CLIPConfig`` with 2-layer, 32-wide towers whose special ids match ``HashingTokenizer``."""
    from transformers import CLIPConfig

    if image_size < PATCH_GRID:
        raise ValueError(f"image_size must be at least {PATCH_GRID}, got {image_size}")
    tower = dict(hidden_size=HIDDEN_SIZE, intermediate_size=2 * HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=4)
    tokenizer = HashingTokenizer(vocab_size)
    return CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=vocab_size,
            max_position_embeddings=max_text_len,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=image_size // PATCH_GRID),
        projection_dim=PROJECTION_DIM,
    )


def tiny_clip_model(config=None, seed: int = 0):
    """A randomly initialised ``CLIPModel`` (eval mode), the same for the same ``seed``.

    Seeds a forked RNG, so the caller's global random state is left untouched.
    """
    from transformers import CLIPModel

    config = config if config is not None else tiny_clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


@register_encoder("tiny-clip")
def build_tiny_clip(
    *,
    model: str | None = None,
    image_size: int | None = None,
    max_text_len: int = 64,
    modalities: Sequence[str] = ("image", "text"),
    seed: int = 0,
) -> CLIPEncoder:
    """The tiny CLIP as a ``CLIPEncoder``; ``model`` must be None (nothing is loaded).

    ``image_size`` None means 32; any other size keeps the 4x4 patch grid.
    """
    if model is not None:
        raise ValueError(f"tiny-clip is built from a seed and loads nothing; got model={model!r}")
    modalities = check_modalities(modalities)
    image_size = image_size or 32
    config = tiny_clip_config(image_size=image_size, max_text_len=max_text_len)
    vision, text = split_clip_model(tiny_clip_model(config, seed=seed), modalities)
    return CLIPEncoder(
        vision, text, HashingTokenizer(config.text_config.vocab_size), image_size=image_size, max_text_len=max_text_len
    )
