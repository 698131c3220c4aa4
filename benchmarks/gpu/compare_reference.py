"""Does the GPU path compute what the CPU path computes? Compares a run's stage-1 and stage-2 metrics.json
with those of the same command run on the CPU (same config, same seed), metric by metric.

    python3 benchmarks/gpu/compare_reference.py RUN_DIR REFERENCE.json [--tolerance 0.05]
    python3 benchmarks/gpu/compare_reference.py RUN_DIR REFERENCE.json --write   # record RUN_DIR as the reference

The GPU run differs by bf16 autocast in the encoders and by kernel order, so exact equality is not
expected; the check is that every compared metric is within `--tolerance` (relative) of the CPU run's,
the size of seed-to-seed noise on MovieLens-100K.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = ("stage1", "stage2")
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def summary(run_dir: Path) -> dict:
    out = {}
    for stage in STAGES:
        m = json.loads((run_dir / stage / "metrics.json").read_text())
        out[stage] = {split: {k: m[split][k] for k in METRICS} for split in ("valid", "test")}
        out[stage]["best_epoch"] = m["best_epoch"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--write", action="store_true", help="write RUN_DIR's metrics as the reference")
    args = parser.parse_args()
    try:
        ours = summary(args.run_dir)
    except (OSError, KeyError) as exc:
        print(f"{args.run_dir}: no finished stage 1 and stage 2 to compare ({exc})")
        return 1
    if args.write:
        args.reference.write_text(json.dumps(ours, indent=2) + "\n")
        print(f"wrote {args.reference}")
        return 0
    reference = json.loads(args.reference.read_text())
    worst = 0.0
    print(f"{'stage':<8}{'split':<7}{'metric':<11}{'reference':>10}{'this run':>10}{'rel. diff':>11}")
    for stage in STAGES:
        for split in ("valid", "test"):
            for k in METRICS:
                ref, got = reference[stage][split][k], ours[stage][split][k]
                rel = abs(got - ref) / max(abs(ref), 1e-12)
                worst = max(worst, rel)
                print(f"{stage:<8}{split:<7}{k:<11}{ref:>10.4f}{got:>10.4f}{100 * rel:>10.1f}%")
        print(f"{stage:<8}best epoch: reference {reference[stage]['best_epoch']}, this run {ours[stage]['best_epoch']}")
    verdict = "MATCH" if worst <= args.tolerance else "DIFFERS"
    print(f"largest relative difference {100 * worst:.1f} % (tolerance {100 * args.tolerance:.0f} %): {verdict}")
    return 0 if verdict == "MATCH" else 1


if __name__ == "__main__":
    sys.exit(main())
