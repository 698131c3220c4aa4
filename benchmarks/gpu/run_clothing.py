"""Run several `clothing_compare.py` processes side by side on one GPU, stop them at a deadline, and write
one merged result file, one log and the table (means over seeds, change against the same seeds' frozen
baseline).

Why side by side: one process keeps an H100 only partly busy (small MiniLM batches, sparse graph ops,
Python between kernels), and a lease is minutes long. Each process writes its JSON after every finished
run, so the deadline loses only the runs still going.

    python3 benchmarks/gpu/run_clothing.py --deadline 480          # on the GPU machine, writes $OUT/
    python3 benchmarks/gpu/run_clothing.py --table clothing_compare.json   # the table again, anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ptmrec.runtime.local_s3 import stop_process  # noqa: E402  (stdlib only: runs on the bare GPU machine)
MAIN_RUNS = ["ptmrec", "no_kt", "joint", "ptmrec:adapter_lr=0.01"]
# The settings search rides along on seed 1 of each recommender: what might move ptmrec above frozen.
SEARCH_RUNS = ["ptmrec:kt_weight=10", "ptmrec:temperature=0.5", "ptmrec:adapter=lora", "ptmrec:prompt_length=16,adapter_lr=0.01"]


def default_plan() -> list[dict]:
    plan = [{"recommender": rec, "seed": seed, "tag": "main", "runs": MAIN_RUNS}
            for rec in ("vbpr", "freedom") for seed in (1, 2, 3)]
    return plan + [{"recommender": rec, "seed": 1, "tag": "search", "runs": SEARCH_RUNS} for rec in ("vbpr", "freedom")]


def launch(plan: list[dict], args, work: Path) -> list[tuple[dict, subprocess.Popen, Path]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for job in plan:
        log = work / f"{job['recommender']}-seed{job['seed']}-{job['tag']}.log"
        cmd = [sys.executable, str(HERE / "clothing_compare.py"), "--data", args.data, "--minilm", args.minilm,
               "--recommender", job["recommender"], "--seed", str(job["seed"]), "--tag", job["tag"],
               "--out", str(work), "--runs", *job["runs"], *args.extra]
        procs.append((job, subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True), log))
    return procs


def wait(procs, deadline: float) -> None:
    while time.monotonic() < deadline and any(p.poll() is None for _, p, _ in procs):
        time.sleep(2)
    for job, p, _ in procs:
        if p.poll() is None:
            print(f"deadline: stopping {job['recommender']} seed {job['seed']} {job['tag']}", flush=True)
            stop_process(p, timeout_s=10, group=True)


def table(results: list[dict]) -> str:
    """Mean over seeds per (recommender, run); Δ against the frozen runs of the same seeds."""
    rows = ["| recommender | run | seeds | test R@10 | test R@20 | test N@10 | test N@20 | valid R@20 | ΔR@10 vs frozen "
            "| ΔR@20 vs frozen | trainable share | peak GPU GiB | wall s |", "|" + " --- |" * 13]
    for rec in sorted({r["recommender"] for r in results}):
        frozen = {}
        for r in results:  # one frozen run per seed: the first process's (main sorts before search)
            if r["recommender"] == rec and r["label"] == "frozen":
                frozen.setdefault(r["seed"], r)
        labels = []
        for r in results:
            if r["recommender"] == rec and r["label"] not in labels:
                labels.append(r["label"])
        for label in labels:
            group = ([frozen[s] for s in sorted(frozen)] if label == "frozen" else
                     [r for r in results if r["recommender"] == rec and r["label"] == label])
            mean = lambda f: sum(f(r) for r in group) / len(group)  # noqa: E731
            paired = [r for r in group if r["seed"] in frozen]
            delta = lambda k: (100 * (sum(r["test"][k] for r in paired) / sum(frozen[r["seed"]]["test"][k] for r in paired) - 1)  # noqa: E731
                               if paired else float("nan"))
            rows.append(f"| {rec} | {label} | {','.join(str(r['seed']) for r in group)} | {mean(lambda r: r['test']['recall@10']):.4f} "
                        f"| {mean(lambda r: r['test']['recall@20']):.4f} | {mean(lambda r: r['test']['ndcg@10']):.4f} "
                        f"| {mean(lambda r: r['test']['ndcg@20']):.4f} | {mean(lambda r: r['valid']['recall@20']):.4f} "
                        f"| {delta('recall@10'):+.1f} % | {delta('recall@20'):+.1f} % | {100 * mean(lambda r: r['share']):.3f} % "
                        f"| {mean(lambda r: r['peak_gib']):.1f} | {mean(lambda r: r['wall_s']):.0f} |")
    return "\n".join(rows)


def merge(work: Path) -> dict:
    merged = {"processes": [], "results": []}
    for f in sorted(work.glob("*.json")):
        part = json.loads(f.read_text())
        merged["processes"].append({k: v for k, v in part.items() if k != "runs"})
        merged["results"] += [{"recommender": part["recommender"], "seed": part["seed"], **r} for r in part["runs"]]
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".gpu_carry/clothing",
                   help="MMRec folder with clothing.inter and clothing_item_text.tsv (here: ../shared/data/amazon-clothing)")
    p.add_argument("--minilm", default=".gpu_carry/minilm", help="folder of the bundled MiniLM weights and tokenizer")
    p.add_argument("--deadline", type=float, default=480, help="seconds until unfinished processes are stopped")
    p.add_argument("--threads", type=int, default=2, help="OpenMP threads per process")
    p.add_argument("--plan", help="JSON file: a list of {recommender, seed, tag, runs}; default: the built-in plan")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--work", default="/tmp/clothing_compare", help="per-process JSON and logs")
    p.add_argument("--table", help="only print the table of a merged result file")
    p.add_argument("extra", nargs="*", help="passed to every clothing_compare.py (after --)")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["results"]))
        return
    plan = json.loads(Path(args.plan).read_text()) if args.plan else default_plan()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    procs = launch(plan, args, work)
    print(f"started {len(procs)} processes; deadline {args.deadline:.0f} s", flush=True)
    wait(procs, start + args.deadline)
    merged = merge(work)
    merged["wall_s"] = time.monotonic() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clothing_compare.json").write_text(json.dumps(merged, indent=1))
    with (out / "clothing_log.txt").open("w") as f:
        for _, proc, log in procs:
            f.write(f"==== {log.name} (exit {proc.returncode})\n{log.read_text()}\n")
    for _, proc, log in procs:
        lines = log.read_text().splitlines()
        print(f"== {log.name} exit {proc.returncode}: " + (lines[-1] if lines else ""))
    print(table(merged["results"]))


if __name__ == "__main__":
    main()
