"""The run report: stage 1 vs stage 2 (and the comparison modes) side by side, as Markdown and a plot.

Reads every `metrics.json` under the run URI (stage1/, stage2/, stage2-<mode>/) and writes
`<run uri>/report.md` and `<run uri>/report.png` (test metrics per stage, and the valid curves).
"""

from __future__ import annotations

import io
import math
import logging
from typing import Optional

from ptmrec.stages.common import read_metrics
from ptmrec.storage import Storage, StorageError, join

log = logging.getLogger(__name__)

STAGE_DIRS = ("stage1", "stage2-joint", "stage2-no_kt", "stage2", "stage2-full_finetune")


def label(m: dict) -> str:
    if m["stage"] == "stage1":
        return f"frozen ({m['model']})"
    return f"{m.get('mode', 'ptmrec')} ({m['model']}, {m['adapter']})"


def collect(storage: Storage, run_uri: str) -> list[dict]:
    """The metrics of every finished stage of the run, stage 1 first."""
    out = []
    for name in STAGE_DIRS:
        try:
            out.append(read_metrics(storage, join(run_uri, name)))
        except StorageError:
            continue
    return out


def table(rows: list[dict], ks: list[int], split: str = "test") -> str:
    """A Markdown table of the rows' metrics on `split`, with the change against the first row (stage 1)."""
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks if k <= 20] or [f"recall@{ks[0]}"]
    head = ["stage", *cols, "vs frozen R@20" if "recall@20" in cols else "vs frozen", "trainable (encoder)",
            "wall s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0][split].get("recall@20") if rows and rows[0]["stage"] == "stage1" else None
    for m in rows:
        r20 = m[split].get("recall@20")
        change = f"{100 * (r20 / base - 1):+.1f} %" if base and r20 is not None and m is not rows[0] else "—"
        share = m.get("encoder_trainable_share")
        trainable = f"{m.get('encoder_trainable_params', 0):,} ({100 * share:.3f} %)" if share is not None else "0 (frozen)"
        peak = m.get("peak_memory_mb")
        lines.append("| " + " | ".join([label(m), *(f"{m[split].get(c, float('nan')):.4f}" for c in cols), change,
                                         trainable, f"{m['wall_s']:.0f}", f"{peak:.0f}" if peak else "—"]) + " |")
    return "\n".join(lines)


def write_report(storage: Storage, run_uri: str, ks: list[int], metric: str = "recall@20") -> Optional[str]:
    """Write report.md and report.png under the run URI; returns the Markdown (None if no stage finished)."""
    rows = collect(storage, run_uri)
    if not rows:
        return None
    md = [f"# PTMRec run report: {rows[0]['dataset']}", "",
          f"Test metrics at the best **valid** {metric} epoch of each stage (selection never uses test).", "",
          table(rows, ks, "test"), "", "Valid metrics at the same epochs:", "", table(rows, ks, "valid"), "",
          "![curves](report.png)", ""]
    text = "\n".join(md)
    storage.write_text(join(run_uri, "report.md"), text)
    storage.write_bytes(join(run_uri, "report.png"), plot(rows, metric))
    return text


def plot(rows: list[dict], metric: str) -> bytes:
    """Bars of test metric per stage, and the valid metric per epoch of each stage (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [label(m) for m in rows]
    values = [m["test"].get(metric, 0.0) for m in rows]
    bars.bar(range(len(rows)), values, color=["#888888"] + ["#3b75af"] * (len(rows) - 1))
    bars.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel(f"test {metric}")
    bars.set_title("best-valid checkpoint of each stage")
    for i, v in enumerate(values):
        bars.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    # Stage-2 curves start where stage 1's best epoch left off: that is the model they continue from.
    offset = rows[0].get("best_epoch", 0) if rows and rows[0]["stage"] == "stage1" else 0
    for m, name in zip(rows, names):
        hist = [h for h in m.get("history", []) if f"valid/{metric}" in h]
        shift = offset if m["stage"] != "stage1" and m.get("mode") != "joint" else 0
        if hist:
            curves.plot([h["epoch"] + shift for h in hist], [h[f"valid/{metric}"] for h in hist], marker=".", label=name)
    curves.set_xlabel("epoch (stage-2 epochs counted on from stage 1's best)")
    curves.set_ylabel(f"valid {metric}")
    curves.set_title("training curves")
    curves.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def paired_t_pvalue(differences: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (None under two pairs; 0 when
    every difference is the same non-zero value, 1 when all are 0)."""
    import statistics

    n = len(differences)
    if n < 2:
        return None
    mean, sd = statistics.mean(differences), statistics.stdev(differences)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t, df = mean / (sd / math.sqrt(n)), n - 1
    return _regularized_beta(df / (df + t * t), df / 2, 0.5)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), evaluated on the side where it converges fast."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-13:
            break
    return math.exp(log_front) * h / a


def seed_table(per_seed: dict[int, list[dict]], ks: list[int], metric: str = "recall@20") -> str:
    """One row per stage over several seeds' runs: test metrics as mean ± std, valid `metric`, and the
    change against the frozen stage 1 of the same seed (paired), as mean ± std over the seeds with the
    paired t-test's p-value.

    `per_seed`: seed -> that seed's `collect()` rows (stage 1 first).
    """
    import statistics

    def mean_std(values: list[float], fmt: str) -> str:
        if not values:
            return "—"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt)}"

    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks if k <= 20] or [f"recall@{ks[0]}"]
    short = {"recall": "R", "ndcg": "N"}
    head = ["stage", "seeds", *(f"test {c}" for c in cols), f"valid {metric}",
            *(f"Δ {short[c.split('@')[0]]}@{c.split('@')[1]} vs frozen" for c in cols if c.startswith("recall"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels: list[str] = []
    for rows in per_seed.values():
        labels += [label(m) for m in rows if label(m) not in labels]
    for name in labels:
        runs = {s: next(m for m in rows if label(m) == name) for s, rows in per_seed.items()
                if any(label(m) == name for m in rows)}
        frozen = {s: rows[0] for s, rows in per_seed.items() if rows and rows[0]["stage"] == "stage1"}
        cells = [name, ",".join(map(str, runs))]
        cells += [mean_std([m["test"][c] for m in runs.values() if c in m["test"]], ".4f") for c in cols]
        cells.append(mean_std([m["valid"][metric] for m in runs.values() if metric in m["valid"]], ".4f"))
        for c in (c for c in cols if c.startswith("recall")):
            paired = [(m["test"][c], frozen[s]["test"][c]) for s, m in runs.items()
                      if s in frozen and m is not frozen[s] and frozen[s]["test"].get(c)]
            deltas = [100 * (ours / base - 1) for ours, base in paired]
            p = paired_t_pvalue([ours - base for ours, base in paired])
            cells.append(mean_std(deltas, "+.1f") + " %" + (f" (p {p:.3f})" if p is not None else "") if deltas else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
