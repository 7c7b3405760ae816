"""Preference mining: the per-user pair construction and pool mixing (no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icebreaker_ray.search.list_search import ListSearchParams, member_agreement
from icebreaker_ray.search.mine import mix_pool, pairs_for_user, prompt_for


def _pool():
    # 10 starters: 0-3 high utility and spread out, 4-6 near-duplicates of 0 with high
    # utility, 7-9 low utility and spread out.
    rng = np.random.default_rng(0)
    base = np.eye(8)[[0, 1, 2, 3]]
    dup = base[[0, 0, 0]] + 0.02 * rng.normal(size=(3, 8))
    low = np.eye(8)[[4, 5, 6]]
    emb = np.vstack([base, dup, low])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    utility = np.array([0.9, 0.85, 0.8, 0.82, 0.88, 0.87, 0.86, 0.2, 0.25, 0.15])
    return [f"s{i}?" for i in range(10)], utility, emb


def test_pairs_meet_their_definitions():
    pool, utility, emb = _pool()
    params = ListSearchParams(K=4, J=4, M=6, lam=0.5)
    rows = pairs_for_user("u1", "[]", pool, utility, emb, params, round_=2, seed=0)
    kinds = {r["negative_type"] for r in rows}
    assert "utility" in kinds and "diversity" in kinds
    for r in rows:
        assert r["round"] == 2 and len(r["chosen"]) == len(r["rejected"]) == 4
        assert len(set(r["chosen"])) == 4 and r["chosen"] != r["rejected"]
        if r["negative_type"] == "utility":
            assert r["rejected_v_util"] <= 0.8 * r["chosen_v_util"] + 1e-9
            assert abs(r["rejected_v_div"] - r["chosen_v_div"]) <= 0.05 + 1e-9
        if r["negative_type"] == "diversity":
            assert r["rejected_v_div"] <= r["chosen_v_div"] - 0.1 + 1e-9
    # S+ avoids the near-duplicates of s0 despite their high utility
    chosen = rows[0]["chosen"]
    assert sum(s in chosen for s in ("s0?", "s4?", "s5?", "s6?")) == 1


def test_mining_is_deterministic_for_a_seed():
    pool, utility, emb = _pool()
    params = ListSearchParams(K=4)
    a = pairs_for_user("u1", "p", pool, utility, emb, params, 0, seed=7)
    b = pairs_for_user("u1", "p", pool, utility, emb, params, 0, seed=7)
    assert a == b


def test_too_small_pool_gives_no_pairs():
    pool, utility, emb = _pool()
    assert pairs_for_user("u", "p", pool[:3], utility[:3], emb[:3], ListSearchParams(K=4), 0, 0) == []


def test_mix_pool_ratio_and_dedupe():
    gen = [f"g{i}" for i in range(20)]
    teacher = [f"t{i}" for i in range(10)]
    pool = mix_pool(gen, teacher, n=16, teacher_ratio=0.25)
    assert len(pool) == 16 and sum(p.startswith("t") for p in pool) == 4
    assert mix_pool(["a", "a", "b"], [], 5, 0.5) == ["a", "b"]
    assert mix_pool(gen, teacher, 8, 0.0) == gen[:8]


def test_prompt_is_the_generator_chat():
    messages = json.loads(prompt_for(["One Piece cosplay"], k=4, max_chars=64))
    assert messages[-1]["role"] == "user" and "One Piece cosplay" in messages[-1]["content"]


def test_feedback_pairs_clicked_vs_unclicked():
    import datetime as dt

    import pyarrow as pa

    from icebreaker_ray.search.stage import feedback_pairs

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for req, user, clicked_pos in (("r1", "a", 1), ("r2", "a", -1), ("r3", "a", -1), ("r4", "b", -1)):
        for pos in range(3):
            rows.append({"user_id": user, "ts": t, "request_id": req, "starter": f"{req}-{pos}?",
                         "position": pos, "source": "retrieval", "clicked": pos == clicked_pos,
                         "depth": 3 if pos == clicked_pos else 0, "propensity": 0.5})
    imp = pa.Table.from_pylist(rows)
    pairs = feedback_pairs(imp, {"a": "pa", "b": "pb"}, per_user=4, seed=0).to_pylist()
    # user b never clicked: no pair; user a: its clicked list against one ignored list
    assert len(pairs) == 1
    p = pairs[0]
    assert p["user_id"] == "a" and p["chosen"] == ["r1-0?", "r1-1?", "r1-2?"]
    assert p["rejected"][0] in ("r2-0?", "r3-0?") and p["negative_type"] == "feedback"


def test_holdout_split_is_stable_and_sized():
    from icebreaker_ray.data.splits import is_holdout

    users = [f"u{i:07d}" for i in range(2000)]
    held = [u for u in users if is_holdout(u, 0.2, seed=0)]
    assert 0.17 < len(held) / len(users) < 0.23
    assert held == [u for u in users if is_holdout(u, 0.2, seed=0)]
    assert held != [u for u in users if is_holdout(u, 0.2, seed=1)]


def test_member_agreement_counts_members_that_rank_s_plus_first():
    # Two members, orthogonal pool (every pair dissimilarity 1, so both lists have v_div 1):
    # member 0 scores [0, 2] at 0.7 vs [1, 2] at 0.3 (agrees), member 1 0.35 vs 0.65 (not).
    members = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    emb = np.eye(3)
    assert member_agreement(members, emb, [0, 2], [1, 2], lam=0.5) == 0.5
    assert member_agreement(members[:1], emb, [0, 2], [1, 2], lam=0.5) == 1.0
    # diversity counts: a near-duplicate in the rejected list flips a utility tie
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    tie = np.array([[0.5, 0.5, 0.5]])
    assert member_agreement(tie, dup, [0, 2], [0, 1], lam=0.5) == 1.0
    with pytest.raises(ValueError, match="members, N=3"):
        member_agreement(np.ones((2, 4)), emb, [0, 2], [1, 2], lam=0.5)


def test_min_agreement_drops_pairs_the_ranker_ensemble_splits_on():
    pool, utility, emb = _pool()
    params = ListSearchParams(K=4, J=4, M=6, lam=0.5)
    agreeing = np.vstack([utility, utility])            # both members say what the mean says
    kept = pairs_for_user("u1", "p", pool, utility, emb, params, 0, 0,
                          members=agreeing, min_agreement=1.0)
    assert kept == pairs_for_user("u1", "p", pool, utility, emb, params, 0, 0)
    assert {r["negative_type"] for r in kept} >= {"utility", "diversity"}
    # a second member that reverses the low/high utility starters disagrees on the utility
    # and joint negatives; the diversity negative (same utility, less diverse) survives
    reversed_ = np.vstack([utility, 1.0 - utility])
    split = pairs_for_user("u1", "p", pool, utility, emb, params, 0, 0,
                           members=reversed_, min_agreement=1.0)
    assert split and {r["negative_type"] for r in split} < {r["negative_type"] for r in kept}
    assert "utility" not in {r["negative_type"] for r in split}
    # min_agreement 0 keeps everything whatever the members say
    assert pairs_for_user("u1", "p", pool, utility, emb, params, 0, 0,
                          members=reversed_, min_agreement=0.0) == kept
