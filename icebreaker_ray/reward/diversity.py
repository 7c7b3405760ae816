"""Diversity reward R_div and list diversity v̂_div (paper §2.3.2, Algorithm 1 line 11, eq. 8).

    emb = normalize_rows(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    list_diversity(emb)                        # -> 0.5286  (mean of 1, 1-cos45°, 1-cos45°)
    marginal_diversity_gain(emb[:2], emb[2])   # -> -0.4714 (= v̂_div(all 3) - v̂_div(first 2))

**Dissimilarity.** The paper defines v̂_div(S) ∈ [0, 1] as "the average pairwise cosine
dissimilarity among sentence embeddings". We use

    d(a, b) = clip(1 - cos(a, b), 0, 1)

i.e. the usual cosine distance 1 - cos, clipped at 1. The alternative affine map (1 - cos) / 2
also lands in [0, 1], but it halves every value: sentence embedders (all-MiniLM-L6-v2 and the
like) put almost all pairs of real sentences at cos ∈ [0, 1], so v̂_div would live in
[0, 0.5] and λ would silently buy half the diversity it says. With the clip, a near-duplicate
pair scores ≈ 0, an unrelated pair ≈ 1, and the rare anti-correlated pair counts as unrelated
(1), not as "more than unrelated": opposite directions carry no extra semantic distance.

**Marginal gain.** R_div(P, s) = v̂_div(P ⊕ s) - v̂_div(P), with v̂_div of a list shorter than 2
equal to 0. Summed over the steps that build a list S, the gains telescope to v̂_div(S), so the
running value of Algorithm 1 (line 11) is Σ_k R_util(u, s_k) + λ · v̂_div(S): the diversity term
is exactly the one of eq. 8. A gain can be negative (adding a near-duplicate lowers the mean).

All functions are pure numpy; embeddings are rows of a 2-D array and are L2-normalized
internally (idempotent for already-normalized rows).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "normalize_rows",
    "pairwise_dissimilarity",
    "list_diversity",
    "lists_diversity",
    "marginal_gain_from_sums",
    "marginal_diversity_gain",
    "marginal_diversity_gains",
]


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Return ``x`` (n, d) with every row scaled to unit L2 norm.

    Raises ``ValueError`` for a non-2-D input, non-finite values or a row whose norm is below
    ``eps`` (a zero vector has no direction, so its cosine is undefined).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of row embeddings, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(norms[:, 0] < eps)
    if bad.size:
        raise ValueError(f"embedding rows {bad.tolist()} have (near-)zero norm")
    return x / norms


def pairwise_dissimilarity(emb: np.ndarray) -> np.ndarray:
    """(n, n) matrix of d(a, b) = clip(1 - cos(a, b), 0, 1); the diagonal is exactly 0.

    >>> pairwise_dissimilarity(np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    array([[0., 1., 1.],
           [1., 0., 1.],
           [1., 1., 0.]])
    """
    unit = normalize_rows(emb)
    dissim = _dissimilarity(unit, unit)
    np.fill_diagonal(dissim, 0.0)
    return dissim


def _dissimilarity(a_unit: np.ndarray, b_unit: np.ndarray) -> np.ndarray:
    """d between every row of ``a_unit`` and every row of ``b_unit`` (both already unit rows)."""
    return np.clip(1.0 - a_unit @ b_unit.T, 0.0, 1.0)


def list_diversity(emb: np.ndarray) -> float:
    """v̂_div(S): mean pairwise dissimilarity of the list whose embeddings are the rows of ``emb``.

    0.0 for a list of fewer than two items (nothing to be diverse from).
    """
    emb = np.asarray(emb, dtype=np.float64)
    n = emb.shape[0] if emb.ndim == 2 else 0
    if n < 2:
        return 0.0
    dissim = pairwise_dissimilarity(emb)
    return float(dissim[np.triu_indices(n, k=1)].mean())


def lists_diversity(dissim: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """v̂_div of many lists at once, from a precomputed pool dissimilarity matrix.

    ``dissim`` is :func:`pairwise_dissimilarity` of the pool; ``lists`` is an (L, K) integer
    array of pool indices (no repeats within a row). Returns an (L,) array; zeros when K < 2.
    """
    lists = np.asarray(lists, dtype=np.intp)
    if lists.ndim != 2:
        raise ValueError(f"expected an (L, K) array of pool indices, got shape {lists.shape}")
    k = lists.shape[1]
    if k < 2:
        return np.zeros(lists.shape[0])
    rows, cols = np.triu_indices(k, k=1)
    return dissim[lists[:, rows], lists[:, cols]].mean(axis=1)


def marginal_gain_from_sums(
    pair_sum: float, size: int, cross_sum: float | np.ndarray
) -> float | np.ndarray:
    """R_div(P, s) = v̂_div(P ⊕ s) - v̂_div(P) from running sums (the form the search uses).

    ``pair_sum`` = Σ_{i<j ∈ P} d(i, j), ``size`` = |P|, ``cross_sum`` = Σ_{j ∈ P} d(s, j)
    (a scalar, or an array for many candidates s at once).
    """
    if size == 0:
        return np.zeros_like(cross_sum, dtype=np.float64) if np.ndim(cross_sum) else 0.0
    before = pair_sum / (size * (size - 1) / 2) if size >= 2 else 0.0
    after = (pair_sum + cross_sum) / ((size + 1) * size / 2)
    return after - before


def marginal_diversity_gains(partial_emb: np.ndarray, cand_embs: np.ndarray) -> np.ndarray:
    """Vectorized R_div(P, s) for every row s of ``cand_embs`` (m, d); returns (m,).

    ``partial_emb`` (p, d) holds the embeddings of the partial list P (p may be 0).
    """
    cand = normalize_rows(cand_embs)
    partial = np.asarray(partial_emb, dtype=np.float64)
    if partial.size == 0:
        return np.zeros(cand.shape[0])
    partial = normalize_rows(partial)
    p = partial.shape[0]
    pair_sum = float(pairwise_dissimilarity(partial)[np.triu_indices(p, k=1)].sum())
    cross = _dissimilarity(cand, partial).sum(axis=1)
    return np.asarray(marginal_gain_from_sums(pair_sum, p, cross))


def marginal_diversity_gain(partial_emb: np.ndarray, cand_emb: np.ndarray) -> float:
    """R_div(P, s) = v̂_div(P ⊕ s) - v̂_div(P) for one candidate embedding ``cand_emb`` (d,)."""
    cand = np.asarray(cand_emb, dtype=np.float64).reshape(1, -1)
    return float(marginal_diversity_gains(partial_emb, cand)[0])
