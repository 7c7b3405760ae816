"""Deterministic user splits: held-out users are never mined or trained on.

    is_holdout("u0000042", fraction=0.2, seed=0)   # -> True or False, stable across runs
"""

from __future__ import annotations

import hashlib


def is_holdout(user_id: str, fraction: float, seed: int = 0) -> bool:
    """True for about ``fraction`` of users, decided by a hash of (seed, user id)."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
