"""How the jobs' cost grows with the catalogue: generated catalogues of 10^4, 10^5 and 10^6 items (as many
users, ~10 interactions per item, power-law popularity; configs/scale.yaml) through the product's own
commands: `ptmrec prepare`, `ptmrec stage1` (one epoch of VBPR with lazy Adam, then one evaluation) and
`ptmrec stage2` (one pass over a fixed number of chunks, evaluated at its start and end).

Per size and step it prints the time (from the stages' metrics.json and logs, so Ray's start-up is not
counted in a step, only in the commands' wall time) and peak memory (the rank-0 worker's, from metrics.json,
and the whole process tree's, Ray's processes included, sampled twice a second); then a log-log plot
(`<out>/scale.png`) and the fitted exponent of stage-1 epoch time against items. Every evaluation ranks all
items for the same sample of users (configs/scale.yaml: eval.sampled_above_items 0, eval.sample_users 2000),
so its cost grows with the items alone; what ranking every user would cost ("full eval, est.") is that
time scaled by users / sampled users, and labelled as an estimate.

Results are written to `<out>/scale.json` as each size finishes: a rerun skips the sizes already there.

    .venv/bin/python benchmarks/scale.py --max-items 1000000 [--out runs/scale-bench] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ptmrec.config import load_config

REPO = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000)


def run_command(args: list[str], log: Path) -> tuple[float, float, str]:
    """Run `ptmrec <args>`; (wall s, peak RSS of its whole process tree in MB, its log). Fails loudly."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ptmrec.cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        peak = [0.0]

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
                except psutil.Error:  # a process ended between the listing and the reading
                    pass
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
    text = log.read_text()
    if proc.returncode:
        sys.exit(f"scale: `ptmrec {' '.join(args[:1])}` failed with status {proc.returncode}; the last lines of "
                 f"{log}:\n{text[-3000:]}")
    return time.perf_counter() - start, peak[0], text


def measure(size: int, out: Path, steps_per_pass: int) -> dict:
    """One catalogue size through prepare, stage 1 and stage 2; its row of the table."""
    data, run = out / f"data-{size}", out / f"run-{size}"
    for folder in (data, run):
        shutil.rmtree(folder, ignore_errors=True)
    sets = [f"data.uri={data}", f"run.uri={run}", f"data.synthetic_items={size}", f"data.synthetic_users={size}",
            f"stage2.steps_per_epoch={steps_per_pass}"]
    common = ["--config", "configs/scale.yaml", *(a for s in sets for a in ("--set", s))]
    row: dict = {"items": size}
    wall, peak, _ = run_command(["-q", "prepare", *common], out / f"prepare-{size}.log")
    manifest = json.loads((data / "manifest.json").read_text())
    row.update(interactions=manifest["num_interactions"], prepare_s=wall, prepare_tree_mb=peak)
    wall, peak, log = run_command(["stage1", *common], out / f"stage1-{size}.log")
    m1 = json.loads((run / "stage1" / "metrics.json").read_text())
    found = re.search(r"extracted frozen features of \d+ items .* in ([\d.]+) s", log)
    sampled = min(manifest["num_users"], load_config(REPO / "configs/scale.yaml").eval.sample_users)
    row.update(features_s=float(found.group(1)) if found else None, epoch_s=m1["history"][0]["epoch_s"],
               eval_s=m1["history"][0]["eval_s"], eval_protocol=m1["eval_protocol"],
               full_eval_estimate_s=m1["history"][0]["eval_s"] * manifest["num_users"] / sampled,
               stage1_wall_s=wall, stage1_worker_mb=m1["peak_memory_mb"], stage1_tree_mb=peak,
               stage1_valid_recall20=m1["valid"]["recall@20"])
    row["freedom_graph_s"] = freedom_graph_s(run) if size <= FREEDOM_MAX_ITEMS else None
    wall, peak, _ = run_command(["stage2", *common], out / f"stage2-{size}.log")
    m2 = json.loads((run / "stage2" / "metrics.json").read_text())
    start, first = m2["history"][0], m2["history"][1]
    row.update(stage2_pass_s=first["epoch_s"], stage2_eval_s=(start["eval_s"] + first["eval_s"]) / 2,
               stage2_chunks=steps_per_pass * m2["num_workers"], stage2_wall_s=wall,
               stage2_worker_mb=m2["peak_memory_mb"], stage2_tree_mb=peak)
    shutil.rmtree(data, ignore_errors=True)  # the 10^6 catalogue's shards and features take GBs
    shutil.rmtree(run, ignore_errors=True)
    return row


FREEDOM_MAX_ITEMS = 100_000  # its item-item kNN is items × items: past this it is extrapolated, not run


def freedom_graph_s(run: Path) -> float:
    """Seconds for FREEDOM's item-item kNN graph (its library function, k 10) over the run's frozen features."""
    import torch

    from ptmrec.recommenders.graphs import knn_neighbours
    from ptmrec.stages.features import load_features
    from ptmrec.storage import Storage

    features = load_features(Storage(), str(next((run / "features" / "frozen").iterdir())))["text"]
    torch.set_num_threads(2)
    start = time.perf_counter()
    knn_neighbours(features, features, k=10)
    return time.perf_counter() - start


def exponent(rows: list[dict], key: str) -> float:
    """The slope of log(time) against log(items): 1 is linear, 2 quadratic."""
    import numpy as np

    xs = [math.log10(r["items"]) for r in rows if r.get(key)]
    ys = [math.log10(r[key]) for r in rows if r.get(key)]
    return float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else float("nan")


COLUMNS = (("prepare", "prepare_s"), ("features", "features_s"), ("stage-1 epoch", "epoch_s"), ("eval", "eval_s"),
           ("stage-2 pass", "stage2_pass_s"), ("stage-2 eval", "stage2_eval_s"), ("FREEDOM graph", "freedom_graph_s"))


def table(rows: list[dict]) -> str:
    head = ["items", "interactions", *(f"{name} s" for name, _ in COLUMNS), "full eval s (est.)",
            "worker MB (s1/s2)", "tree MB (s1/s2)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"{r['items']:,}", f"{r['interactions']:,}" if r.get("interactions") else "—",
            *(f"{r[key]:.1f}" if r.get(key) is not None else "—" for _, key in COLUMNS),
            f"{r['full_eval_estimate_s']:.0f}", f"{r['stage1_worker_mb']:.0f} / {r['stage2_worker_mb']:.0f}",
            f"{r['stage1_tree_mb']:.0f} / {r['stage2_tree_mb']:.0f}"]) + " |")
    fits = ", ".join(f"{name} {exponent(rows, key):.2f}" for name, key in COLUMNS)
    return ("\n".join(lines) + f"\n\nevaluation: {rows[-1]['eval_protocol']}\n"
            f"fitted exponents (time ∝ items^k): {fits}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    items = [r["items"] for r in rows]
    for name, key in COLUMNS:
        ax.loglog(items, [r.get(key) or float("nan") for r in rows], "o-", label=f"{name} (k={exponent(rows, key):.2f})")
    ax.loglog(items, [rows[0]["epoch_s"] * n / items[0] for n in items], "k:", label="linear from the first point")
    ax.set_xlabel("items (= users; ~10 interactions per item)")
    ax.set_ylabel("seconds")
    ax.set_title("ptmrec cost against catalogue size (2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-items", type=int, default=1_000_000, help="largest catalogue (of 10^4, 10^5, 10^6)")
    parser.add_argument("--out", default="runs/scale-bench", help="results, logs and (while a size runs) its data")
    parser.add_argument("--steps", type=int, default=20, help="stage-2 steps per worker in the pass (fixed)")
    parser.add_argument("--fresh", action="store_true", help="forget the sizes measured by an earlier run")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "scale.json"
    done = {} if args.fresh or not results.exists() else {r["items"]: r for r in json.loads(results.read_text())}
    for size in (s for s in SIZES if s <= args.max_items):
        if size in done:
            print(f"{size:,} items: measured by an earlier run (see {results}; --fresh measures again)")
            continue
        print(f"{size:,} items ...", flush=True)
        done[size] = measure(size, out, args.steps)
        results.write_text(json.dumps(sorted(done.values(), key=lambda r: r["items"]), indent=1) + "\n")
        print(json.dumps(done[size]), flush=True)
    rows = sorted(done.values(), key=lambda r: r["items"])
    print(table(rows))
    plot(rows, out / "scale.png")
    last = rows[-1]
    print(f"plot: {out / 'scale.png'}")
    print(f"stage-1 epoch time ∝ items^{exponent(rows, 'epoch_s'):.2f} (target <= 1.1); peak memory at "
          f"{last['items']:,} items: worker {max(last['stage1_worker_mb'], last['stage2_worker_mb']):.0f} MB, "
          f"all processes {max(last['stage1_tree_mb'], last['stage2_tree_mb']):.0f} MB")


if __name__ == "__main__":
    main()
