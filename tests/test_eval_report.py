"""The evaluate stage's A/B aggregation, topic classifier and report (no models needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from icebreaker_ray.config import load_config
from icebreaker_ray.eval.report import FIGURES, REQUIRED_SECTIONS, render_markdown, write_report
from icebreaker_ray.eval.stage import ab_lifts, histories, pair_agreement


def _events(users, clicks, sessions, day0=20):
    rows = {"user_id": [], "day": [], "shown": [], "clicked": [], "sessions": [], "started": [], "depth": []}
    for u, c, s in zip(users, clicks, sessions, strict=True):
        rows["user_id"].append(u)
        rows["day"].append(day0)
        rows["shown"].append(4)
        rows["clicked"].append(c)
        rows["sessions"].append(s)
        rows["started"].append(s > 0)
        rows["depth"].append(0)
    return pa.table(rows)


def test_ab_lifts_hand_case():
    users = ["u1", "u2", "u3", "u4"]
    a = SimpleNamespace(events=_events(users, [1, 0, 0, 0], [1, 1, 0, 2]), metrics={"ctr": 1 / 16})
    # Arm b: twice the clicks, one more session; u5 only came in arm b (zeros in arm a).
    b = SimpleNamespace(events=_events(users + ["u5"], [1, 1, 0, 0, 0], [1, 1, 1, 2, 0]), metrics={})
    out = ab_lifts({"baseline": a, "b": b}, "baseline", (20, 21), n_boot=200, seed=0)
    assert "lifts" not in out["baseline"] and out["b"]["users"] == 5
    lifts = out["b"]["lifts"]
    # CTR: a = 1/16, b = 2/20 -> lift 0.6; sessions/user over the 5 aligned users: 4/5 vs 5/5.
    assert lifts["ctr"]["lift"] == pytest.approx((2 / 20) / (1 / 16) - 1)
    assert lifts["avg_sessions"]["lift"] == pytest.approx(5 / 4 - 1)
    assert lifts["csr"]["lift"] == pytest.approx((4 / 5) / (3 / 5) - 1)
    for row in lifts.values():
        assert row["ci_low"] <= row["lift"] <= row["ci_high"] and 0 < row["p_value"] <= 1


def test_histories_are_in_time_order():
    ts = pa.array([3_000, 1_000, 2_000], pa.timestamp("ms", tz="UTC"))
    table = pa.table({"user_id": ["a", "a", "b"], "session_id": ["a2", "a1", "b1"], "ts": ts,
                      "summary": ["later", "earlier", "only"]})
    texts, days = histories(table)
    assert texts == {"a": ["earlier", "later"], "b": ["only"]}
    assert days["a"] == pytest.approx([1_000 / 86_400_000, 3_000 / 86_400_000])


def _quality(x: float) -> dict:
    return {"users": 3, "r_user_f": x, "r_score_f": x, "r_user_oracle": x / 2, "r_score_oracle": x / 2,
            "hacking_gap": x / 2, "mean_f": 0.1, "mean_oracle_ctr": 0.05, "lexical_diversity": 7.0,
            "semantic_diversity": 2.5, "full_lists": 1.0, "format_pass_rate": 0.9}


def _results() -> dict:
    lift = {"lift": 0.1, "ci_low": -0.05, "ci_high": 0.2, "p_value": 0.3, "n_users": 3}
    arm = {"metrics": {"active_days": 2.0, "avg_sessions": 5.0, "ctr": 0.04, "csr": 0.8}, "users": 3}
    return {
        "config": {"holdout_fraction": 0.2, "ab_days": 5, "num_candidates": 2, "K": 4},
        "table1": {"R_u (retrieval)": _quality(0.0), "ICEBREAKER": _quality(0.3),
                   "SFT+DPO": {"skipped": "no model"}},
        "table2": {"baseline": arm, "ICEBREAKER": {**arm, "lifts": {k: lift for k in
                                                                    ("active_days", "avg_sessions", "ctr", "csr")}}},
        "table6": {"RID": _quality(0.3), "Rule-based": _quality(0.1)},
        "table7": {"SFT": _quality(0.1), "round 0": _quality(0.2), "round 1": _quality(0.3)},
        "table9": {"utility only": _quality(0.2), "hierarchical": _quality(0.3)},
        "rounds": [{"round": 1, "users": 4, "deployed_ctr": 0.05, "baseline_ctr": 0.04,
                    "ranker": {"click_auc": 0.7}, "mining": {"pairs": 9},
                    "dpo": {"first_loss": 0.69, "last_loss": 0.5}, "format_pass_rate": 0.8}],
        "topics": {"summaries": {"games": 0.6, "travel": 0.4}, "ICEBREAKER starters": {"games": 1.0}},
        "examples": [{"user_id": "u1", "summaries": ["s | 1"], "trigger_interests": ["i"],
                      "baseline": ["b?"], "generated": ["g?"]}],
        "stages": {"simulate": 20.0, "sft": 100.0},
        "topic_classifier_train_accuracy": 0.95,
        "pairs_vs_oracle": {"mined, round 0": {"utility": {"pairs": 2, "chosen_wins": 0.75,
                                                           "chosen_p_click": 0.3, "rejected_p_click": 0.2}}},
    }


def test_pair_agreement_hand_case():
    # per-slot click probabilities: the user clicks "good" starters with 0.2, others 0.05
    def probs(lists):
        return {u: np.array([0.2 if s.startswith("good") else 0.05 for s in v]) for u, v in lists.items()}

    pairs = [
        {"user_id": "a", "chosen": ["good 1", "good 2"], "rejected": ["bad 1", "bad 2"], "negative_type": "utility"},
        {"user_id": "a", "chosen": ["bad 1", "bad 2"], "rejected": ["good 1", "bad 3"], "negative_type": "utility"},
        {"user_id": "b", "chosen": ["good 1", "bad 1"], "rejected": ["bad 2", "good 2"], "negative_type": "joint"},
        {"user_id": "c", "chosen": ["good 1"], "rejected": ["bad 1"]},  # logged feedback: no type
    ]
    got = pair_agreement(pairs, probs)
    # chosen/rejected P(click any): (0.4, 0.1) win, (0.1, 0.25) loss, (0.25, 0.25) tie, (0.2, 0.05) win
    assert got["utility"] == {"pairs": 2, "chosen_wins": 0.5, "chosen_p_click": pytest.approx(0.25),
                              "rejected_p_click": pytest.approx(0.175)}
    assert got["joint"]["chosen_wins"] == 0.5 and got["joint"]["pairs"] == 1
    assert got["all"]["pairs"] == 4 and got["all"]["chosen_wins"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert pair_agreement([], probs) == {}


def test_report_has_every_table_and_figure(tmp_path):
    from icebreaker_ray.data import io

    cfg = load_config("configs/quick.yaml")
    md = render_markdown(_results(), cfg)
    for section in REQUIRED_SECTIONS:
        assert section in md
    assert "| ICEBREAKER | 30.0% | 30.0% | 15.0% | 15.0% | 15.0% | 5.0% |" in md
    assert "+10.0% [-5.0, +20.0] p=0.300" in md
    assert "s / 1" in md  # a pipe inside a summary does not break the table
    assert "| mined, round 0 | utility | 2 | 75.0% | 30.0% | 20.0% |" in md
    writer = io.StageWriter(str(tmp_path), "evaluate")
    write_report(writer, _results(), cfg)
    for name in ("report.md", *FIGURES):
        data = (tmp_path / "evaluate" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else data.startswith(b"# ICEBREAKER")


@pytest.mark.integration
def test_topic_classifier_recognizes_unseen_catalog_phrasing():
    from icebreaker_ray.eval.topics import TopicClassifier
    from icebreaker_ray.models import TextEncoder
    from icebreaker_ray.sim.catalog import all_starters, load_catalog

    catalog = load_catalog()
    clf = TopicClassifier.fit(catalog, TextEncoder("all-minilm-l6-v2"), per_subject=4, seed=0)
    rng = np.random.default_rng(1)
    subjects = [catalog.subjects[i] for i in rng.choice(len(catalog.subjects), 120, replace=False)]
    texts = [all_starters(s)[-1] for s in subjects]  # late templates: mostly not in the sample
    truth = [clf.names[s.category_id] for s in subjects]
    accuracy = np.mean([p == t for p, t in zip(clf.predict(texts), truth, strict=True)])
    assert accuracy > 0.75
    cats = clf.categories_per_list([texts[:2], [], texts[2:5]])
    assert [len(c) for c in cats] == [2, 0, 3]


def test_table1_statistics_intervals_and_paired_tests():
    from icebreaker_ray.eval.stage import table1_statistics

    users = np.array([f"u{i:03d}" for i in range(200)], dtype=object)
    rng = np.random.default_rng(0)

    def terms(p_click):
        return {"user_id": users, "r_user_f": (p_click > 0.2).astype(float), "r_score_f": p_click - 0.2,
                "r_user_oracle": (p_click > 0.2).astype(float), "r_score_oracle": p_click - 0.2,
                "mean_f": p_click, "oracle_p_click": p_click}

    sft = rng.uniform(0.1, 0.3, 200)
    got = table1_statistics({"SFT": terms(sft), "SFT+DPO": terms(sft.copy()),
                             "ICEBREAKER": terms(sft + 0.05)}, n_boot=300, seed=0)
    assert got["users"] == 200
    ci = got["intervals"]["SFT"]["mean_oracle_ctr"]
    assert ci["ci_low"] < sft.mean() < ci["ci_high"] and ci["n_users"] == 200
    better = got["paired"]["ICEBREAKER vs SFT"]["mean_oracle_ctr"]
    assert better["diff"] == pytest.approx(0.05) and better["p_value"] < 0.01 and better["ci_low"] > 0
    same = table1_statistics({"ICEBREAKER": terms(sft), "SFT+DPO": terms(sft.copy())}, 300, 0)
    tie = same["paired"]["ICEBREAKER vs SFT+DPO"]["r_score_oracle"]
    assert tie["diff"] == 0 and tie["p_value"] == 1.0 and tie["ci_low"] <= 0 <= tie["ci_high"]
    assert "ICEBREAKER vs SFT" not in same["paired"]  # no SFT row, no test
    with pytest.raises(ValueError, match="same users"):
        table1_statistics({"SFT": terms(sft), "ICEBREAKER": {**terms(sft), "user_id": users[::-1]}}, 100, 0)


def test_report_shows_intervals_graded_users_and_the_promoted_round():
    cfg = load_config("configs/quick.yaml")
    results = _results()
    results["config"].update(graded_users=212, max_users=250)
    ci = {"mean": 0.3, "ci_low": 0.25, "ci_high": 0.35, "n_users": 212}
    results["table1_stats"] = {
        "users": 212, "n_boot": 1000, "confidence": 0.95,
        "intervals": {"ICEBREAKER": {k: ci for k in ("r_user_f", "r_score_f", "r_user_oracle",
                                                     "r_score_oracle", "mean_oracle_ctr")}},
        "paired": {"ICEBREAKER vs SFT": {"mean_oracle_ctr": {"diff": 0.021, "ci_low": 0.004, "ci_high": 0.04,
                                                             "p_value": 0.012, "n_users": 212}}}}
    results["promotion"] = {"promoted_round": 0, "model": "dpo/model",
                            "reason": "No self-reinforced round was promoted (round 1 refused: x)."}
    results["rounds"][0]["gate"] = {
        "validation_users": 24, "promoted": False, "reason": "refused: format pass 6.2% < 35.9% − 2.0 pts",
        "candidate": {"format_pass_rate": 0.062, "relevance": 0.31},
        "incumbent": {"format_pass_rate": 0.359, "relevance": 0.42}}
    md = render_markdown(results, cfg)
    assert "**212 held-out users graded** per method (`eval.max_users` = 250)" in md
    assert "| ICEBREAKER | 30.0% [25.0, 35.0] | 30.0% [25.0, 35.0] |" in md
    assert "| 5.0% [25.0, 35.0] |" in md  # oracle P(click) and its interval
    assert "| ICEBREAKER vs SFT | – | – | – | – | +2.1 [+0.4, +4.0] p=0.012 |" in md
    assert "ICEBREAKER is the promoted generator: **round 0 (the `dpo` stage's model)**" in md
    assert "| 1 | 24 | 6.2% vs 35.9% | 0.310 vs 0.420 | no | refused: format pass 6.2%" in md
    # without the statistics (an older metrics.json) the tables still render
    assert "| ICEBREAKER | 30.0% | 30.0% | 15.0% |" in render_markdown(_results(), cfg)


def test_eval_users_are_not_capped_below_max_users():
    from icebreaker_ray.eval.stage import eval_users

    interests = {f"u{i:05d}": ["x"] for i in range(2000)}
    cfg = load_config("configs/quick.yaml", ["eval.max_users=250"])
    users = eval_users(interests, cfg, cfg.eval.max_users)
    assert len(users) == 250 and users == sorted(users) == eval_users(interests, cfg, 250)
    everyone = eval_users(interests, cfg, None)
    assert len(everyone) > 300 and set(users) <= set(everyone)  # ~20% of 2,000 held out
    assert load_config("configs/local-cpu.yaml").eval.max_users >= 200
