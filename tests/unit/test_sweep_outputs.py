"""The sweep's outputs: the table, the CSV and the plot, and how the result is picked and labelled."""

from __future__ import annotations

import csv
import io

import pytest

from ptmrec.config import ConfigError, load_config
from ptmrec.sweep import format_sweep, sweep_csv, sweep_plot, validate_space


def summary(select: str) -> dict:
    trials = [{"trial": "a", "params": {"recommender.reg_weight": 0.1, "stage2.adapter.name": "lora"},
               "valid": {"recall@20": 0.30}, "test": {"recall@20": 0.25}, "best_epoch": 4, "epochs_run": 14,
               "wall_s": 125.4},
              {"trial": "b", "params": {"recommender.reg_weight": 0.001}, "valid": {"recall@20": 0.28},
               "test": {"recall@20": 0.27}, "best_epoch": 9},
              {"trial": "c", "params": {"recommender.reg_weight": 1.0}, "valid": {}, "test": {}, "best_epoch": None,
               "error": "no metrics"}]
    best = trials[0] if select == "valid" else trials[1]
    return {"metric": "valid/recall@20", "select": select, "stage": "stage1", "best": best, "trials": trials}


def test_csv_has_a_row_per_trial_and_marks_the_pick():
    rows = list(csv.DictReader(io.StringIO(sweep_csv(summary("valid")))))
    assert [r["trial"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["recommender.reg_weight"] == "0.1" and rows[1]["test/recall@20"] == "0.27"
    assert rows[0]["stage2.adapter.name"] == "lora" and rows[1]["stage2.adapter.name"] == "null"
    assert [r["selected_by_valid"] for r in rows] == ["1", "0", "0"] and rows[2]["valid/recall@20"] == ""
    assert (rows[0]["best_epoch"], rows[0]["epochs_run"], rows[0]["wall_s"]) == ("4", "14", "125.4")
    assert (rows[1]["epochs_run"], rows[2]["best_epoch"]) == ("", "")  # unknown, not zero


def test_the_printed_table_shows_each_trials_epochs_and_wall_time():
    lines = format_sweep(summary("valid")).splitlines()
    assert "4/14" in lines[1] and "125 s" in lines[1] and "9/?" in lines[2]


def test_a_pick_by_test_is_labelled_everywhere():
    text = format_sweep(summary("test"))
    assert "<- best (by test)" in text and "test-set leakage" in text
    assert "leakage" not in format_sweep(summary("valid"))
    assert sweep_plot(summary("test"), "grid").startswith(b"\x89PNG")


def test_a_stage1_sweep_takes_no_stage2_keys(repo):
    path = str(repo / "configs/smoke.yaml")
    sets = ["sweep={stage: stage1, space: {stage2.kt.weight: [0.1]}}"]
    with pytest.raises(ConfigError, match=r"sweep.space.stage2.kt.weight: a stage-1 sweep"):
        validate_space(path, sets, load_config(path, sets))


def test_a_stage2_trial_that_cannot_fit_next_to_its_workers_fails_in_one_line(repo):
    from ptmrec.sweep import check_trial_fits

    base = load_config(str(repo / "configs/amazon-clothing.yaml"), ["stage2.num_workers=1", "ray.cpus_per_worker=2"])
    with pytest.raises(ConfigError, match=r"need 2.25 CPUs and the Ray cluster has 2; lower ray.cpus_per_worker"):
        check_trial_fits(base, 2.0)
    check_trial_fits(base, 3.0)
    check_trial_fits(load_config(str(repo / "configs/amazon-clothing.yaml"), ["ray.cpus_per_worker=1.75"]), 2.0)


def test_under_valid_halves_trials_are_ranked_on_the_half_that_chose_their_epochs(repo, tmp_path):
    import json

    from ptmrec.storage import Storage
    from ptmrec.sweep import _summarise, _trial

    base = load_config(str(repo / "configs/smoke.yaml"), [f"run.uri=file://{tmp_path}", "eval.selection=valid_halves"])
    storage = Storage(base.storage)
    # trial x leads on the whole valid split, y on valid_b, the half stage 2 chose its epochs on
    for name, valid, half in (("x", 0.30, 0.20), ("y", 0.28, 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({
            "valid": {"recall@20": valid}, "valid_b": {"recall@20": half}, "test": {"recall@20": 0.1},
            "best_epoch": 1, "selection_split": "valid_b"}))
    trials = [_trial(n, {"stage2.kt.weight": w}, "s1", storage, f"file://{tmp_path}/{n}") for n, w in (("x", 1.0), ("y", 2.0))]
    summary = _summarise(base, storage, "valid_b/recall@20", trials)
    assert summary["best"]["trial"] == "y" and summary["best"]["chosen_on"] == "valid_b"


def test_under_valid_halves_the_table_csv_and_plot_show_the_half_that_ranked_the_trials():
    # trial x leads on the whole valid split, y on valid_b, the half that chose: y is the pick, read off valid_b
    trials = [{"trial": n, "params": {"stage2.kt.weight": w}, "valid": {"recall@20": v}, "valid_b": {"recall@20": h},
               "test": {"recall@20": 0.1}, "best_epoch": 1, "chosen_on": "valid_b"}
              for n, w, v, h in (("x", 1.0, 0.30, 0.20), ("y", 2.0, 0.28, 0.25))]
    trials.append({"trial": "z", "params": {"stage2.kt.weight": 4.0}, "valid": {}, "test": {}, "best_epoch": None,
                   "error": "no metrics", "stopped": {"after_epoch": 2, "valid_b/recall@20": 0.26, "at_stop": 0.24}})
    s = {"metric": "valid_b/recall@20", "select": "valid", "stage": "stage2", "best": trials[1], "trials": trials}
    rows = list(csv.DictReader(io.StringIO(sweep_csv(s))))
    assert [r["valid_b/recall@20"] for r in rows] == ["0.2", "0.25", ""]
    assert [r["selected_by_valid"] for r in rows] == ["0", "1", "0"]
    header, *lines = format_sweep(s).splitlines()
    assert header.split()[1:7] == ["valid", "recall@20", "valid_b", "recall@20", "test", "recall@20"]
    assert lines[1].split()[:4] == ["y", "0.2800", "0.2500", "0.1000"] and lines[1].endswith("<- best (by valid)")
    assert lines[2].split()[:4] == ["z", "stopped", "-", "-"]
    assert lines[2].endswith("(stopped after epoch 2; best valid_b/recall@20 0.2600)")  # what the scheduler ranked
    assert sweep_plot(s, "halves").startswith(b"\x89PNG")
    assert "valid_b" not in sweep_csv(summary("valid")) and "valid_b" not in format_sweep(summary("valid"))
