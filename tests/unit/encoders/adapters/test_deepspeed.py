"""Adapted encoders train under DeepSpeed ZeRO-2 (one CPU process, gloo), as stage 2 runs them."""

from __future__ import annotations

import gc
import socket

import pytest
import torch
from torch import nn

from ptmrec.encoders.adapters import adapter_state_dict, apply_adapter

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},  # no CPU Adam to compile
    "zero_optimization": {"stage": 2},
}


class Tuner(nn.Module):
    """Stage 2's shape in miniature: a module that holds the adapted encoder and returns a loss."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        features = self.encoder(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return features["image"].pow(2).mean() + features["text"].pow(2).mean()


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group on 127.0.0.1 (DeepSpeed needs torch.distributed), destroyed afterwards.

    One group for the module: DeepSpeed caches the group it first saw, so a second group in the same
    process would not be the one it uses.
    """
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)}.items():
            env.setenv(key, value)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        try:
            yield
        finally:
            # Collect the engines before tearing the group down: a gloo thread racing interpreter
            # shutdown otherwise aborts the process now and then.
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


@pytest.mark.parametrize("name", ["prompt", "lora"])
def test_zero2_trains_only_the_adapter(name, tiny_clip, inputs, process_group):
    from ptmrec.runtime.ds_engine import initialize_engine

    encoder = apply_adapter(tiny_clip, name)
    model = Tuner(encoder)
    frozen_before = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    adapter_before = adapter_state_dict(encoder)
    engine = initialize_engine(model, [{"params": [p for p in model.parameters() if p.requires_grad]}], DS_CONFIG)
    pixels, text = inputs(encoder)
    for _ in range(2):
        loss = engine(pixels, text["input_ids"], text["attention_mask"])
        engine.backward(loss)
        engine.step()
    assert torch.isfinite(loss)
    adapter_after = adapter_state_dict(encoder)
    assert any(not torch.equal(adapter_after[n], adapter_before[n]) for n in adapter_before)
    assert all(torch.equal(p, frozen_before[n]) for n, p in encoder.named_parameters() if not p.requires_grad)
    del engine


def test_the_engine_steps_the_learning_rate_schedule(tiny_clip, inputs, process_group):
    from ptmrec.runtime.ds_engine import WarmupCosine, initialize_engine

    model = Tuner(apply_adapter(tiny_clip, "lora"))
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.01}]
    schedule = WarmupCosine(warmup=2, total=6, cosine=True)
    engine = initialize_engine(model, groups, DS_CONFIG, lr_multiplier=schedule)
    pixels, text = inputs(tiny_clip)
    rates = []
    for _ in range(6):
        rates.append(engine.get_lr()[0])
        engine.backward(engine(pixels, text["input_ids"], text["attention_mask"]))
        engine.step()
    assert rates == pytest.approx([0.01 * schedule(step) for step in range(6)])
    assert rates[0] < rates[1] == pytest.approx(0.01) and rates[1] > rates[3] > rates[5] > 0
    del engine
