from __future__ import annotations

from pathlib import Path

import pytest

from icebreaker_ray.config import CONFIG_DIR, Config, ConfigError, load_config

# configs/serve.yaml is the Serve deploy file (`serve build`), not a pipeline preset.
PRESETS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != "serve.yaml")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_config(CONFIG_DIR / preset)
    assert isinstance(cfg, Config)


def test_default_is_local_cpu_and_presets_differ():
    local = load_config()
    assert local.run.name == "demo" and local.models.generator == "smollm2-135m-instruct"
    gpu = load_config("gpu-cluster")
    assert gpu.models.dtype == "bfloat16" and gpu.sft.zero_stage == 3 and gpu.sft.use_gpu
    assert gpu.models.generator.startswith("Qwen/")
    quick = load_config("quick")
    # extends: inherits untouched keys from local-cpu, overrides the rest
    assert quick.sim.num_users == 60 and quick.search.K == local.search.K


def test_overrides_are_typed():
    cfg = load_config("local-cpu", ["sim.num_users=12", "search.lam=0.25", "judge.backend=hf"])
    assert cfg.sim.num_users == 12 and cfg.search.lam == 0.25 and cfg.judge.backend == "hf"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_bad_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "sim:\n  num_users: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line \d+"):
        load_config(path)


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "sim:\n  num_userz: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key 'sim.num_userz'" in str(err.value) and "bad.yaml" in str(err.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'simulation'"):
        load_config(_write(tmp_path, "simulation: {}\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "sim:\n  num_users: lots\n"))
    msg = str(err.value)
    assert "key 'sim.num_users'" in msg and "'lots'" in msg and "bad.yaml" in msg


def test_out_of_range_and_cross_field(tmp_path):
    with pytest.raises(ConfigError, match="key 'search.lam'"):
        load_config(_write(tmp_path, "search:\n  lam: -1\n"))
    with pytest.raises(ConfigError, match="K=8 is larger than the candidate pool N=4"):
        load_config(_write(tmp_path, "search:\n  K: 8\n  N: 4\n"))


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_bad_overrides():
    with pytest.raises(ConfigError, match="unknown key 'sim.nope'"):
        load_config("local-cpu", ["sim.nope=1"])
    with pytest.raises(ConfigError, match="unknown key 'nosection.x'"):
        load_config("local-cpu", ["nosection.x=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config("local-cpu", ["sim.num_users"])
    with pytest.raises(ConfigError, match="with --set overrides"):
        load_config("local-cpu", ["sim.num_users=abc"])


def test_missing_file_and_extends_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_fingerprint_tracks_sections():
    a = load_config("local-cpu")
    b = load_config("local-cpu", ["search.lam=0.9"])
    assert a.fingerprint("sim") == b.fingerprint("sim")
    assert a.fingerprint("search") != b.fingerprint("search")
