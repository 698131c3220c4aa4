from pathlib import Path

import pytest

from ptmrec.config import Config, ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.run.name and cfg.data.uri


def test_shipped_configs_include_the_agreed_ones():
    names = {p.name for p in CONFIGS}
    assert {"demo-ml100k.yaml", "amazon-baby.yaml", "amazon-clothing.yaml", "smoke.yaml"} <= names


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


BASE = "run: {name: x, uri: /tmp/x}\ndata: {source: synthetic, uri: /tmp/d}\n"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, BASE + "recommender: {name: bpr, embeding_dim: 3}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'recommender\.embeding_dim'"):
        load_config(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(write(tmp_path, BASE + "trainer: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"stage1\.epochs: expected an integer, got str 'many'"):
        load_config(write(tmp_path, BASE + "stage1: {epochs: many}\n"))


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match=r"stage1\.epochs: expected an integer"):
        load_config(write(tmp_path, BASE + "stage1: {epochs: true}\n"))


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml: missing required key 'data\.uri'"):
        load_config(write(tmp_path, "run: {name: x, uri: /tmp/x}\ndata: {source: synthetic}\n"))


def test_literal_choices_are_listed(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source: expected one of mmrec, movielens, synthetic"):
        load_config(write(tmp_path, "run: {name: x, uri: /tmp/x}\ndata: {source: csv, uri: /d}\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, BASE)
    cfg = load_config(p, ["recommender.name=lightgcn", "stage1.lr=1e-3", "eval.ks=[5, 10]",
                          "stage2.adapter.target_modules=[q_proj, v_proj]", "data.path=null"])
    assert cfg.recommender.name == "lightgcn"
    assert cfg.stage1.lr == pytest.approx(1e-3)
    assert cfg.eval.ks == [5, 10]
    assert cfg.stage2.adapter.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match=r"unknown key 'stage1\.learning_rate'"):
        load_config(p, ["stage1.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(p, ["stage1.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: {name: [\n"))


def test_config_round_trips_through_pickle(tmp_path):
    import pickle

    cfg = load_config(write(tmp_path, BASE))
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_ray_section_merges_ray_config_profile_and_run_overrides(tmp_path, monkeypatch):
    (tmp_path / "ray_config.yaml").write_text(
        "cpus_per_worker: 1\nmax_failures: 0\nenv_vars: {A: '1'}\nprofiles:\n  gpu: {use_gpu: true, cpus_per_worker: 8}\n")
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, BASE + "ray: {profile: gpu, max_failures: 3}\n")
    cfg = load_config(p)
    assert (cfg.ray.use_gpu, cfg.ray.cpus_per_worker, cfg.ray.max_failures, cfg.ray.env_vars) == (True, 8.0, 3, {"A": "1"})
    with pytest.raises(ConfigError, match="ray.profile: 'tpu' is not a profile of ray_config.yaml"):
        load_config(p, ["ray.profile=tpu"])
    with pytest.raises(ConfigError, match="unknown key 'ray.cpu_per_worker'"):
        load_config(p, ["ray.cpu_per_worker=2"])


def test_repo_ray_config_is_valid(repo, monkeypatch):
    monkeypatch.chdir(repo)
    for profile in ("cpu", "gpu"):
        cfg = load_config(repo / "configs" / "smoke.yaml", [f"ray.profile={profile}"])
        assert cfg.ray.use_gpu == (profile == "gpu")
        assert "/.venv" in cfg.ray.working_dir_excludes and "/data" in cfg.ray.working_dir_excludes


def test_sweep_space_is_a_typed_mapping(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "sweep: {space: {stage2.kt.weight: [0.1, 1.0]}}\n"))
    assert cfg.sweep.space == {"stage2.kt.weight": [0.1, 1.0]}
    with pytest.raises(ConfigError, match="sweep.space: expected a mapping"):
        load_config(write(tmp_path, BASE + "sweep: {space: [1, 2]}\n"))


def test_loader_workers_must_fit_the_cpus_a_worker_reserves(tmp_path):
    with pytest.raises(ConfigError, match=r"ray.loader_workers: 2 loader processes need 3 CPUs per worker .* "
                                          r"ray.cpus_per_worker is 2"):
        load_config(write(tmp_path, BASE + "ray: {cpus_per_worker: 2, loader_workers: 2}\n"))
    with pytest.raises(ConfigError, match="ray.loader_workers: expected 0 or more, got -1"):
        load_config(write(tmp_path, BASE + "ray: {loader_workers: -1}\n"))
    with pytest.raises(ConfigError, match="encoder.batch_size: expected 1 or more, got 0"):
        load_config(write(tmp_path, BASE + "encoder: {batch_size: 0}\n"))
    assert load_config(write(tmp_path, BASE + "ray: {cpus_per_worker: 8, loader_workers: 6}\n")).ray.loader_workers == 6


def test_gpu_profile_reserves_loader_processes(repo, monkeypatch):
    monkeypatch.chdir(repo)
    cfg = load_config(repo / "configs" / "amazon-clothing-gpu.yaml")
    assert cfg.ray.use_gpu and 0 < cfg.ray.loader_workers < cfg.ray.cpus_per_worker
    assert cfg.encoder.precision == "bf16" and cfg.stage2.items_per_step == 256


def test_local_encoder_model_folder_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "minilm").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, BASE + "encoder: {name: bundled, model: ./minilm}\n"))
    assert cfg.encoder.model == str(tmp_path / "minilm")
    hub = load_config(write(tmp_path, BASE + "encoder: {name: clip, model: openai/clip-vit-base-patch16}\n"))
    assert hub.encoder.model == "openai/clip-vit-base-patch16"  # a hub name stays a name


def test_lazy_adam_needs_zero_stage_0_and_bounds_are_positive(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(path, ["stage1.optimizer=lazy_adam"]).stage1.optimizer == "lazy_adam"
    with pytest.raises(ConfigError, match=r"stage1\.optimizer: lazy_adam .* use stage1\.zero_stage: 0"):
        load_config(path, ["stage1.optimizer=lazy_adam", "stage1.zero_stage=1"])
    with pytest.raises(ConfigError, match=r"stage2\.optimizer: lazy_adam .* ZeRO-2 .* use stage2\.zero_stage: 0"):
        load_config(path, ["stage2.optimizer=lazy_adam"])  # stage 2 runs ZeRO-2 by default
    for key in ("stage2.steps_per_epoch", "eval.sample_users", "eval.max_batch_scores"):
        with pytest.raises(ConfigError, match=rf"{key}: expected 1 or more, got 0"):
            load_config(path, [f"{key}=0"])
