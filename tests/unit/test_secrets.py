"""Credentials never travel in a config, a config dump, W&B's config or a job's runtime environment."""

from __future__ import annotations

import json

import pytest

from ptmrec.cli import main
from ptmrec.config import ConfigError, StorageConfig, load_config
from ptmrec.pipeline import job_env


@pytest.mark.parametrize("key", ["storage.secret_access_key", "storage.access_key_id"])
def test_a_config_with_credentials_is_refused_in_one_line(repo, key, capsys):
    with pytest.raises(ConfigError, match=rf"{key}: credentials are not read from configs .* set AWS_"):
        load_config(repo / "configs/smoke.yaml", [f"{key}=hunter2"])
    assert main(["check-config", "--config", str(repo / "configs/smoke.yaml"), "--set", f"{key}=hunter2"]) == 2
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err


def test_credentials_code_passes_in_stay_out_of_every_dump(repo):
    cfg = load_config(repo / "configs/smoke.yaml")
    cfg.storage = StorageConfig(endpoint_url="http://127.0.0.1:9", access_key_id="AKIA-x", secret_access_key="hunter2")
    dumped = json.dumps(cfg.to_dict())  # what check-config prints and W&B stores
    assert "hunter2" not in dumped and "AKIA-x" not in dumped and "127.0.0.1:9" in dumped
    assert "hunter2" not in repr(cfg)


def test_jobs_get_endpoints_and_switches_but_no_secret():
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": "AKIA-x", "AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_SESSION_TOKEN": "tok",
               "WANDB_API_KEY": "wandb-key", "HF_HUB_OFFLINE": "1", "HOME": "/root"}
    env = job_env({"OMP_NUM_THREADS": "1", "AWS_SECRET_ACCESS_KEY": "from-yaml"}, environ)
    assert env == {"OMP_NUM_THREADS": "1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                   "AWS_DEFAULT_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "online"}
