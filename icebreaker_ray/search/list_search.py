"""Hybrid reward list search (paper §2.3.2, Algorithm 1) and SELECTNEGATIVES.

Given one user's candidate pool C (N starters sampled from the generator), point-wise utilities
R_util(u, s) ∈ [0, 1] (eq. 7) and sentence embeddings, build the preferred list S+ and three
dispreferred lists for list-wise DPO (eq. 6):

    utility = np.array([0.9, 0.85, 0.8, 0.4, 0.3, 0.2])
    emb = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0.1], [1, 0, 0.05]])
    result = hybrid_reward_list_search(utility, emb, ListSearchParams(K=3, J=2, M=3))
    result.beam      # -> [((0, 2, 1), 2.867), ((0, 2, 3), 2.6)]   (list, running V)
    result.best      # -> (0, 2, 3)   S+ by eq. 8: v_util 0.70 + 0.5 · v_div 1.00 = 1.20
    result.negatives["utility"]    # -> ScoredList(indices=(0, 4, 3), v_util=0.533, v_div=0.967)
    result.negatives["diversity"]  # -> ScoredList(indices=(0, 1, 3), v_util=0.717, v_div=0.668)
    result.negatives["joint"]      # -> ScoredList(indices=(4, 2, 5), v_util=0.433, v_div=0.667)

Two values are involved, as in the paper:

* the running value of Algorithm 1 line 11, V(P ⊕ s) = V(P) + R_util(u, s) + λ·R_div(P, s),
  which ranks partial lists inside the beam. With R_div the marginal gain in mean pairwise
  dissimilarity (:mod:`icebreaker_ray.reward.diversity`) it telescopes to
  V(P) = Σ_{s ∈ P} R_util(u, s) + λ·v̂_div(P): the utility is summed, not averaged;
* the Score of eq. 8, V(S) = v̂_util(S) + λ·v̂_div(S) with v̂_util the mean utility, used only on
  complete lists: to pick S+ from the final beam (line 16), to define the negatives and in
  :func:`exhaustive_list_search`.

In the example the beam's leader (0, 2, 1) is not S+: its summed utility outweighs the
near-duplicate pair (0, 1) inside the beam, eq. 8 does not (``coherent_running_value`` in
:class:`ListSearchParams` makes the two rankings agree).

Lists are ordered tuples (the order in which they were built, i.e. the order they would be
shown), but the beam is deduplicated by *set*: both values above are order-free, so P ⊕ a ⊕ b
and P ⊕ b ⊕ a tie exactly and, kept apart, would fill the J slots with permutations of one list.
The first one reached (higher-ranked parent, higher-utility candidate first) is kept.

Pure numpy, no Ray: the mining stage wraps :func:`hybrid_reward_list_search` in actors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from icebreaker_ray.reward.diversity import (
    lists_diversity,
    marginal_gain_from_sums,
    pairwise_dissimilarity,
)

__all__ = [
    "NEGATIVE_TYPES",
    "ListSearchParams",
    "ScoredList",
    "SearchResult",
    "exhaustive_list_search",
    "hybrid_reward_list_search",
    "member_agreement",
    "select_negatives",
]

NEGATIVE_TYPES = ("utility", "diversity", "joint")


@dataclass(frozen=True)
class ListSearchParams:
    """Algorithm 1 hyper-parameters and SELECTNEGATIVES thresholds.

    Beam: ``K`` list length, ``J`` beam width, ``M`` expansion size (top-M candidates by
    R_util per partial list, line 8), ``lam`` the diversity weight λ (line 11 and eq. 8).

    Negatives, relative to S+ (with u = v̂_util, d = v̂_div):

    * "substantially lower utility": u(S) <= (1 - util_gap) · u(S+). Relative, because the
      utility ranker is a calibrated click/depth probability whose level differs a lot between
      users (a 0.1 absolute gap is huge for a user at 5 % CTR and small for one at 80 %).
    * "comparable utility": |u(S) - u(S+)| <= util_tolerance · u(S+) (relative, same reason).
    * "substantially lower diversity": d(S) <= d(S+) - div_gap. Absolute: v̂_div already lives
      on a fixed [0, 1] scale; with K = 4 one near-duplicate pair among six lowers it by about
      0.15, so the default 0.1 asks for at least one (and is twice the tolerance below).
    * "comparable diversity": |d(S) - d(S+)| <= div_tolerance (absolute).
    * joint failure: lower by at least the gap on both dimensions.
    * ``div_redundancy`` (None: off): a diversity negative must also hold a redundant pair,
      two starters at cosine >= ``div_redundancy``. A lower mean dissimilarity alone is
      often two related but distinct starters, which a reader need not mind; a redundant
      pair wastes a slot of the list, which is the non-redundancy that diversity
      negatives are meant to teach (§2.3.2).

    ``coherent_running_value``: if True, line 11 uses K·R_div instead of R_div, so the running
    value of a complete list is exactly K times its eq. 8 Score and the beam ranks complete
    lists the way line 16 does. Default False: R_div is the plain marginal gain and the running
    value is Σ R_util + λ·v̂_div, weighting utility K times more than eq. 8 does while the beam
    is built (bench/bench_list_search.py measures both).

    ``num_random_lists`` random lists drawn from the low-utility half of the pool join the
    candidate negatives; ``max_swap_lists`` caps the one-item and the two-item swaps of S+
    considered (each set beyond it is replaced by a seeded sample of that size).
    """

    K: int = 4
    J: int = 4
    M: int = 6
    lam: float = 0.5
    util_gap: float = 0.2
    util_tolerance: float = 0.1
    div_gap: float = 0.1
    div_tolerance: float = 0.05
    div_redundancy: float | None = None
    coherent_running_value: bool = False
    num_random_lists: int = 256
    max_swap_lists: int = 4096

    def __post_init__(self) -> None:
        for name in ("K", "J", "M"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"ListSearchParams.{name} must be an integer >= 1, got {value!r}")
        for name in ("num_random_lists", "max_swap_lists"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"ListSearchParams.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.coherent_running_value, bool):
            raise ValueError("ListSearchParams.coherent_running_value must be a bool")
        if self.div_redundancy is not None and not -1 <= self.div_redundancy <= 1:
            raise ValueError(
                f"ListSearchParams.div_redundancy must be a cosine in [-1, 1], got {self.div_redundancy!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"ListSearchParams.lam (λ) must be finite and >= 0, got {self.lam!r}")
        for gap, tol in (("util_gap", "util_tolerance"), ("div_gap", "div_tolerance")):
            gap_v, tol_v = getattr(self, gap), getattr(self, tol)
            if not 0 < gap_v <= 1:
                raise ValueError(f"ListSearchParams.{gap} must be in (0, 1], got {gap_v!r}")
            if not 0 <= tol_v < gap_v:
                raise ValueError(
                    f"ListSearchParams.{tol}={tol_v!r} must be in [0, {gap}={gap_v!r}): "
                    "'comparable' has to be stricter than 'substantially lower'"
                )


class ScoredList(NamedTuple):
    """A complete list: pool indices in display order, v̂_util and v̂_div (eq. 8)."""

    indices: tuple[int, ...]
    v_util: float
    v_div: float


@dataclass(frozen=True)
class SearchResult:
    """Output of Algorithm 1.

    ``best`` is S+ (line 16) with its eq. 8 Score ``best_value`` = ``v_util`` + λ·``v_div``;
    ``beam`` is the final beam B as (indices, running V) in rank order (line 14);
    ``negatives`` maps "utility" / "diversity" / "joint" to a :class:`ScoredList` or None when
    no list meets that definition (line 17); it is empty when negatives were not requested.
    """

    best: tuple[int, ...]
    best_value: float
    v_util: float
    v_div: float
    beam: list[tuple[tuple[int, ...], float]]
    negatives: dict[str, ScoredList | None]


def hybrid_reward_list_search(
    utility: np.ndarray,
    emb: np.ndarray,
    params: ListSearchParams | None = None,
    rng: np.random.Generator | int = 0,
    mine_negatives: bool = True,
) -> SearchResult:
    """Algorithm 1 on one user's pool: beam search (lines 2–15), S+ by eq. 8 (line 16), negatives.

    ``utility`` (N,) holds R_util(u, s) ∈ [0, 1] for every candidate, ``emb`` (N, d) their
    sentence embeddings. ``rng`` (a seed or Generator) only drives the random parts of
    negative mining (random low-utility lists, swap sampling beyond ``max_swap_lists``); the
    beam itself is deterministic (ties keep the earlier list).
    """
    params = params or ListSearchParams()
    utility, dissim = _check_pool(utility, emb, params.K)
    beam = _beam_search(utility, dissim, params)
    lists = np.array([indices for indices, _ in beam], dtype=np.intp)
    v_util, v_div = _list_stats(utility, dissim, lists)
    top = int(np.argmax(v_util + params.lam * v_div))  # line 16; first of equals wins
    best = beam[top][0]
    negatives = (
        _select_negatives(lists, best, utility, dissim, params, np.random.default_rng(rng))
        if mine_negatives
        else {}
    )
    return SearchResult(
        best=best,
        best_value=float(v_util[top] + params.lam * v_div[top]),
        v_util=float(v_util[top]),
        v_div=float(v_div[top]),
        beam=beam,
        negatives=negatives,
    )


def select_negatives(
    beam: Sequence[Sequence[int]],
    best: Sequence[int],
    utility: np.ndarray,
    emb: np.ndarray,
    params: ListSearchParams | None = None,
    rng: np.random.Generator | int = 0,
) -> dict[str, ScoredList | None]:
    """SELECTNEGATIVES(B, S+) (Algorithm 1 line 17) with the thresholds of ``params``.

    A final beam is usually too homogeneous to hold lists that differ from S+ on one dimension
    only, so the candidates are the beam plus lists built from the pool on purpose:
    every one- and two-item swap of S+ (lower-utility stand-ins keep diversity comparable,
    a near-duplicate of a member with similar utility lowers diversity), each candidate with its
    K-1 nearest neighbours (near-duplicate lists) and random lists drawn from the low-utility
    half of the pool (seeded by ``rng``). On the benchmark's pools (N=20, K=4) dropping the
    two-item swaps loses a tenth of the diversity negatives (a third with div_gap=0.15), and
    the random lists give an easier joint-failure negative for about half of the users.

    Among the lists meeting a definition, the utility and diversity negatives are the ones with
    the highest eq. 8 Score (the hardest clear negatives); the joint-failure negative is the one
    with the lowest (the paper's "easy negatives"). A type is None when no list qualifies.
    """
    params = params or ListSearchParams()
    best = tuple(int(i) for i in best)
    utility, dissim = _check_pool(utility, emb, len(best))
    lists = np.array([list(b) for b in beam], dtype=np.intp).reshape(-1, len(best))
    for row in (np.array(best, dtype=np.intp), *lists):
        if len(set(row.tolist())) != row.size or row.min() < 0 or row.max() >= utility.size:
            raise ValueError(f"list {row.tolist()} must hold distinct pool indices in [0, N)")
    return _select_negatives(lists, best, utility, dissim, params, np.random.default_rng(rng))


def member_agreement(member_utility: np.ndarray, emb: np.ndarray, chosen: Sequence[int],
                     rejected: Sequence[int], lam: float) -> float:
    """Share of a ranker ensemble's members whose eq. 8 Score puts ``chosen`` above
    ``rejected`` (pool indices; ``member_utility`` is (members, N), ``emb`` the pool's
    embeddings). A pair the members split on is one the reward cannot tell apart; the
    conservative mean - kappa * std can still order it, by less than its noise.

    >>> members = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    >>> emb = np.eye(3)
    >>> member_agreement(members, emb, [0, 2], [1, 2], lam=0.5)   # member 0 yes, member 1 no
    0.5
    """
    u = np.asarray(member_utility, np.float64)
    if u.ndim != 2 or u.shape[1] != len(emb):
        raise ValueError(f"member_utility must be (members, N={len(emb)}), got {u.shape}")
    dissim = pairwise_dissimilarity(np.asarray(emb))
    lists = np.array([list(chosen), list(rejected)], dtype=np.intp)
    div = lists_diversity(dissim, lists)
    score = u[:, lists].mean(axis=2) + lam * div[None, :]  # (members, 2)
    return float(np.mean(score[:, 0] > score[:, 1]))


def exhaustive_list_search(
    utility: np.ndarray,
    emb: np.ndarray,
    K: int,
    lam: float,
    max_lists: int = 20_000_000,
) -> tuple[tuple[int, ...], float]:
    """Brute-force argmax of eq. 8 over all K-subsets of the pool: (indices, Score).

    Eq. 8 is order-free, so combinations suffice. For benchmarking Algorithm 1 on small pools;
    raises ``ValueError`` when C(N, K) exceeds ``max_lists``.
    """
    utility, dissim = _check_pool(utility, emb, K)
    n = utility.shape[0]
    total = math.comb(n, K)
    if total > max_lists:
        raise ValueError(f"C({n}, {K}) = {total} lists exceeds max_lists={max_lists}")
    best: tuple[int, ...] = ()
    best_value = -math.inf
    for chunk in _combination_chunks(n, K, chunk=200_000):
        v_util, v_div = _list_stats(utility, dissim, chunk)
        values = v_util + lam * v_div
        i = int(np.argmax(values))
        if values[i] > best_value:
            best, best_value = tuple(int(j) for j in chunk[i]), float(values[i])
    return best, best_value


# --- internals -------------------------------------------------------------------------------


def _check_pool(utility: np.ndarray, emb: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one pool; return float utilities and the (N, N) dissimilarity matrix."""
    utility = np.asarray(utility, dtype=np.float64)
    if utility.ndim != 1:
        raise ValueError(f"utility must be a 1-D array (N,), got shape {utility.shape}")
    if not np.all(np.isfinite(utility)) or np.any((utility < 0) | (utility > 1)):
        raise ValueError("utility values must be finite R_util scores in [0, 1]")
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != utility.shape[0]:
        raise ValueError(
            f"emb must be (N, d) with N = len(utility) = {utility.shape[0]}, got {emb.shape}"
        )
    if K > utility.shape[0]:
        raise ValueError(f"list length K={K} exceeds the candidate pool size N={utility.shape[0]}")
    return utility, pairwise_dissimilarity(emb)


def _beam_search(
    utility: np.ndarray, dissim: np.ndarray, params: ListSearchParams
) -> list[tuple[tuple[int, ...], float]]:
    """Algorithm 1 lines 2–15; returns the final beam as (list, running V) in rank order.

    Vectorized over the partial lists of the beam: row b of ``prefixes`` is P_b, ``values`` its
    V(P_b) and ``pair_sums`` Σ_{i<j ∈ P_b} d(i, j), which makes R_div O(|P|) per candidate.
    """
    n = utility.shape[0]
    by_utility = np.argsort(-utility, kind="stable")  # the ranking TOP(·, R_util, ·) reads
    div_weight = params.lam * (params.K if params.coherent_running_value else 1)
    prefixes = np.zeros((1, 0), dtype=np.intp)  # line 2: B = {<>}
    values = np.zeros(1)  # line 3: V(<>) = 0
    pair_sums = np.zeros(1)
    for length in range(params.K):  # line 4
        # Line 8: T = TOP(C \ P, R_util, M) for every P at once (each row has n - length free).
        width = min(params.M, n - length)
        free = np.ones((prefixes.shape[0], n), dtype=bool)
        np.put_along_axis(free, prefixes, False, axis=1)
        free_ranked = free[:, by_utility]
        keep = free_ranked & (np.cumsum(free_ranked, axis=1) <= width)
        top = by_utility[np.nonzero(keep)[1]].reshape(-1, width)
        # Lines 9–11: V(P ⊕ s) = V(P) + R_util(u, s) + λ·R_div(P, s).
        cross = dissim[top[:, :, None], prefixes[:, None, :]].sum(axis=2)
        gains = marginal_gain_from_sums(pair_sums[:, None], length, cross)
        new_values = (values[:, None] + utility[top] + div_weight * gains).ravel()
        new_prefixes = np.concatenate(
            [np.repeat(prefixes, width, axis=0), top.reshape(-1, 1)], axis=1
        )  # line 10: P' = P ⊕ s, in generation order (parent rank, then utility rank)
        new_pair_sums = (pair_sums[:, None] + cross).ravel()
        # Line 14: top-J by V (stable: ties keep generation order), one order per set.
        chosen, seen = [], set()
        for i in np.argsort(-new_values, kind="stable").tolist():
            key = frozenset(new_prefixes[i].tolist())
            if key not in seen:  # same set = same shown list, same V (see module docstring)
                seen.add(key)
                chosen.append(i)
                if len(chosen) == params.J:
                    break
        prefixes, values, pair_sums = (
            new_prefixes[chosen],
            new_values[chosen],
            new_pair_sums[chosen],
        )
    return [(tuple(p), float(v)) for p, v in zip(prefixes.tolist(), values.tolist(), strict=True)]


def _list_stats(
    utility: np.ndarray, dissim: np.ndarray, lists: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """v̂_util and v̂_div (eq. 8) of every row of the (L, K) index array ``lists``."""
    return utility[lists].mean(axis=1), lists_diversity(dissim, lists)


def _max_cosine(dissim: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The closest pair's cosine in every row of the (L, K) index array ``lists`` (from the
    clipped dissimilarity, so exact for cosines in [0, 1])."""
    k = lists.shape[1]
    if k < 2:
        return np.full(lists.shape[0], -1.0)
    rows, cols = np.triu_indices(k, k=1)
    return 1.0 - dissim[lists[:, rows], lists[:, cols]].min(axis=1)


def _combination_chunks(n: int, k: int, chunk: int) -> Iterator[np.ndarray]:
    """All k-subsets of range(n) as (≤chunk, k) index arrays, in lexicographic order."""
    combos = itertools.combinations(range(n), k)
    while True:
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.islice(combos, chunk)), dtype=np.intp
        )
        if flat.size == 0:
            return
        yield flat.reshape(-1, k)


def _select_negatives(
    beam_lists: np.ndarray,
    best: tuple[int, ...],
    utility: np.ndarray,
    dissim: np.ndarray,
    params: ListSearchParams,
    rng: np.random.Generator,
) -> dict[str, ScoredList | None]:
    lists = _negative_candidates(beam_lists, best, utility, dissim, params, rng)
    out: dict[str, ScoredList | None] = dict.fromkeys(NEGATIVE_TYPES)
    if lists.shape[0] == 0:
        return out
    best_arr = np.array([best], dtype=np.intp)
    (u0,), (d0,) = _list_stats(utility, dissim, best_arr)
    v_util, v_div = _list_stats(utility, dissim, lists)
    score = v_util + params.lam * v_div
    util_lower = (v_util <= (1.0 - params.util_gap) * u0) & (v_util < u0)  # u0 = 0: none lower
    util_same = np.abs(v_util - u0) <= params.util_tolerance * u0
    div_lower = v_div <= d0 - params.div_gap
    div_same = np.abs(v_div - d0) <= params.div_tolerance
    if params.div_redundancy is not None:
        div_lower &= _max_cosine(dissim, lists) >= params.div_redundancy
    rules = {
        "utility": (util_lower & div_same, np.argmax),
        "diversity": (div_lower & util_same, np.argmax),
        "joint": (util_lower & div_lower, np.argmin),
    }
    for name, (mask, pick) in rules.items():
        idx = np.flatnonzero(mask)
        if idx.size:
            i = int(idx[pick(score[idx])])
            out[name] = ScoredList(
                tuple(int(j) for j in lists[i]), float(v_util[i]), float(v_div[i])
            )
    return out


def _negative_candidates(
    beam_lists: np.ndarray,
    best: tuple[int, ...],
    utility: np.ndarray,
    dissim: np.ndarray,
    params: ListSearchParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Complete lists SELECTNEGATIVES chooses from: unique sets, S+ excluded, (L, K) array."""
    n, k = utility.shape[0], len(best)
    best_arr = np.array(best, dtype=np.intp)
    outside = np.setdiff1d(np.arange(n), best_arr)
    parts = [beam_lists.reshape(-1, k)]

    # One- and two-item swaps of S+ (order kept, stand-ins take the replaced positions).
    for r in (1, 2):
        if r > k or r > outside.size:
            continue
        positions = np.array(list(itertools.combinations(range(k), r)), dtype=np.intp)
        stand_ins = (
            outside[:, None]
            if r == 1
            else outside[np.column_stack(np.triu_indices(outside.size, 1))]
        )
        total = positions.shape[0] * stand_ins.shape[0]
        chosen = np.arange(total)
        if total > params.max_swap_lists:
            chosen = np.sort(rng.choice(total, size=params.max_swap_lists, replace=False))
        pos_idx, sub_idx = np.divmod(chosen, stand_ins.shape[0])
        swapped = np.tile(best_arr, (chosen.size, 1))
        swapped[np.arange(chosen.size)[:, None], positions[pos_idx]] = stand_ins[sub_idx]
        parts.append(swapped)

    # Near-duplicate lists: each candidate with its K-1 most similar neighbours.
    nearest = np.argsort(dissim + np.eye(n) * 2.0, axis=1, kind="stable")[:, : k - 1]
    parts.append(np.column_stack([np.arange(n), nearest]))

    # Random low-low lists: K-subsets of the low-utility half of the pool (easy joint failures).
    if params.num_random_lists:
        low = np.argsort(utility, kind="stable")[: max(k, n // 2)]
        picks = np.argsort(rng.random((params.num_random_lists, low.size)), axis=1)[:, :k]
        parts.append(low[picks])

    lists = np.concatenate(parts, axis=0)
    keys = np.sort(lists, axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    first = np.sort(first)
    first = first[~np.all(keys[first] == np.sort(best_arr), axis=1)]
    return lists[first]
