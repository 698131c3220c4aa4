"""Stage-2 throughput at CLIP ViT-B/16 shapes on one GPU, side by side in one run.

What it measures (image+text pairs = items per second; warm-up, then the best of --repeats passes over the
same --batches ready batches, `ptmrec.runtime.device.synchronize` around each pass):
  a. frozen extraction: `ptmrec.stages.features.encode_batch(encoder, batch, device, "bf16")` under
     `torch.inference_mode()`, the call the frozen-feature job makes per batch;
  b. bare forward + backward + torch Adam step of the adapted encoder (loss: sum over modalities of the
     squared mean of the features, as benchmarks/stage2.py) for LoRA r 8 on q_proj, v_proj; gated deep
     prompts (the default style; length 4, all 12 layers of both towers); full fine-tuning;
  c. the job's own stage-2 step: `make_student` + `stage2_engine` (DeepSpeed, ZeRO stage 2 as the job) +
     `train_step` per batch, with a VBPR student over random frozen features of the catalogue (--users
     users, --per-user random interactions each, so every chunk has BPR pairs), interleaved with (b) for
     the same adapter so machine noise hits both alike;
  d. the host pipeline of stage 2 (`ptmrec.stages.knowledge.item_stream`: each epoch's item shards, JPEG
     decode + resize + crop to uint8 + tokenise in --loader-workers DataLoader processes, pinned on CUDA)
     over real shards (--shards), against the fastest real step of (c); `--loader-workers 6,12` measures
     each K (the job's `gpu` profile runs 6 loader processes per GPU worker).
Batches for a–c are ready `ItemBatch`es: uint8 pixels from `encoder.image_transform.pixels` (random
images) and token ids from `encoder.text_tokenizer()`, texts long enough to fill max_text_len (77 tokens;
the gated prompts take no positions), pinned on CUDA, as the loader processes hand them over.

The model: a randomly initialised `transformers.CLIPModel` with ViT-B/16's config (vision 12 layers, width
768, 12 heads, patch 16, 224 px; text 12 layers, width 512, 8 heads, 77 positions, vocab 49408; projection
512), built on the CPU, split into the product's `CLIPEncoder` (`split_clip_model`) with the file-free
`HashingTokenizer` (vocab 49408), encoders under bf16 autocast (`encoder.precision: bf16`). Throughput does
not depend on the weights, and nothing is downloaded. Anchors: the same shapes on one H100.

Targets: real step >= 0.9 x bare adapted fwd+bwd (same adapter); frozen >= 0.9 x the H100 anchor; the
loader's decode rate > the step rate. The last lines are a summary with PASS/MISS.

Run on the GPU machine (from the repository root; about 1-2 minutes after start-up):

    python benchmarks/gpu/step.py --shards file://./data/hm-sample-900 --out $OUT/step.json

Check it on a CPU (tiny-clip shapes, batch 16, 2 repeats; 1-2 minutes):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu/step.py --tiny --shards file:///tmp/hm-shards-900

Real shards small enough to carry (the device tool carries at most 64 MiB; keep shards under ~10 MB):
the first 900 of the 4,965 H&M photos (configs/hm-sample.yaml; `prepare` never upscales the 192x288
photos, re-encodes them at JPEG quality 85, 100 items per shard so 6+ loader workers all get shards)
make 9 item shards of 8.9 MB (9.9 KB an item with the tar headers) and one 0.7 MB interaction shard:
9.6 MB in all (9,607,063 bytes measured). 1,000 items would pass 10 MB.

    N=900; SRC=../shared/data/hm-sample; DST=/tmp/hm-sample-$N
    mkdir -p $DST/images
    awk -F'\\t' -v n=$N 'NR==1 || $2<n' $SRC/hm.inter > $DST/hm.inter
    awk -F'\\t' -v n=$N 'NR==1 || $1<n' $SRC/hm_item_text.tsv > $DST/hm_item_text.tsv
    for i in $(seq 0 $((N-1))); do ln -sf "$(realpath $SRC)/images/$i.jpg" $DST/images/; done
    .venv/bin/ptmrec -q prepare --config configs/hm-sample.yaml --set data.path=$DST \\
        --set data.uri=file://./data/hm-sample-$N
    du -sb data/hm-sample-$N        # then carry data/hm-sample-900 (data/ is git-ignored)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository's own package, installed or not (a bare GPU machine)

from benchmarks.floor import bare_encoder_step, best_rates  # noqa: E402  (after the path is set)

# One H100, the same shapes (batch 256, bf16 autocast): image+text pairs per second.
ANCHORS_H100 = {"frozen": 5372.0, "lora": 1814.0, "full": 1620.0}
TARGET_STEP_OVER_BARE = 0.9
TARGET_FROZEN_OVER_ANCHOR = 0.9
# The stage-2 adapter settings, as `stage2.adapter` in a run config (option names of ptmrec.encoders.adapters).
ADAPTER_SPECS = {
    "lora": "{name: lora, rank: 8, target_modules: [q_proj, v_proj]}",
    "prompt": "{name: prompt, prompt_length: 4}",  # prompt_depth null: every layer of both towers
    "full": "{name: full}",
}
ADAPTER_LABELS = {"lora": "LoRA r8 q,v", "prompt": "prompts L4 x12", "full": "full fine-tune"}
# Defaults per size: the GPU run at ViT-B/16 shapes, and --tiny, a minute on a laptop CPU.
PROFILES = {
    "vit-b16": dict(batch=256, batches=8, repeats=3, users=20_000, per_user=3, pairs_per_step=2048,
                    loader_workers="6"),
    "tiny": dict(batch=16, batches=4, repeats=2, users=400, per_user=3, pairs_per_step=512,
                 loader_workers="2"),
}
VIT_B16 = dict(vocab=49408, text_width=512, text_layers=12, text_heads=8, max_text_len=77,
               vision_width=768, vision_layers=12, vision_heads=12, patch=16, image_size=224, projection=512)
TINY = dict(image_size=32, max_text_len=16)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny-clip shapes (2 layers, width 32, 32 px, 16 tokens) on the CPU: checks the code")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present; cpu with --tiny)")
    parser.add_argument("--batch", type=int, default=None, help="items per batch and step (default 256; 16 tiny)")
    parser.add_argument("--batches", type=int, default=None,
                        help="distinct ready batches per timed pass; also the catalogue size / batch (default 8; 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes after the warm-up (default 3; 2)")
    parser.add_argument("--adapters", default="lora,prompt,full",
                        help="adapters whose bare fwd+bwd is measured (default: lora,prompt,full)")
    parser.add_argument("--step-adapters", default="lora,prompt",
                        help="adapters whose real stage-2 step is measured too (default: lora,prompt)")
    parser.add_argument("--users", type=int, default=None, help="users of the step's VBPR student (20000; 400)")
    parser.add_argument("--per-user", type=int, default=None, help="random interactions per user (default 3)")
    parser.add_argument("--pairs-per-step", type=int, default=None, help="stage2.pairs_per_step (2048; 512)")
    parser.add_argument("--shards", default=None,
                        help="data URI prepared by `ptmrec prepare` (manifest.json + item shards) for the loader "
                             "measurement; without it that part is skipped")
    parser.add_argument("--loader-workers", default=None,
                        help="DataLoader processes K decoding + tokenising; a comma list (6,12) measures each "
                             "(default 6; 2 with --tiny)")
    parser.add_argument("--loader-batches", type=int, default=None,
                        help="batches per timed loader pass, worker start-up included as in each epoch "
                             "(default 4 per worker, at least 8)")
    parser.add_argument("--out", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    for key, value in PROFILES["tiny" if args.tiny else "vit-b16"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from ptmrec.uris import absolute_uri

    # main() works in the repository root (configs, ray_config.yaml, ds_config.json): paths given here
    # mean what they meant where the command was typed.
    args.shards = absolute_uri(args.shards) if args.shards else None
    args.out = os.path.abspath(args.out) if args.out else None
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.loader_workers = [int(k) for k in str(args.loader_workers).split(",") if k]
    args.adapters = [a for a in args.adapters.split(",") if a]
    args.step_adapters = [a for a in args.step_adapters.split(",") if a]
    unknown = sorted(set(args.adapters + args.step_adapters) - set(ADAPTER_SPECS))
    if unknown:
        parser.error(f"unknown adapter(s) {unknown}; this benchmark knows {sorted(ADAPTER_SPECS)}")
    return args


# ------------------------------------------------------------------------------------------ model, data


def clip_config(tiny: bool):
    """ViT-B/16's `CLIPConfig` (special ids as `HashingTokenizer` numbers them), or tiny-clip's."""
    from transformers import CLIPConfig

    from ptmrec.encoders.tiny_clip import HashingTokenizer, tiny_clip_config

    if tiny:
        return tiny_clip_config(image_size=TINY["image_size"], max_text_len=TINY["max_text_len"])
    s, tok = VIT_B16, HashingTokenizer(VIT_B16["vocab"])
    return CLIPConfig(
        text_config=dict(vocab_size=s["vocab"], hidden_size=s["text_width"], intermediate_size=4 * s["text_width"],
                         num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
                         max_position_embeddings=s["max_text_len"], pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=s["vision_width"], intermediate_size=4 * s["vision_width"],
                           num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                           image_size=s["image_size"], patch_size=s["patch"]),
        projection_dim=s["projection"])


def build_base_encoder(tiny: bool):
    """The frozen `CLIPEncoder`, random weights, on the CPU: every variant below is a deep copy of it,
    moved to the device (each adapter needs a fresh encoder; the CPU copy keeps device memory for runs)."""
    from transformers import CLIPModel

    from ptmrec.encoders.clip import CLIPEncoder, split_clip_model
    from ptmrec.encoders.tiny_clip import HashingTokenizer

    config = clip_config(tiny)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)
        clip = CLIPModel(config).eval()
    vision, text = split_clip_model(clip)
    return CLIPEncoder(vision, text, HashingTokenizer(config.text_config.vocab_size),
                       image_size=config.vision_config.image_size,
                       max_text_len=config.text_config.max_position_embeddings)


def make_inputs(encoder, args) -> list[tuple[torch.Tensor, list[str], torch.Tensor]]:
    """(item ids, texts, uint8 pixels) per batch: random images through `image_transform.pixels`, texts of
    random words, more than max_text_len of them, so every row is a full-length sequence."""
    from PIL import Image

    rng = np.random.default_rng(0)
    side = encoder.image_size
    out = []
    for b in range(args.batches):
        images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(args.batch)]
        texts = [" ".join(f"w{w}" for w in rng.integers(0, 10**6, size=encoder.max_text_len + 8))
                 for _ in range(args.batch)]
        out.append((torch.arange(b * args.batch, (b + 1) * args.batch), texts, encoder.image_transform.pixels(images)))
    return out


def ready_batches(inputs, tokenize, device: torch.device):
    """`ItemBatch`es as the loader hands them over: tokenised by this encoder's tokenizer (prompts lower
    max_text_len), pinned when headed for CUDA."""
    from ptmrec.data.stream import ItemBatch

    batches = [ItemBatch(item=ids, text=texts, image=pixels, tokens=tokenize(texts)) for ids, texts, pixels in inputs]
    return [b.pin_memory() for b in batches] if device.type == "cuda" else batches


def stage_config(args, adapter: str):
    """The run config the stage-2 pieces read: configs/smoke.yaml (as benchmarks/stage2.py) with this
    benchmark's adapter, chunk size, pairs and bf16 encoders; ZeRO stage 2, the job's default."""
    from ptmrec.config import load_config

    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"stage2.adapter={ADAPTER_SPECS[adapter]}", f"stage2.items_per_step={args.batch}",
        f"stage2.pairs_per_step={args.pairs_per_step}", "stage2.lr=1e-4", "stage2.mode=ptmrec",
        "encoder.precision=bf16", "recommender.embedding_dim=64"])


# ------------------------------------------------------------------------------------------ timing


def release(device: torch.device) -> None:
    """Free what the last measurement held, so the next one starts from an empty allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ parts


def measure_frozen(base, inputs, args, device: torch.device) -> dict:
    """(a) image+text pairs/s of the frozen extraction's per-batch call."""
    from ptmrec.stages.features import encode_batch

    encoder = copy.deepcopy(base).to(device).eval()
    batches = ready_batches(inputs, encoder.text_tokenizer(), device)

    def extract() -> None:
        with torch.inference_mode():
            for batch in batches:
                encode_batch(encoder, batch, device, "bf16")

    rate = best_rates({"frozen": extract}, args.batches * args.batch, args.repeats, device)["frozen"]
    tokens = int(batches[0].tokens["input_ids"].shape[1])
    del encoder, batches
    release(device)
    return {"items_per_s": rate, "text_tokens": tokens}


def stage2_student_engine(cfg, settings: dict, encoder, args, device: torch.device):
    """The job's student (VBPR over random frozen features of the catalogue, teacher = its own detached
    representations) in the job's DeepSpeed engine; and the item→users index the step samples pairs from."""
    from ptmrec.recommenders import build_recommender
    from ptmrec.runtime.ds_engine import build_ds_config, load_ds_config
    from ptmrec.stages.knowledge import make_student, stage2_engine
    from ptmrec.stages.student import ItemUserIndex

    num_items = args.batches * args.batch
    rng = np.random.default_rng(1)
    # A few random items per user (a repeated pair is harmless): every item has ~users*per_user/num_items users.
    users = np.repeat(np.arange(args.users, dtype=np.int64), args.per_user)
    items = rng.integers(0, num_items, size=len(users), dtype=np.int64)
    features = {"image": torch.randn(num_items, encoder.image_dim), "text": torch.randn(num_items, encoder.text_dim)}
    recommender = build_recommender("vbpr", num_users=args.users, num_items=num_items,
                                    train_interactions=(users, items), features=features,
                                    embedding_dim=cfg.recommender.embedding_dim)
    with torch.no_grad():
        teacher_user, teacher_item = (t.detach().clone() for t in recommender())
    student = make_student(cfg, settings, encoder, recommender, teacher_user, teacher_item)
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=args.batch, num_workers=1,
                                lr=cfg.stage2.lr, zero_stage=cfg.stage2.zero_stage)
    engine = stage2_engine(student, cfg, settings, ds_config, device)
    return engine, student, ItemUserIndex(users, items, num_items)


def measure_adapter(base, adapter: str, inputs, args, device: torch.device, with_step: bool) -> dict:
    """(b) bare fwd + bwd + Adam of the adapted encoder; with `with_step`, (c) the job's `train_step` on a
    second copy of the same adapted encoder (DeepSpeed's ZeRO hooks own the engine's gradients), interleaved."""
    from ptmrec.encoders.adapters import adapter_options, apply_adapter, count_parameters
    from ptmrec.stages.knowledge import effective_settings, train_step

    cfg = stage_config(args, adapter)
    settings = effective_settings(cfg)
    encoder = apply_adapter(copy.deepcopy(base), settings["adapter"],
                            **adapter_options(cfg.stage2.adapter, settings["adapter"]))
    trainable, total = count_parameters(encoder)
    batches = ready_batches(inputs, encoder.text_tokenizer(), device)  # after the adapter: an adapter may change the text budget
    bare = copy.deepcopy(encoder).to(device).train()
    optimizer = torch.optim.Adam([p for p in bare.parameters() if p.requires_grad], lr=cfg.stage2.lr)

    def bare_pass() -> None:
        for batch in batches:
            bare_encoder_step(bare, batch, optimizer, device, cfg.encoder.precision)

    fns = {"bare": bare_pass}
    engine = student = None
    if with_step:
        engine, student, index = stage2_student_engine(cfg, settings, encoder, args, device)
        student.train()
        rng = np.random.default_rng(0)

        def step_pass() -> None:
            for batch in batches:
                train_step(engine, batch, index, cfg.stage2.pairs_per_step, rng, device)

        fns["step"] = step_pass
    rates = best_rates(fns, args.batches * args.batch, args.repeats, device)
    result = {"adapter": adapter, "spec": ADAPTER_SPECS[adapter], "trainable_params": trainable,
              "total_params": total, "text_tokens": int(batches[0].tokens["input_ids"].shape[1]),
              "bare_items_per_s": rates["bare"], "step_items_per_s": rates.get("step")}
    if with_step:
        result["step_over_bare"] = rates["step"] / rates["bare"]
    del encoder, bare, optimizer, batches, engine, student, fns
    release(device)
    return result


def measure_loader(base, args, device: torch.device, k: int) -> dict:
    """(d) items/s of stage 2's own item stream (`item_stream`: the epoch's shards, decode + resize + crop +
    tokenise in K loader processes, pinned on CUDA) over the real shards; a pass runs whole epochs (each
    starts its workers anew, as each epoch of the job does) until it has at least `batches` batches."""
    from ptmrec.config import load_config
    from ptmrec.data.shards import load_manifest
    from ptmrec.stages.knowledge import epoch_plan, item_stream
    from ptmrec.storage import Storage

    batches = args.loader_batches or max(8, 4 * k)  # enough per worker that start-up is not all it times
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        f"data.uri={args.shards}", f"stage2.items_per_step={args.batch}",
        f"ray.loader_workers={k}", f"ray.cpus_per_worker={k + 1}"])
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    shard_bytes = sum(os.path.getsize(storage_path(cfg.data.uri, e["name"])) for e in manifest["shards"]["items"]) \
        if cfg.data.uri.startswith("file://") else None
    epochs = iter(range(10**6))  # every epoch a new order, as in the job
    per_epoch = epoch_plan(cfg, manifest, 0, 1).steps
    batches = -(-batches // per_epoch) * per_epoch

    def one_pass() -> None:
        for _ in range(batches // per_epoch):
            for _ in item_stream(cfg, storage, base, next(epochs), 0, 1, device):
                pass

    rate = best_rates({"loader": one_pass}, batches * args.batch, args.repeats, device)["loader"]
    return {"items_per_s": rate, "loader_workers": k, "batches_per_pass": batches, "uri": cfg.data.uri,
            "catalogue_items": manifest["num_items"],
            "item_shards": len(manifest["shards"]["items"]), "item_shard_bytes": shard_bytes,
            "modalities": manifest["modalities"], "image_size": base.image_size, "cpus": os.cpu_count()}


def storage_path(data_uri: str, name: str) -> str:
    return os.path.join(data_uri[len("file://"):], name)


# ------------------------------------------------------------------------------------------ report


def verdicts(results: dict, tiny: bool) -> list[dict]:
    """Each ratio the targets name, with PASS/MISS; anchor ratios without a target are for reference."""
    rows = []
    frozen = results.get("frozen", {}).get("items_per_s")
    anchor_note = "n/a (--tiny shapes)" if tiny else None
    if frozen:
        rows.append(dict(name="frozen / H100 anchor", ratio=frozen / ANCHORS_H100["frozen"],
                         target=TARGET_FROZEN_OVER_ANCHOR, note=anchor_note))
    adapters = results.get("adapters", {})
    for name in ("lora", "full"):
        if name in adapters:
            rows.append(dict(name=f"{name} bare / H100 anchor", ratio=adapters[name]["bare_items_per_s"]
                             / ANCHORS_H100[name], target=None, note=anchor_note or "reference, no target"))
    steps = {n: a for n, a in adapters.items() if a.get("step_items_per_s")}
    for name, a in steps.items():
        rows.append(dict(name=f"{name} step / bare", ratio=a["step_over_bare"], target=TARGET_STEP_OVER_BARE,
                         note=None))
    if steps:
        fastest = max(steps, key=lambda n: steps[n]["step_items_per_s"])
        for loader in results.get("loader", {}).values():
            rows.append(dict(name=f"loader K={loader['loader_workers']} / {fastest} step", target=1.0, strict=True,
                             ratio=loader["items_per_s"] / steps[fastest]["step_items_per_s"], note=None))
    for row in rows:
        if row["note"] is not None or row["target"] is None:
            row["verdict"] = "-"
        else:
            ok = row["ratio"] > row["target"] if row.get("strict") else row["ratio"] >= row["target"]
            row["verdict"] = "PASS" if ok else "MISS"
    return rows


def print_table(results: dict, args) -> None:
    frozen, adapters, loader = results.get("frozen"), results.get("adapters", {}), results.get("loader")
    print(f"\n{'measurement':<44}{'items/s':>10}{'trainable':>13}{'H100 anchor':>13}{'ratio':>8}")

    def row(label: str, rate: float, trainable: str = "", anchor: Optional[float] = None, ratio: str = "") -> None:
        anchor_text = f"{anchor:,.0f}" if anchor else ""
        ratio = ratio or (f"{rate / anchor:.2f}" if anchor else "")
        print(f"{label:<44}{rate:>10,.1f}{trainable:>13}{anchor_text:>13}{ratio:>8}")

    if frozen:
        row(f"a frozen extraction (encode_batch, {frozen['text_tokens']} tok)", frozen["items_per_s"], "0",
            ANCHORS_H100["frozen"])
    for name, a in adapters.items():
        row(f"b bare fwd+bwd+Adam, {ADAPTER_LABELS[name]}", a["bare_items_per_s"], f"{a['trainable_params']:,}",
            ANCHORS_H100.get(name))
    for name, a in adapters.items():
        if a.get("step_items_per_s"):
            row(f"c stage-2 train_step, {ADAPTER_LABELS[name]}", a["step_items_per_s"], f"{a['trainable_params']:,}",
                ratio=f"{a['step_over_bare']:.2f}")
    for one in (loader or {}).values():
        row(f"d loader item_stream, K={one['loader_workers']} workers", one["items_per_s"])
    if args.shards is None:
        print("d loader: skipped (no --shards; prepare real shards as in this script's docstring)")
    for name, error in results.get("errors", {}).items():
        print(f"{name}: FAILED: {error}")
    print("(ratio column: against the H100 anchor for a/b, step / bare of the same adapter for c)")
    print(f"targets: real step >= {TARGET_STEP_OVER_BARE} x bare adapted fwd+bwd (same adapter); frozen >= "
          f"{TARGET_FROZEN_OVER_ANCHOR} x H100 anchor ({ANCHORS_H100['frozen']:,.0f}); loader decode rate > step rate")
    print("summary:")
    for v in results["summary"]:
        target = "" if v["target"] is None else (f"(> {v['target']:g})" if v.get("strict") else f"(>= {v['target']:g})")
        print(f"  {v['name']:<28}{v['ratio']:>7.2f}  {v['verdict']:<5}{target:<9}{v['note'] or ''}")


def describe(args, device: torch.device, base) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    shapes = "tiny-clip (2 layers, width 32, 4x4 patches)" if args.tiny else \
        "CLIP ViT-B/16 (vision 12x768/12 heads, patch 16; text 12x512/8 heads, vocab 49408; projection 512)"
    return {"device": name, "torch": torch.__version__, "shapes": shapes, "image_size": base.image_size,
            "max_text_len": base.max_text_len, "batch": args.batch, "batches_per_pass": args.batches,
            "repeats": args.repeats, "precision": "bf16 autocast" if device.type == "cuda" else "fp32 (CPU)",
            "users": args.users, "per_user": args.per_user, "pairs_per_step": args.pairs_per_step}


# ------------------------------------------------------------------------------------------ main


def run_part(results: dict, slot: dict, name: str, fn: Callable[[], dict], args) -> None:
    """One measurement, stored as `slot[name]`; a failure is reported and recorded, and the others still
    run (a GPU lease is short)."""
    t0 = time.perf_counter()
    try:
        slot[name] = fn()
    except Exception as exc:  # noqa: BLE001  any failure: report it, keep the other figures
        traceback.print_exc()
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
    out = slot.get(name)
    print(f"[{name}: {time.perf_counter() - t0:.1f} s] {json.dumps(out) if out else 'failed'}", flush=True)
    if args.out:  # after every part: a run cut short still leaves what it measured
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


def pick_device(name: str) -> torch.device:
    """The device to measure on; plain `cuda` becomes the current CUDA device, made current for DeepSpeed,
    which places its buffers there (as the job's `select_device` does)."""
    from ptmrec.runtime.device import select_device

    device = torch.device(name)
    if device.type != "cuda":
        return device
    if device.index is None:
        return select_device(True)
    torch.cuda.set_device(device)
    return device


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    with socket.socket() as s:  # DeepSpeed's one-process group (as benchmarks/stage2.py)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    base = build_base_encoder(args.tiny)
    inputs = make_inputs(base, args)
    results: dict = {"setup": describe(args, device, base), "anchors_h100": ANCHORS_H100, "adapters": {}}
    print(f"{results['setup']}\nbuilt in {time.perf_counter() - t0:.1f} s", flush=True)

    run_part(results, results, "frozen", lambda: measure_frozen(base, inputs, args, device), args)
    for name in dict.fromkeys(args.step_adapters + args.adapters):  # step adapters first: (c) is the target
        run_part(results, results["adapters"], name, lambda: measure_adapter(
            base, name, inputs, args, device, with_step=name in args.step_adapters), args)
    if args.shards:
        for k in args.loader_workers:
            run_part(results, results.setdefault("loader", {}), f"loader K={k}",
                     lambda: measure_loader(base, args, device, k), args)
    results["summary"] = verdicts(results, args.tiny)
    print_table(results, args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
