"""Deterministic splits: held-out users are never mined or trained on; the logs' requests
fall into disjoint ranker slices.

    is_holdout("u0000042", fraction=0.2, seed=0)   # -> True or False, stable across runs
    hash_fraction("u0000042", "0:validation")      # a second, independent split key in [0, 1)
    log_slice(["r1", "r2"], slices=2)              # -> array([0, 1]) or so, stable
    activity_buckets(np.array([1, 5, 9, 30]), 2)   # -> array([0, 0, 1, 1], dtype=int32)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def hash_fraction(user_id: str, seed: int | str = 0) -> float:
    """A stable pseudo-uniform number in [0, 1) from a hash of (seed, user id); different
    seeds give independent splits of the same users."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_holdout(user_id: str, fraction: float, seed: int = 0) -> bool:
    """True for about ``fraction`` of users, decided by a hash of (seed, user id)."""
    return hash_fraction(user_id, seed) < fraction


def log_slice(request_ids: Sequence[str], slices: int = 2) -> np.ndarray:
    """A stable slice index per impression, by request: disjoint slices of the logs."""
    return np.array([int(hashlib.md5(r.encode()).hexdigest()[:8], 16) % slices for r in request_ids])


#: The ranker slices of the logs (train-ranker): ``util`` guides list search and DPO,
#: ``eval`` is the grader f; disjoint by request.
RANKER_SLICES = {"util": 0, "eval": 1}
#: Each slice holds out one in this many of its requests to measure its ranker.
RANKER_HOLDOUT = 5


def ranker_holdout(request_ids: Sequence[str]) -> np.ndarray:
    """True for the requests a ranker slice holds out for its held-out metrics."""
    return log_slice([f"holdout-{r}" for r in request_ids], RANKER_HOLDOUT) == 0


def activity_buckets(session_counts: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket users by observed activity (sessions in the logs), by quantile edges."""
    if num_buckets == 1 or len(session_counts) == 0:
        return np.zeros(len(session_counts), np.int32)
    edges = np.quantile(session_counts, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return np.searchsorted(edges, session_counts, side="right").astype(np.int32)
