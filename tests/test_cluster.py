"""cluster.yaml against Ray's own autoscaler schema, and the job entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from icebreaker_ray.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema():
    cfg = prepare_config(_cluster())
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert types["head"]["resources"].get("GPU", 0) == 0
    assert types["gpu_train"]["resources"]["GPU"] == 8
    assert any("pip install -e ." in c for c in cfg["setup_commands"])
    assert cfg["idle_timeout_minutes"] > 0 and cfg["max_workers"] >= types["gpu_train"]["max_workers"]


def test_cluster_yaml_keeps_token_auth_on_and_dashboard_private():
    cfg = _cluster()
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c or "ray stop" in c)
    assert any(local.endswith(".ray/auth_token") for local in cfg["file_mounts"].values())
    head_start = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    roles = {t["labels"]["icebreaker-role"] for t in cfg["available_node_types"].values()}
    assert roles == {"head", "train", "infer"}


def test_schema_check_can_fail():
    bad = _cluster()
    bad["availabel_node_types"] = bad.pop("available_node_types")
    with pytest.raises(Exception, match="availabel_node_types"):
        validate_config(prepare_config(bad))


def test_one_job_per_stage_plus_pipeline_and_precompute():
    # precompute is the server's batch job (serve/precompute.py), not a pipeline stage
    expected = {s.name.replace("-", "_") for s in STAGES} | {"pipeline", "precompute"}
    assert {p.stem for p in (ROOT / "jobs").glob("*.py")} == expected


@pytest.mark.parametrize("script", ["simulate", "pipeline", "precompute"])
def test_job_scripts_run_from_anywhere(script, tmp_path):
    # outside the repo and without an install on sys.path tricks: the script finds the package
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{script}.py"), "--help"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout
