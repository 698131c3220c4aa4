"""The run report: stage 1 vs stage 2 (and the comparison modes) side by side, as Markdown and a plot.

Reads every `metrics.json` under the run URI (stage1/, stage2/, stage2-<mode>/) and writes
`<run uri>/report.md` and `<run uri>/report.png` (test metrics per stage, and the valid curves).
"""

from __future__ import annotations

import io
import math
import logging
import statistics
from typing import Optional

from ptmrec.stages.common import read_metrics
from ptmrec.storage import Storage, StorageError
from ptmrec.uris import join

log = logging.getLogger(__name__)

STAGE_DIRS = ("stage1", "stage2-joint", "stage2-no_kt", "stage2", "stage2-full_finetune")


def label(m: dict) -> str:
    if "shown_as" in m:  # a run of another compare, joined by with_other_runs
        return m["shown_as"]
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


def with_other_runs(per_seed: dict[int, list[dict]], other: dict[int, list[dict]], name: str) -> dict[int, list[dict]]:
    """`per_seed` with the stage-2 runs of another compare over the same seeds added, shown as "<label> @ name"
    (e.g. another stage-2 setting), so that the tables pair them by seed. Raises ValueError unless each seed of
    both started from a stage 1 trained with the same settings: otherwise a paired delta would mix in the start."""
    starts = other_starts(other, list(per_seed), name)
    joined = {}
    for seed, rows in per_seed.items():
        if rows and rows[0]["stage"] == "stage1" and rows[0].get("settings") != starts[seed].get("settings"):
            raise ValueError(f"{name}-seed{seed}: stage 1 was trained with other settings than this run's; "
                             f"pairing stage-2 runs by seed needs the same frozen start")
        joined[seed] = rows + [{**m, "shown_as": f"{label(m)} @ {name}"} for m in other[seed][1:]]
    return joined


def other_starts(other: dict[int, list[dict]], seeds: list[int], name: str) -> dict[int, dict]:
    """seed -> the stage 1 of another compare's run of that seed; ValueError naming the first seed without one
    (`compare --against` calls it before any training, so a wrong URI fails at once)."""
    missing = [seed for seed in seeds if not other.get(seed) or other[seed][0]["stage"] != "stage1"]
    if missing:
        raise ValueError(f"{name}-seed{missing[0]}: no finished stage 1 to pair with")
    return {seed: other[seed][0] for seed in seeds}


def table(rows: list[dict], ks: list[int], split: str = "test") -> str:
    """A Markdown table of the rows' metrics on `split`, with the change against the first row (stage 1)."""
    cols = _metric_cols(ks)
    head = ["stage", *cols, "vs frozen R@20" if "recall@20" in cols else "vs frozen", "trainable (encoder)",
            "wall s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0][split].get("recall@20") if rows and rows[0]["stage"] == "stage1" else None
    for m in rows:
        r20 = m[split].get("recall@20")
        change = f"{100 * (r20 / base - 1):+.1f} %" if base and r20 is not None and m is not rows[0] else "—"
        trainable = encoder_trained(m) or "0 (frozen)"
        peak = m.get("peak_memory_mb")
        lines.append("| " + " | ".join([label(m), *(f"{m[split].get(c, float('nan')):.4f}" for c in cols), change,
                                         trainable, f"{m['wall_s']:.0f}", f"{peak:.0f}" if peak else "—"]) + " |")
    return "\n".join(lines)


def encoder_trained(m: dict) -> Optional[str]:
    """The encoder weights a stage trained, "count (share %)"; None for a frozen encoder."""
    share = m.get("encoder_trainable_share")
    return f"{m.get('encoder_trainable_params', 0):,} ({100 * share:.3f} %)" if share is not None else None


def _cost_cells(runs: list[dict]) -> list[str]:
    """What a row's runs cost: the encoder's trained share, the mean wall time, the largest peak memory."""
    trained = encoder_trained(runs[0]) or "0"
    walls = [m["wall_s"] for m in runs if "wall_s" in m]
    peaks = [m["peak_memory_mb"] for m in runs if m.get("peak_memory_mb")]
    return [trained, f"{statistics.mean(walls):.0f} s" if walls else "—", f"{max(peaks):.0f}" if peaks else "—"]


def write_report(storage: Storage, run_uri: str, ks: list[int], metric: str = "recall@20") -> Optional[str]:
    """Write report.md and report.png under the run URI; returns the Markdown (None if no stage finished)."""
    rows = collect(storage, run_uri)
    if not rows:
        return None
    protocols = sorted({m.get("eval_protocol", "full ranking") for m in rows})
    md = [f"# PTMRec run report: {rows[0]['dataset']}", "",
          f"Test metrics at the best **valid** {metric} epoch of each stage (selection never uses test).",
          *([f"Evaluated by {' / '.join(protocols)}: not comparable with full-ranking numbers."]
            if protocols != ["full ranking"] else []), "",
          table(rows, ks, "test"), "", "Valid metrics at the same epochs:", "", table(rows, ks, "valid"), "",
          "![curves](report.png)", ""]
    text = "\n".join(md)
    storage.write_text(join(run_uri, "report.md"), text)
    storage.write_bytes(join(run_uri, "report.png"), plot(rows, metric))
    return text


def plot(rows: list[dict], metric: str) -> bytes:
    """Four panels (PNG bytes): each stage's change against frozen on every test metric; stage 1's valid
    curve; stage 2's valid curves on their own (zoomed) axis with frozen as a line; stage 2's loss terms.
    Best epochs are starred; the title names dataset, model, adapter and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((changes, curve1), (curves2, losses)) = plt.subplots(2, 2, figsize=(12.5, 8.2))
    frozen = rows[0] if rows and rows[0]["stage"] == "stage1" else None
    later = [m for m in rows if m is not frozen]
    _plot_changes(changes, frozen, later)
    if frozen is not None:
        _plot_curve(curve1, frozen, metric, label(frozen), color="#555555")
        curve1.set_title(f"stage 1: valid {metric} (★ best epoch)", fontsize=10)
    for i, m in enumerate(later):
        _plot_curve(curves2, m, metric, label(m), color=f"C{i}")
        for key, style in (("bpr", "-"), ("kt_", "--")):
            for name in sorted({k for h in m.get("history", []) for k in h if k.startswith(f"loss/{key}")}):
                points = [(h["epoch"], h[name]) for h in m["history"] if name in h]
                losses.plot(*zip(*points), style, color=f"C{i}", marker=".", label=f"{m.get('mode')}: {name[5:]}")
    if frozen is not None and frozen["valid"].get(metric) is not None:
        curves2.axhline(frozen["valid"][metric], color="#555555", ls=":", label="frozen (stage 1's best)")
    curves2.set_title(f"stage 2: valid {metric} per epoch (0 = the starting point)", fontsize=10)
    losses.set_title("stage 2: loss terms per epoch", fontsize=10)
    losses.set_xlabel("epoch")
    for ax in (curve1, curves2, losses):
        if ax.has_data():
            ax.legend(fontsize=7)
    first = rows[0] if rows else {}
    adapters = sorted({m.get("adapter") for m in later if m.get("adapter")})
    fig.suptitle(f"{first.get('dataset', '?')}: {first.get('model', '?')}, adapter {', '.join(adapters) or '-'}, "
                 f"seed {first.get('seed', '?')}", fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _plot_changes(ax, frozen: Optional[dict], later: list[dict]) -> None:
    """Grouped bars: Δ % of each later stage against frozen on each test metric, labelled."""
    names = [k for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20") if frozen and k in frozen["test"]]
    width = 0.8 / max(len(later), 1)
    for i, m in enumerate(later):
        deltas = [100 * (m["test"].get(k, float("nan")) / frozen["test"][k] - 1) for k in names]
        xs = [j + (i - (len(later) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, deltas, width, color=f"C{i}", label=label(m))
        for x, d in zip(xs, deltas):
            ax.text(x, d, f"{d:+.2f}", ha="center", va="bottom" if d >= 0 else "top", fontsize=7)
    ax.axhline(0, color="#555555", lw=0.8)
    ax.set_xticks(range(len(names)), [f"test {k}" for k in names], fontsize=8)
    ax.set_ylabel("Δ % against frozen (stage 1)")
    ax.set_title("change against the frozen encoders, best-valid epoch of each stage", fontsize=10)
    if later:
        ax.legend(fontsize=7)


def _plot_curve(ax, m: dict, metric: str, name: str, color: str) -> None:
    points = [(h["epoch"], h[f"valid/{metric}"]) for h in m.get("history", []) if f"valid/{metric}" in h]
    if not points:
        return
    ax.plot(*zip(*points), marker=".", color=color, label=name)
    best = dict(points).get(m.get("best_epoch"))
    if best is not None:
        ax.plot([m["best_epoch"]], [best], marker="*", markersize=14, color=color)
    ax.set_xlabel("epoch")


def paired_t_pvalue(differences: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (None under two pairs; 0 when
    every difference is the same non-zero value, 1 when all are 0)."""
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
    paired t-test's p-value and on how many seeds the stage is higher.

    `per_seed`: seed -> that seed's `collect()` rows (stage 1 first).
    """
    cols = _metric_cols(ks)
    head = ["stage", "seeds", *(f"test {c}" for c in cols), f"valid {metric}",
            *(f"Δ {_short(c)} vs frozen" for c in cols if c.startswith("recall")),
            "encoder trained", "wall (mean)", "peak MB (max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    frozen = {s: rows[0] for s, rows in per_seed.items() if rows and rows[0]["stage"] == "stage1"}
    for name in _labels(per_seed):
        runs = _runs_of(per_seed, name)
        cells = [name, ",".join(map(str, runs))]
        cells += [_mean_std([m["test"][c] for m in runs.values() if c in m["test"]], ".4f") for c in cols]
        cells.append(_mean_std([m["valid"][metric] for m in runs.values() if metric in m["valid"]], ".4f"))
        for c in (c for c in cols if c.startswith("recall")):
            cells.append(_paired_cell([(m["test"][c], frozen[s]["test"][c]) for s, m in runs.items()
                                       if s in frozen and m is not frozen[s] and frozen[s]["test"].get(c)]))
        cells += _cost_cells(list(runs.values()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mode_table(per_seed: dict[int, list[dict]], ks: list[int], metric: str = "recall@20") -> str:
    """`ptmrec` against each other stage-2 mode of the same seeds (no_kt isolates the knowledge transfer,
    joint the two-stage schedule) and each run joined by `with_other_runs`: paired changes on test recall and
    on valid `metric`. Empty when the runs hold `ptmrec` and nothing else of stage 2."""
    stage2 = {name: _runs_of(per_seed, name) for name in _labels(per_seed)}
    stage2 = {name: runs for name, runs in stage2.items() if next(iter(runs.values()))["stage"] != "stage1"}
    ours = next((name for name, runs in stage2.items() if next(iter(runs.values())).get("mode", "ptmrec") == "ptmrec"
                 and "shown_as" not in next(iter(runs.values()))), None)
    if ours is None or len(stage2) < 2:
        return ""
    cols = [c for c in _metric_cols(ks) if c.startswith("recall")]
    head = [f"{ours} against", "seeds", *(f"Δ test {_short(c)}" for c in cols), f"Δ valid {_short(metric)}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mine = stage2.pop(ours)
    for name, runs in stage2.items():
        theirs = {s: m for s, m in runs.items() if s in mine}
        cells = [name, ",".join(map(str, theirs))]
        cells += [_paired_cell([(mine[s]["test"][c], m["test"][c]) for s, m in theirs.items() if m["test"].get(c)])
                  for c in cols]
        cells.append(_paired_cell([(mine[s]["valid"][metric], m["valid"][metric]) for s, m in theirs.items()
                                   if m["valid"].get(metric)]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_cols(ks: list[int]) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks if k <= 20] or [f"recall@{ks[0]}"]


def _short(metric: str) -> str:
    """recall@20 -> R@20, ndcg@10 -> N@10."""
    name, k = metric.split("@")
    return f"{_SHORT.get(name, name)}@{k}"


_SHORT = {"recall": "R", "ndcg": "N"}


def _labels(per_seed: dict[int, list[dict]]) -> list[str]:
    labels: list[str] = []
    for rows in per_seed.values():
        labels += [label(m) for m in rows if label(m) not in labels]
    return labels


def _runs_of(per_seed: dict[int, list[dict]], name: str) -> dict[int, dict]:
    """seed -> that seed's run labelled `name`, for the seeds that have one."""
    return {s: next(m for m in rows if label(m) == name) for s, rows in per_seed.items()
            if any(label(m) == name for m in rows)}


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    # A spread has no sign: "+15.0 ± 7.1", not "± +7.1", whatever sign the mean's format shows.
    return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt.lstrip('+'))}"


def _paired_cell(pairs: list[tuple[float, float]]) -> str:
    """(ours, theirs) per seed -> "mean ± std % (p), higher on k of n": relative changes, the paired t-test on
    the differences, and the seeds on which ours is strictly higher."""
    if not pairs:
        return "—"
    deltas = [100 * (ours / theirs - 1) for ours, theirs in pairs]
    p = paired_t_pvalue([ours - theirs for ours, theirs in pairs])
    higher = sum(ours > theirs for ours, theirs in pairs)
    return f"{_mean_std(deltas, '+.1f')} %{_p_value(p)}, higher on {higher} of {len(pairs)}"


def _p_value(p: Optional[float]) -> str:
    return "" if p is None else " (p < 0.001)" if p < 0.001 else f" (p {p:.3f})"


def seeds_report(run_name: str, per_seed: dict[int, list[dict]], ks: list[int], metric: str = "recall@20") -> str:
    """`compare --seeds`' Markdown: the mean ± std table over the seeds, then the seeds one by one."""
    return (f"# {run_name}: seeds {', '.join(map(str, per_seed))}\n\nTest metrics at each run's best valid {metric} "
            f"epoch, mean ± std over the seeds; Δ = change against the same seed's frozen stage 1, with the "
            f"two-sided paired t-test's p-value on the differences.\n\n{seed_table(per_seed, ks, metric)}\n\n"
            f"{_mode_section(per_seed, ks, metric)}"
            f"Seed by seed (a stage 2 whose adapted epochs were all below its start on valid keeps the start; the "
            f"last columns show its best adapted epoch anyway, and how far stage 1's choice leads its neighbours; under "
            f"eval.selection: valid_halves both read the half that chose):\n\n{seed_detail(per_seed, ks, metric)}\n")


def _mode_section(per_seed: dict[int, list[dict]], ks: list[int], metric: str) -> str:
    pairs = mode_table(per_seed, ks, metric)
    return (f"The stage-2 modes against each other, paired by seed (the same frozen start):\n\n{pairs}\n\n"
            if pairs else "")


def seed_detail(per_seed: dict[int, list[dict]], ks: list[int], metric: str = "recall@20") -> str:
    """One row per seed and stage: the chosen epoch, valid `metric`, test metrics and the change against the
    seed's frozen stage 1. A stage 2 that kept its starting point (no adapted epoch beat it on valid) also
    shows its best adapted epoch, which the seed's result does not use, so a reader sees how close it came."""
    cols = _metric_cols(ks)
    first = cols[0]
    head = ["seed", "stage", "chosen epoch", f"valid {metric}", *(f"test {c}" for c in cols),
            f"Δ {first} vs frozen", f"best adapted epoch: valid {metric} (test {first})",
            f"stage 1: chosen epoch's lead over its neighbours, valid (test) {metric}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, rows in per_seed.items():
        frozen = rows[0] if rows and rows[0]["stage"] == "stage1" else None
        for m in rows:
            base = frozen["test"].get(first) if frozen and m is not frozen else None
            change = f"{100 * (m['test'][first] / base - 1):+.1f} %" if base else "—"
            cells = [str(seed), label(m), _chosen(m), f"{m['valid'].get(metric, float('nan')):.4f}",
                     *(f"{m['test'].get(c, float('nan')):.4f}" for c in cols), change,
                     *((_best_adapted(m, metric, first), "—") if m["stage"] != "stage1" else ("—", _lead(m, metric)))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _chosen(m: dict) -> str:
    epoch = m.get("best_epoch")
    if epoch is None:
        return "—"
    return "0 (the start)" if m["stage"] != "stage1" and epoch == 0 else str(epoch)


def _best_adapted(m: dict, metric: str, test_metric: str) -> str:
    """The adapted epoch best on the split that chose the stage's epoch (valid, or a half: valid_halves)."""
    chooser = f"{m.get('selection_split', 'valid')}/{metric}"
    adapted = [h for h in m.get("history", []) if h.get("epoch", 0) > 0 and chooser in h]
    if not adapted:
        return "—"
    best = max(adapted, key=lambda h: h[chooser])
    test = best.get(f"test/{test_metric}")
    return (f"{best['epoch']}: {best[chooser]:.4f}" + (f" ({test:.4f})" if test is not None else ""))


def _lead(m: dict, metric: str, each_side: int = 5) -> str:
    """How far the chosen epoch's valid `metric` stands above the mean of the evaluations around it (up to
    `each_side` on each side), with the same for test. Choosing the best of many noisy evaluations flatters
    valid; test, which played no part, shows how much of the lead is luck. Under valid_halves: the choosing half."""
    chooser = m.get("selection_split", "valid")
    evals = [h for h in m.get("history", []) if f"{chooser}/{metric}" in h and f"test/{metric}" in h]
    at = next((i for i, h in enumerate(evals) if h["epoch"] == m.get("best_epoch")), None)
    around = evals[max(0, at - each_side):at] + evals[at + 1:at + 1 + each_side] if at is not None else []
    if len(around) < 2:
        return "—"
    lead = {split: evals[at][f"{split}/{metric}"] - sum(h[f"{split}/{metric}"] for h in around) / len(around)
            for split in (chooser, "test")}
    return f"{lead[chooser]:+.4f} ({lead['test']:+.4f})"
