"""Stage-2 step overhead: items/s of full knowledge-guided training steps (DeepSpeed engine, pair sampling,
tokenization, student recommender scores, BPR + KT) against a bare forward + backward + optimizer step of
the same adapted encoder on the same items, measured side by side in one run. Target ratio <= 1.25.

    .venv/bin/python benchmarks/stage2.py [--encoder bundled] [--adapter prompt] [--items 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import time

import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="bundled")
    parser.add_argument("--adapter", default="prompt")
    parser.add_argument("--items", type=int, default=256, help="catalogue size (synthetic, image + text)")
    parser.add_argument("--items-per-step", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")

    import deepspeed

    from ptmrec.config import AdapterConfig
    from ptmrec.data.sources.synthetic import make_synthetic
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter
    from ptmrec.recommenders import build_recommender
    from ptmrec.stages.student import ItemUserIndex, Student

    device = torch.device(args.device)
    data = make_synthetic(num_users=400, num_items=args.items, seed=0)
    train = data.splits == 0
    encoder = build_encoder(args.encoder, image_size=args.image_size, max_text_len=32)
    encoder = apply_adapter(encoder, args.adapter, **adapter_options(AdapterConfig(name=args.adapter), args.adapter))
    images = [data.item_image(i) for i in range(args.items)]
    texts = data.item_texts
    with torch.no_grad():
        frozen = {"text": encoder.encode_text(**encoder.tokenize(texts)),
                  "image": encoder.encode_image(encoder.preprocess_images(images))}
    recommender = build_recommender("vbpr", num_users=data.num_users, num_items=args.items,
                                    train_interactions=(data.users[train], data.items[train]), features=frozen)
    user_repr, item_repr = (t.detach() for t in recommender())
    student = Student(encoder, recommender, user_repr, item_repr, kt_weight=1.0, temperature=1.0,
                      kt_variant="user_item").to(device)
    chunks = [np.arange(lo, min(lo + args.items_per_step, args.items)) for lo in range(0, args.items, args.items_per_step)]
    pixels = [encoder.preprocess_images([images[i] for i in c]) for c in chunks]  # decoded once, as the stream does

    # The bare loop trains its own copy: DeepSpeed's ZeRO hooks own the engine's parameters' gradients.
    bare_encoder = copy.deepcopy(encoder).to(device)
    adapter_params = [p for p in encoder.parameters() if p.requires_grad]
    ds_config = {"train_micro_batch_size_per_gpu": args.items_per_step, "gradient_accumulation_steps": 1,
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
                 "zero_optimization": {"stage": 2}, "bf16": {"enabled": device.type == "cuda"},
                 "steps_per_print": 10**9}
    groups = [{"params": adapter_params}, {"params": [p for p in recommender.parameters() if p.requires_grad], "lr": 1e-5}]
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=groups, config=ds_config)
    index = ItemUserIndex(data.users[train], data.items[train], args.items)
    rng = np.random.default_rng(0)

    def stage2_epoch() -> None:
        for chunk, px in zip(chunks, pixels):
            items = torch.from_numpy(chunk).to(device)
            pairs = index.sample(chunk, 512, rng)
            if pairs is not None:
                pairs.users, pairs.pos, pairs.neg = (t.to(device) for t in (pairs.users, pairs.pos, pairs.neg))
            tokens = {k: v.to(device) for k, v in encoder.tokenize([texts[i] for i in chunk]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = engine(items, pairs, tokens, px.to(device))
            engine.backward(loss)
            engine.step()

    tokens_pre = [{k: v.to(device) for k, v in encoder.tokenize([texts[i] for i in c]).items()} for c in chunks]
    bare_opt = torch.optim.AdamW([p for p in bare_encoder.parameters() if p.requires_grad], lr=1e-4)

    def bare_epoch() -> None:
        for toks, px in zip(tokens_pre, pixels):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats = {"text": bare_encoder.encode_text(**toks), "image": bare_encoder.encode_image(px.to(device))}
                loss = sum(f.float().pow(2).mean() for f in feats.values())
            bare_opt.zero_grad()
            loss.backward()
            bare_opt.step()

    def items_per_s(fn) -> float:
        best = 0.0
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, args.items / (time.perf_counter() - t0))
        return best

    student.train()
    bare_encoder.train()
    bare_epoch()  # warm-up of both paths (allocator, autotuning)
    stage2_epoch()
    results = []
    for _ in range(2):  # interleaved, so machine noise hits both alike
        results.append((items_per_s(bare_epoch), items_per_s(stage2_epoch)))
    bare, full = max(r[0] for r in results), max(r[1] for r in results)
    trainable = sum(p.numel() for p in adapter_params)
    total = sum(p.numel() for p in encoder.parameters())
    print(f"device {device}, encoder {args.encoder} + {args.adapter} ({trainable:,} of {total:,} weights train, "
          f"{100 * trainable / total:.3f} %), {args.items} items, {args.items_per_step} per step, "
          f"images {args.image_size}px, torch threads {torch.get_num_threads()}")
    print(f"{'bare encoder fwd+bwd':<28}{bare:>10.1f} items/s")
    print(f"{'stage-2 training step':<28}{full:>10.1f} items/s")
    print(f"overhead ratio (bare / stage-2): {bare / full:.2f}   target <= 1.25")


if __name__ == "__main__":
    main()
