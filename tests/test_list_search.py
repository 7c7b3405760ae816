"""Hybrid reward list search (Algorithm 1), S+ by eq. 8 and SELECTNEGATIVES."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from icebreaker_ray.reward.diversity import list_diversity
from icebreaker_ray.search.list_search import (
    NEGATIVE_TYPES,
    ListSearchParams,
    ScoredList,
    exhaustive_list_search,
    hybrid_reward_list_search,
    select_negatives,
)

# Hand pool (2-D): a and b point the same way, c is 0.4 away from both, e is orthogonal to a/b.
#               a           b           c           e
HAND_UTIL = np.array([0.9, 0.8, 0.55, 0.1])
HAND_EMB = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
A, B, C, E = range(4)


def search(utility: np.ndarray, emb: np.ndarray, **params: object):
    return hybrid_reward_list_search(utility, emb, ListSearchParams(**params))


def test_beam_matches_hand_computation_with_small_expansion() -> None:
    # λ=1, K=2, J=2, M=2. Step 1: TOP2 = a, b -> V(a)=.9, V(b)=.8.
    # Step 2 from a: TOP2(C\{a}) = b, c -> V(ab)=1.7, V(ac)=.9+.55+0.4=1.85;
    #        from b: a, c -> V(ba)=1.7 (same set as ab), V(bc)=.8+.55+.4=1.75.
    # Beam [ac, bc]; eq. 8: ac=.725+.4=1.125 > bc=.675+.4=1.075. e is never expanded (M=2).
    r = search(HAND_UTIL, HAND_EMB, K=2, J=2, M=2, lam=1.0)
    assert [idx for idx, _ in r.beam] == [(A, C), (B, C)]
    assert [v for _, v in r.beam] == pytest.approx([1.85, 1.75])
    assert r.best == (A, C)
    assert r.best_value == pytest.approx(1.125)
    assert (r.v_util, r.v_div) == pytest.approx((0.725, 0.4))


def test_larger_expansion_reaches_the_orthogonal_candidate() -> None:
    # Same pool, M=3: V(ae)=.9+.1+1=2.0, V(be)=1.9 lead; eq. 8: ae=.5+1=1.5, the exhaustive optimum.
    r = search(HAND_UTIL, HAND_EMB, K=2, J=2, M=3, lam=1.0)
    assert [idx for idx, _ in r.beam] == [(A, E), (B, E)]
    assert r.best == (A, E) and r.best_value == pytest.approx(1.5)
    assert exhaustive_list_search(HAND_UTIL, HAND_EMB, K=2, lam=1.0) == ((A, E), pytest.approx(1.5))


def test_lambda_zero_returns_top_k_utility_set() -> None:
    r = search(HAND_UTIL, HAND_EMB, K=2, J=2, M=4, lam=0.0)
    assert set(r.best) == {A, B}  # the two highest utilities, although they are duplicates
    assert r.v_div == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    util, emb = rng.uniform(0.01, 0.99, 15), rng.standard_normal((15, 6))
    r = search(util, emb, K=4, lam=0.0)
    assert set(r.best) == set(np.argsort(-util)[:4].tolist())


def test_large_lambda_prefers_spread_out_embeddings() -> None:
    r = search(HAND_UTIL, HAND_EMB, K=2, J=2, M=4, lam=10.0)
    assert r.best == (A, E) and r.v_div == pytest.approx(1.0)
    # 3-D: near-duplicates 0, 1, 2, 5 along x (high utility) vs y and z (lower utility).
    util = np.array([0.9, 0.89, 0.88, 0.5, 0.45, 0.4])
    emb = np.array(
        [[1, 0.01, 0], [1, 0, 0.01], [1, 0.01, 0.01], [0, 1, 0], [0, 0, 1], [1, 0, 0.02]]
    )
    assert set(search(util, emb, K=3, M=6, lam=0.0).best) == {0, 1, 2}
    spread = search(util, emb, K=3, M=6, lam=5.0)
    assert set(spread.best) == {0, 3, 4} and spread.v_div == pytest.approx(1.0, abs=0.01)


# Docstring pool of list_search.py: K=3 exercises a negative gain at step 3.
DOC_UTIL = np.array([0.9, 0.85, 0.8, 0.4, 0.3, 0.2])
DOC_EMB = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0.1], [1, 0, 0.05]])


def test_running_value_telescopes_to_utility_sum_plus_lambda_vdiv() -> None:
    r = search(DOC_UTIL, DOC_EMB, K=3, J=2, M=3, lam=0.5)
    # Hand: d(0,2)=1, d(0,1)=1-.99/√(.99²+.01), d(1,2)=1-.1/√(.99²+.01).
    norm1 = math.sqrt(0.99**2 + 0.1**2)
    vdiv_021 = (1.0 + (1.0 - 0.99 / norm1) + (1.0 - 0.1 / norm1)) / 3.0
    assert r.beam[0] == ((0, 2, 1), pytest.approx(0.9 + 0.8 + 0.85 + 0.5 * vdiv_021))
    assert r.beam[1] == ((0, 2, 3), pytest.approx(0.9 + 0.8 + 0.4 + 0.5 * 1.0))
    for idx, value in r.beam:  # V = Σ R_util + λ·v̂_div for every final list
        sel = list(idx)
        assert value == pytest.approx(DOC_UTIL[sel].sum() + 0.5 * list_diversity(DOC_EMB[sel]))


def test_best_is_argmax_of_eq8_not_the_beam_leader() -> None:
    # The beam leader (0, 2, 1) sums more utility; eq. 8 (mean utility) prefers (0, 2, 3).
    r = search(DOC_UTIL, DOC_EMB, K=3, J=2, M=3, lam=0.5)
    assert r.beam[0][0] == (0, 2, 1)
    assert r.best == (0, 2, 3)
    assert r.best_value == pytest.approx(0.7 + 0.5 * 1.0)


def test_coherent_running_value_is_k_times_eq8_score() -> None:
    r = search(DOC_UTIL, DOC_EMB, K=3, J=2, M=3, lam=0.5, coherent_running_value=True)
    for idx, value in r.beam:
        sel = list(idx)
        score = DOC_UTIL[sel].mean() + 0.5 * list_diversity(DOC_EMB[sel])
        assert value == pytest.approx(3 * score)
    assert r.beam[0][0] == r.best == (0, 2, 3)


def test_beam_keeps_one_order_of_each_set() -> None:
    # λ=0, J=2: ab and ba tie at 1.7; without set dedupe the beam would be [ab, ba].
    util = np.array([0.9, 0.8, 0.5])
    emb = np.eye(3)
    r = search(util, emb, K=2, J=2, M=3, lam=0.0)
    assert [idx for idx, _ in r.beam] == [(0, 1), (0, 2)]


@pytest.mark.parametrize(
    ("n", "k", "j", "m"), [(8, 4, 4, 6), (6, 6, 3, 2), (10, 3, 5, 1), (5, 1, 2, 2)]
)
def test_beam_lists_never_repeat_a_candidate(n: int, k: int, j: int, m: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    util, emb = rng.uniform(0, 1, n), rng.standard_normal((n, 4))
    r = search(util, emb, K=k, J=j, M=m)
    assert 1 <= len(r.beam) <= j
    assert len({frozenset(idx) for idx, _ in r.beam}) == len(r.beam)
    lists = [idx for idx, _ in r.beam] + [neg.indices for neg in r.negatives.values() if neg]
    for idx in lists:
        assert len(idx) == k and len(set(idx)) == k and all(0 <= i < n for i in idx)


def test_k_larger_than_pool_raises() -> None:
    with pytest.raises(ValueError, match=r"K=5 exceeds the candidate pool size N=4"):
        search(HAND_UTIL, HAND_EMB, K=5)
    with pytest.raises(ValueError, match="K=5"):
        exhaustive_list_search(HAND_UTIL, HAND_EMB, K=5, lam=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"K": 0}, "K must be an integer >= 1"),
        ({"J": 0}, "J must be"),
        ({"M": 2.5}, "M must be"),
        ({"lam": -0.1}, "lam"),
        ({"util_gap": 0.0}, "util_gap must be in"),
        ({"div_tolerance": 0.2, "div_gap": 0.1}, "comparable"),
        ({"num_random_lists": -1}, "num_random_lists"),
    ],
)
def test_params_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ListSearchParams(**kwargs)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        search(np.array([0.5, 1.5, 0.2]), np.eye(3), K=2)
    with pytest.raises(ValueError, match="N = len"):
        search(np.array([0.5, 0.4, 0.2]), np.eye(4), K=2)


def test_same_seed_same_result() -> None:
    rng = np.random.default_rng(11)
    util, emb = rng.uniform(0, 1, 40), rng.standard_normal((40, 8))
    params = ListSearchParams(num_random_lists=64, max_swap_lists=50)  # sampling is exercised
    first = hybrid_reward_list_search(util, emb, params, rng=5)
    again = hybrid_reward_list_search(util, emb, params, rng=np.random.default_rng(5))
    assert first == again


# --- SELECTNEGATIVES -------------------------------------------------------------------------

# K=2, 4-D: 0,1 good and orthogonal (S+); 4 duplicates 0; 2,3 poor and orthogonal; 5 duplicates 2.
NEG_UTIL = np.array([0.9, 0.9, 0.1, 0.1, 0.88, 0.1])
NEG_EMB = np.array(
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]], float
)


def meets(kind: str, neg: ScoredList, u0: float, d0: float, p: ListSearchParams) -> bool:
    util_lower = neg.v_util <= (1 - p.util_gap) * u0
    util_same = abs(neg.v_util - u0) <= p.util_tolerance * u0
    div_lower = neg.v_div <= d0 - p.div_gap
    div_same = abs(neg.v_div - d0) <= p.div_tolerance
    return {
        "utility": util_lower and div_same,
        "diversity": div_lower and util_same,
        "joint": util_lower and div_lower,
    }[kind]


def all_lists(n: int, k: int) -> list[tuple[int, ...]]:
    return list(itertools.combinations(range(n), k))


def test_each_negative_meets_its_definition_on_hand_pool() -> None:
    p = ListSearchParams(K=2, lam=0.5)
    r = hybrid_reward_list_search(NEG_UTIL, NEG_EMB, p)
    assert set(r.best) == {0, 1} and (r.v_util, r.v_div) == pytest.approx((0.9, 1.0))
    # With K=2 the one- and two-item swaps of S+ reach every list, so each negative must be the
    # best (utility, diversity) or worst (joint) eq. 8 Score among all qualifying lists.
    for kind in NEGATIVE_TYPES:
        neg = r.negatives[kind]
        assert neg is not None, kind
        sel = list(neg.indices)
        assert neg.v_util == pytest.approx(NEG_UTIL[sel].mean())
        assert neg.v_div == pytest.approx(list_diversity(NEG_EMB[sel]))
        assert meets(kind, neg, r.v_util, r.v_div, p), kind
        scores = []
        for idx in all_lists(6, 2):
            cand = ScoredList(idx, NEG_UTIL[list(idx)].mean(), list_diversity(NEG_EMB[list(idx)]))
            if set(idx) != set(r.best) and meets(kind, cand, r.v_util, r.v_div, p):
                scores.append(cand.v_util + p.lam * cand.v_div)
        pick = min if kind == "joint" else max
        assert neg.v_util + p.lam * neg.v_div == pytest.approx(pick(scores))
    assert set(r.negatives["diversity"].indices) == {0, 4}  # the only near-duplicate good pair
    assert set(r.negatives["joint"].indices) == {2, 5}  # the only near-duplicate poor pair


def test_deliberate_lists_find_negatives_without_random_ones() -> None:
    p = ListSearchParams(K=2, num_random_lists=0)
    r = hybrid_reward_list_search(NEG_UTIL, NEG_EMB, p)
    assert all(r.negatives[kind] is not None for kind in NEGATIVE_TYPES)


def test_swaps_and_near_duplicate_lists_supply_negatives() -> None:
    # 5-D: 0, 1 poor; 2, 3, 4 good and orthogonal (S+); 5 duplicates 2, 6 duplicates 0.
    # J=1 and no random lists: only the deliberate constructions can supply negatives.
    util = np.array([0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.1])
    emb = np.vstack([np.eye(5), np.eye(5)[2], np.eye(5)[0]])
    r = hybrid_reward_list_search(util, emb, ListSearchParams(K=3, J=1, num_random_lists=0))
    assert set(r.best) == {2, 3, 4} and len(r.beam) == 1
    # A swap of S+ keeps utility and brings in a near-duplicate pair.
    neg = r.negatives["diversity"]
    assert neg is not None and {2, 5} <= set(neg.indices)
    assert (neg.v_util, neg.v_div) == pytest.approx((0.9, 2 / 3))
    # The lowest-Score joint failure {0, 6, 1} is no swap of S+: it is 0 with its nearest lists.
    neg = r.negatives["joint"]
    assert neg is not None and set(neg.indices) == {0, 1, 6}


def test_random_low_utility_lists_make_joint_failures_easier() -> None:
    # More candidate lists can only lower the Score of the easiest joint failure.
    lowered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        emb = rng.standard_normal((3, 16))[rng.integers(0, 3, 12)] + rng.standard_normal((12, 16))
        util = rng.uniform(0.01, 0.99, 12)
        scores = []
        for count in (0, 256):
            neg = hybrid_reward_list_search(
                util, emb, ListSearchParams(num_random_lists=count), rng=seed
            ).negatives["joint"]
            assert neg is not None
            scores.append(neg.v_util + 0.5 * neg.v_div)
        assert scores[1] <= scores[0] + 1e-12
        lowered += scores[1] < scores[0] - 1e-9
    assert lowered >= 3


def test_negatives_are_none_when_the_pool_cannot_satisfy_them() -> None:
    # Equal utilities: nothing is substantially less useful -> no utility or joint negative.
    r = search(np.full(6, 0.5), NEG_EMB, K=2)
    assert r.negatives["utility"] is None and r.negatives["joint"] is None
    assert r.negatives["diversity"] is not None  # duplicates still give a diversity negative
    # All-zero utilities: 0 is not "substantially lower" than 0.
    r = search(np.zeros(6), NEG_EMB, K=2)
    assert r.negatives["utility"] is None and r.negatives["joint"] is None
    # Mutually orthogonal embeddings: every list has v̂_div = 1 -> no diversity or joint negative.
    r = search(NEG_UTIL, np.eye(6), K=2)
    assert r.negatives["diversity"] is None and r.negatives["joint"] is None
    assert r.negatives["utility"] is not None


@pytest.mark.parametrize("seed", range(10))
def test_negatives_never_violate_their_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 16
    centers = rng.standard_normal((4, 32))
    emb = centers[rng.integers(0, 4, n)] + 0.4 * rng.standard_normal((n, 32))
    util = rng.uniform(0.05, 0.95, n)
    p = ListSearchParams(K=4, num_random_lists=128)
    r = hybrid_reward_list_search(util, emb, p, rng=seed)
    for kind, neg in r.negatives.items():
        if neg is None:
            continue
        sel = list(neg.indices)
        assert neg.v_util == pytest.approx(util[sel].mean())
        assert neg.v_div == pytest.approx(list_diversity(emb[sel]))
        assert set(sel) != set(r.best)
        assert meets(kind, neg, r.v_util, r.v_div, p), (kind, neg)


def test_select_negatives_public_entry_point() -> None:
    p = ListSearchParams(K=2)
    out = select_negatives([(0, 1), (1, 4)], (0, 1), NEG_UTIL, NEG_EMB, p)
    assert set(out) == set(NEGATIVE_TYPES)
    assert set(out["diversity"].indices) == {0, 4}
    assert set(out["joint"].indices) == {2, 5}
    with pytest.raises(ValueError, match="distinct pool indices"):
        select_negatives([(0, 1), (1, 1)], (0, 1), NEG_UTIL, NEG_EMB, p)
    with pytest.raises(ValueError, match="distinct pool indices"):
        select_negatives([(0, 1)], (0, -1), NEG_UTIL, NEG_EMB, p)


def test_negatives_skipped_on_request() -> None:
    r = hybrid_reward_list_search(NEG_UTIL, NEG_EMB, ListSearchParams(K=2), mine_negatives=False)
    assert r.negatives == {}


# --- beam vs exhaustive ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 20])
def test_beam_value_close_to_exhaustive_on_random_pools(n: int) -> None:
    p = ListSearchParams(K=4)  # defaults J=4, M=6, λ=0.5
    ratios = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((n // 4, 64))
        emb = centers[rng.integers(0, n // 4, n)] + 0.5 * rng.standard_normal((n, 64))
        util = rng.uniform(0.01, 0.99, n)
        r = hybrid_reward_list_search(util, emb, p, mine_negatives=False)
        _, best_value = exhaustive_list_search(util, emb, p.K, p.lam)
        ratios.append(r.best_value / best_value)
    ratios = np.array(ratios)
    assert ratios.max() <= 1.0 + 1e-12  # the beam can never beat exhaustive search
    assert ratios.mean() >= 0.99, ratios.mean()


def test_exhaustive_refuses_huge_pools() -> None:
    with pytest.raises(ValueError, match="max_lists"):
        exhaustive_list_search(np.full(30, 0.5), np.eye(30), K=10, lam=0.5, max_lists=1000)


def test_div_redundancy_asks_the_diversity_negative_for_a_redundant_pair() -> None:
    # K=3. S+ = {0, 1, 2}, three orthogonal starters of utility 0.9 (v_div 1.0).
    # 3 is related to 0 (cos 0.6, utility 0.9): {3, 1, 2} has v_div 0.867, lower by 0.13.
    # 4 nearly repeats 0 (cos 0.95, utility 0.84): {0, 4, 2} has v_div 0.683 and a redundant pair.
    c6, c95 = 0.6, 0.95
    emb = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                    [c6, 0, 0, np.sqrt(1 - c6**2)], [c95, 0, 0, np.sqrt(1 - c95**2)]])
    util = np.array([0.9, 0.9, 0.9, 0.9, 0.84])
    plain = ListSearchParams(K=3, lam=0.5, div_gap=0.1)
    r = hybrid_reward_list_search(util, emb, plain)
    assert set(r.best) == {0, 1, 2}
    # the div_gap rule alone takes the highest-scoring lower-diversity list: related, not redundant
    assert set(r.negatives["diversity"].indices) in ({3, 1, 2}, {0, 3, 1}, {0, 3, 2})
    strict = hybrid_reward_list_search(util, emb, ListSearchParams(K=3, lam=0.5, div_gap=0.1,
                                                                   div_redundancy=0.9))
    neg = strict.negatives["diversity"]
    assert {0, 4} <= set(neg.indices)  # the near-repeat is in it
    assert (neg.v_util, neg.v_div) == pytest.approx(((0.9 + 0.84 + 0.9) / 3, (1 - c95 + 1 + 1) / 3))
    # no pair at or above the threshold anywhere: no diversity negative at all
    none = hybrid_reward_list_search(util, emb, ListSearchParams(K=3, lam=0.5, div_gap=0.1,
                                                                 div_redundancy=0.99))
    assert none.negatives["diversity"] is None
    with pytest.raises(ValueError, match="div_redundancy"):
        ListSearchParams(div_redundancy=1.5)
