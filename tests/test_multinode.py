"""A real two-node Ray cluster on this machine runs the pipeline job (issue #9).

`ray start --head` (1 CPU, the dashboard) + `ray start --address=...` (2 CPUs, resource
``worker_node``, label ``icebreaker-role=worker``), then ``ray job submit --working-dir``
of ``jobs/pipeline.py`` on the quick preset with a tiny random generator. The job must
succeed, and the stage manifests must name both nodes: the driver's (head) and the
worker node where Ray Data actors, Ray tasks and Ray Train workers were placed.

The submitted pipeline stops after ``train-scorer`` by default: label-revisits (Ray Data)
and train-scorer (Ray Train) already place work on the worker node, and the rest of the
pipeline runs end to end in ``test_pipeline_e2e.py``. ``ICEBREAKER_TEST_UNTIL=evaluate``
submits all of it (about 25 minutes on 2 busy cores; it passed).
"""

from __future__ import annotations

import os
import sys

import pytest
from cluster_support import ROOT, TwoNodeCluster

from icebreaker_ray.data import io
from icebreaker_ray.pipeline import STAGES, get_stage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNTIL = os.environ.get("ICEBREAKER_TEST_UNTIL") or "train-scorer"


def test_pipeline_job_runs_on_both_nodes_of_a_two_node_cluster(tiny_generator, tmp_path):
    get_stage(UNTIL)  # a typo in ICEBREAKER_TEST_UNTIL fails here, not after the cluster started
    out = tmp_path / "run"
    entrypoint = [sys.executable, "jobs/pipeline.py", "--config", "configs/quick.yaml",
                  "--out", str(out), "--set", f"models.generator={tiny_generator}",
                  # the tiny random model writes no usable starters: keep its sampling short
                  # and fill the mining pools with teacher starters, so that DPO gets pairs
                  "--set", "search.max_users=12", "--set", "generation.max_new_tokens=48",
                  "--set", "search.teacher_mix_ratio=1.0",
                  "--until", UNTIL]
    with TwoNodeCluster(head_cpus=1, worker_cpus=2) as cluster:
        head, worker = cluster.node_id("head"), cluster.node_id("worker")
        # no job-level env_vars: init_ray sets the offline variables for every worker, and
        # Ray refuses a job whose runtime_env sets the same keys (HF_HUB_OFFLINE comes from
        # the nodes' environment here)
        job = cluster.submit(entrypoint, working_dir=ROOT)
        assert job.returncode == 0, f"job failed:\n{job.stdout[-8000:]}"
        assert "pipeline complete" in job.stdout

    names = [s.name for s in STAGES]
    ran = names[: names.index(UNTIL) + 1]
    manifests = {name: io.read_manifest(str(out), name) for name in ran}
    assert all(manifests.values()), [n for n, m in manifests.items() if not m]
    # "" = work done in a process outside Ray (a stage that ran on the driver without it)
    nodes = {name: set(m["node_ids"]) - {""} for name, m in manifests.items()}
    every = set().union(*nodes.values())
    assert every <= {head, worker}, f"unknown node ids: {every - {head, worker}}"
    assert head in every and worker in every, nodes
    # the driver runs on the head; work was placed on the worker node by more than one stage
    assert sum(worker in ids for ids in nodes.values()) >= 2, nodes
