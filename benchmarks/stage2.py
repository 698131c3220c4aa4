"""Stage-2 step overhead: items/s of the job's own training step (`ptmrec.stages.knowledge.train_step`:
pair sampling, host→device copy, the student's BPR + KT through the DeepSpeed engine) against a bare
forward + backward + optimizer step of the same adapted encoder on the same items, side by side in one
run. Both sides get the same ready batches (decoded, uint8 pixels, tokenised), as the loader processes
hand them over. Target ratio (bare / stage-2) <= 1.25.

    .venv/bin/python benchmarks/stage2.py [--encoder bundled] [--adapter prompt] [--items 256] [--device cpu|cuda]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root

from benchmarks.floor import bare_encoder_step, best_rates, single_process_group, step_parser  # noqa: E402


def main() -> None:
    parser = step_parser(__doc__, items=256, image_size=128)
    parser.add_argument("--encoder", default="bundled")
    parser.add_argument("--adapter", default="prompt")
    args = parser.parse_args()
    single_process_group()

    from ptmrec.config import load_config
    from ptmrec.data.sources.synthetic import make_synthetic
    from ptmrec.data.stream import ItemBatch
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter
    from ptmrec.recommenders import build_recommender
    from ptmrec.runtime.ds_engine import build_ds_config, load_ds_config
    from ptmrec.stages.knowledge import effective_settings, make_student, stage2_engine, train_step
    from ptmrec.stages.student import ItemUserIndex

    device = torch.device(args.device)
    cfg = load_config("configs/smoke.yaml", [f"encoder.name={args.encoder}", f"encoder.image_size={args.image_size}",
                                             "encoder.max_text_len=32", f"stage2.adapter.name={args.adapter}",
                                             f"stage2.items_per_step={args.items_per_step}", "stage2.pairs_per_step=512",
                                             "stage2.adapter.prompt_length=4", "stage2.lr=1e-4"])
    settings = effective_settings(cfg)
    data = make_synthetic(num_users=400, num_items=args.items, seed=0)
    train = data.splits == 0
    encoder = build_encoder(args.encoder, image_size=args.image_size, max_text_len=32)
    encoder = apply_adapter(encoder, args.adapter, **adapter_options(cfg.stage2.adapter, args.adapter))
    images = [data.item_image(i) for i in range(args.items)]
    texts = data.item_texts
    with torch.no_grad():
        frozen = {"text": encoder.encode_text(**encoder.tokenize(texts)),
                  "image": encoder.encode_image(encoder.preprocess_images(images))}
    recommender = build_recommender("vbpr", num_users=data.num_users, num_items=args.items,
                                    train_interactions=(data.users[train], data.items[train]), features=frozen)
    user_repr, item_repr = (t.detach() for t in recommender())
    student = make_student(cfg, settings, encoder, recommender, user_repr, item_repr)
    # Ready batches, as the loader processes hand them over (uint8 pixels, token ids).
    tokenize = encoder.text_tokenizer()
    batches = [ItemBatch(item=torch.arange(lo, min(lo + args.items_per_step, args.items)),
                         text=texts[lo:lo + args.items_per_step], tokens=tokenize(texts[lo:lo + args.items_per_step]),
                         image=encoder.image_transform.pixels(images[lo:lo + args.items_per_step]))
               for lo in range(0, args.items, args.items_per_step)]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]

    # The bare loop trains its own copy: DeepSpeed's ZeRO hooks own the engine's parameters' gradients.
    bare_encoder = copy.deepcopy(encoder).to(device)
    ds_config = build_ds_config(load_ds_config(cfg.run.ds_config), batch_size=args.items_per_step, num_workers=1,
                                lr=cfg.stage2.lr, zero_stage=2)
    engine = stage2_engine(student, cfg, settings, ds_config, device)
    index = ItemUserIndex(data.users[train], data.items[train], args.items)
    rng = np.random.default_rng(0)
    bare_opt = torch.optim.Adam([p for p in bare_encoder.parameters() if p.requires_grad], lr=cfg.stage2.lr)

    def stage2_epoch() -> None:
        for batch in batches:
            train_step(engine, batch, index, cfg.stage2.pairs_per_step, rng, device)

    def bare_epoch() -> None:
        for batch in batches:
            bare_encoder_step(bare_encoder, batch, bare_opt, device, cfg.encoder.precision)

    student.train()
    bare_encoder.train()
    rates = best_rates({"bare": bare_epoch, "stage2": stage2_epoch}, args.items, 2 * args.repeats, device)
    bare, full = rates["bare"], rates["stage2"]
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in encoder.parameters())
    print(f"device {device}, encoder {args.encoder} + {args.adapter} ({trainable:,} of {total:,} weights train, "
          f"{100 * trainable / total:.3f} %), {args.items} items, {args.items_per_step} per step, "
          f"images {args.image_size}px, torch threads {torch.get_num_threads()}")
    print(f"{'bare encoder fwd+bwd':<28}{bare:>10.1f} items/s")
    print(f"{'stage-2 training step':<28}{full:>10.1f} items/s")
    print(f"overhead ratio (bare / stage-2): {bare / full:.2f}   target <= 1.25")


if __name__ == "__main__":
    main()
