"""Tests of icebreaker_ray.eval.metrics (paper App. B.1, App. C.1).

Every expected value is derived by hand in the comment next to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from icebreaker_ray.eval.metrics import (
    LiftResult,
    auc,
    bootstrap_mean,
    bootstrap_relative_lift,
    format_pass_rate,
    keyword_sets,
    lexical_diversity,
    mean_recall_at_k,
    online_metrics,
    online_per_user,
    paired_difference,
    precision_recall_f1,
    r_score,
    r_score_values,
    r_score_with_count,
    r_user,
    r_user_values,
    recall_at_k,
    semantic_diversity,
)

# ---------------------------------------------------------------------------
# R-User (eq. 9) / R-Score (eq. 10)
# ---------------------------------------------------------------------------

# user 1: f̄(G)=(0.2+0.4)/2=0.3, f̄(R)=(0.1+0.2+0.3)/3=0.2 -> improved, rel=+0.1/0.2=+0.5
# user 2: f̄(G)=0.15,          f̄(R)=(0.2+0.2)/2=0.2     -> not,      rel=-0.05/0.2=-0.25
# user 3: f̄(G)=0.3,           f̄(R)=0.3                 -> tie (not), rel=0
GEN = [[0.2, 0.4], [0.15], [0.3, 0.3]]
BASE = [[0.1, 0.2, 0.3], [0.2, 0.2], [0.3]]


def test_r_user_hand_case() -> None:
    # 1 improved user of 3 (the tie counts as not improved) -> 1/3
    assert r_user(GEN, BASE) == pytest.approx(1 / 3)


def test_r_score_hand_case() -> None:
    # (0.5 - 0.25 + 0) / 3 = 0.25 / 3 = 0.083333...
    assert r_score(GEN, BASE) == pytest.approx(0.25 / 3)
    assert r_score_with_count(GEN, BASE) == (pytest.approx(0.25 / 3), 0)


def test_r_metrics_accept_numpy_arrays() -> None:
    gen = [np.array(g) for g in GEN]
    base = [np.array(b) for b in BASE]
    assert r_user(gen, base) == pytest.approx(1 / 3)
    assert r_score(gen, base) == pytest.approx(0.25 / 3)


def test_r_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        r_user(GEN, BASE[:2])
    with pytest.raises(ValueError, match="length mismatch"):
        r_score(GEN[:2], BASE)
    with pytest.raises(ValueError, match="no users"):
        r_score([], [])
    with pytest.raises(ValueError, match="no users"):
        r_user([], [])
    with pytest.raises(ValueError, match="user #1"):
        r_score([[0.1], []], [[0.1], [0.2]])


def test_zero_baseline_is_skipped_and_counted() -> None:
    # add user 4 with f̄(R)=0 and f̄(G)=0.1:
    # R-User counts it (0.1 > 0): 2/4 = 0.5
    # R-Score skips it: (0.5 - 0.25 + 0) / 3 as before, 1 user skipped
    gen = [*GEN, [0.1]]
    base = [*BASE, [0.0, 0.0]]
    assert r_user(gen, base) == pytest.approx(0.5)
    value, skipped = r_score_with_count(gen, base)
    assert value == pytest.approx(0.25 / 3)
    assert skipped == 1
    assert r_score(gen, base) == pytest.approx(0.25 / 3)
    # every baseline zero -> nothing to average -> nan, 2 skipped
    value, skipped = r_score_with_count([[0.1], [0.2]], [[0.0], [0.0]])
    assert math.isnan(value)
    assert skipped == 2


# ---------------------------------------------------------------------------
# Lexical diversity
# ---------------------------------------------------------------------------

# Tokens after lowercasing, 2+ letter words and English stop words removed:
#   "How do I train a puppy?"              -> train, puppy
#   "Best ramen recipe for beginners?"     -> best, ramen, recipe, beginners
#   "Which anime is the best to watch?"    -> anime, best, watch
#   "How to budget my salary?"             -> budget, salary
SAME = ["How do I train a puppy?"] * 4
DISTINCT = [
    "How do I train a puppy?",
    "Best ramen recipe for beginners?",
    "Which anime is the best to watch?",
    "How to budget my salary?",
]


def test_lexical_keyword_sets_hand_case() -> None:
    # Corpus = the 8 starters. smooth idf = ln((1+n)/(1+df)) + 1, n=8:
    #   best: df=2 -> ln(9/3)+1 = 2.099; every other term df=1 -> ln(9/2)+1 = 2.504
    #   (train/puppy: df=5 -> 1.405, irrelevant since a puppy starter has 2 terms)
    # top_k=3 per starter:
    #   ramen starter has 4 terms; "best" has the lowest weight -> {ramen, recipe, beginners}
    #   anime starter has 3 terms -> all kept, including "best"
    # SAME -> {train, puppy} (2); DISTINCT -> 2 + 3 + 3 + 2 = 10 unique terms
    sets = keyword_sets([SAME, DISTINCT], top_k=3)
    assert sets[0] == {"train", "puppy"}
    assert sets[1] == {
        "train",
        "puppy",
        "ramen",
        "recipe",
        "beginners",
        "anime",
        "best",
        "watch",
        "budget",
        "salary",
    }
    # mean over the two users: (2 + 10) / 2 = 6
    assert lexical_diversity([SAME, DISTINCT], top_k=3) == pytest.approx(6.0)


def test_lexical_identical_starters_score_lower_than_distinct_topics() -> None:
    same = lexical_diversity([SAME], corpus=SAME + DISTINCT)
    distinct = lexical_diversity([DISTINCT], corpus=SAME + DISTINCT)
    assert same == pytest.approx(2.0)
    assert distinct == pytest.approx(10.0)
    assert same < distinct


def test_lexical_min_weight_hand_case() -> None:
    # l2-normalised weights within each starter (idf as in the hand case above):
    #   ramen starter: (best 2.099, others 2.504) / sqrt(2.099^2 + 3*2.504^2)=4.818
    #       -> best 0.436, ramen/recipe/beginners 0.520
    #   anime starter: / sqrt(2.099^2 + 2*2.504^2)=4.116 -> best 0.510, anime/watch 0.608
    #   two-term starters: 1/sqrt(2) = 0.707 each
    # min_weight=0.5, no top_k cap: only the ramen starter's "best" (0.436) falls
    # below, but "best" is still kept via the anime starter (0.510) -> all 10 terms
    # min_weight=0.55: drop best (0.436, 0.510) and ramen/recipe/beginners (0.520)
    #   -> {train, puppy, anime, watch, budget, salary} = 6
    corpus = SAME + DISTINCT
    assert lexical_diversity([DISTINCT], top_k=None, min_weight=0.5, corpus=corpus) == 10
    assert lexical_diversity([DISTINCT], top_k=None, min_weight=0.55, corpus=corpus) == 6


def test_lexical_ties_are_broken_alphabetically_and_run_is_deterministic() -> None:
    # one document, 4 terms of equal weight -> top 3 alphabetically
    lists = [["Ramen recipe guide for beginners"]]
    assert keyword_sets(lists, top_k=3) == [{"beginners", "guide", "ramen"}]
    assert keyword_sets(lists, top_k=1) == [{"beginners"}]
    assert lexical_diversity(lists) == lexical_diversity(lists) == 3.0


def test_lexical_custom_corpus_changes_idf_and_ignores_unseen_terms() -> None:
    # corpus where "ramen" is everywhere (low idf) and "guide" is absent
    # (unseen terms are ignored): the starter's candidates are
    # beginners, ramen, recipe; ramen has the lowest idf -> top_k=2 = {beginners, recipe}
    corpus = ["ramen recipe beginners", "ramen noodles", "ramen shop", "ramen broth"]
    lists = [["Ramen recipe guide for beginners"]]
    assert keyword_sets(lists, top_k=2, corpus=corpus) == [{"beginners", "recipe"}]


def test_lexical_edge_cases() -> None:
    # an empty list has 0 keywords: (0 + 2) / 2 = 1
    assert lexical_diversity([[], ["train puppy"]]) == pytest.approx(1.0)
    # only stop words -> no vocabulary -> 0
    assert lexical_diversity([["how do I", "what is it"]]) == 0.0
    with pytest.raises(ValueError):
        lexical_diversity([])


# ---------------------------------------------------------------------------
# Semantic diversity, format
# ---------------------------------------------------------------------------


def test_semantic_diversity_hand_case() -> None:
    # distinct categories: {anime, games}=2, {cooking}=1, {a,b,c,d}=4 -> (2+1+4)/3 = 7/3
    cats = [["anime", "games", "anime"], ["cooking"], ["a", "b", "c", "d"]]
    assert semantic_diversity(cats) == pytest.approx(7 / 3)
    with pytest.raises(ValueError):
        semantic_diversity([])


def test_format_pass_rate() -> None:
    # 3 of 4 lists pass -> 0.75
    assert format_pass_rate([True, False, True, True]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        format_pass_rate([])


# ---------------------------------------------------------------------------
# RID quality: AUC, recall@k, P/R/F1
# ---------------------------------------------------------------------------


def test_auc_hand_case() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1. Pairs (pos > neg):
    # 0.9>0.5 yes, 0.9>0.1 yes, 0.4>0.5 NO, 0.4>0.1 yes -> 3/4
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie counts 1/2: pos 0.5 vs neg 0.5 -> 0.5
    assert auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_auc_single_class_is_nan_and_mismatch_raises() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        auc([1, 0], [0.1])


def test_recall_at_k_hand_case() -> None:
    relevant = {"a", "b", "c"}
    ranked = ["a", "x", "b", "y", "c"]
    # top-3 = {a, x, b} -> hits {a, b} -> 2/3
    assert recall_at_k(relevant, ranked, 3) == pytest.approx(2 / 3)
    # top-5 contains all three -> 1
    assert recall_at_k(relevant, ranked, 5) == pytest.approx(1.0)
    # top-1 = {a} -> 1/3
    assert recall_at_k(relevant, ranked, 1) == pytest.approx(1 / 3)
    assert math.isnan(recall_at_k(set(), ranked, 3))
    with pytest.raises(ValueError):
        recall_at_k(relevant, ranked, 0)


def test_mean_recall_at_k_hand_case() -> None:
    relevant = {"u1": {"a", "b", "c"}, "u2": {"z"}, "u3": set(), "u4": {"m"}}
    ranked = {"u1": ["a", "x", "b"], "u2": ["q"], "u3": ["w"]}
    # u1: 2/3; u2: 0; u3: skipped (nothing relevant); u4: missing ranking -> 0
    # mean = (2/3 + 0 + 0) / 3 = 2/9
    assert mean_recall_at_k(relevant, ranked, 3) == pytest.approx(2 / 9)
    assert math.isnan(mean_recall_at_k({"u": set()}, {}, 3))


def test_precision_recall_f1_hand_case() -> None:
    y_true = [1, 1, 1, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 1, 0]
    # tp=2 (idx 0,1), fp=2 (idx 3,4), fn=1 (idx 2)
    # P = 2/4 = 0.5, R = 2/3, F1 = 2*0.5*(2/3)/(0.5+2/3) = (2/3)/(7/6) = 4/7
    prf = precision_recall_f1(y_true, y_pred)
    assert prf.precision == pytest.approx(0.5)
    assert prf.recall == pytest.approx(2 / 3)
    assert prf.f1 == pytest.approx(4 / 7)
    # same with the judge's string labels
    to_str = {1: "MATCH", 0: "NO_MATCH"}
    prf_s = precision_recall_f1(
        [to_str[v] for v in y_true], [to_str[v] for v in y_pred], pos_label="MATCH"
    )
    assert tuple(prf_s) == pytest.approx((0.5, 2 / 3, 4 / 7))
    # no predicted positives -> precision 0 by convention, recall 0, f1 0
    assert tuple(precision_recall_f1([1, 0], [0, 0])) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        precision_recall_f1([1, 0], [1])


# ---------------------------------------------------------------------------
# Online metrics (App. B.1.2, eq. 11-13)
# ---------------------------------------------------------------------------


def _events_2x7() -> dict[str, list]:
    """2 users x 7 days (0..6).

    u1: sessions [1,0,2,0,0,1,0] -> 3 active days, 4 sessions
        shown 4/day -> 28, clicked [1,0,1,0,0,0,0] -> 2, started on days 0,2,5
    u2: sessions all 0 -> 0 active days, 0 sessions
        shown [4,0,0,0,0,0,0] -> 4, clicked 0, never started
    """
    return {
        "user_id": ["u1"] * 7 + ["u2"] * 7,
        "day": list(range(7)) * 2,
        "shown": [4] * 7 + [4, 0, 0, 0, 0, 0, 0],
        "clicked": [1, 0, 1, 0, 0, 0, 0] + [0] * 7,
        "sessions": [1, 0, 2, 0, 0, 1, 0] + [0] * 7,
        "started": [True, False, True, False, False, True, False] + [False] * 7,
    }


def test_online_metrics_hand_case() -> None:
    m = online_metrics(_events_2x7())
    assert set(m) == {"active_days", "avg_sessions", "ctr", "csr"}
    # Active: (3 + 0) / 2 users = 1.5 (one complete 7-day window)
    assert m["active_days"] == pytest.approx(1.5)
    # Avg.S. eq. 11: (4 + 0) / 2 = 2.0
    assert m["avg_sessions"] == pytest.approx(2.0)
    # CTR eq. 12: clicks 2 / shown (28 + 4) = 2/32 = 0.0625
    assert m["ctr"] == pytest.approx(0.0625)
    # CSR eq. 13: u1 started, u2 did not -> 1/2
    assert m["csr"] == pytest.approx(0.5)


def test_online_metrics_pandas_and_pyarrow_match_dict() -> None:
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    ev = _events_2x7()
    expected = online_metrics(ev)
    assert online_metrics(pd.DataFrame(ev)) == pytest.approx(expected)
    assert online_metrics(pa.table(ev)) == pytest.approx(expected)


def test_online_click_counts_as_conversation_start() -> None:
    # u2 clicks a starter on day 3 without the `started` flag set:
    # entering via a starter click is a start (App. B.1.2) -> CSR = 2/2 = 1
    # CTR = (2 + 1) / 32 = 0.09375
    ev = _events_2x7()
    ev["clicked"][7 + 3] = 1
    m = online_metrics(ev)
    assert m["csr"] == pytest.approx(1.0)
    assert m["ctr"] == pytest.approx(3 / 32)


def test_online_active_days_average_over_7_day_windows() -> None:
    # 14 days (0..13), windows [0,7) and [7,14)
    # u1 active on days 0,1,2 (window 1: 3) and 8 (window 2: 1) -> (3+1)/2 = 2.0
    # u2 active on day 13 only (window 2: 1)                     -> (0+1)/2 = 0.5
    # mean = 1.25; sessions u1 = 4, u2 = 3 -> Avg.S. = 3.5
    days = list(range(14))
    ev = {
        "user_id": ["u1"] * 14 + ["u2"] * 14,
        "day": days * 2,
        "shown": [1] * 28,
        "clicked": [0] * 28,
        "sessions": [1, 1, 1] + [0] * 5 + [1] + [0] * 5 + [0] * 13 + [3],
        "started": [False] * 28,
    }
    pu = online_per_user(ev)
    assert list(pu["user_id"]) == ["u1", "u2"]
    assert pu["active_days"] == pytest.approx([2.0, 0.5])
    m = online_metrics(ev)
    assert m["active_days"] == pytest.approx(1.25)
    assert m["avg_sessions"] == pytest.approx(3.5)

    # horizon [0, 10): only window [0,7) is complete; days 7..9 are ignored for
    # Active (u1's day 8 drops out): u1 3, u2 0 -> 1.5; Avg.S. still counts
    # every day in the horizon: u1 4 (days 0,1,2,8), u2 0 -> 2.0
    m10 = online_metrics(ev, horizon=(0, 10))
    assert m10["active_days"] == pytest.approx(1.5)
    assert m10["avg_sessions"] == pytest.approx(2.0)


def test_online_duplicate_rows_and_short_horizon() -> None:
    # two rows for (u1, day 0): sums for counts, the active day counts once.
    # 3-day horizon (< 7): the single window is the whole period.
    # u1: sessions 1+2 on day 0, 1 on day 2 -> 2 active days, 4 sessions
    # u2: 0 sessions -> 0 active days
    # Active = (2+0)/2 = 1; Avg.S. = 4/2 = 2; CTR = (1+1)/(3+3+2+2+2) = 2/12
    ev = {
        "user_id": ["u1", "u1", "u1", "u2", "u2"],
        "day": [0, 0, 2, 0, 2],
        "shown": [3, 3, 2, 2, 2],
        "clicked": [1, 1, 0, 0, 0],
        "sessions": [1, 2, 1, 0, 0],
        "started": [False, True, False, False, False],
    }
    m = online_metrics(ev)
    assert m["active_days"] == pytest.approx(1.0)
    assert m["avg_sessions"] == pytest.approx(2.0)
    assert m["ctr"] == pytest.approx(2 / 12)
    assert m["csr"] == pytest.approx(0.5)


def test_online_bad_input() -> None:
    ev = _events_2x7()
    del ev["started"]
    with pytest.raises(ValueError, match="started"):
        online_metrics(ev)
    with pytest.raises(ValueError):
        online_metrics({k: [] for k in _events_2x7()})


# ---------------------------------------------------------------------------
# Bootstrap relative lift
# ---------------------------------------------------------------------------


def test_lift_point_estimates_hand_case() -> None:
    # mean a = (1+2+3)/3 = 2, mean b = (2+2+5)/3 = 3 -> lift = 3/2 - 1 = 0.5
    res = bootstrap_relative_lift([1, 2, 3], [2, 2, 5], n_boot=200, seed=1)
    assert isinstance(res, LiftResult)
    assert res.lift == pytest.approx(0.5)
    assert res.n_users == 3
    assert res.ci_low <= res.lift <= res.ci_high
    assert 0.0 < res.p_value <= 1.0
    # CTR-like ratio of sums: A = (1+0+1)/(10+10+0) = 0.1, B = (2+1+0)/(10+5+5) = 0.15
    # lift = 0.15/0.1 - 1 = 0.5 (a per-user-mean of ratios would differ)
    res = bootstrap_relative_lift(
        [1, 0, 1], [2, 1, 0], n_boot=200, seed=1, ratio_of_sums=([10, 10, 0], [10, 5, 5])
    )
    assert res.lift == pytest.approx(0.5)


def test_lift_is_seeded_and_validates_input() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(5, 1, 50), rng.normal(5.5, 1, 50)
    assert bootstrap_relative_lift(a, b, n_boot=300, seed=7) == bootstrap_relative_lift(
        a, b, n_boot=300, seed=7
    )
    assert bootstrap_relative_lift(a, b, n_boot=300, seed=7) != bootstrap_relative_lift(
        a, b, n_boot=300, seed=8
    )
    with pytest.raises(ValueError, match="paired"):
        bootstrap_relative_lift(a, b[:40])
    with pytest.raises(ValueError):
        bootstrap_relative_lift([], [])
    with pytest.raises(ValueError, match="denominator"):
        bootstrap_relative_lift(a, b, ratio_of_sums=(a[:10], b))


def test_lift_identical_arms_has_p_one() -> None:
    # B == A for every user: T_obs = 0, every swap gives |T*| = 0 >= 0 -> p = 1, lift 0
    a = np.arange(1.0, 21.0)
    res = bootstrap_relative_lift(a, a.copy(), n_boot=100)
    assert res.lift == 0.0
    assert res.p_value == 1.0
    assert res.ci_low == res.ci_high == 0.0


def test_pvalue_is_two_sided() -> None:
    # B clearly worse than A (mean diff -1, SE 0.2): a two-sided test rejects, and
    # swapping the arms negates every permutation statistic T* = M(B) - M(A), so with
    # the same seed the p-value is identical in both directions.
    rng = np.random.default_rng(5)
    a, b = _paired_experiment(rng, 200, 11.0, 10.0)
    down = bootstrap_relative_lift(a, b, n_boot=500, seed=3)
    up = bootstrap_relative_lift(b, a, n_boot=500, seed=3)
    assert down.lift < 0 < up.lift
    assert down.p_value < 0.05
    assert down.p_value == pytest.approx(up.p_value)


def test_lift_unpaired_mode() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 1, 80), rng.normal(12, 1, 120)
    res = bootstrap_relative_lift(a, b, n_boot=300, paired=False)
    assert res.n_users == 200
    assert res.lift == pytest.approx(b.mean() / a.mean() - 1)
    assert res.ci_low < 0.2 < res.ci_high
    assert res.p_value < 0.01


def _paired_experiment(
    rng: np.random.Generator, n: int, mean_a: float, mean_b: float
) -> tuple[np.ndarray, np.ndarray]:
    # same users under both arms: shared user effect + independent noise
    user = rng.normal(0.0, 2.0, n)
    return mean_a + user + rng.normal(0, 2.0, n), mean_b + user + rng.normal(0, 2.0, n)


def test_bootstrap_ci_coverage_and_power() -> None:
    # 200 seeded paired experiments, 200 users each, true lift 11/10 - 1 = 0.1.
    # Per-user difference sd = sqrt(2)*2 = 2.83 -> SE of mean diff = 0.2, effect 1.0
    # = 5 SE, so the test should reject in nearly all experiments.
    rng = np.random.default_rng(2024)
    covered = rejected = 0
    for i in range(200):
        a, b = _paired_experiment(rng, 200, 10.0, 11.0)
        res = bootstrap_relative_lift(a, b, n_boot=500, seed=i)
        covered += res.ci_low <= 0.1 <= res.ci_high
        rejected += res.p_value < 0.05
    assert 0.90 <= covered / 200 <= 0.99
    assert rejected / 200 >= 0.9


def test_pvalue_calibrated_under_no_effect() -> None:
    # same set-up with no effect: rejection rate ~5% (allow 0-12%), p ~ uniform
    # (mean ~0.5; sd of the mean of 200 U(0,1) = 0.02 -> [0.4, 0.6] is 5 sd),
    # and the CI covers the true lift 0 in 90-99% of experiments.
    rng = np.random.default_rng(7)
    pvals, covered = [], 0
    for i in range(200):
        a, b = _paired_experiment(rng, 200, 10.0, 10.0)
        res = bootstrap_relative_lift(a, b, n_boot=500, seed=i)
        pvals.append(res.p_value)
        covered += res.ci_low <= 0.0 <= res.ci_high
    p = np.asarray(pvals)
    assert np.mean(p < 0.05) <= 0.12
    assert 0.4 <= p.mean() <= 0.6
    assert 0.90 <= covered / 200 <= 0.99


def test_ratio_of_sums_ci_coverage() -> None:
    # CTR: per user shown ~ 1 + Poisson(9), clicks ~ Binomial(shown, p); the same
    # users see both arms (shared "shown"). True lift = 0.12/0.10 - 1 = 0.2.
    # 100 experiments x 300 users; coverage must be 88-100% (binomial sd of
    # coverage at 95% with 100 runs = 2.2 pts).
    rng = np.random.default_rng(11)
    covered = rejected = 0
    for i in range(100):
        shown = 1 + rng.poisson(9, 300)
        ca, cb = rng.binomial(shown, 0.10), rng.binomial(shown, 0.12)
        res = bootstrap_relative_lift(ca, cb, n_boot=500, seed=i, ratio_of_sums=(shown, shown))
        covered += res.ci_low <= 0.2 <= res.ci_high
        rejected += res.p_value < 0.05
    assert 0.88 <= covered / 100 <= 1.0
    # SE of the CTR difference ~ sqrt(2*0.11*0.89/3000) = 0.0081 -> effect 0.02 is 2.5 SE
    # -> power ~70%; require a majority
    assert rejected / 100 >= 0.5


# ---------------------------------------------------------------------------
# Table 1 statistics: per-user terms, bootstrap intervals, paired tests
# ---------------------------------------------------------------------------


def test_per_user_terms_average_to_r_user_and_r_score() -> None:
    gen = [[0.3, 0.1], [0.1], [0.4, 0.4], [0.2]]
    base = [[0.2], [0.2], [0.0], [0.1, 0.1]]
    np.testing.assert_array_equal(r_user_values(gen, base), [0.0, 0.0, 1.0, 1.0])
    rel = r_score_values(gen, base)
    np.testing.assert_allclose(rel[[0, 1, 3]], [0.0, -0.5, 1.0])
    assert np.isnan(rel[2])  # zero baseline: skipped
    assert r_user(gen, base) == 0.5
    assert r_score_with_count(gen, base) == pytest.approx((0.5 / 3, 1))


def test_bootstrap_mean_hand_case_and_seed() -> None:
    res = bootstrap_mean([1.0, 1.0, 1.0], n_boot=50)
    assert (res.mean, res.ci_low, res.ci_high, res.n_users) == (1.0, 1.0, 1.0, 3)
    x = np.random.default_rng(0).normal(0.2, 1.0, 400)
    res = bootstrap_mean(x, n_boot=1000, seed=3)
    assert res.ci_low < x.mean() < res.ci_high
    # half-width ~ 1.96 sd / sqrt(n)
    assert (res.ci_high - res.ci_low) / 2 == pytest.approx(1.96 * x.std() / 20, rel=0.15)
    assert bootstrap_mean(x, n_boot=200, seed=3) == bootstrap_mean(x, n_boot=200, seed=3)
    skipped = bootstrap_mean([np.nan, 2.0, 4.0], n_boot=100)
    assert skipped.mean == 3.0 and skipped.n_users == 2
    assert math.isnan(bootstrap_mean([np.nan], n_boot=100).mean)


def test_paired_difference_identical_methods() -> None:
    a = np.random.default_rng(1).uniform(size=200)
    res = paired_difference(a, a.copy(), n_boot=500, seed=0)
    assert res.diff == 0.0 and res.ci_low <= 0.0 <= res.ci_high
    assert res.p_value == 1.0 and res.n_users == 200


def test_paired_difference_better_on_every_user() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(size=200)
    b = a + rng.uniform(0.01, 0.05, size=200)  # B beats A on every user
    res = paired_difference(a, b, n_boot=500, seed=0)
    assert res.diff == pytest.approx(float((b - a).mean()))
    assert 0.0 < res.ci_low < res.diff < res.ci_high
    assert res.p_value == pytest.approx(1 / 501)  # the smallest attainable p
    # swapped arms: the same p, the interval mirrored
    back = paired_difference(b, a, n_boot=500, seed=0)
    assert back.p_value == res.p_value and back.ci_high < 0
    # a user with a nan term (R-Score's zero baseline) leaves both arms
    assert paired_difference([np.nan, *a], [1.0, *b], n_boot=100).n_users == 200


def test_paired_difference_no_difference_in_noise() -> None:
    rng = np.random.default_rng(4)
    p = [paired_difference(rng.normal(size=60), rng.normal(size=60), n_boot=300, seed=i).p_value
         for i in range(40)]
    assert np.mean(np.asarray(p) < 0.05) <= 0.15 and 0.3 < np.mean(p) < 0.7  # ~uniform under H0
