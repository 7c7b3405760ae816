"""Diversity reward: v̂_div (eq. 8) and the marginal gain R_div of Algorithm 1 line 11."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icebreaker_ray.reward.diversity import (
    list_diversity,
    lists_diversity,
    marginal_diversity_gain,
    marginal_diversity_gains,
    normalize_rows,
    pairwise_dissimilarity,
)


def test_list_diversity_hand_computed_three_vectors() -> None:
    # Pairs: x·y → cos 0 → d 1; x·(x+y) and y·(x+y) → cos 1/√2 → d 1 - 1/√2.
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])  # unnormalized on purpose
    expected = (1.0 + 2.0 * (1.0 - 1.0 / math.sqrt(2.0))) / 3.0
    assert list_diversity(emb) == pytest.approx(expected, abs=1e-12)


def test_dissimilarity_is_one_minus_cos_clipped_to_unit_interval() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 5.0], [-2.0, 0.0], [1.0, 1.0]])
    d = pairwise_dissimilarity(emb)
    assert d[0, 1] == pytest.approx(1.0)  # orthogonal
    assert d[0, 2] == pytest.approx(1.0)  # opposite: 1 - (-1) = 2, clipped to 1
    assert d[0, 3] == pytest.approx(1.0 - 1.0 / math.sqrt(2.0))
    assert np.allclose(d, d.T)
    assert np.all(np.diag(d) == 0.0)
    assert d.min() >= 0.0 and d.max() <= 1.0


def test_short_lists_have_zero_diversity() -> None:
    assert list_diversity(np.zeros((0, 3))) == 0.0
    assert list_diversity(np.array([[0.3, 0.4, 0.5]])) == 0.0


def test_first_gain_is_zero_and_second_is_the_pair_dissimilarity() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    assert marginal_diversity_gain(np.zeros((0, 2)), a) == 0.0
    assert marginal_diversity_gain(a[None, :], b) == pytest.approx(1.0 - 0.6)


def test_near_duplicate_has_negative_gain() -> None:
    partial = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert marginal_diversity_gain(partial, np.array([1.0, 0.01, 0.0])) < 0.0
    assert marginal_diversity_gain(partial, np.array([0.0, 0.0, 1.0])) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_marginal_gains_telescope_to_list_diversity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb = normalize_rows(rng.standard_normal((6, 8)) + 2.0 * rng.standard_normal(8))
    total = sum(marginal_diversity_gain(emb[:k], emb[k]) for k in range(emb.shape[0]))
    assert total == pytest.approx(list_diversity(emb), abs=1e-12)
    assert 0.0 < total < 1.0


def test_vectorized_gains_equal_the_loop() -> None:
    rng = np.random.default_rng(7)
    partial, cands = rng.standard_normal((3, 16)), rng.standard_normal((9, 16))
    loop = [marginal_diversity_gain(partial, c) for c in cands]
    assert np.allclose(marginal_diversity_gains(partial, cands), loop, atol=1e-12)
    # and each equals its definition v̂_div(P ⊕ s) - v̂_div(P)
    direct = [list_diversity(np.vstack([partial, c])) - list_diversity(partial) for c in cands]
    assert np.allclose(loop, direct, atol=1e-12)


def test_lists_diversity_matches_list_diversity_row_by_row() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((10, 5))
    lists = np.array([[0, 1, 2, 3], [9, 4, 7, 1], [5, 6, 8, 2]])
    got = lists_diversity(pairwise_dissimilarity(emb), lists)
    assert np.allclose(got, [list_diversity(emb[row]) for row in lists], atol=1e-12)


def test_normalize_rows_rejects_zero_and_non_finite_rows() -> None:
    assert np.allclose(np.linalg.norm(normalize_rows(np.array([[3.0, 4.0]])), axis=1), 1.0)
    with pytest.raises(ValueError, match="zero norm"):
        normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        normalize_rows(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        normalize_rows(np.array([1.0, 2.0]))
