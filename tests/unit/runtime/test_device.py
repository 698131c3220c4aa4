import pytest
import torch

from ptmrec.runtime.device import encoder_autocast, pin, select_device


def test_cpu_runs_stay_on_the_cpu_in_float32():
    device = select_device(False)
    assert device == torch.device("cpu")
    with encoder_autocast(device, "bf16"):  # autocast is for CUDA only: the CPU computes in float32
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float32
    assert pin(torch.ones(2), device).is_pinned() is False  # pinning only pays for a copy to a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a GPU run without a GPU")
def test_gpu_run_without_a_gpu_fails_with_one_clear_line(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match=r"ray.use_gpu is true but this worker sees no CUDA device "
                                           r"\(CUDA_VISIBLE_DEVICES=\)"):
        select_device(True)

