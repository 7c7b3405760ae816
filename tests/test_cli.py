from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from icebreaker_ray.cli import EXIT_BAD_INPUT, app
from icebreaker_ray.pipeline import STAGES, Stage, StageNotBuilt

runner = CliRunner()


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage.name in result.output
    assert "pipeline" in result.output


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "icebreaker_ray.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "label-revisits" in out.stdout


def test_stage_command_takes_config_and_out():
    result = runner.invoke(app, ["label-revisits", "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output and "--out" in result.output and "--set" in result.output


def test_every_stage_is_built_and_an_unbuilt_one_would_say_so():
    for stage in STAGES:
        assert callable(stage.function()), stage.name
    unbuilt = Stage("later", "not yet", None, (), issue=42)
    with pytest.raises(StageNotBuilt, match="not built yet.*#42"):
        unbuilt.function()


def test_bad_config_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sim:\n  num_users: many\n")
    result = runner.invoke(app, ["simulate", "--config", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "sim.num_users" in result.output and "Traceback" not in result.output


def test_show_config_applies_overrides():
    result = runner.invoke(app, ["show-config", "--config", "quick", "--set", "sim.num_users=7"])
    assert result.exit_code == 0 and "num_users: 7" in result.output
