"""The storage layer (data/io.py) against a real S3 API: moto's server on 127.0.0.1.

Tables, JSON, bytes and model folders round-trip through ``s3://``; the resonance scorer
and the utility ranker save to and load from a URI; Ray Train checkpoints there. The whole
quick pipeline with ``run.storage_path: s3://bucket`` runs in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import filecmp
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from icebreaker_ray.data import io


@pytest.fixture
def s3(s3_bucket, tmp_path, monkeypatch):
    """A fresh prefix in the test bucket, and a private download cache."""
    monkeypatch.setenv("ICEBREAKER_CACHE", str(tmp_path / "cache"))
    return f"{s3_bucket}/{uuid.uuid4().hex[:8]}"


def _users(n: int = 3) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in range(n)], "activity_bucket": [i % 2 for i in range(n)],
                     "profile": [None] * n})


def test_tables_json_and_bytes_round_trip(s3):
    uri = io.join(s3, "simulate", "users.parquet")
    io.write_table(_users(), uri, "users")
    assert io.read_table(uri, "users").equals(io.validate_table(_users(), "users"))
    assert io.read_table(io.join(s3, "simulate"), "users").num_rows == 3  # a directory of parts
    io.write_json(io.join(s3, "a", "b.json"), {"x": [1, 2]})
    assert io.read_json(io.join(s3, "a", "b.json")) == {"x": [1, 2]}
    io.write_bytes(io.join(s3, "blob.bin"), b"\x00\x01")
    assert io.read_bytes(io.join(s3, "blob.bin")) == b"\x00\x01"
    with pytest.raises(io.DataError, match="no such file"):
        io.read_bytes(io.join(s3, "missing.bin"))
    io.delete(io.join(s3, "a"))
    assert not io.exists(io.join(s3, "a", "b.json"))
    # A stage's manifest and completeness check work the same on S3.
    writer = io.StageWriter(s3, "simulate")
    writer.write_table("users", _users())
    writer.write_json("metrics.json", {"ok": True})
    writer.commit(fingerprint="f1")
    assert io.is_complete(s3, "simulate", "f1") and not io.is_complete(s3, "simulate", "f2")
    io.begin_attempt(s3, "simulate", "f2")  # another config clears the stage
    assert not io.exists(io.join(s3, "simulate", "users.parquet"))


def _model_folder(root: Path) -> Path:
    (root / "encoder" / "1_Pooling").mkdir(parents=True)
    (root / "scorer.json").write_text('{"dim": 4}')
    (root / "scorer.pt").write_bytes(os.urandom(2048))
    (root / "encoder" / "1_Pooling" / "config.json").write_text("{}")
    return root


def _same_tree(a: str | Path, b: str | Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(Path(a, d), Path(b, d)) for d in cmp.common_dirs)


def test_model_folder_round_trip_uses_the_cache(s3, tmp_path, monkeypatch):
    src = _model_folder(tmp_path / "model")
    uri = io.join(s3, "train-scorer", "scorer")
    io.upload_dir(src, uri)
    local = io.local_dir(uri)
    assert Path(local).is_relative_to(tmp_path / "cache" / "storage")
    assert _same_tree(src, local)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    with monkeypatch.context() as m:
        m.setattr(pafs, "copy_files", no_download)
        assert io.local_dir(uri) == local  # same listing: the cached copy

    # Rewriting the folder changes its fingerprint: a new copy, the old one is removed.
    (src / "scorer.pt").write_bytes(os.urandom(4096))
    io.upload_dir(src, uri)
    fresh = io.local_dir(uri)
    assert fresh != local and not Path(local).exists() and _same_tree(src, fresh)
    # A flat folder (no subdirectories), like a generator's.
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "config.json").write_text("{}")
    io.upload_dir(flat, io.join(s3, "sft", "model"))
    assert _same_tree(flat, io.local_dir(io.join(s3, "sft", "model")))
    # A local path is returned itself.
    assert io.local_dir(str(src)) == str(src)
    with pytest.raises(io.DataError, match="no such directory"):
        io.local_dir(io.join(s3, "nothing-here"))


@pytest.mark.parametrize("where", ["s3", "local"])
def test_output_dir_replaces_only_on_success(s3, tmp_path, where):
    uri = io.join(s3, "m") if where == "s3" else str(tmp_path / "out" / "m")
    with io.output_dir(uri) as d:
        Path(d, "a.txt").write_text("one")
    with pytest.raises(RuntimeError), io.output_dir(uri) as d:
        Path(d, "a.txt").write_text("two")
        raise RuntimeError("save failed")
    assert io.read_bytes(io.join(uri, "a.txt")) == b"one"
    with io.output_dir(uri) as d:
        Path(d, "b.txt").write_text("three")
    assert io.exists(io.join(uri, "b.txt")) and not io.exists(io.join(uri, "a.txt"))
    if where == "local":
        assert sorted(os.listdir(tmp_path / "out")) == ["m"]  # no temporary left behind


def test_scorer_and_ranker_save_to_and_load_from_s3(s3):
    from icebreaker_ray.reward.ranker import UtilityRanker
    from icebreaker_ray.rid import scorer

    torch.manual_seed(0)
    model = scorer.ResonanceScorer(8, 4, 16, True)
    uri = io.join(s3, "train-scorer", "scorer")
    scorer.save_scorer(model, uri, {"t_split_days": 3.5})
    loaded = scorer.load_scorer(uri)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  loaded.state_dict().values(), strict=True))
    assert scorer.scorer_config(uri)["t_split_days"] == 3.5
    assert scorer.text_encoder_path(uri) is None  # frozen encoder: models.embedder

    ranker = UtilityRanker(8, 16, 0.3)
    ruri = io.join(s3, "train-ranker", "util")
    ranker.save(ruri)
    back = UtilityRanker.load(ruri)
    x = np.random.default_rng(0).normal(size=(5, ranker.proj[0].in_features)).astype(np.float32)
    np.testing.assert_allclose(back.score(x), ranker.score(x))


def test_train_storage_hands_ray_train_the_same_filesystem(s3, tmp_path):
    kwargs = io.train_storage(io.join(s3, "_ray_train"))
    assert kwargs["storage_path"] == f"{s3.removeprefix('s3://')}/_ray_train"
    assert isinstance(kwargs["storage_filesystem"], pafs.S3FileSystem)
    assert io.train_storage("runs/x") == {"storage_path": os.path.abspath("runs/x")}
