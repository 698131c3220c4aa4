"""What `ptmrec pipeline` prints of its jobs' output: the run, not Ray's and W&B's chatter."""

from __future__ import annotations

import pytest

from ptmrec.pipeline import shown

NOISE = [
    "2026-12-01 18:38:25,865\tINFO packaging.py:385 -- Ignoring upload to cluster for these files: [PosixPath('/w')]",
    "2026-12-01 18:38:25,979\tSUCC cli.py:67 -- \x1b[32mJob 'ptmrec-stage1-1796150304' submitted successfully\x1b[39m",
    "2026-12-01 18:38:25,980\tINFO cli.py:333 -- \x1b[1mray job logs ptmrec-stage1-1796150304\x1b[22m",
    "------------------------------------------------------",
    "Running entrypoint for job ptmrec-stage1-1796150304: /venv/bin/python jobs/recommendation_stage.py --config x",
    "\x1b[36m(TrainController pid=24325)\x1b[0m [2026-12-01 18:39:18,249 E 24325 24360] core_worker.cc:2465: Actor "
    "with class name: 'PreemptionWatcher' and ID: '92c1' has constructor arguments in the object store and max_restarts > 0.",
    "\x1b[36m(RayTrainWorker pid=24606)\x1b[0m wandb: Run summary:",
    "\x1b[36m(RayTrainWorker pid=24634)\x1b[0m [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU.",
    "Loading weights: 100%|██████████| 103/103 [00:00<00:00, 12445.65it/s]",
    "   ",
]
KEPT = [
    "\x1b[36m(RayTrainWorker pid=26633)\x1b[0m epoch 2/5, stops by 5 (≤ 1 min): loss bpr 0.1955 | valid recall@20 0.3188",
    "18:42:41 INFO ptmrec.stage2: stage 2 (ptmrec): adapter prompt, λ=1, τ=1, 2 workers × 64 items/step",
    "Traceback (most recent call last):",
    "ValueError: data/items/items-000001.tar: sha256 differs from the manifest's",
    "2026-12-01 18:45:00,000\tERROR cli.py:80 -- Job 'ptmrec-stage2-1' failed",
    "| frozen (vbpr) | 0.2112 | 0.3262 | 0.2379 | 0.2663 | — | 0 (frozen) | 186 | 562 |",
]


@pytest.mark.parametrize("line", NOISE)
def test_chatter_is_hidden(line):
    assert shown(line + "\n") is None


@pytest.mark.parametrize("line", KEPT)
def test_the_run_and_every_error_are_shown(line):
    assert shown(line + "\n") == line


def test_a_progress_bar_shows_its_last_repaint():
    bar = "encode items:  23%|██▎ | 192/841\rencode items:  91%|█████████▏| 768/841\rencode items: 100%|██| 841/841\n"
    assert shown(bar) == "encode items: 100%|██| 841/841"
