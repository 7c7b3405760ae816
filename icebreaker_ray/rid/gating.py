"""Activity-aware gating (paper §2.2, eq. 4) and the App. C.1 baselines.

    I* = { h_t in H_u | s_phi(u, h_t) >= tau_{b(u)} }                          (4)

    tau = fit_thresholds(scores, revisited, buckets, num_buckets=4)   # learned on held-out data
    tau.thresholds                         # e.g. [0.21, 0.30, 0.34, 0.41], one per bucket
    keep = select_interests(scores, user_ids, buckets, tau.thresholds, max_interests=5)

Thresholds are fitted per activity bucket, independently, on held-out data: ``revisited``
says whether a summary's interest came back after the split. The objective is F1 of that
prediction, or the highest threshold that still reaches ``target_recall``. The paper states
that tau_b increases with activity. How that is handled: the independent fits are checked
for a non-decreasing order (``FittedThresholds.raw_monotone``); when they violate it and
``enforce_monotone`` is on, they are projected onto the closest non-decreasing sequence
(weighted isotonic regression, pool-adjacent-violators, weights = bucket sizes). So when
the data says thresholds rise with activity the fits are kept as they are; when it does
not, the report says so and the paper's constraint is imposed. Buckets without held-out
positives use the pooled (all-bucket) threshold before the projection.

Baselines: Non-Distillation keeps every summary; Rule-based ranks summaries by frequency
(near-duplicate summaries of the same user) plus recency, and keeps the top ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FittedThresholds:
    thresholds: list[float]
    raw: list[float]
    raw_monotone: bool
    projected: bool
    per_bucket: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"thresholds": self.thresholds, "raw": self.raw, "raw_monotone": self.raw_monotone,
                "projected": self.projected, "per_bucket": self.per_bucket}


def _best_threshold(scores: np.ndarray, labels: np.ndarray, objective: str,
                    target_recall: float) -> tuple[float, float, float, float]:
    """(threshold, precision, recall, f1) over candidate thresholds = the observed scores."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tp = np.cumsum(y)
    k = np.arange(1, len(s) + 1)
    # Only cut between distinct scores: the threshold s[i] keeps everything >= s[i].
    last = np.r_[s[1:] != s[:-1], True]
    tp, k, s = tp[last], k[last], s[last]
    pos = max(int(y.sum()), 1)
    precision, recall = tp / k, tp / pos
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    if objective == "recall":
        ok = np.flatnonzero(recall >= target_recall - 1e-12)
        i = int(ok[0]) if len(ok) else len(s) - 1  # highest threshold reaching the recall
    else:
        i = int(np.argmax(f1))
    return float(s[i]), float(precision[i]), float(recall[i]), float(f1[i])


def isotonic_non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares projection onto non-decreasing sequences (PAVA)."""
    from sklearn.isotonic import IsotonicRegression

    x = np.arange(len(values))
    return IsotonicRegression(increasing=True).fit_transform(x, values, sample_weight=np.maximum(weights, 1e-9))


def fit_thresholds(scores, labels, buckets, num_buckets: int, objective: str = "f1",
                   target_recall: float = 0.8, enforce_monotone: bool = True) -> FittedThresholds:
    """Per-bucket tau_b on held-out (score, revisited) data; see module docstring."""
    scores = np.asarray(scores, float)
    labels = np.asarray(labels).astype(bool)
    buckets = np.asarray(buckets, int)
    if not (len(scores) == len(labels) == len(buckets)):
        raise ValueError("scores, labels and buckets differ in length")
    if labels.any():
        pooled = _best_threshold(scores, labels, objective, target_recall)[0]
    else:
        pooled = float(np.max(scores)) + 1e-6 if len(scores) else 1.0  # nothing ever revisited: keep nothing
    raw, weights, info = [], [], []
    for b in range(num_buckets):
        m = buckets == b
        if m.sum() and labels[m].any():
            t, p, r, f = _best_threshold(scores[m], labels[m], objective, target_recall)
            info.append({"bucket": b, "n": int(m.sum()), "positives": int(labels[m].sum()),
                         "threshold": t, "precision": p, "recall": r, "f1": f, "fallback": False})
        else:
            t = pooled
            info.append({"bucket": b, "n": int(m.sum()), "positives": int(labels[m].sum()),
                         "threshold": t, "fallback": True})
        raw.append(t)
        weights.append(float(m.sum()))
    raw_arr = np.array(raw)
    monotone = bool(np.all(np.diff(raw_arr) >= -1e-12))
    final = raw_arr
    if enforce_monotone and not monotone:
        final = isotonic_non_decreasing(raw_arr, np.array(weights))
    return FittedThresholds([float(x) for x in final], [float(x) for x in raw_arr], monotone,
                            bool(enforce_monotone and not monotone), info)


def select_interests(scores, user_ids, buckets, thresholds, max_interests: int,
                     eligible=None) -> np.ndarray:
    """Eq. 4 with a cap: per user, the eligible summaries scoring >= tau_{b(u)}, best
    ``max_interests``. ``eligible`` (default: all) is :mod:`icebreaker_ray.rid.noise`'s mask.

    A user may end with no interest (nothing resonates enough):
    :func:`trigger_interests` then falls back to their best-scored eligible summary. Ties are broken
    by row order. Returns a boolean mask over the rows.
    """
    scores = np.asarray(scores, float)
    user_ids = np.asarray(user_ids)
    buckets = np.clip(np.asarray(buckets, int), 0, len(thresholds) - 1)
    tau = np.asarray(thresholds, float)[buckets]
    keep = scores >= tau
    if eligible is not None:
        keep &= np.asarray(eligible, bool)
    return keep & (rank_within_user(np.where(keep, scores, -np.inf), user_ids) < max_interests)


def trigger_interests(user_ids, summaries, scores, selected, eligible=None) -> dict[str, list[str]]:
    """I* per user, as every consumer sees it (SIT corpus, mining, evaluation, the server):
    the selected summaries, highest resonance score first (ties in input order), repeated
    texts once. A user none of whose summaries passes tau_b keeps one summary, so every
    user with a history gets a personal prompt: the best-scored *eligible* one
    (``eligible``: :mod:`icebreaker_ray.rid.noise`'s mask, default all), or the best-scored
    one when the noise rules leave nothing. Without that, on real chat where a greeting
    recurs in every conversation, the fallback picked "Hello" (BENCHMARKS.md, real-text
    relevance).

    >>> trigger_interests(["a", "a", "a", "b"], ["x", "y", "z", "w"], [0.2, 0.9, 0.5, 0.1],
    ...                   [True, True, False, False])
    {'a': ['y', 'x'], 'b': ['w']}
    >>> trigger_interests(["a", "a", "b"], ["hello?", "sourdough starters", "hi"], [0.9, 0.4, 0.5],
    ...                   [False, False, False], eligible=[False, True, False])
    {'a': ['sourdough starters'], 'b': ['hi']}
    """
    user_ids = np.asarray(user_ids)
    scores = np.asarray(scores, dtype=float)
    selected = np.asarray(selected, dtype=bool)
    ok = np.ones(len(user_ids), bool) if eligible is None else np.asarray(eligible, dtype=bool)
    result: dict[str, list[str]] = {}
    for uid in sorted(set(user_ids.tolist())):
        rows = np.flatnonzero(user_ids == uid)
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        fallback = next((i for i in rows if ok[i]), rows[0])
        chosen = [summaries[i] for i in rows if selected[i]] or [summaries[fallback]]
        result[uid] = list(dict.fromkeys(chosen))
    return result


def rank_within_user(scores, user_ids) -> np.ndarray:
    """0 for each user's best-scoring row, 1 for the next, ... (stable on ties)."""
    scores = np.asarray(scores, float)
    user_ids = np.asarray(user_ids)
    order = np.lexsort((np.arange(len(scores)), -scores, user_ids))
    ranks = np.empty(len(scores), int)
    su = user_ids[order]
    start = np.r_[True, su[1:] != su[:-1]] if len(su) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(su)), 0)) if len(su) else start
    ranks[order] = np.arange(len(su)) - group_start
    return ranks


# ----------------------------------------------------------------------------- baselines


def non_distillation_scores(n: int) -> np.ndarray:
    """Non-Distillation: every summary is an interest (one constant score)."""
    return np.ones(n)


def rule_based_scores(user_ids, ts_days, embeddings, sim_threshold: float, half_life_days: float,
                      recency_weight: float, now_days: float | None = None, block: int = 1024) -> np.ndarray:
    """Rule-based: frequency + recency (App. C.1).

    frequency = how many of the user's summaries are near-duplicates (cosine >=
    ``sim_threshold``, itself included) of this one, i.e. how often the interest occurs;
    recency = ``recency_weight * 0.5 ** (age / half_life_days)``, age from ``now_days``
    (default: the user's last session).
    """
    from icebreaker_ray.rid.noise import support_counts

    user_ids = np.asarray(user_ids)
    ts = np.asarray(ts_days, float)
    freq = support_counts(user_ids, embeddings, sim_threshold, block) + 1  # itself included
    out = np.zeros(len(user_ids))
    for uid in np.unique(user_ids):
        rows = np.flatnonzero(user_ids == uid)
        now = ts[rows].max() if now_days is None else now_days
        out[rows] = freq[rows] + recency_weight * 0.5 ** (np.maximum(now - ts[rows], 0) / half_life_days)
    return out
