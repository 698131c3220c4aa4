"""Two Ray nodes on one machine, each with its own raylet and object store (Ray's cluster utilities), and every
artifact on the local S3 server: stage 1 and stage 2 run with one worker on each node, and a node stopped
mid-stage-2 and started again costs a restart from the checkpoint, not the run."""

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import ENV
from tests.s3_helpers import bucket_keys, upload_folder

pytestmark = [pytest.mark.slow, pytest.mark.slower]


@pytest.fixture()
def two_nodes(s3_server, monkeypatch):
    """A head node and a worker node, one CPU each: a stage's two workers can only run one on each. The nodes
    hold the S3 endpoint and credentials in their environment, as a cluster's Secret would give them."""
    from ray.cluster_utils import Cluster

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, node
    finally:
        cluster.shutdown()


def test_stages_run_across_two_nodes_and_outlive_a_stopped_node(repo, smoke_data, s3_server, s3_storage, two_nodes):
    cluster, node = two_nodes
    bucket = s3_storage.bucket
    upload_folder(s3_storage, smoke_data, f"s3://{bucket}/data")
    run = f"s3://{bucket}/run-{uuid.uuid4().hex[:6]}"
    env = {**ENV, **s3_server.env()}
    common = ["--config", "configs/smoke.yaml", "--set", f"data.uri=s3://{bucket}/data", "--set", f"run.uri={run}",
              "--set", f"ray.address={cluster.address}", "--set", "ray.cpus_per_worker=1",
              "--set", "stage1.epochs=2", "--set", "stage1.num_workers=2", "--set", "stage2.num_workers=2"]
    proc = subprocess.run([sys.executable, "-m", "ptmrec.cli", "-q", "stage1", *common], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage1 = json.loads(s3_storage.read_text(f"{run}/stage1/metrics.json"))
    both = {cluster.head_node.node_id, node.node_id}
    assert set(stage1["worker_nodes"]) == both  # one worker on each node

    stage2 = subprocess.Popen([sys.executable, "-m", "ptmrec.cli", "stage2", *common, "--set", "stage2.epochs=4",
                               "--set", "stage2.patience=1000"], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        prefix = run[len(f"s3://{bucket}/"):] + "/ray/"
        deadline = time.monotonic() + 400
        while not any("stage2" in k and k.endswith("state.json") for k in bucket_keys(s3_storage, bucket, prefix)):
            assert stage2.poll() is None and time.monotonic() < deadline, "no stage-2 checkpoint before the end"
            time.sleep(0.3)
        cluster.remove_node(node, allow_graceful=False)  # its raylet, object store and workers go at once
        time.sleep(5)
        returned = cluster.add_node(num_cpus=1)  # the node comes back (a replaced machine: a new node id)
        out, _ = stage2.communicate(timeout=900)
    finally:
        if stage2.poll() is None:
            stage2.kill()
    assert stage2.returncode == 0, out[-4000:]
    assert "a transient failure; restarting the workers from the latest checkpoint" in out
    metrics = json.loads(s3_storage.read_text(f"{run}/stage2/metrics.json"))
    assert metrics["resumed_from_epoch"] >= 1 and metrics["epochs_run"] == 4
    assert set(metrics["worker_nodes"]) == {cluster.head_node.node_id, returned.node_id}
