"""`ptmrec compare --seeds` for real: per seed stage 1 and stage 2, the table over seeds and the seeds one by
one; a second call reuses every finished stage, a changed stage-2 setting trains stage 2 again."""

import pytest

from tests.integration.conftest import copy_run, ptmrec

pytestmark = pytest.mark.slow


def test_compare_over_seeds_writes_both_tables_and_reuses_what_matches(repo, smoke_data, smoke_stage1, tmp_path):
    base = tmp_path / "run"
    # the smoke catalogue's frozen features, extracted once: every seed reads them (run.features_uri)
    copy_run(smoke_stage1, tmp_path / "features-run", parts=["features"])
    sets = ["--config", "configs/smoke.yaml", "--set", f"data.uri={smoke_data}", "--set", f"run.uri={base}",
            "--set", f"run.features_uri={tmp_path}/features-run/features", "--set", "stage1.num_workers=1",
            "--set", "stage2.num_workers=1", "--set", "stage2.steps_per_epoch=2"]
    proc = ptmrec(repo, "-q", "compare", *sets, "--seeds", "1", "2", "--modes", "ptmrec")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "run-seeds.md").read_text()
    assert "# smoke: seeds 1, 2" in table and "| frozen (vbpr) | 1,2 |" in table
    assert "| ptmrec (vbpr, prompt) | 1,2 |" in table and "Seed by seed" in table
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows.count("| 1") == 2 and rows.count("| 2") == 2  # each seed's frozen and ptmrec rows
    assert (tmp_path / "run-seed2" / "stage2" / "metrics.json").exists()

    again = ptmrec(repo, "-q", "compare", *sets, "--seeds", "1", "2", "--modes", "ptmrec")
    assert again.returncode == 0 and again.stdout.count("already finished") == 4, again.stdout[-2000:]
    other = ptmrec(repo, "-q", "compare", *sets, "--set", "stage2.kt.weight=0.5", "--seeds", "2", "--modes", "ptmrec")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "stage 1 already finished" in other.stdout and "holds a run with other settings" in other.stdout
