import json

import pytest

from ptmrec.runtime.ds_engine import WarmupCosine, build_ds_config, derive_batch_sizes, load_ds_config


def test_repo_ds_config_loads_and_batch_sizes_agree(repo):
    base = load_ds_config(repo / "ds_config.json")
    cfg = build_ds_config(base, batch_size=2048, num_workers=2, lr=1e-3, zero_stage=2, gradient_accumulation_steps=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 512
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * 2 * cfg["gradient_accumulation_steps"]
    assert cfg["optimizer"]["params"]["lr"] == 1e-3 and cfg["zero_optimization"]["stage"] == 2
    assert "lr" not in base["optimizer"]["params"]  # the base is not mutated


def test_uneven_batch_is_refused():
    with pytest.raises(ValueError, match="does not split evenly over 3 workers"):
        derive_batch_sizes(2048, 3)


def test_batch_keys_in_ds_config_are_refused(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"train_batch_size": 64}))
    with pytest.raises(ValueError, match="'train_batch_size' is derived from the run config"):
        load_ds_config(p)
    with pytest.raises(ValueError, match="DeepSpeed config not found"):
        load_ds_config(tmp_path / "none.json")


def test_fused_adam_is_asked_of_torch_adam_only(repo, tmp_path):
    params = load_ds_config(repo / "ds_config.json")["optimizer"]["params"]
    assert params["torch_adam"] and params["fused"]  # one-kernel Adam: 5-9x faster a step (benchmarks/graphs.py)
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"optimizer": {"type": "Adam", "params": {"fused": True}}}))
    with pytest.raises(ValueError, match="fused is an option of torch's Adam: set torch_adam: true"):
        load_ds_config(p)


def test_warmup_then_constant_or_cosine():
    constant = WarmupCosine(warmup=4, total=20, cosine=False)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = WarmupCosine(warmup=0, total=10, cosine=True)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and 0 < cosine(9) < 0.03 and cosine(10) == 0.0
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        WarmupCosine(warmup=-1, total=10, cosine=False)


def test_lazy_adam_is_ours_with_the_base_betas_and_refuses_weight_decay(repo):
    from ptmrec.runtime.ds_engine import LAZY_ADAM, build_ds_config, load_ds_config

    base = load_ds_config(repo / "ds_config.json")
    cfg = build_ds_config(base, batch_size=8, num_workers=2, lr=0.01, zero_stage=0, lazy_adam=True)
    assert cfg["optimizer"] == {"type": LAZY_ADAM, "params": {"lr": 0.01}}
    base["optimizer"]["params"].update(betas=[0.8, 0.9], weight_decay=0.0)
    cfg = build_ds_config(base, batch_size=8, num_workers=2, lr=0.01, zero_stage=0, lazy_adam=True)
    assert cfg["optimizer"]["params"] == {"betas": [0.8, 0.9], "lr": 0.01}
    base["optimizer"]["params"]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="lazy_adam takes no weight decay"):
        build_ds_config(base, batch_size=8, num_workers=2, lr=0.01, zero_stage=0, lazy_adam=True)
