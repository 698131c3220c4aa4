"""Stage 2 for real: 2 Ray Train workers through DeepSpeed on the synthetic image + text catalogue, with
tiny-clip and with the bundled towers; the saved adapters reproduce the adapted features exactly."""

import json

import numpy as np
import pytest
import torch

from tests.integration.conftest import copy_run, ptmrec

pytestmark = pytest.mark.slow


def reencode(cfg, adapter_file, world_size):
    """Rebuild encoder + adapter from the saved file and encode the catalogue as the workers split it."""
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter, load_adapter_state
    from ptmrec.stages.features import encode_items

    saved = torch.load(adapter_file, map_location="cpu", weights_only=False)
    encoder = build_encoder(cfg.encoder.name, model=cfg.encoder.model, image_size=cfg.encoder.image_size,
                            max_text_len=cfg.encoder.max_text_len, modalities=["image", "text"])
    encoder = apply_adapter(encoder, saved["adapter"], **adapter_options(cfg.stage2.adapter, saved["adapter"]))
    load_adapter_state(encoder, saved["state"])
    out = {}
    for rank in range(world_size):
        ids, feats = encode_items(cfg, rank, world_size, encoder=encoder, progress=False)
        for m, a in feats.items():
            out.setdefault(m, np.zeros((cfg.data.synthetic_items, a.shape[1]), np.float32))[ids] = a
    return out


@pytest.mark.parametrize("encoder,adapter", [("tiny-clip", "prompt"), ("tiny-clip", "lora"),
                                            pytest.param("bundled", "prompt", marks=pytest.mark.slower)])
def test_stage2_runs_and_saved_adapters_reproduce_features(repo, smoke_data, smoke_stage1, smoke_stage2, tmp_path,
                                                          encoder, adapter):
    from ptmrec.config import load_config
    from ptmrec.stages.features import load_features
    from ptmrec.storage import Storage

    # the smoke config as it is is the session's stage 2 (3 epochs); the others train here
    as_is = (encoder, adapter) == ("tiny-clip", "prompt")
    run = smoke_stage2 if as_is else tmp_path / "run"
    adapter_set = f"stage2.adapter.name={adapter}" if adapter == "prompt" else f"stage2.adapter={{name: {adapter}, rank: 4}}"
    sets = ["--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}", "--set", f"encoder.name={encoder}",
            "--set", adapter_set]
    if adapter == "lora":  # the search's other knobs: KT rows and standardisation, the lr schedule; a bounded epoch
        sets += ["--set", "stage2.kt={weight: 1.0, sampled_users: 8, standardize: true}",
                 "--set", "stage2.lr_schedule=cosine", "--set", "stage2.warmup_steps=2", "--set", "stage2.steps_per_epoch=2"]
    if encoder == "bundled":
        sets += ["--set", "encoder.image_size=64", "--set", "stage1.epochs=2"]
        proc = ptmrec(repo, "stage1", "--config", "configs/smoke.yaml", *sets)
        assert proc.returncode == 0, proc.stderr[-3000:]
    elif not as_is:  # the smoke config's own stage 1 (stage 2's settings do not change it)
        copy_run(smoke_stage1, run)
    if not as_is:
        proc = ptmrec(repo, "stage2", "--config", "configs/smoke.yaml", *sets)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert (", 2 steps/epoch," if adapter == "lora" else ", 5 steps/epoch,") in proc.stderr

    metrics = json.loads((run / "stage2" / "metrics.json").read_text())
    assert metrics["mode"] == "ptmrec" and metrics["adapter"] == adapter and metrics["num_workers"] == 2
    assert metrics["valid"]["recall@20"] > 0 and metrics["history"][1]["loss/kt_text"] >= 0
    # The starting point is epoch 0, a candidate: the chosen epoch is never worse on valid than it.
    start = metrics["history"][0]
    assert start["epoch"] == 0 and "valid/recall@20" in start and "loss/bpr" not in start
    # ... and it is stage 1's model: evaluated on the frozen features (the adapters passed the identity probe)
    stage1 = json.loads((run / "stage1" / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert {k: start[f"{split}/{k}"] for k in stage1[split]} == pytest.approx(stage1[split], abs=1e-9)
    assert metrics["valid"]["recall@20"] >= start["valid/recall@20"]
    assert metrics["start_is_best"] == (metrics["best_epoch"] == 0)
    assert 0 < metrics["encoder_trainable_params"] < metrics["encoder_total_params"]
    if encoder == "bundled" and adapter == "prompt":
        assert metrics["encoder_trainable_share"] < 0.005  # prompts train < 0.5 % of the encoder
    assert (run / "report.md").is_file() and (run / "report.png").stat().st_size > 1000

    # reload the saved adapters in a fresh process-local encoder: the same features, bit for bit
    torch.set_num_threads(1)  # as each Ray worker ran (1 CPU per worker)
    cfg = load_config(repo / "configs/smoke.yaml", [a for a in sets if a != "--set"])
    adapted_dirs = list((run / "features").glob("adapted-stage2/*"))
    assert len(adapted_dirs) == 1
    saved = load_features(Storage(), str(adapted_dirs[0]))
    again = reencode(cfg, run / "stage2" / "adapter.pt", world_size=2)
    for m in saved:
        assert np.array_equal(saved[m].numpy(), again[m]), m
    frozen = load_features(Storage(), str(next((run / "features" / "frozen").iterdir())))
    # Every adapter starts as the identity: the saved features are the frozen ones exactly when epoch 0 won.
    changed = not all(torch.equal(frozen[m], saved[m]) for m in saved)
    assert changed == (metrics["best_epoch"] > 0)


def test_valid_halves_choose_stage1_on_one_half_and_stage2_on_the_other(repo, smoke_data, smoke_stage1, tmp_path):
    """eval.selection: valid_halves: stage 1 picks its epoch on valid_a, stage 2 (start included) on valid_b."""
    run = tmp_path / "run"
    copy_run(smoke_stage1, run, parts=["features"])  # the frozen features; stage 1 trains anew (another setting)
    sets = ["--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}", "--set", f"run.uri={run}",
            "--set", "eval.selection=valid_halves", "--set", "stage1.epochs=4", "--set", "stage1.patience=1000"]
    proc = ptmrec(repo, "stage1", *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = ptmrec(repo, "stage2", *sets, "--set", "stage2.epochs=2", "--set", "stage2.patience=1000")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(valid_b " in proc.stderr and "epoch 0 (the starting point): valid recall@20" in proc.stderr
    for stage, half in (("stage1", "valid_a"), ("stage2", "valid_b")):
        m = json.loads((run / stage / "metrics.json").read_text())
        assert m["selection_split"] == half and {"valid_a", "valid_b"} <= set(m)
        scores = [h[f"{half}/recall@20"] for h in m["history"] if f"{half}/recall@20" in h]
        epochs = [h["epoch"] for h in m["history"] if f"{half}/recall@20" in h]
        assert m["best_epoch"] == epochs[scores.index(max(scores))]  # the first best on the choosing half
        assert m[half]["recall@20"] == max(scores)


def test_stage2_evaluates_every_kth_epoch_and_the_last(repo, smoke_data, smoke_stage1, tmp_path):
    """stage2.eval_every 2 over 3 epochs: the start, epoch 2 and epoch 3 are evaluated and the only candidates."""
    run = tmp_path / "run"
    copy_run(smoke_stage1, run)
    proc = ptmrec(repo, "stage2", "--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}",
                  "--set", f"run.uri={run}", "--set", "stage2.epochs=3", "--set", "stage2.eval_every=2",
                  "--set", "stage2.patience=1000")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "epoch 1/3" in proc.stderr and "(evaluated every 2 epochs)" in proc.stderr
    m = json.loads((run / "stage2" / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [0, 2, 3]
    assert m["best_epoch"] in (0, 2, 3) and m["epochs_run"] == 3
