"""Deterministic user splits: held-out users are never mined or trained on.

    is_holdout("u0000042", fraction=0.2, seed=0)   # -> True or False, stable across runs
    hash_fraction("u0000042", "0:validation")      # a second, independent split key in [0, 1)
"""

from __future__ import annotations

import hashlib


def hash_fraction(user_id: str, seed: int | str = 0) -> float:
    """A stable pseudo-uniform number in [0, 1) from a hash of (seed, user id); different
    seeds give independent splits of the same users."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_holdout(user_id: str, fraction: float, seed: int = 0) -> bool:
    """True for about ``fraction`` of users, decided by a hash of (seed, user id)."""
    return hash_fraction(user_id, seed) < fraction
