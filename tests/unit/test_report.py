from ptmrec.report import seed_table


def _metrics(stage, r10, r20, valid, mode=None):
    m = {"stage": stage, "model": "vbpr", "adapter": "prompt" if stage == "stage2" else "none",
         "test": {"recall@10": r10, "recall@20": r20, "ndcg@10": r10 / 2, "ndcg@20": r20 / 2},
         "valid": {"recall@20": valid}}
    if mode:
        m["mode"] = mode
    return m


def test_seed_table_gives_mean_std_and_paired_deltas():
    per_seed = {1: [_metrics("stage1", 0.10, 0.20, 0.21), _metrics("stage2", 0.11, 0.21, 0.22, "ptmrec")],
                2: [_metrics("stage1", 0.20, 0.30, 0.31), _metrics("stage2", 0.24, 0.30, 0.32, "ptmrec")]}
    text = seed_table(per_seed, ks=[10, 20], metric="recall@20")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    frozen, ours = rows["frozen (vbpr)"], rows["ptmrec (vbpr, prompt)"]
    assert "| 1,2 |" in frozen and "0.1500 ± 0.0707" in frozen  # test R@10 over the two seeds
    # Paired: +10 % on seed 1 and +20 % on seed 2 (R@10), not the change of the means (+16.7 %).
    assert "+15.0 ± +7.1 %" in ours
    assert ours.count(" — ") == 0 and frozen.count("—") == 2  # the frozen rows have no delta against themselves
