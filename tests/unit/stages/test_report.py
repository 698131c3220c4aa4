import pytest

from ptmrec.stages.report import seed_table


def _metrics(stage, r10, r20, valid, mode=None):
    m = {"stage": stage, "model": "vbpr", "adapter": "prompt" if stage == "stage2" else "none",
         "test": {"recall@10": r10, "recall@20": r20, "ndcg@10": r10 / 2, "ndcg@20": r20 / 2},
         "valid": {"recall@20": valid}}
    if mode:
        m["mode"] = mode
        m.update(encoder_trainable_params=4096, encoder_trainable_share=0.001)
    m.update(wall_s=400 * r10 if mode else 1000 * r10, peak_memory_mb=2000 + 5000 * r10 if mode else 900)
    return m


def test_seed_table_gives_mean_std_and_paired_deltas():
    per_seed = {1: [_metrics("stage1", 0.10, 0.20, 0.21), _metrics("stage2", 0.11, 0.21, 0.22, "ptmrec")],
                2: [_metrics("stage1", 0.20, 0.30, 0.31), _metrics("stage2", 0.24, 0.30, 0.32, "ptmrec")]}
    text = seed_table(per_seed, ks=[10, 20], metric="recall@20")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    frozen, ours = rows["frozen (vbpr)"], rows["ptmrec (vbpr, prompt)"]
    assert "| 1,2 |" in frozen and "0.1500 ± 0.0707" in frozen  # test R@10 over the two seeds
    # Paired: +10 % on seed 1 and +20 % on seed 2 (R@10), not the change of the means (+16.7 %).
    assert "+15.0 ± 7.1 %" in ours
    assert ours.count(" — ") == 0 and frozen.count("—") == 2  # the frozen rows have no delta against themselves
    # what the runs cost: the trained share of the encoder, the mean wall time, the largest peak
    assert frozen.endswith("| 0 | 150 s | 900 |") and ours.endswith("| 4,096 (0.100 %) | 70 s | 3200 |")
    # paired t-test on the differences (0.01, 0.04): t = 1.667 with 1 df, p = 1 - 2 atan(t) / π
    assert "+15.0 ± 7.1 % (p 0.344)" in ours


def test_paired_t_test_p_values():
    from ptmrec.stages.report import paired_t_pvalue

    # reference values from the t distribution (two-sided): t = 2.776 with 4 df is p = 0.05
    assert paired_t_pvalue([1.0, 2.0, 3.0, 2.5, 1.5]) == pytest.approx(0.004813, abs=1e-6)
    assert paired_t_pvalue([0.1, -0.2, 0.3, 0.05, -0.01]) == pytest.approx(0.585139, abs=1e-6)
    noise = (-0.1, 0.1, 0.0, 0.0, 0.0)  # sd (0.02 / 4) ** 0.5; the mean below makes t = 2.776
    mean = 2.776 * (0.02 / 4) ** 0.5 / 5 ** 0.5
    assert paired_t_pvalue([mean + e for e in noise]) == pytest.approx(0.05, abs=1e-4)
    assert paired_t_pvalue([0.3]) is None and paired_t_pvalue([0.0, 0.0]) == 1.0


def test_the_report_plot_draws_every_stage():
    from ptmrec.stages.report import plot

    frozen = {**_metrics("stage1", 0.10, 0.20, 0.21), "dataset": "toy", "seed": 3, "best_epoch": 2,
              "history": [{"epoch": e, "valid/recall@20": 0.1 * e} for e in (1, 2, 3)]}
    ours = {**_metrics("stage2", 0.11, 0.21, 0.22, "ptmrec"), "best_epoch": 1,
            "history": [{"epoch": 0, "valid/recall@20": 0.2}, {"epoch": 1, "valid/recall@20": 0.22,
                                                                  "loss/bpr": 0.5, "loss/kt_text": 0.1}]}
    png = plot([frozen, ours], "recall@20")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_seed_detail_shows_a_kept_start_and_the_adapted_epoch_it_passed_over():
    from ptmrec.stages.report import seed_detail

    # stage 1 chose epoch 40 on valid: it leads its neighbours by 0.02 there, and trails them by 0.01 on test
    frozen = {**_metrics("stage1", 0.10, 0.20, 0.21), "best_epoch": 40,
              "history": [{"epoch": e, "valid/recall@20": v, "test/recall@20": t}
                          for e, v, t in ((30, 0.18, 0.21), (35, 0.20, 0.21), (40, 0.21, 0.20), (45, 0.19, 0.21))]}
    kept = {**_metrics("stage2", 0.10, 0.20, 0.21, "ptmrec"), "best_epoch": 0,
            "history": [{"epoch": 0, "valid/recall@20": 0.21, "test/recall@10": 0.10},
                        {"epoch": 1, "valid/recall@20": 0.205, "test/recall@10": 0.12},
                        {"epoch": 2, "valid/recall@20": 0.19, "test/recall@10": 0.13}]}
    moved = {**_metrics("stage2", 0.22, 0.31, 0.33, "ptmrec"), "best_epoch": 1,
             "history": [{"epoch": 0, "valid/recall@20": 0.31}, {"epoch": 1, "valid/recall@20": 0.33}]}
    text = seed_detail({1: [frozen, kept], 2: [{**_metrics("stage1", 0.20, 0.30, 0.31), "best_epoch": 9}, moved]},
                       ks=[10, 20], metric="recall@20")
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [(r[0].strip("| "), r[2]) for r in rows] == [("1", "40"), ("1", "0 (the start)"), ("2", "9"), ("2", "1")]
    assert rows[1][-3] == "+0.0 %" and rows[1][-2] == "1: 0.2050 (0.1200)"  # the better of epochs 1, 2
    assert rows[3][-3] == "+10.0 %" and rows[0][-2] == "—"
    assert rows[0][-1].strip(" |") == "+0.0200 (-0.0100)" and rows[2][-1].strip(" |") == "—"  # no history: no lead
    assert rows[1][-1].strip(" |") == "—"  # stage 2's few epochs climb: their lead is training, not luck


def test_mode_table_pairs_ptmrec_with_each_other_mode_by_seed():
    from ptmrec.stages.report import mode_table, seeds_report

    per_seed = {1: [_metrics("stage1", 0.10, 0.20, 0.21), _metrics("stage2", 0.11, 0.22, 0.24, "ptmrec"),
                    _metrics("stage2", 0.10, 0.20, 0.21, "no_kt")],
                2: [_metrics("stage1", 0.20, 0.30, 0.31), _metrics("stage2", 0.24, 0.33, 0.32, "ptmrec"),
                    _metrics("stage2", 0.20, 0.33, 0.33, "no_kt")],
                3: [_metrics("stage1", 0.20, 0.30, 0.31), _metrics("stage2", 0.21, 0.30, 0.32, "ptmrec")]}
    text = mode_table(per_seed, ks=[10, 20], metric="recall@20")
    head, _, row = text.splitlines()
    assert head.startswith("| ptmrec (vbpr, prompt) against | seeds | Δ test R@10 | Δ test R@20 | Δ valid R@20 |")
    cells = row.strip("| ").split(" | ")
    assert cells[:2] == ["no_kt (vbpr, prompt)", "1,2"]  # seed 3 has no no_kt run: not paired
    assert cells[2] == "+15.0 ± 7.1 % (p 0.344), higher on 2 of 2"  # +20 % and +10 % on R@10
    assert cells[3].endswith("higher on 1 of 2") and cells[4].endswith("higher on 1 of 2")  # a tie is not higher
    # the frozen comparison counts the seeds above frozen too; the report carries the table
    assert "higher on 3 of 3" in seeds_report("toy", per_seed, [10, 20])
    assert "against each other" in seeds_report("toy", per_seed, [10, 20])
    assert mode_table({s: rows[:2] for s, rows in per_seed.items()}, ks=[10, 20]) == ""  # ptmrec alone


def test_runs_of_another_compare_join_the_tables_paired_by_seed_from_the_same_start():
    from ptmrec.stages.report import mode_table, seed_table, with_other_runs

    def start(r10, settings="abc"):
        return {**_metrics("stage1", r10, 0.20, 0.21), "settings": settings}

    ours = {1: [start(0.10), _metrics("stage2", 0.12, 0.22, 0.24, "ptmrec")],
            2: [start(0.20), _metrics("stage2", 0.22, 0.30, 0.32, "ptmrec")]}
    other = {1: [start(0.10), _metrics("stage2", 0.10, 0.21, 0.22, "ptmrec")],
             2: [start(0.20), _metrics("stage2", 0.20, 0.31, 0.33, "ptmrec")]}
    joined = with_other_runs(ours, other, "hm-halves")
    assert [len(rows) for rows in joined.values()] == [3, 3] and [len(rows) for rows in ours.values()] == [2, 2]
    rows = {line.split(" | ")[0].strip("| ") for line in seed_table(joined, ks=[10, 20]).splitlines()[2:]}
    assert rows == {"frozen (vbpr)", "ptmrec (vbpr, prompt)", "ptmrec (vbpr, prompt) @ hm-halves"}
    head, _, row = mode_table(joined, ks=[10, 20]).splitlines()
    assert head.startswith("| ptmrec (vbpr, prompt) against |")  # this run's ptmrec, not the joined one
    assert row.startswith("| ptmrec (vbpr, prompt) @ hm-halves | 1,2 | +15.0 ± 7.1 %")  # +20 % and +10 % on R@10
    other[2][0] = start(0.20, settings="other")  # seed 2's stage 1 trained otherwise: not the same start
    with pytest.raises(ValueError, match="hm-halves-seed2: stage 1 was trained with other settings"):
        with_other_runs(ours, other, "hm-halves")
    with pytest.raises(ValueError, match="hm-halves-seed1: no finished stage 1"):
        with_other_runs(ours, {2: other[2]}, "hm-halves")
