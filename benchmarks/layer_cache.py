"""Layer cache speed-up: items/s of stage 2's own training step (`ptmrec.stages.knowledge.train_step`: pair
sampling, host→device copy, BPR + KT through the DeepSpeed engine) for

  all layers   the adapter in every layer, on raw inputs (stage 2 without `top_layers`);
  top-k full   the adapter in the top k layers of each tower, on raw inputs;
  top-k cache  the same adapter on the states the layer cache stores (`layer_split.lower`, stored per item and
               re-batched by the cache reader's own decode and collate, as the loader processes hand them over),

side by side in one run, every side with ready batches (pixels decoded, texts tokenised), so the loader's
JPEG decoding, which the cache also saves, is not counted. The last line is
`layer cache speedup: X.XX`, top-k cache over all layers. Targets: >= 2.5 on a CPU with the bundled towers
(LoRA in the top 2 of MiniLM's 6 layers and of EfficientNet-Lite0's 7 stages); >= 3 on a GPU at CLIP
ViT-B/16 shapes (`--encoder vit-b16 --top-layers 4`, random weights, as benchmarks/gpu/step.py builds it).

    .venv/bin/python benchmarks/layer_cache.py [--encoder bundled|tiny-clip|vit-b16] [--adapter lora]
        [--top-layers 2] [--items 96] [--items-per-step 32] [--device cpu|cuda]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root

from benchmarks.floor import best_rates, single_process_group, step_parser  # noqa: E402


def build_base(name: str, image_size: int, max_text_len: int):
    """The frozen encoder every side copies: a registered one, or CLIP ViT-B/16's shapes with random weights."""
    if name == "vit-b16":
        from benchmarks.gpu.step import build_base_encoder

        return build_base_encoder(tiny=False)
    from ptmrec.encoders import build_encoder

    return build_encoder(name, image_size=image_size, max_text_len=max_text_len)


def make_inputs(encoder, items: int, per_step: int) -> list:
    """Ready `ItemBatch`es of random photos-like pixels and texts of random words longer than max_text_len (every
    text a full-length sequence, as long catalogue descriptions are)."""
    from PIL import Image

    from ptmrec.data.stream import ItemBatch

    rng = np.random.default_rng(0)
    side = encoder.image_size
    tokenize = encoder.text_tokenizer()
    batches = []
    for lo in range(0, items, per_step):
        n = min(per_step, items - lo)
        images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
        texts = [" ".join(f"word{w}" for w in rng.integers(0, 5000, size=encoder.max_text_len)) for _ in range(n)]
        batches.append(ItemBatch(item=torch.arange(lo, lo + n), text=texts, tokens=tokenize(texts),
                                 image=encoder.image_transform.pixels(images)))
    return batches


def cached_batches(encoder, batches: list) -> tuple[list, float]:
    """The same items as the cache stores and reads them: (batches with `states`, stored bytes per item)."""
    from ptmrec.data.stream import ItemBatch
    from ptmrec.encoders.layer_split import lower
    from ptmrec.stages.layer_cache import collate_states, decode_sample, item_samples

    cuts = encoder.applied_adapter.frozen_layers
    out, stored = [], 0
    for batch in batches:
        with torch.no_grad():
            states = {m: lower(encoder, m, cut, **({"pixel_values": batch.image} if m == "image" else batch.tokens))
                      for m, cut in cuts.items()}
        samples = [{"__key__": key, **files} for key, files in item_samples(batch.item.tolist(), states, torch.float32)]
        stored += sum(len(v) for s in samples for k, v in s.items() if k.endswith(".npy"))
        decoded = [decode_sample(s, "fp32", tuple(cuts)) for s in samples]
        collated = collate_states(decoded)
        out.append(ItemBatch(item=collated.item, text=None, image=None, states=collated.states))
    return out, stored / sum(len(b.item) for b in batches)


def main() -> None:
    parser = step_parser(__doc__, items=96, image_size=224)
    parser.add_argument("--encoder", default="bundled", help="bundled | tiny-clip | vit-b16 (random weights)")
    parser.add_argument("--adapter", default="lora")
    parser.add_argument("--top-layers", type=int, default=2)
    parser.add_argument("--max-text-len", type=int, default=64)
    args = parser.parse_args()
    single_process_group()

    from ptmrec.config import load_config
    from ptmrec.data.sources.synthetic import make_synthetic
    from ptmrec.encoders.adapters import apply_adapter, count_parameters
    from ptmrec.recommenders import build_recommender
    from ptmrec.runtime.ds_engine import build_ds_config, load_ds_config
    from ptmrec.stages.features import encode_batch
    from ptmrec.stages.knowledge import effective_settings, make_student, stage2_engine, train_step
    from ptmrec.stages.student import ItemUserIndex

    device = torch.device(args.device)
    cfg = load_config("configs/smoke.yaml", [f"stage2.items_per_step={args.items_per_step}", "stage2.pairs_per_step=512",
                                             f"stage2.adapter.name={args.adapter}", "stage2.lr=1e-4"])
    settings = effective_settings(cfg)
    base = build_base(args.encoder, args.image_size, args.max_text_len)
    data = make_synthetic(num_users=400, num_items=args.items, seed=0)
    train = data.splits == 0
    batches = make_inputs(base, args.items, args.items_per_step)
    with torch.no_grad():
        parts = [encode_batch(base, b, torch.device("cpu"), cfg.encoder.precision) for b in batches]
    frozen = {m: torch.cat([p[m] for p in parts]) for m in parts[0]}
    recommender = build_recommender("vbpr", num_users=data.num_users, num_items=args.items,
                                    train_interactions=(data.users[train], data.items[train]), features=frozen)
    teacher = [t.detach() for t in recommender()]
    index = ItemUserIndex(data.users[train], data.items[train], args.items)
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=args.items_per_step, num_workers=1,
                                lr=cfg.stage2.lr, zero_stage=2)

    sides, shares, stored_per_item = {}, {}, 0.0
    for name, top_layers, cached in (("all layers", None, False), (f"top-{args.top_layers} full", args.top_layers, False),
                                     (f"top-{args.top_layers} cache", args.top_layers, True)):
        options = {} if top_layers is None else {"top_layers": top_layers}
        encoder = apply_adapter(copy.deepcopy(base), args.adapter, **options)
        student = make_student(cfg, settings, encoder, copy.deepcopy(recommender), *teacher)
        engine = stage2_engine(student, cfg, settings, ds_config, device)
        side_batches = batches
        if cached:
            side_batches, stored_per_item = cached_batches(encoder, batches)
        if device.type == "cuda":
            side_batches = [b.pin_memory() for b in side_batches]
        student.train()
        rng = np.random.default_rng(0)
        sides[name] = (lambda e=engine, bs=side_batches, r=rng:
                       [train_step(e, b, index, cfg.stage2.pairs_per_step, r, device) for b in bs] and None)
        trainable, total = count_parameters(encoder)
        shares[name] = (trainable, encoder.applied_adapter.frozen_layers)

    rates = best_rates(sides, args.items, 2 * args.repeats, device)
    print(f"device {device}, encoder {args.encoder}, adapter {args.adapter}, {args.items} items, "
          f"{args.items_per_step} per step, images {base.image_size}px, texts {base.max_text_len} tokens, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'side':<16}{'items/s':>10}{'trainable':>12}  frozen layers")
    for name, rate in rates.items():
        trainable, frozen_layers = shares[name]
        print(f"{name:<16}{rate:>10.1f}{trainable:>12,}  {frozen_layers}")
    print(f"cache: {stored_per_item / 1024:.1f} KiB per item in float32 (half in bf16 on a GPU)")
    first, last = list(rates.values())[0], list(rates.values())[-1]
    print(f"top-k on the full path over all layers: {list(rates.values())[1] / first:.2f}")
    print(f"layer cache speedup: {last / first:.2f}")


if __name__ == "__main__":
    main()
