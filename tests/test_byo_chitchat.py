"""Real chat text end to end: a CI-sized subset of the chitchat data set (real senders, no
impressions), the pipeline on CPU with no LLM endpoint, the real Serve app answering and
logging feedback, and the exported event store training the ranker on the next run.

The generator is the tiny random model (as in tests/test_pipeline_e2e.py): it writes no
usable starters, so mining pools are filled with the grounded teacher's starters and the
server's lists come from its cold-start fill; what is checked is that every stage that
needs no clicks runs for real on real text, that the click-trained ones say why not, and
that the loop to clicks closes. Real starters from SmolLM2 on this data: README.
"""

from __future__ import annotations

import importlib.util
import re

import httpx
import pytest
from serve_support import start_app, stop_app

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import chitchat, io
from icebreaker_ray.isg.filters import FilterParams, SafetyFilter
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.pipeline import STAGES, not_run_reason, plan, run_pipeline, run_stage
from icebreaker_ray.rid.judge import clean_summary
from icebreaker_ray.search.mine import UTILITY_PROXY
from icebreaker_ray.serve.store import export_impressions

pytestmark = [
    pytest.mark.slow, pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is None,
                       reason="chitchat-dataset not installed (pip install -e '.[dev]')"),
]
CLICK_TRAINED = {"train-ranker", "iterate", "evaluate"}


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9'’&+\-]*", text)}


def test_chitchat_subset_without_clicks_serves_then_trains_the_ranker(tmp_path, ray_local,
                                                                      tiny_generator):
    data = tmp_path / "chitchat"
    tables = chitchat.convert(chitchat.load_conversations(), max_users=24, max_sessions_per_user=8)
    chitchat.write(tables, str(data))
    cfg = load_config("quick", [
        f"data.source={data}", f"models.generator={tiny_generator}",
        "sft.max_steps=2", "sft.save_steps=1", "dpo.max_steps=2", "dpo.save_steps=1",
        "sft.num_workers=1", "dpo.num_workers=1", "sft.zero_stage=0", "dpo.zero_stage=0",
        "judge.num_actors=1", "scorer.num_actors=1", "teacher.num_actors=1",
        "search.num_actors=1", "scorer.num_workers=1", "ranker.num_workers=1",
        "ranker.ensemble=2", "search.max_users=6", "generation.max_new_tokens=48",
        "search.teacher_mix_ratio=1.0"])
    assert cfg.teacher.backend == "grounded"
    out = str(tmp_path / "run")
    seen: dict[str, str] = {}
    results = dict(run_pipeline(cfg, out, on_stage=lambda s, status, _: seen.__setitem__(s.name, status)))
    assert set(results) == {s.name for s in STAGES}
    assert {name for name, status in seen.items() if status == "not run"} == CLICK_TRAINED
    assert all(seen[s.name] == "done" for s in STAGES if s.name not in CLICK_TRAINED)
    for name in CLICK_TRAINED:
        assert "the logs have no impressions" in not_run_reason(results[name])
    assert results["simulate"]["metrics"]["impressions"] == 0
    assert plan(cfg, out) == []  # the not-run records are complete: nothing is stale

    # SIT corpus: the grounded teacher, starters made of the users' own words.
    corpus = io.read_table(layout.table_uri(out, "sit_corpus"), "sit_corpus").to_pylist()
    with_starters = [r for r in corpus if r["starters"]]
    assert all(r["teacher"] == "grounded" for r in corpus)
    assert len(with_starters) >= len(corpus) // 2, [r["interests"] for r in corpus if not r["starters"]]
    for row in with_starters:
        own = _words(" ".join(row["interests"]))
        for s in row["starters"]:
            assert _words(s) & own, (s, row["interests"])
    # Mining ran Algorithm 1 on the click-free proxy, and DPO trained on its pairs.
    assert results["mine"]["metrics"]["utility"] == UTILITY_PROXY
    assert results["mine"]["metrics"]["pairs"] > 0
    assert results["dpo"]["metrics"]["dpo"]["steps"] == 2
    assert results["dpo"]["metrics"]["dpo-vanilla"]["skipped"] == "no logged-feedback pairs"
    assert layout.promoted_generator(out) == layout.dpo_generator(out)

    # The real Serve app on the run: no ranker, still K filtered starters, feedback logged.
    interests = layout.trigger_interests(out)
    summaries: dict[str, set[str]] = {}
    for r in tables.sessions.to_pylist():
        # as RID keeps them: greeting clauses cut (rid/judge.clean_summary)
        summaries.setdefault(r["user_id"], set()).add(clean_summary(r["summary"], cfg.judge.max_summary_chars))
    app = start_app(out, None)
    safety = SafetyFilter(TextEncoder(), FilterParams(k=64))  # the server's rules, built apart
    events, clicks = [], 0
    try:
        with httpx.Client(base_url=app.url, timeout=180) as client:
            health = client.get("/healthz").json()
            assert health["ranker"] is False and health["scorer"] is True
            assert health["known_users"] == tables.users.num_rows
            users = sorted(interests)[:8]
            for i in range(32):
                uid = users[i % len(users)]
                body = client.post("/v1/starters", json={"user_id": uid, "k": 4}).json()
                texts = [s["text"] for s in body["starters"]]
                assert len(texts) == 4 and safety.filter(texts).kept == texts
                assert body["trigger_interests"] and set(body["trigger_interests"]) <= summaries[uid]
                rid = body["request_id"]
                for s in body["starters"]:
                    events.append({"event_id": f"{rid}-imp-{s['position']}", "request_id": rid,
                                   "user_id": uid, "starter": s["text"], "position": s["position"],
                                   "type": "impression", "source": s["source"]})
                if i % 2 == 0:  # a click on every other list, on a varying slot
                    shown = events[-4 + i % 4]  # this list's impression at position i % 4
                    events.append({**shown, "event_id": f"{rid}-click", "type": "click"})
                    clicks += 1
            resp = client.post("/v1/feedback", json={"events": events})
            assert resp.status_code == 200 and resp.json()["inserted"] == len(events)
    finally:
        stop_app()

    # The next run: exported event store -> ingest -> train-ranker trains for real.
    exported = export_impressions(app.store_path, str(data / "impressions.parquet"))
    assert exported == 32 * 4
    assert plan(cfg, out)[0] == "simulate" and "train-ranker" in plan(cfg, out)
    ingest = run_stage("simulate", cfg, out)
    assert (ingest["metrics"]["impressions"], ingest["metrics"]["clicks"]) == (exported, clicks)
    ranker = run_stage("train-ranker", cfg, out)
    assert not_run_reason(ranker) is None
    assert ranker["metrics"]["util"]["train_clicks"] > 0 and ranker["metrics"]["eval"]["train_clicks"] > 0
    assert layout.util_ranker(out) == layout.ranker_dir(out, "util")
    assert io.exists(io.join(layout.ranker_dir(out, "util"), "ranker.json"))
