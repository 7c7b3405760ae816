from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import INPUT_TABLES, SCHEMAS, describe


def sessions_table(n: int = 3) -> pa.Table:
    ts = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i) for i in range(n)]
    return pa.table(
        {
            "user_id": [f"u{i % 2}" for i in range(n)],
            "session_id": [f"s{i}" for i in range(n)],
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),  # a different unit: cast on read
            "summary": [f"Asked about topic {i}" for i in range(n)],
        }
    )


def test_round_trip_and_safe_casts(tmp_path):
    uri = str(tmp_path / "sessions.parquet")
    io.write_table(sessions_table(), uri, "sessions")
    back = io.read_table(uri, "sessions")
    assert back.schema == SCHEMAS["sessions"] and back.num_rows == 3
    assert back.column("summary").to_pylist()[2] == "Asked about topic 2"


def test_optional_column_filled(tmp_path):
    uri = str(tmp_path / "users.parquet")
    pq.write_table(pa.table({"user_id": ["a"], "activity_bucket": pa.array([2], pa.int64())}), uri)
    users = io.read_table(uri, "users")
    assert users.column("profile").to_pylist() == [None]
    assert users.schema.field("activity_bucket").type == pa.int32()


def test_missing_column_names_file_and_column(tmp_path):
    uri = str(tmp_path / "s.parquet")
    pq.write_table(sessions_table().drop_columns(["summary"]), uri)
    with pytest.raises(io.DataError) as err:
        io.read_table(uri, "sessions")
    assert "s.parquet" in str(err.value) and "missing column 'summary'" in str(err.value)


def test_wrong_type_names_column(tmp_path):
    uri = str(tmp_path / "s.parquet")
    pq.write_table(sessions_table().set_column(2, "ts", pa.array(["yesterday"] * 3)), uri)
    with pytest.raises(io.DataError, match=r"s\.parquet: column 'ts' has type string"):
        io.read_table(uri, "sessions")


def test_nulls_and_closed_vocabulary(tmp_path):
    t = sessions_table().set_column(3, "summary", pa.array([None, "x", "y"], pa.string()))
    with pytest.raises(io.DataError, match="column 'summary' has 1 null"):
        io.validate_table(t, "sessions", "t")
    pairs = pa.table(
        {"user_id": ["u"], "earlier_session_id": ["a"], "later_session_id": ["b"],
         "label": ["MAYBE"], "judge": ["embedding"]}
    )
    with pytest.raises(io.DataError, match=r"'label' has value\(s\) \['MAYBE'\]"):
        io.validate_table(pairs, "revisit_pairs", "pairs")


def test_empty_file_not_parquet_no_rows_missing(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(io.DataError, match=r"empty\.parquet: file is empty"):
        io.read_table(str(empty), "sessions")
    junk = tmp_path / "junk.parquet"
    junk.write_text("user_id,summary\n")
    with pytest.raises(io.DataError, match=r"junk\.parquet: not a readable Parquet file"):
        io.read_table(str(junk), "sessions")
    zero = tmp_path / "zero.parquet"
    pq.write_table(sessions_table().slice(0, 0), zero)
    with pytest.raises(io.DataError, match="has no rows"):
        io.read_table(str(zero), "sessions")
    assert io.read_table(str(zero), "sessions", allow_empty=True).num_rows == 0
    with pytest.raises(io.DataError, match="no such file"):
        io.read_table(str(tmp_path / "absent.parquet"), "sessions")


def test_directory_of_parts_and_bad_part_named(tmp_path):
    d = tmp_path / "sessions"
    d.mkdir()
    pq.write_table(sessions_table(2), d / "part-0.parquet")
    pq.write_table(sessions_table(3), d / "part-1.parquet")
    assert io.read_table(str(d), "sessions").num_rows == 5
    pq.write_table(sessions_table(1).drop_columns(["ts"]), d / "part-2.parquet")
    with pytest.raises(io.DataError, match=r"part-2\.parquet: missing column 'ts'"):
        io.read_table(str(d), "sessions")


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path):
    uri = str(tmp_path / "s.parquet")
    io.write_table(sessions_table(), uri, "sessions")
    with pytest.raises(io.DataError):
        io.write_table(sessions_table().drop_columns(["ts"]), uri, "sessions")
    assert io.read_table(uri, "sessions").num_rows == 3  # the good file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_stage_manifest_lifecycle(tmp_path):
    root = str(tmp_path / "run")
    assert not io.is_complete(root, "simulate")
    out = io.StageWriter(root, "simulate")
    out.write_table("sessions", sessions_table())
    assert not io.is_complete(root, "simulate")  # no manifest until commit
    out.commit(fingerprint="abc", metrics={"rows": 3}, node_ids=["n1", "n1", "n2"])
    assert io.is_complete(root, "simulate") and io.is_complete(root, "simulate", "abc")
    assert not io.is_complete(root, "simulate", "other-config")
    assert io.read_manifest(root, "simulate")["node_ids"] == ["n1", "n2"]
    # a truncated/replaced output file makes the stage incomplete again
    (tmp_path / "run" / "simulate" / "sessions.parquet").write_bytes(b"x")
    assert not io.is_complete(root, "simulate")
    # starting a rerun removes the old completion marker first
    io.StageWriter(root, "simulate")
    assert io.read_manifest(root, "simulate") is None


def test_every_table_has_schema_and_description():
    for name in (*INPUT_TABLES, "revisit_pairs", "interests", "sit_corpus", "candidates",
                 "preference_pairs"):
        assert name in SCHEMAS and "user_id" in describe(name)


def test_begin_attempt_keeps_a_same_config_attempt_and_clears_any_other(tmp_path):
    root = str(tmp_path)
    ckpt = tmp_path / "sft" / "ray-train" / "checkpoint_1"

    def leave_checkpoint() -> None:
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "state").write_text("step 12")

    assert io.begin_attempt(root, "sft", "aaaa") is False  # nothing there yet
    leave_checkpoint()
    assert io.begin_attempt(root, "sft", "aaaa") is False and ckpt.is_dir()  # resume
    assert io.begin_attempt(root, "sft", "bbbb") is True and not ckpt.exists()  # new config
    assert io.read_json(str(tmp_path / "sft" / io.ATTEMPT))["fingerprint"] == "bbbb"
    leave_checkpoint()
    assert io.begin_attempt(root, "sft", "bbbb", fresh=True) is True and not ckpt.exists()
    # a completed run of another config, from before attempts were recorded
    (tmp_path / "sft" / io.ATTEMPT).unlink()
    leave_checkpoint()
    io.write_json(str(tmp_path / "sft" / io.MANIFEST), {"fingerprint": "cccc", "files": {}})
    assert io.begin_attempt(root, "sft", "bbbb") is True and not ckpt.exists()


def test_run_stage_resumes_the_same_config_and_starts_clean_after_a_change(tmp_path, monkeypatch):
    from icebreaker_ray.config import load_config
    from icebreaker_ray.pipeline import Stage, run_stage

    seen: list[bool] = []

    def killed_stage(cfg, out):
        # what a training stage finds from earlier attempts, then dies leaving a checkpoint
        ckpt = tmp_path / "simulate" / "ray-train" / "checkpoint_1"
        seen.append(ckpt.is_dir())
        ckpt.mkdir(parents=True, exist_ok=True)
        raise RuntimeError("killed")

    monkeypatch.setattr(Stage, "function", lambda self: killed_stage)
    cfg, out = load_config("quick"), str(tmp_path)
    for config, force in ((cfg, False), (cfg, False), (load_config("quick", ["sim.num_users=50"]), False),
                          (load_config("quick", ["sim.num_users=50"]), True)):
        with pytest.raises(RuntimeError, match="killed"):
            run_stage("simulate", config, out, force=force)
    # first attempt: empty; rerun: resumes; changed config: clean; --force: clean
    assert seen == [False, True, False, False]
