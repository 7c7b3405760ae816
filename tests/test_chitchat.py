"""The chitchat converter (icebreaker_ray/data/chitchat.py) on a hand-made file in the data
set's format, with every expected row worked out by hand, and on the real data set."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from datetime import UTC, datetime

import pytest

from icebreaker_ray.data import chitchat, io

WORDS = " ".join(["word"] * 20)  # 99 characters


def _utt(text: str, ts: str, sender: str) -> dict:
    return {"text": text, "timestamp": ts, "sender": sender}


CONVERSATIONS = {
    "c1": {"start": "2018-05-03T01:38:01Z", "messages": [
        [_utt("hi", "2018-05-02T19:38:15Z", "alice"),
         _utt("I love  Puerto Rico surfing", "2018-05-02T19:38:20Z", "alice")],
        [_utt("cool", "2018-05-02T19:39:00Z", "bob")]]},
    # After 2018-11-04 Denver is on MST (UTC-7).
    "c2": {"start": "2018-11-10T17:00:00Z", "messages": [
        [_utt("   ", "2018-11-10T10:00:00Z", "bob")],
        [_utt("Sourdough starter feeding times", "2018-11-10T10:01:00Z", "alice")]]},
    "c3": {"start": "2018-06-01T06:00:00Z", "messages": [
        [_utt(WORDS, "2018-06-01T00:00:00Z", "alice")],
        [_utt("the Osaka ramen trip", "2018-06-01T00:00:05Z", "bob"),
         _utt("also Kyoto temples", "2018-06-01T00:00:09Z", "bob")],
        [_utt("hello?", "2018-06-01T00:01:00Z", "carol")]]},
}


def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_hand_made_conversations_give_the_hand_computed_rows(tmp_path):
    tables = chitchat.convert(CONVERSATIONS, max_chars=40, min_sessions=2, num_buckets=2)
    assert tables.sessions.to_pylist() == [
        # "hi" (2) + " / " + the 26-character utterance fit in 40: both, in the order said
        {"user_id": "alice", "session_id": "c1:alice", "ts": _utc(2018, 5, 3, 1, 38, 15),
         "summary": "hi / I love Puerto Rico surfing"},
        # one 99-character utterance: cut at the 8th word's end, "…" makes it 40
        {"user_id": "alice", "session_id": "c3:alice", "ts": _utc(2018, 6, 1, 6, 0, 0),
         "summary": " ".join(["word"] * 8) + "…"},
        {"user_id": "alice", "session_id": "c2:alice", "ts": _utc(2018, 11, 10, 17, 1, 0),
         "summary": "Sourdough starter feeding times"},
        {"user_id": "bob", "session_id": "c1:bob", "ts": _utc(2018, 5, 3, 1, 39, 0),
         "summary": "cool"},
        # 20 + 3 + 18 = 41 > 40: only the longer utterance
        {"user_id": "bob", "session_id": "c3:bob", "ts": _utc(2018, 6, 1, 6, 0, 5),
         "summary": "the Osaka ramen trip"},
    ]
    # bob's blank c2 is no session; carol has one session, under min_sessions
    assert tables.users.to_pylist() == [
        {"user_id": "alice", "activity_bucket": 1, "profile": None},
        {"user_id": "bob", "activity_bucket": 0, "profile": None}]
    st = tables.stats
    assert (st["conversations"], st["sessions_in_data_set"], st["blank_sender_sessions_skipped"],
            st["summaries_shortened"], st["users_below_min_sessions"]) == (3, 6, 1, 2, 1)

    paths = chitchat.write(tables, str(tmp_path / "cc"))
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == [
        "chitchat.json", "sessions.parquet", "users.parquet"]  # no impressions: there are none
    back = io.read_table(paths["sessions"], "sessions", require_tz=True)
    assert back.to_pylist() == tables.sessions.to_pylist()
    assert json.loads((tmp_path / "cc" / "chitchat.json").read_text())["sessions"] == 5


def test_sampling_and_limits_are_counted():
    one = chitchat.convert(CONVERSATIONS, max_chars=40, max_users=1)
    assert one.users.num_rows == 1 and one.stats["users_left_out_by_max_users"] == 1
    recent = chitchat.convert(CONVERSATIONS, max_chars=40, max_sessions_per_user=2)
    alice = [r["session_id"] for r in recent.sessions.to_pylist() if r["user_id"] == "alice"]
    assert alice == ["c3:alice", "c2:alice"] and recent.stats["older_sessions_left_out"] == 1


def test_wheel_source_and_bad_files(tmp_path):
    wheel = tmp_path / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(chitchat.DATASET_FILE, json.dumps(CONVERSATIONS))
    assert chitchat.load_conversations(wheel) == CONVERSATIONS
    with pytest.raises(io.DataError, match="no such file"):
        chitchat.load_conversations(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(io.DataError, match="mapping of conversation id"):
        chitchat.load_conversations(tmp_path / "bad.json")
    with pytest.raises(io.DataError, match="conversation c9: not in the chitchat format"):
        chitchat.convert({"c9": {"messages": [[{"text": "hi"}]]}})


@pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is None,
                    reason="chitchat-dataset not installed (pip install -e '.[dev]')")
def test_the_real_data_set():
    tables = chitchat.convert(chitchat.load_conversations())
    st = tables.stats
    assert (st["conversations"], st["senders_with_text"], st["sessions_in_data_set"]) == (7168, 1315, 11185)
    summaries = tables.sessions.column("summary").to_pylist()
    assert all(0 < len(s) <= 200 and s == s.strip() for s in summaries)
    assert tables.sessions.num_rows == st["sessions"] > 10_000
    ts = tables.sessions.column("ts")
    assert ts.type.tz == "UTC"
    first, last = ts.to_pylist()[0], max(ts.to_pylist())
    assert _utc(2018, 4, 10) < min(ts.to_pylist()) and last < _utc(2018, 11, 18), (first, last)
    io.validate_table(tables.users, "users")
    assert set(tables.sessions.column("user_id").to_pylist()) == set(tables.users.column("user_id").to_pylist())


def test_cli_import_chitchat_writes_the_tables_and_a_bad_source_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from icebreaker_ray.cli import app

    src = tmp_path / "dataset.json"
    src.write_text(json.dumps(CONVERSATIONS))
    out = tmp_path / "cc"
    result = CliRunner().invoke(app, ["import-chitchat", "--out", str(out), "--source", str(src),
                                      "--max-chars", "40"])
    assert result.exit_code == 0, result.output
    assert "2 users, 5 sessions (2 summaries shortened)" in result.output
    assert io.read_table(str(out / "users.parquet"), "users").num_rows == 2
    bad = CliRunner().invoke(app, ["import-chitchat", "--out", str(out), "--source", str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and "nope.json: no such file" in bad.output
    none = CliRunner().invoke(app, ["export-impressions", "--out", str(tmp_path / "run"),
                                    "--to", str(tmp_path / "imp.parquet")])
    assert none.exit_code == 2 and "no event store there" in none.output
