"""Your own logs on the ingest path: bad input gives clear errors or documented, counted
behaviour, and a run without impressions records the click-trained stages as not run
without making anything downstream stale (README "Your logs, before you have clicks")."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.pipeline import STAGES, not_run_reason, plan, run_stage, stale_upstream
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.search.list_search import ListSearchParams, hybrid_reward_list_search

DAY = 86_400_000


def _sessions(rows, tz: str | None = "UTC") -> pa.Table:
    return pa.table({
        "user_id": [r[0] for r in rows], "session_id": [r[1] for r in rows],
        "ts": pa.array([(i + 1) * DAY for i in range(len(rows))], pa.int64()).cast(pa.timestamp("ms", tz=tz)),
        "summary": [r[2] for r in rows]})


USERS = pa.table({"user_id": ["u1", "u2"], "activity_bucket": pa.array([0, 1], pa.int32())})
SESSIONS = [("u1", "s1", "Sourdough starter feeding"), ("u1", "s2", "Ramen in Osaka"),
            ("u2", "s3", "Surfing in Puerto Rico")]


def _logs(tmp_path, sessions=None, users=USERS, impressions=None, name="logs"):
    src = tmp_path / name
    src.mkdir()
    if users is not None:
        pq.write_table(users, src / "users.parquet")
    pq.write_table(sessions if sessions is not None else _sessions(SESSIONS), src / "sessions.parquet")
    if impressions is not None:
        pq.write_table(impressions, src / "impressions.parquet")
    return src


def _ingest(tmp_path, src, *overrides):
    cfg = load_config("quick", [f"data.source={src}", *overrides])
    out = str(tmp_path / "run")
    return cfg, out, run_stage("simulate", cfg, out)


def _impressions(users, clicked) -> pa.Table:
    n = len(users)
    return pa.table({
        "user_id": users, "ts": pa.array([DAY * 9] * n, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "request_id": [f"r{i // 2}" for i in range(n)], "starter": [f"Starter {i}?" for i in range(n)],
        "position": pa.array([i % 2 for i in range(n)], pa.int32()), "source": ["server"] * n,
        "clicked": clicked, "depth": pa.array([int(c) for c in clicked], pa.int32())})


def test_no_impressions_file_is_accepted_as_an_empty_table(tmp_path):
    cfg, out, manifest = _ingest(tmp_path, _logs(tmp_path))
    assert manifest["metrics"]["impressions"] == 0 and manifest["metrics"]["impressions_file"] is None
    table = io.read_table(layout.table_uri(out, "impressions"), "impressions", allow_empty=True)
    assert table.num_rows == 0 and table.schema == schema("impressions")
    assert layout.missing_clicks(out) == "the logs have no impressions"


def test_an_empty_or_click_free_impressions_table_is_accepted(tmp_path):
    src = _logs(tmp_path, impressions=schema("impressions").empty_table())
    _, out, manifest = _ingest(tmp_path, src)
    assert manifest["metrics"]["impressions"] == 0 and manifest["metrics"]["impressions_file"]
    src2 = _logs(tmp_path, impressions=_impressions(["u1", "u1"], [False, False]), name="logs2")
    cfg = load_config("quick", [f"data.source={src2}"])
    run_stage("simulate", cfg, str(tmp_path / "run2"))
    assert layout.missing_clicks(str(tmp_path / "run2")) == "none of the 2 logged impressions was clicked"


def test_a_missing_users_table_is_an_error_naming_it(tmp_path):
    src = _logs(tmp_path, users=None)
    with pytest.raises(io.DataError, match=r"logs/users\[\.parquet\]: no such file or directory; "
                                           r"your own logs need table 'users' \(user_id: string"):
        _ingest(tmp_path, src)


def test_a_session_of_an_unknown_user_is_an_error_naming_the_row(tmp_path):
    rows = [*SESSIONS, ("ghost", "s9", "Who am I")]
    with pytest.raises(io.DataError, match=r"sessions.parquet: 1 session\(s\) have a user_id that is "
                                           r"not in .*users.parquet \(first: row 3, user_id 'ghost', "
                                           r"session_id 's9'\)"):
        _ingest(tmp_path, _logs(tmp_path, sessions=_sessions(rows)))


def test_timestamps_without_a_time_zone_are_an_error_naming_file_and_column(tmp_path):
    src = _logs(tmp_path, sessions=_sessions(SESSIONS, tz=None))
    with pytest.raises(io.DataError, match=r"sessions.parquet: column 'ts' holds timestamps without a "
                                           r"time zone \(timestamp\[ms\]\)"):
        _ingest(tmp_path, src)


def test_blank_and_huge_summaries_are_dropped_and_cut_and_counted(tmp_path):
    huge = "Sourdough " * 10_240  # 100 KB
    rows = [*SESSIONS, ("u2", "blank1", "   "), ("u2", "blank2", ""), ("u2", "huge", huge)]
    cfg, out, manifest = _ingest(tmp_path, _logs(tmp_path, sessions=_sessions(rows)))
    m = manifest["metrics"]
    assert m["dropped"]["blank_summaries"] == {"rows": 2, "session_ids": ["blank1", "blank2"]}
    limit = cfg.judge.max_summary_chars
    assert m["truncated"]["summaries"] == {"rows": 1, "max_chars": limit, "longest_chars": len(huge),
                                           "session_ids": ["huge"]}
    stored = {r["session_id"]: r["summary"] for r in
              io.read_table(layout.table_uri(out, "sessions"), "sessions").to_pylist()}
    assert set(stored) == {"s1", "s2", "s3", "huge"} and stored["huge"] == huge[:limit]
    assert m["sessions"] == 4


def test_impressions_of_unknown_users_are_dropped_and_counted(tmp_path):
    imp = _impressions(["u1", "u1", "anonymous", "anonymous"], [True, False, True, False])
    _, out, manifest = _ingest(tmp_path, _logs(tmp_path, impressions=imp))
    assert manifest["metrics"]["dropped"]["impressions_of_unknown_users"] == {
        "rows": 2, "user_ids": ["anonymous"]}
    assert manifest["metrics"]["impressions"] == 2 and manifest["metrics"]["clicks"] == 1


def test_click_trained_stages_record_not_run_and_nothing_downstream_is_stale(tmp_path):
    src = _logs(tmp_path)
    cfg, out, _ = _ingest(tmp_path, src)
    why = not_run_reason(run_stage("train-ranker", cfg, out))
    assert why.startswith("train-ranker needs clicked and unclicked impressions")
    assert "the logs have no impressions" in why and "icebreaker export-impressions" in why
    # iterate and evaluate say the same before they read anything
    from icebreaker_ray.eval.stage import evaluate
    from icebreaker_ray.search.iterate import iterate

    for name, fn in (("iterate", iterate), ("evaluate", evaluate)):
        why = not_run_reason(fn(cfg, out))
        assert why.startswith(f"{name} needs ") and "export-impressions" in why, why
    assert io.is_complete(out, "train-ranker") and layout.util_ranker(out) is None
    assert not io.exists(layout.ranker_dir(out, "util"))
    # Complete under the chained fingerprint: mine (which reads it) does not see it as stale.
    assert "train-ranker" not in stale_upstream("mine", cfg, out)
    todo = plan(cfg, out)
    assert "simulate" not in todo and "train-ranker" not in todo and "label-revisits" in todo
    # A rerun keeps it (skipped), the reason still readable.
    again = run_stage("train-ranker", cfg, out)
    assert again["skipped"] and not_run_reason(again)
    # Clicks arrive (exported from the server): ingest and then train-ranker are stale.
    pq.write_table(_impressions(["u1", "u2"], [True, False]), src / "impressions.parquet")
    assert stale_upstream("train-ranker", cfg, out) == ["simulate"]
    assert plan(cfg, out)[:1] == ["simulate"] and "train-ranker" in plan(cfg, out)
    run_stage("simulate", cfg, out)
    assert layout.missing_clicks(out) is None
    assert [s.name for s in STAGES if s.name in plan(cfg, out)][0] == "label-revisits"
    assert "train-ranker" in plan(cfg, out)


def test_the_list_search_runs_on_the_click_free_proxy():
    """Algorithm 1 unchanged, R_util = best cosine to I*: S+ holds the on-topic starters."""
    rng = np.random.default_rng(0)
    topics = np.linalg.qr(rng.normal(size=(16, 16)))[0][:, :6].T  # orthonormal "topics"
    interests = topics[:2]                                        # the user's two interests
    pool = np.stack([topics[0], 0.9 * topics[0] + 0.44 * topics[2], topics[1],
                     0.8 * topics[1] + 0.6 * topics[3], topics[4], topics[5]])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    utility = interest_similarity(pool, interests)
    np.testing.assert_allclose(utility, [1.0, 0.898, 1.0, 0.8, 0.0, 0.0], atol=1e-3)
    res = hybrid_reward_list_search(utility, pool, ListSearchParams(K=3, J=2, M=4), rng=0)
    assert set(res.best) <= {0, 1, 2, 3} and {0, 2} <= set(res.best)
    assert res.negatives["utility"].v_util < res.v_util


def test_cli_prints_the_not_run_message(tmp_path):
    from typer.testing import CliRunner

    from icebreaker_ray.cli import app

    src = _logs(tmp_path)
    args = ["--config", "quick", "--out", str(tmp_path / "run"), "--set", f"data.source={src}"]
    assert CliRunner().invoke(app, ["simulate", *args]).exit_code == 0
    result = CliRunner().invoke(app, ["train-ranker", *args])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "train-ranker: not run: train-ranker needs clicked and unclicked impressions" in text
    assert "icebreaker export-impressions --out RUN --to DATA/impressions.parquet" in text
