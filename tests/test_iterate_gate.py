"""The round gate of the ``iterate`` stage (issue 17 item 4): validation users, the gate's
figures and decision, and the stage refusing a broken round and promoting a good one.

The stage test stubs the expensive steps (sampling, list search, DPO) so it runs in a
second: a "model" is a directory whose ``quality`` file says whether its lists pass the
filter ("good") or never parse ("broken"); everything else (the gate, the manifest, the
promoted generator the evaluation reads) is the real code.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.data.splits import is_holdout
from icebreaker_ray.isg.batch import LISTS_SCHEMA
from icebreaker_ray.search import iterate as it
from icebreaker_ray.search.mine import POOL_SCHEMA
from icebreaker_ray.search.stage import training_users


class WordEncoder:
    """Bag-of-words unit vectors: cosine = word overlap (a stand-in sentence embedder)."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def __call__(self, texts):
        out = np.zeros((len(texts), 64))
        for i, text in enumerate(texts):
            for word in text.lower().replace("?", "").split():
                out[i, zlib.crc32(word.encode()) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _lists(users, interests, quality: str, k: int = 4) -> pa.Table:
    rows = []
    for u in users:
        good = quality == "good"
        starters = [f"What about {interests[u][0]} {j}?" for j in range(k)] if good else []
        rows.append({"user_id": u, "starters": starters, "alternatives": [], "sampled": starters,
                     "reason": "ok" if good else "no_parse", "num_candidates": 2,
                     "num_complete": 2 if good else 0, "rejections": "{}"})
    return pa.Table.from_pylist(rows, schema=LISTS_SCHEMA)


# ----------------------------------------------------------------------------- pure parts


def test_validation_users_are_a_stable_slice_of_the_non_held_out_users():
    cfg = load_config("configs/quick.yaml", ["iterate.validation_users=10"])
    interests = {f"u{i:04d}": ["x"] for i in range(200)}
    val = it.validation_users(interests, cfg)
    assert len(val) == 10 and val == sorted(val) == it.validation_users(dict(reversed(interests.items())), cfg)
    assert not any(is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed) for u in val)
    # a second split, not the first users in order; never mined in a round
    assert val != sorted(u for u in interests if not is_holdout(u, cfg.eval.holdout_fraction, 0))[:10]
    cfg_all = load_config("configs/quick.yaml", ["search.max_users=1000", "iterate.validation_users=10"])
    assert not set(val) & (set(training_users(interests, cfg_all, 0)) | set(training_users(interests, cfg_all, 1)))
    assert it.validation_users(interests, load_config("configs/quick.yaml", ["run.seed=1",
                                                                             "iterate.validation_users=10"])) != val


def test_gate_figures_hand_case():
    enc = WordEncoder()
    interests = {"a": ["one piece anime"], "b": ["sourdough bread"]}
    lists = pa.Table.from_pylist([
        {"user_id": "a", "starters": ["one piece anime", "one piece anime"], "alternatives": [],
         "sampled": [], "reason": "ok", "num_candidates": 2, "num_complete": 1, "rejections": "{}"},
        {"user_id": "b", "starters": [], "alternatives": [], "sampled": [], "reason": "no_parse",
         "num_candidates": 2, "num_complete": 0, "rejections": "{}"}], schema=LISTS_SCHEMA)
    got = it.gate_figures(lists, interests, enc, k=4)
    # a: two slots of cosine 1, two empty -> 0.5; b: nothing -> 0; mean 0.25. 1 of 4 lists passed.
    assert got == {"users": 2, "format_pass_rate": 0.25, "relevance": pytest.approx(0.25)}


def test_gate_decision():
    inc = {"format_pass_rate": 0.36, "relevance": 0.40}
    ok, why = it.gate_decision({"format_pass_rate": 0.35, "relevance": 0.395}, inc, 0.02, 0.01)
    assert ok and why.startswith("not worse")  # within both tolerances
    ok, why = it.gate_decision({"format_pass_rate": 0.062, "relevance": 0.5}, inc, 0.02, 0.01)
    assert not ok and "format pass 6.2% < 36.0%" in why and "relevance" not in why
    ok, why = it.gate_decision({"format_pass_rate": 0.9, "relevance": 0.2}, inc, 0.02, 0.01)
    assert not ok and "relevance 0.200 < 0.400" in why


# ----------------------------------------------------------------------------- the stage


@pytest.fixture
def stubbed_run(tmp_path, monkeypatch):
    """A run directory with a 'good' round-0 model and the stage's heavy steps stubbed;
    ``qualities`` lists what each round's DPO produces."""
    out = str(tmp_path / "run")
    users = [f"u{i:03d}" for i in range(40)]
    interests = {u: [f"topic{i % 7} subject{i}"] for i, u in enumerate(users)}
    dpo_stage = io.StageWriter(out, "dpo")
    dpo_stage.write_bytes("model/quality", b"good")
    dpo_stage.commit()
    qualities: list[str] = []
    calls: dict[str, list] = {"mined": [], "validation": []}

    def quality(model_dir):
        return Path(model_dir, "quality").read_text()

    def generate_lists(requests, model_dir, cfg, params=None, **_):
        return _lists(requests.column("user_id").to_pylist(), interests, quality(model_dir))

    def generate_many(jobs, cfg, params=None, **_):
        calls["validation"].append(jobs[1][1].column("user_id").to_pylist())  # the gate's users
        return [generate_lists(r, m, cfg) for m, r in jobs]

    def mining_requests(out_, cfg, round_):
        mined = training_users(interests, cfg, round_)
        calls["mined"].append(mined)
        return pa.table({"user_id": mined, "interests": [interests[u] for u in mined],
                         "teacher_starters": [[] for _ in mined]})

    def pools_from_lists(lists, requests, cfg):
        return pa.table({"user_id": lists.column("user_id"), "interests": requests.column("interests"),
                         "starters": lists.column("sampled")}, schema=POOL_SCHEMA)

    def dpo_round(cfg, writer, rows, start, relative, run):
        target = Path(writer.path(relative))
        target.mkdir(parents=True)
        (target / "quality").write_text(qualities.pop(0))
        (target / "started_from").write_text(quality(start) + ":" + str(start))
        return {"pairs": len(rows), "steps": 1, "first_loss": 0.69, "last_loss": 0.6}

    empty = schema("preference_pairs").empty_table()
    monkeypatch.setattr(it, "init_ray", lambda cfg: None)
    monkeypatch.setattr(it, "mining_requests", mining_requests)
    monkeypatch.setattr(it, "generate_lists", generate_lists)
    monkeypatch.setattr(it, "generate_many", generate_many)
    monkeypatch.setattr(it, "pools_from_lists", pools_from_lists)
    monkeypatch.setattr(it, "search_pairs", lambda *a, **k: empty)
    monkeypatch.setattr(it, "dpo_round", dpo_round)
    monkeypatch.setattr(it.layout, "trigger_interests", lambda out_: interests)
    monkeypatch.setattr(it.layout, "missing_clicks", lambda out_: None)  # logs with clicks
    monkeypatch.setattr("icebreaker_ray.models.TextEncoder", WordEncoder)
    monkeypatch.setattr(it.io, "read_table", lambda uri, name, allow_empty=False: (
        empty if name == "preference_pairs" else pa.table({"user_id": pa.array([], pa.string())})))
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = load_config("configs/quick.yaml", [f"data.source={logs}", "iterate.rounds=3",
                                             "iterate.validation_users=8", "search.max_users=1000"])
    return cfg, out, qualities, calls


def _manifest(out):
    return io.read_manifest(out, "iterate")["metrics"]


def test_gate_refuses_a_broken_round_and_promotes_a_good_one(stubbed_run):
    cfg, out, qualities, calls = stubbed_run
    qualities += ["broken", "good", "broken"]
    it.iterate(cfg, out)
    m = _manifest(out)
    gates = [r["gate"] for r in m["rounds"]]
    assert [g["promoted"] for g in gates] == [False, True, False]
    assert gates[0]["candidate"]["format_pass_rate"] == 0.0 and gates[0]["incumbent"]["format_pass_rate"] == 1.0
    assert gates[0]["reason"].startswith("refused: format pass 0.0% < 100.0%")
    assert gates[0]["incumbent_round"] == 0 and gates[2]["incumbent_round"] == 2
    assert all(g["validation_users"] == 8 for g in gates)
    assert m["final_model"] == "round-2/model"
    assert m["promotion"]["promoted_round"] == 2 and m["promotion"]["model"] == "iterate/round-2/model"
    assert "round 1 refused" in m["promotion"]["reason"] and "round 3 refused" in m["promotion"]["reason"]
    assert layout.promoted_generator(out) == io.join(out, "iterate", "round-2/model")
    # a refused round does not replace the generator: round 2 trained on top of round 0's
    started = Path(out, "iterate", "round-2", "model", "started_from").read_text()
    assert started.startswith("good:") and started.endswith("dpo/model")
    assert Path(out, "iterate", "round-3", "model", "started_from").read_text().endswith("round-2/model")
    # validation users: gated on once (round 0's model), never mined in any round, round 0's too
    [val] = calls["validation"]
    interests = it.layout.trigger_interests(out)  # the fixture's users
    assert len(val) == 8 and val == it.validation_users(interests, cfg)
    assert all(not set(val) & set(mined) for mined in [*calls["mined"], training_users(interests, cfg, 0)])
    assert json.loads(Path(out, "iterate", "rounds.json").read_text())[0]["gate"]["promoted"] is False


def test_no_round_passes_round_zero_stays(stubbed_run):
    cfg, out, qualities, _ = stubbed_run
    qualities += ["broken"] * 3
    it.iterate(cfg, out)
    m = _manifest(out)
    assert m["final_model"] is None and m["promotion"]["promoted_round"] == 0
    assert "round 0's DPO model stays" in m["promotion"]["reason"]
    assert layout.promoted_generator(out) == layout.dpo_generator(out)


def test_gate_off_promotes_every_round(stubbed_run):
    cfg, out, qualities, calls = stubbed_run
    qualities += ["broken"] * 3
    it.iterate(cfg.model_copy(update={"iterate": cfg.iterate.model_copy(update={"gate": False})}), out)
    m = _manifest(out)
    assert m["final_model"] == "round-3/model" and m["promotion"]["promoted_round"] == 3
    assert all(r["gate"]["promoted"] for r in m["rounds"]) and calls["validation"] == []
