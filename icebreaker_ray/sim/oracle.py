"""HIDDEN TRUTH. The click oracle: how a simulated user responds to ANY list of starters.

Only ``icebreaker_ray.sim`` and ``icebreaker_ray.eval`` may import this module.

A shown list [s_1..s_K] is a multinomial-logit choice among K starters plus "no click":

    P(click s_k) = exp(v_k) / (1 + sum_j exp(v_j))

    v_k = base + click_bias_u
          + w_rel * relevance(u, s_k)            # to the user's hidden interests, today
          + w_appeal * (appeal(s_k) - 0.5)       # how conversation-inviting its topic is
          - pen_functional * functional(s_k) - pen_sensitive * sensitive(s_k)
          - length penalties - pen_dup * near_duplicate(s_k | s_<k)
          - position_decay_u * log2(1 + k)       # position bias

What a starter is about is read off sentence embeddings: ``match`` is a softmax over the
catalog subjects of cosine similarity, ``specificity`` grows with the best subject
cosine (a named subject beats "how to spend a vacation?"). Relevance blends the user's
subject-level interests (for specific starters) with category-level affinity (for
generic ones): relevance = spec * sum_j match_j w_uj + (1 - spec) * w_cat * sum_c
cat_mass_c A_uc. After a click the conversation lasts 1 + Poisson(depth_base +
depth_rel * relevance) sessions. Everything is vectorized over (user, list) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icebreaker_ray.sim.world import World


@dataclass(frozen=True)
class OracleParams:
    match_temperature: float = 0.04
    spec_low: float = 0.25  # best-subject cosine at which a text counts as fully generic
    spec_high: float = 0.55  # ... and fully specific
    base: float = -4.6
    w_rel: float = 4.0
    w_cat: float = 1.5
    w_appeal: float = 0.5
    pen_functional: float = 1.5
    pen_sensitive: float = 5.0
    max_chars: int = 64
    pen_per_extra_char: float = 0.08
    min_chars: int = 12
    pen_too_short: float = 2.0
    dup_threshold: float = 0.8
    pen_dup: float = 4.0
    depth_base: float = 0.3
    depth_rel: float = 4.0


@dataclass
class TextFeatures:
    """What the oracle reads off a batch of texts (rows align with the input texts)."""

    match: np.ndarray  # (T, S) subject distribution
    cat_mass: np.ndarray  # (T, C)
    specificity: np.ndarray  # (T,)
    functional: np.ndarray  # (T,)
    sensitive: np.ndarray  # (T,)
    appeal: np.ndarray  # (T,)
    chars: np.ndarray  # (T,)
    emb: np.ndarray  # (T, d)


class ClickOracle:
    def __init__(self, world: World, subject_emb: np.ndarray, params: OracleParams | None = None):
        self.world = world
        self.params = params or OracleParams()
        self.subject_emb = subject_emb.astype(np.float32)
        n_cat = len(world.category_kind)
        # (S, C) one-hot subject -> category, to aggregate subject mass per category.
        self.subject_to_cat = np.zeros((world.num_subjects, n_cat), np.float32)
        self.subject_to_cat[np.arange(world.num_subjects), world.subject_category] = 1.0
        self.cat_functional = (world.category_kind == "functional").astype(np.float32)
        self.cat_sensitive = (world.category_kind == "sensitive").astype(np.float32)

    @staticmethod
    def subject_texts(world: World) -> list[str]:
        """How a subject is described for embedding: name, category, aliases and facets."""
        return [
            f"{s.name} ({s.category.name}): {', '.join(s.aliases)}; {', '.join(s.facets)}"
            for s in world.subjects
        ]

    def features(self, texts: list[str], emb: np.ndarray) -> TextFeatures:
        p = self.params
        cos = emb @ self.subject_emb.T  # (T, S)
        logits = cos / p.match_temperature
        logits -= logits.max(axis=1, keepdims=True)
        match = np.exp(logits)
        match /= match.sum(axis=1, keepdims=True)
        cat_mass = match @ self.subject_to_cat
        spec = np.clip((cos.max(axis=1) - p.spec_low) / (p.spec_high - p.spec_low), 0.0, 1.0)
        return TextFeatures(
            match=match,
            cat_mass=cat_mass,
            specificity=spec,
            functional=cat_mass @ self.cat_functional,
            sensitive=cat_mass @ self.cat_sensitive,
            appeal=cat_mass @ self.world.category_appeal,
            chars=np.array([len(t) for t in texts], np.float32),
            emb=emb,
        )

    def category_affinity(self, interests: np.ndarray) -> np.ndarray:
        """A_u: per-category affinity in [0, 1] from subject interest weights (U, S) -> (U, C)."""
        return np.clip(interests @ self.subject_to_cat, 0.0, 1.0)

    def relevance(self, interests: np.ndarray, feats: TextFeatures, idx: np.ndarray) -> np.ndarray:
        """relevance(u, s) for texts ``idx`` (U, K) of users with ``interests`` (U, S)."""
        p = self.params
        subj_rel = np.einsum("uks,us->uk", feats.match[idx], interests)
        cat_rel = np.einsum("ukc,uc->uk", feats.cat_mass[idx], self.category_affinity(interests))
        spec = feats.specificity[idx]
        return spec * subj_rel + (1.0 - spec) * p.w_cat * cat_rel

    def item_values(self, interests: np.ndarray, click_bias: np.ndarray,
                    feats: TextFeatures, idx: np.ndarray) -> np.ndarray:
        """v_k without list effects (position, duplicates): (U, K)."""
        p = self.params
        chars = feats.chars[idx]
        v = (
            p.base
            + click_bias[:, None]
            + p.w_rel * self.relevance(interests, feats, idx)
            + p.w_appeal * (feats.appeal[idx] - 0.5)
            - p.pen_functional * feats.functional[idx]
            - p.pen_sensitive * feats.sensitive[idx]
            - p.pen_per_extra_char * np.maximum(chars - p.max_chars, 0.0)
            - p.pen_too_short * (chars < p.min_chars)
        )
        return v

    def click_probabilities(self, interests: np.ndarray, click_bias: np.ndarray,
                            position_decay: np.ndarray, feats: TextFeatures, idx: np.ndarray,
                            mask: np.ndarray | None = None) -> np.ndarray:
        """P(click position k) for U shown lists of up to K texts: (U, K).

        ``idx`` (U, K) indexes rows of ``feats``; ``mask`` marks real (non-padding) slots.
        1 - row sum is the probability of no click.
        """
        p = self.params
        u, k = idx.shape
        mask = np.ones((u, k), bool) if mask is None else mask
        v = self.item_values(interests, click_bias, feats, idx)
        v -= position_decay[:, None] * np.log2(1.0 + np.arange(k))[None, :]
        emb = feats.emb[idx]  # (U, K, d)
        sim = np.einsum("ukd,ujd->ukj", emb, emb)
        earlier = np.tril(np.ones((k, k), bool), -1)[None] & mask[:, None, :]
        dup = np.where(earlier, sim, -1.0).max(axis=2)
        v -= p.pen_dup * np.clip((dup - p.dup_threshold) / (1.0 - p.dup_threshold), 0.0, None)
        ev = np.where(mask, np.exp(v), 0.0)
        return ev / (1.0 + ev.sum(axis=1, keepdims=True))

    def depth_rate(self, relevance: np.ndarray) -> np.ndarray:
        return self.params.depth_base + self.params.depth_rel * relevance
