"""Stage 2's starting point: evaluated on the frozen features when a probe shows the adapters start as the
identity, re-encoded when they do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmrec.config import load_config
from ptmrec.encoders.adapters import set_train_mode
from ptmrec.stages.common import build_configured_encoder
from ptmrec.stages.features import encode_items
from ptmrec.stages.knowledge import PROBE_ITEMS, feature_gap, start_features


def test_feature_gap_is_relative_to_the_frozen_scale_and_takes_the_worst_modality():
    frozen = {"text": torch.tensor([[10.0, 0.0], [0.0, -20.0], [5.0, 5.0]]), "image": torch.ones(3, 1)}
    ids = np.array([2, 0])
    same = {"text": frozen["text"][[2, 0]].numpy(), "image": np.ones((2, 1), np.float32)}
    assert feature_gap(ids, same, frozen) == 0.0
    off = {"text": same["text"] + np.array([[0.0, 0.1], [0.0, 0.0]], np.float32), "image": same["image"] + 0.5}
    assert feature_gap(ids, off, frozen) == pytest.approx(0.5)  # image: 0.5 of its largest value 1
    assert feature_gap(ids, {"text": off["text"]}, frozen) == pytest.approx(0.1 / 10)  # over the probe's rows
    assert feature_gap(np.zeros(0, np.int64), {}, frozen) == 0.0  # a rank without items


@pytest.mark.parametrize("style,identity", [("gated", True), ("inserted", False)])
def test_the_start_is_the_frozen_features_only_when_the_adapters_reproduce_them(repo, smoke_data, style, identity):
    cfg = load_config(repo / "configs/smoke.yaml", [f"data.uri={smoke_data}", f"stage2.adapter.prompt_style={style}"])
    modalities = ["image", "text"]
    ids, feats = encode_items(cfg, 0, 1, encoder=build_configured_encoder(cfg, modalities), progress=False)
    frozen = {m: torch.zeros(cfg.data.synthetic_items, a.shape[1]) for m, a in feats.items()}
    for m, a in feats.items():
        frozen[m][torch.from_numpy(ids)] = torch.from_numpy(a)
    encoder = build_configured_encoder(cfg, modalities, "prompt")
    set_train_mode(encoder, True)
    start = start_features(cfg, encoder, frozen, 0, 1, torch.device("cpu"))
    assert any(m.training for m in encoder.modules())  # the probe leaves the adapters training
    if identity:
        assert start is not None and all(torch.equal(start[m], frozen[m]) for m in modalities)
        assert all(start[m].data_ptr() != frozen[m].data_ptr() for m in modalities)  # a copy, not the buffers
    else:
        assert start is None


def test_the_probe_encodes_only_the_first_batches(repo, smoke_data):
    cfg = load_config(repo / "configs/smoke.yaml", [f"data.uri={smoke_data}", "encoder.batch_size=16"])
    ids, feats = encode_items(cfg, 0, 1, encoder=build_configured_encoder(cfg, ["image", "text"]), progress=False,
                              limit=PROBE_ITEMS)
    assert PROBE_ITEMS <= len(ids) < PROBE_ITEMS + 16 and all(len(a) == len(ids) for a in feats.values())
