"""The deployed baseline R_u: embedding retrieval over a starter pool (paper §3, App. B.1).

This is the policy in production before ICEBREAKER and the logging policy of the
simulated world's impressions. It sees only logged history (session summaries) and a
curated starter library, never hidden state.

    pool = starter_pool(load_catalog(), seed=0)
    policy = RetrievalPolicy(pool, TextEncoder(), k=4)
    slates = policy(["u1"], {"u1": ["Asked about Luffy's Gear 5 in One Piece"]}, day=3)
    slates[0].starters, slates[0].propensities

The query is the mean embedding of the user's most recent summaries; the top-L pool
starters by cosine are sampled without replacement (Plackett-Luce, softmax of
cosine / temperature), so the policy is stochastic and each shown starter carries the
probability with which it was picked at its position (its logging propensity).
Users with no history get popular generic starters (cold start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icebreaker_ray.sim.catalog import Catalog, all_starters


@dataclass
class Slate:
    """What a policy shows one user: K starters and, if known, their logging propensities."""

    starters: list[str]
    propensities: list[float] | None = None


def generic_starters(catalog: Catalog) -> list[str]:
    """Generic starters of appealing regular categories: the cold-start list."""
    cats = sorted((c for c in catalog.categories if c.is_regular), key=lambda c: -c.appeal)
    return [s for c in cats[:8] for s in c.generic_starters]


def starter_pool(catalog: Catalog, seed: int = 0, per_subject: int = 3) -> list[str]:
    """The curated starter library: a few rendered starters per subject plus every generic
    starter, for regular and functional categories. Sensitive topics are never in it."""
    rng = np.random.default_rng(seed)
    pool: list[str] = []
    for subject in catalog.subjects:
        if subject.kind == "sensitive":
            continue
        options = all_starters(subject)
        take = min(per_subject, len(options))
        pool.extend(options[i] for i in sorted(rng.choice(len(options), take, replace=False)))
    for category in catalog.categories:
        if category.kind != "sensitive":
            pool.extend(category.generic_starters)
    return list(dict.fromkeys(pool))


def plackett_luce(rng: np.random.Generator, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample k items without replacement with P ∝ exp(score); returns (items, step probs)."""
    weights = np.exp(scores - scores.max())
    chosen, probs = [], []
    for _ in range(min(k, len(scores))):
        p = weights / weights.sum()
        i = int(rng.choice(len(p), p=p))
        chosen.append(i)
        probs.append(float(p[i]))
        weights[i] = 0.0
    return np.asarray(chosen), np.asarray(probs)


class RetrievalPolicy:
    name = "retrieval"

    def __init__(self, pool: Sequence[str], encoder, k: int = 4, top_l: int = 20,
                 temperature: float = 0.05, recent: int = 8, seed: int = 0,
                 cold_start: Sequence[str] = ()) -> None:
        self.pool = list(dict.fromkeys([*pool, *cold_start]))
        self.encoder = encoder
        self.k, self.top_l, self.temperature, self.recent, self.seed = k, top_l, temperature, recent, seed
        self.pool_emb = encoder(self.pool)
        position = {s: i for i, s in enumerate(self.pool)}
        # Users with no history: the cold-start list (popular generic starters), else the pool.
        self._cold = np.asarray([position[s] for s in cold_start] or range(len(self.pool)))

    def _rng(self, user_id: str, day: int) -> np.random.Generator:
        digits = int("".join(ch for ch in user_id if ch.isdigit()) or 0)
        return np.random.default_rng([self.seed, digits, day + 1, 3])

    def __call__(self, user_ids: Sequence[str], histories: dict[str, list[str]], day: int = 0) -> list[Slate]:
        # One batched encode for every visitor's recent summaries (the encoder caches).
        self.encoder([t for uid in user_ids for t in histories.get(uid, [])[-self.recent:]])
        slates = []
        for uid in user_ids:
            rng = self._rng(uid, day)
            recent = histories.get(uid, [])[-self.recent:]
            if recent:
                q = self.encoder(recent).mean(axis=0)
                q /= np.linalg.norm(q) + 1e-9
                cos = self.pool_emb @ q
                top = np.argsort(-cos)[: self.top_l]
                picked, probs = plackett_luce(rng, cos[top] / self.temperature, self.k)
                items = top[picked]
            else:
                picked, probs = plackett_luce(rng, np.zeros(len(self._cold)), self.k)
                items = self._cold[picked]
            slates.append(Slate([self.pool[i] for i in items], [float(p) for p in probs]))
        return slates
