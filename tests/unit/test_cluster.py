"""cluster/: the KubeRay manifests, the Slurm script and the Dockerfile agree with the repository.

Nothing here needs Kubernetes, Slurm or Docker: the manifests are parsed and checked for the fields KubeRay
requires (and the combinations its validation rejects), every command the cluster runs must name a real
job and config, the image must pin what pyproject.toml pins, and every Secret the pods read must be in the
example secrets file.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
SECRETS_EXAMPLE = KUBERAY / "secrets.example.yaml"
SBATCH = CLUSTER / "slurm" / "ptmrec.sbatch"
DOCKERFILE = CLUSTER / "Dockerfile"
RUN_STAGES = KUBERAY / "run-stages.sh"

SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def pins() -> dict[str, str]:
    """Exact pins (`name==version`) of pyproject.toml's dependencies, by lowercase name."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^;\s]+).*", dep)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every Ray resource under cluster/kuberay (the secrets example aside)."""
    docs = []
    for path in sorted([*KUBERAY.glob("*.yaml"), *KUBERAY.glob("*.yml")]):
        if path == SECRETS_EXAMPLE:
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in manifests() if doc.get("kind") == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: the RayClusters' own and the RayJobs' rayClusterSpec."""
    specs = [(name, doc["spec"]) for name, doc in of_kind("RayCluster")]
    specs += [(f"{name} (rayClusterSpec)", doc["spec"]["rayClusterSpec"])
              for name, doc in of_kind("RayJob") if "rayClusterSpec" in doc["spec"]]
    return specs


def containers(spec: dict) -> list[dict]:
    """The Ray containers (the first of each pod template) of a RayCluster spec."""
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [group["template"]["spec"]["containers"][0] for group in groups]


# ---------------------------------------------------------------------------------- commands the cluster runs


def python_commands(script: str) -> list[list[str]]:
    """The `python jobs/…` commands of a shell command line, as argument lists (`bash -c '…'` opened)."""
    tokens = shlex.split(script, comments=True)
    if tokens[:2] == ["bash", "-c"] and len(tokens) == 3:
        tokens = shlex.split(tokens[2])
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in {"&&", "||", ";", "|"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for command in commands:
        if "python" in command:
            command = command[command.index("python"):]
            if len(command) > 1 and command[1].startswith("jobs/"):
                found.append(command)
    return found


def sbatch_defaults(text: str) -> dict[str, str]:
    """`NAME=${NAME:-default}` settings of the Slurm script."""
    return {m.group(1): m.group(3) for m in re.finditer(r"^(\w+)=\$\{(\w+):-([^}]*)\}", text, re.M)
            if m.group(1) == m.group(2)}


def sbatch_commands() -> list[list[str]]:
    """The `python jobs/…` commands of the Slurm script, its variables replaced by their defaults."""
    text = SBATCH.read_text()
    defaults = sbatch_defaults(text)
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#") or not re.search(r"\bpython3?\s+jobs/", line):
            continue
        for command in python_commands(line):
            commands.append([re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), arg)
                             for arg in command])
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    out = [(name, command) for name, doc in of_kind("RayJob") for command in python_commands(doc["spec"]["entrypoint"])]
    out += [(SBATCH.name, command) for command in sbatch_commands()]
    return out


def option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == flag]


# ---------------------------------------------------------------------------------------------- KubeRay


def test_the_cluster_side_is_complete():
    assert of_kind("RayCluster"), "no RayCluster under cluster/kuberay"
    scripts = {command[1] for _, command in all_commands()}
    for job in ("prepare_data", "recommendation_stage", "knowledge_stage", "evaluate", "sweep"):
        assert any(f"jobs/{job}.py" in s for s in scripts), f"no RayJob or Slurm step runs jobs/{job}.py"
    assert SECRETS_EXAMPLE.is_file() and DOCKERFILE.is_file() and SBATCH.is_file()


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_every_manifest_is_a_kuberay_resource(name, doc):
    assert doc.get("apiVersion") == "ray.io/v1", f"{name}: apiVersion {doc.get('apiVersion')!r}"
    assert doc.get("kind") in {"RayCluster", "RayJob"}, f"{name}: kind {doc.get('kind')!r}"
    metadata_name = (doc.get("metadata") or {}).get("name")
    assert metadata_name and DNS1035.fullmatch(metadata_name), f"{name}: metadata.name {metadata_name!r}"
    assert isinstance(doc.get("spec"), dict), f"{name}: no spec"


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_cluster_specs_have_what_kuberay_requires(name, spec):
    assert str(spec.get("rayVersion")) == pins()["ray"], f"{name}: rayVersion != pyproject.toml's ray pin"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams"), dict), f"{name}: headGroupSpec.rayStartParams"
    assert head["template"]["spec"]["containers"][0]["image"], f"{name}: head image"
    workers = spec.get("workerGroupSpecs")
    assert isinstance(workers, list) and workers, f"{name}: no workerGroupSpecs"
    names = [w.get("groupName") for w in workers]
    assert all(names) and len(set(names)) == len(names), f"{name}: groupNames {names}"
    for group in workers:
        where = f"{name}: worker group {group['groupName']}"
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(c, int) for c in counts), f"{where}: minReplicas/replicas/maxReplicas {counts}"
        assert counts == sorted(counts), f"{where}: not minReplicas <= replicas <= maxReplicas"
        assert isinstance(group.get("rayStartParams"), dict), f"{where}: rayStartParams"
        pod_containers = group["template"]["spec"]["containers"]
        assert pod_containers and pod_containers[0].get("image"), f"{where}: template containers"
    for group in [head, *workers]:  # KubeRay's rayStartParams is a map of strings
        for key, value in group["rayStartParams"].items():
            assert isinstance(value, str), f"{name}: rayStartParams.{key} must be a string, got {value!r}"
    images = {c["image"] for c in containers(spec)}
    assert len(images) == 1, f"{name}: the groups run different images {images}"


def test_the_raycluster_has_cpu_and_gpu_workers():
    for name, doc in of_kind("RayCluster"):
        limits = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]
                  for g in doc["spec"]["workerGroupSpecs"]}
        gpu = [g for g, r in limits.items() if "nvidia.com/gpu" in {**r.get("requests", {}), **r.get("limits", {})}]
        assert gpu, f"{name}: no worker group asks for nvidia.com/gpu"
        assert len(gpu) < len(limits), f"{name}: no CPU-only worker group"
        for g in gpu:
            assert str(limits[g]["requests"]["nvidia.com/gpu"]) == "1", f"{name}: group {g} should request 1 GPU"


@pytest.mark.parametrize("name,doc", of_kind("RayJob"), ids=[n for n, _ in of_kind("RayJob")])
def test_rayjobs_are_valid_for_kuberay(name, doc):
    spec = doc["spec"]
    assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip(), f"{name}: no entrypoint"
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), \
        f"{name}: needs exactly one of rayClusterSpec and clusterSelector"
    mode = spec.get("submissionMode", "K8sJobMode")
    assert mode in SUBMISSION_MODES, f"{name}: submissionMode {mode!r}"
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    assert ttl == 0 or spec.get("shutdownAfterJobFinishes"), f"{name}: a TTL needs shutdownAfterJobFinishes"
    if "clusterSelector" in spec:  # what KubeRay refuses, or would do to a cluster the job does not own
        target = spec["clusterSelector"].get("ray.io/cluster")
        clusters = {doc["metadata"]["name"] for _, doc in of_kind("RayCluster")}
        assert target in clusters, f"{name}: clusterSelector names {target!r}, not one of {clusters}"
        assert not spec.get("shutdownAfterJobFinishes"), f"{name}: would shut down the shared cluster"
        assert mode != "SidecarMode", f"{name}: SidecarMode cannot use clusterSelector"
        assert not spec.get("backoffLimit"), f"{name}: backoffLimit is incompatible with clusterSelector"


# ------------------------------------------------------------------------ commands name real jobs and configs


@pytest.mark.parametrize("source,command", all_commands(),
                         ids=[f"{s}:{c[1]}" for s, c in all_commands()])
def test_commands_name_real_jobs_and_configs(source, command):
    script = command[1]
    assert (REPO / script).is_file() and script.endswith(".py"), f"{source}: {script} is not a file under jobs/"
    configs = option(command, "--config")
    assert len(configs) == 1, f"{source}: {script} should get exactly one --config, got {configs}"
    assert configs[0].startswith("configs/") and (REPO / configs[0]).is_file(), \
        f"{source}: {script} --config {configs[0]} is not a file under configs/"
    for item in option(command, "--set"):
        assert re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)+=.+", item), f"{source}: --set {item!r}"


@pytest.mark.parametrize("name,doc", of_kind("RayJob"), ids=[n for n, _ in of_kind("RayJob")])
def test_rayjob_overrides_fit_the_run_config(name, doc):
    """Each run-config entrypoint loads with its overrides (catches a misspelt key); shared storage only."""
    from ptmrec.config import load_config

    for command in python_commands(doc["spec"]["entrypoint"]):
        overrides = option(command, "--set")
        for item in overrides:
            if item.split("=", 1)[0] in ("run.uri", "data.uri"):
                assert item.split("=", 1)[1].startswith("s3://"), f"{name}: {item} is not on shared storage"
        config = REPO / option(command, "--config")[0]
        if config.is_file():
            load_config(config, overrides)


def test_the_slurm_script_runs_the_stages_in_order_and_stops_at_a_failure():
    text = SBATCH.read_text()
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    subprocess.run(["bash", "-n", str(RUN_STAGES)], check=True)
    assert re.search(r"^set -[a-z]*e", text, re.M), "the script must stop at the first failing command"
    order = [command[1] for command in sbatch_commands()]
    stages = ["jobs/prepare_data.py", "jobs/recommendation_stage.py", "jobs/knowledge_stage.py"]
    assert [s for s in order if s in stages] == stages, f"stages out of order: {order}"
    assert "ray start --head" in text and "--block" in text and re.search(r"ray start --address", text)
    assert "ray job submit --address" in text and "--working-dir ." in text and "ray stop" in text
    assert "RAY_AUTH_MODE" in text


def test_run_stages_applies_existing_rayjobs():
    m = re.search(r"stages=\(([^)]*)\)", RUN_STAGES.read_text().split("else", 1)[1])
    for stage in m.group(1).split():
        assert (KUBERAY / f"rayjob-{stage}.yaml").is_file(), f"run-stages.sh applies rayjob-{stage}.yaml"


# ---------------------------------------------------------------------------------------------- the image


def dockerfile() -> tuple[str, dict[str, str]]:
    """The Dockerfile's text (continuation lines joined) and its ARG defaults."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", text, re.M))
    return text, {k: v.strip("\"'") for k, v in args.items()}


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def test_the_image_is_rays_image_of_the_pinned_version():
    text, args = dockerfile()
    base = expand(re.search(r"^FROM\s+(\S+)", text, re.M).group(1), args)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pins()['ray'])}-py311-cu\d+", base), \
        f"base image {base}: want Ray {pins()['ray']}, Python 3.11, a CUDA tag"


def test_the_image_installs_the_pinned_cuda_torch_first():
    text, args = dockerfile()
    runs = [expand(line, args) for line in re.findall(r"^RUN\s+(.*)$", text, re.M)]
    torch_runs = [i for i, run in enumerate(runs) if re.search(r"pip install .*torch==", run)]
    assert torch_runs, "no `pip install torch==…` step"
    run = runs[torch_runs[0]]
    assert re.search(r"torch==(\S+?)[\"'\s]", run + " ").group(1) == pins()["torch"]
    assert "download.pytorch.org/whl/cu" in run, "torch must come from PyTorch's CUDA index"
    package_runs = [i for i, r in enumerate(runs) if "pip install" in r and ("requirements" in r or " ." in r)]
    assert package_runs and min(package_runs) > torch_runs[0], "install torch before the package"


def test_the_image_has_the_pyproject_pins():
    text, args = dockerfile()
    text = expand(text, args)
    reads_pyproject = "pyproject.toml" in text and re.search(r"pip install[^\n]*(-r\s|\s-e\s+\.|\s\.(\s|$))", text)
    for name in ("deepspeed", "transformers", "peft", "ray", "torch"):
        pinned = re.findall(rf"\b{name}(?:\[[^\]]*\])?==([\w.+-]+)", text)
        assert all(v == pins()[name] for v in pinned), f"{name} pinned to {pinned}, pyproject.toml says {pins()[name]}"
        assert pinned or reads_pyproject, f"{name}: neither pinned nor installed from pyproject.toml"
    assert re.search(r"pip install[^\n]*--no-deps[^\n]*recbole==1\.2\.1", text), "recbole==1.2.1 with --no-deps"
    assert re.search(r"^ENV\b[^\n]*HF_HUB_OFFLINE=1", text, re.M), "the pods run with HF_HUB_OFFLINE=1"


# ---------------------------------------------------------------------------------------------- secrets


def secret_refs(node, found=None) -> set[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef and authOptions.secretName in a manifest."""
    found = set() if found is None else found
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.add((ref["name"], ref["key"]))
        if isinstance(node.get("authOptions"), dict) and node["authOptions"].get("secretName"):
            found.add((node["authOptions"]["secretName"], "auth_token"))
        for value in node.values():
            secret_refs(value, found)
    elif isinstance(node, list):
        for value in node:
            secret_refs(value, found)
    return found


def example_secrets() -> dict[str, set[str]]:
    docs = [d for d in yaml.safe_load_all(SECRETS_EXAMPLE.read_text()) if d]
    assert all(d["kind"] == "Secret" and d["apiVersion"] == "v1" for d in docs)
    return {d["metadata"]["name"]: {*d.get("stringData", {}), *d.get("data", {})} for d in docs}


def test_every_secret_the_pods_read_is_in_the_example():
    defined = example_secrets()
    refs = set().union(*(secret_refs(doc) for _, doc in manifests()))
    assert {name for name, _ in refs} >= {"ptmrec-s3", "ptmrec-wandb"}
    for name, key in sorted(refs):
        assert name in defined, f"secret {name} is read but not in {SECRETS_EXAMPLE.name}"
        assert key in defined[name], f"secret {name} has no key {key} in {SECRETS_EXAMPLE.name}"
    assert defined["ptmrec-s3"] >= {"endpoint", "access-key-id", "secret-access-key"}
    assert "api-key" in defined["ptmrec-wandb"]


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_every_ray_container_gets_storage_and_wandb_settings(name, spec):
    for container in containers(spec):
        env = {e["name"]: e for e in container.get("env", [])}
        for var, secret, key in [("AWS_ACCESS_KEY_ID", "ptmrec-s3", "access-key-id"),
                                 ("AWS_SECRET_ACCESS_KEY", "ptmrec-s3", "secret-access-key"),
                                 ("AWS_ENDPOINT_URL", "ptmrec-s3", "endpoint"),
                                 ("WANDB_API_KEY", "ptmrec-wandb", "api-key")]:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            assert (ref.get("name"), ref.get("key")) == (secret, key), f"{name}: {container['name']} {var}"
        # W&B is optional: pods must start without its secret.
        assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"].get("optional") is True


def test_the_example_holds_no_real_secrets():
    for doc in yaml.safe_load_all(SECRETS_EXAMPLE.read_text()):
        for key, value in (doc or {}).get("stringData", {}).items():
            assert "REPLACE_ME" in value or "example" in value, f"{doc['metadata']['name']}.{key} looks real"
