"""A utility ranker for little data and generated text: a few starter x user interaction
features under gradient-boosted trees (LightGBM), next to the MLP of eq. 7.

The MLP reads 1,155 raw dimensions and needs far more clicks than a slice of the logs
holds; this ranker reads :data:`FEATURES`, each one a question a product analyst would
ask of a (user, starter) pair as of the time it was shown:

- ``cos_max`` / ``cos_top3`` / ``cos_mean`` / ``cos_recency`` / ``cos_last``: cosine of the
  starter to the user's recent session summaries (best, top-3 mean, mean, recency-weighted
  mean with a half-life of ``HALF_LIFE`` summaries, the latest one);
- ``cos_recurring``: the recency-weighted cosine to the summaries the user came back to
  (another summary of the window within ``RECUR_COS`` cosine), a log-only stand-in for the
  trigger interests I* that RID distills (train-ranker reads only the logs, so the same
  definition holds when training, mining, grading and serving);
- ``cos_profile``: cosine to the profile text, 0 without one;
- ``topic_agree``: recency-weighted share of the recent summaries in the starter's topic
  (k-means clusters of the summary embeddings: learned from the logs, no catalog);
- ``chars`` / ``words``: length; ``idf_mean`` / ``idf_max``: specificity, the inverse
  document frequency (over the session summaries) of the starter's content words;
- ``pop_exact``: the starter text's own position-debiased popularity in the training logs,
  clicks over expected clicks (COEC: each impression expects the logged CTR of its
  position), smoothed towards 1; ``pop_knn``: the same over its ``KNN`` nearest logged
  starters (so generated text, never logged verbatim, gets a topic prior). When training,
  both are computed out-of-fold (the rows of a fold never see their own clicks);
- ``hist_len``: log(1 + summaries in the window);
- ``position``: the logged position while training and 0 when scoring, so the trees
  absorb the logging position bias without it leaking into the score.

    ranker = fit_feature_ranker(train_examples, seed=0)     # RankerExamples with featurizer
    ranker.utility(featurizer, ["u1", "u1"], texts, encoder(texts))   # R_util per starter

Same interface as :class:`~icebreaker_ray.reward.ranker.UtilityRanker`: ``featurize``,
``score``, ``click_probability``, ``utility``, ``save``/``load``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from icebreaker_ray.data import io

if TYPE_CHECKING:
    from icebreaker_ray.reward.ranker import RankerExamples, UserFeaturizer

FEATURES = ("cos_max", "cos_top3", "cos_mean", "cos_recency", "cos_last", "cos_recurring",
            "cos_profile", "topic_agree", "chars", "words", "idf_mean", "idf_max",
            "pop_exact", "pop_knn", "hist_len", "position")
HALF_LIFE = 5.0  # summaries
RECUR_COS = 0.5
KNN = 10
POP_PRIOR = 20.0  # pseudo expected-clicks of the popularity smoothing
NUM_TOPICS = 24
TOPIC_SAMPLE = 4000  # summaries the topic clusters are fitted on
OOF_FOLDS = 5
DEPTH_CAP = 10
_WORD = re.compile(r"[a-z0-9][a-z0-9'+#.-]*[a-z0-9+#]|[a-z0-9]")


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ characters that are not English stop words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in ENGLISH_STOP_WORDS]


def recency_weights(n: int, half_life: float = HALF_LIFE) -> np.ndarray:
    """Weights of ``n`` summaries in time order (oldest first): the latest weighs 1, one
    ``half_life`` summaries earlier 0.5."""
    return 0.5 ** (np.arange(n)[::-1] / half_life)


def interaction_features(hist: np.ndarray, text_emb: np.ndarray, profile: np.ndarray | None = None,
                         hist_topics: np.ndarray | None = None,
                         text_topics: np.ndarray | None = None) -> np.ndarray:
    """The user-side columns (``cos_max`` .. ``topic_agree`` and ``hist_len``) for starters
    ``text_emb`` (m, d) against one user's window ``hist`` (n, d, oldest first); unit
    vectors. Returns (m, 9): cos_max, cos_top3, cos_mean, cos_recency, cos_last,
    cos_recurring, cos_profile, topic_agree, hist_len."""
    m, n = len(text_emb), len(hist)
    out = np.zeros((m, 9), np.float64)
    if profile is not None and np.any(profile):
        out[:, 6] = text_emb @ profile
    if n == 0:
        return out
    cos = text_emb @ hist.T  # (m, n)
    w = recency_weights(n)
    top = np.sort(cos, axis=1)[:, ::-1]
    out[:, 0] = top[:, 0]
    out[:, 1] = top[:, :3].mean(axis=1)
    out[:, 2] = cos.mean(axis=1)
    out[:, 3] = cos @ w / w.sum()
    out[:, 4] = cos[:, -1]
    sim = hist @ hist.T
    recurring = ((sim >= RECUR_COS).sum(axis=1) - 1) > 0  # another summary of the window is close
    if recurring.any():
        wr = w * recurring
        out[:, 5] = cos @ wr / wr.sum()
    if hist_topics is not None and text_topics is not None:
        out[:, 7] = (text_topics[:, None] == hist_topics[None, :]) @ w / w.sum()
    out[:, 8] = np.log1p(n)
    return out


@dataclass
class PopularityTable:
    """Position-debiased popularity of logged starters (COEC, smoothed towards 1)."""

    texts: list[str]
    emb: np.ndarray  # (T, d) unit vectors of ``texts``
    clicks: np.ndarray  # (T,)
    expected: np.ndarray  # (T,) sum over impressions of the CTR of their position

    @classmethod
    def fit(cls, starters: Sequence[str], emb: np.ndarray, clicked: np.ndarray,
            position: np.ndarray, position_ctr: np.ndarray) -> PopularityTable:
        index: dict[str, int] = {}
        for s in starters:
            index.setdefault(s, len(index))
        rows = np.array([index[s] for s in starters], np.int64)
        first = np.zeros(len(index), np.int64)
        first[rows[::-1]] = np.arange(len(rows))[::-1]
        clicks = np.bincount(rows, weights=clicked, minlength=len(index))
        pos = np.minimum(position, len(position_ctr) - 1)
        expected = np.bincount(rows, weights=position_ctr[pos], minlength=len(index))
        return cls(list(index), np.asarray(emb, np.float32)[first] if len(rows) else
                   np.zeros((0, emb.shape[1]), np.float32), clicks, expected)

    def exact(self, starters: Sequence[str]) -> np.ndarray:
        index = {s: i for i, s in enumerate(self.texts)}
        out = np.ones(len(starters))
        for j, s in enumerate(starters):
            i = index.get(s)
            if i is not None:
                out[j] = (self.clicks[i] + POP_PRIOR) / (self.expected[i] + POP_PRIOR)
        return out

    def knn(self, emb: np.ndarray, k: int = KNN) -> np.ndarray:
        if len(self.texts) == 0:
            return np.ones(len(emb))
        k = min(k, len(self.texts))
        out = np.empty(len(emb))
        for start in range(0, len(emb), 4096):
            sim = emb[start:start + 4096] @ self.emb.T
            nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            out[start:start + 4096] = ((self.clicks[nn].sum(axis=1) + POP_PRIOR)
                                       / (self.expected[nn].sum(axis=1) + POP_PRIOR))
        return out


def idf_table(texts: Sequence[str]) -> dict[str, float]:
    """log((1 + N) / (1 + df)) + 1 of every content word of ``texts``."""
    df: dict[str, int] = {}
    for t in texts:
        for w in set(content_words(t)):
            df[w] = df.get(w, 0) + 1
    n = len(texts)
    return {w: float(np.log((1 + n) / (1 + c)) + 1) for w, c in df.items()}


def text_features(texts: Sequence[str], idf: dict[str, float]) -> np.ndarray:
    """(m, 4): chars, words, idf_mean, idf_max (unknown content words count as the rarest)."""
    top = max(idf.values(), default=1.0)
    rows = []
    for t in texts:
        words = content_words(t)
        vals = [idf.get(w, top) for w in words] or [0.0]
        rows.append([len(t), len(t.split()), float(np.mean(vals)), float(np.max(vals))])
    return np.asarray(rows, np.float64).reshape(len(texts), 4)


class FeatureRanker:
    """R_util over :data:`FEATURES`: LightGBM click model (binary) and depth model
    (cross-entropy on min(depth, 10) / 10); R_util = (1 - w) p_click + w depth_hat."""

    kind = "features"

    def __init__(self, click_model, depth_model, idf: dict[str, float], centroids: np.ndarray,
                 popularity: PopularityTable, depth_weight: float = 0.3):
        self.click_model, self.depth_model = click_model, depth_model
        self.idf, self.centroids, self.popularity = idf, centroids, popularity
        self.depth_weight = depth_weight

    # -- features -------------------------------------------------------------------

    def topics(self, emb: np.ndarray) -> np.ndarray:
        if len(self.centroids) == 0 or len(emb) == 0:
            return np.zeros(len(emb), np.int64)
        return np.argmax(emb @ self.centroids.T, axis=1)

    def featurize(self, featurizer: UserFeaturizer, user_ids: Sequence[str], texts: Sequence[str],
                  text_emb: np.ndarray, before_ms: Sequence[int | None] | None = None,
                  position: np.ndarray | None = None, popularity: np.ndarray | None = None,
                  ) -> np.ndarray:
        """Rows of :data:`FEATURES` as of ``before_ms`` (None: now). ``position`` (default 0)
        and ``popularity`` ((m, 2) pop_exact, pop_knn; default from the training logs)
        are only given while training."""
        return build_features(featurizer, user_ids, texts, text_emb, before_ms, self.idf,
                              self.topics, self.popularity if popularity is None else popularity,
                              position)

    # -- scoring --------------------------------------------------------------------

    def click_probability(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.click_model.predict(x), np.float64) if len(x) else np.zeros(0)

    def score(self, x: np.ndarray) -> np.ndarray:
        """R_util in (0, 1) for rows of :data:`FEATURES`."""
        if len(x) == 0:
            return np.zeros(0)
        w = self.depth_weight
        return (1 - w) * self.click_probability(x) + w * np.asarray(self.depth_model.predict(x))

    def utility(self, featurizer: UserFeaturizer, user_ids: Sequence[str], texts: Sequence[str],
                text_emb: np.ndarray, before_ms: Sequence[int | None] | None = None) -> np.ndarray:
        return self.score(self.featurize(featurizer, user_ids, texts, text_emb, before_ms))

    # -- storage --------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """LightGBM models, arrays and ``ranker.json`` in ``directory`` (a path or a URI)."""
        with io.output_dir(directory) as local:
            self._save_local(Path(local))

    def _save_local(self, d: Path) -> None:
        self.click_model.save_model(str(d / "click.lgb"))
        self.depth_model.save_model(str(d / "depth.lgb"))
        p = self.popularity
        np.savez(d / "ranker.npz", centroids=self.centroids, pop_emb=p.emb, pop_clicks=p.clicks,
                 pop_expected=p.expected)
        (d / "ranker.json").write_text(json.dumps(
            {"kind": self.kind, "depth_weight": self.depth_weight, "features": list(FEATURES),
             "idf": self.idf, "pop_texts": p.texts}))

    @classmethod
    def load(cls, directory: str) -> FeatureRanker:
        import lightgbm as lgb

        d = Path(io.local_dir(directory))  # LightGBM reads model files by path
        meta = json.loads((d / "ranker.json").read_text())
        if meta.get("features") != list(FEATURES):
            raise ValueError(f"{d}: feature ranker saved with other features {meta.get('features')}")
        arr = np.load(d / "ranker.npz")
        pop = PopularityTable(meta["pop_texts"], arr["pop_emb"], arr["pop_clicks"], arr["pop_expected"])
        return cls(lgb.Booster(model_file=str(d / "click.lgb")), lgb.Booster(model_file=str(d / "depth.lgb")),
                   meta["idf"], arr["centroids"], pop, meta["depth_weight"])


def build_features(featurizer: UserFeaturizer, user_ids: Sequence[str], texts: Sequence[str],
                   text_emb: np.ndarray, before_ms, idf: dict[str, float], topics,
                   popularity: PopularityTable | np.ndarray, position: np.ndarray | None) -> np.ndarray:
    m = len(user_ids)
    before = list(before_ms) if before_ms is not None else [None] * m
    text_emb = np.asarray(text_emb, np.float32)
    x = np.zeros((m, len(FEATURES)), np.float64)
    if m == 0:
        return x
    text_topics = topics(text_emb)
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i, (u, b) in enumerate(zip(user_ids, before, strict=True)):
        s, e = featurizer._window(u, b)
        groups.setdefault((u, s, e), []).append(i)
    hist_topics_all = topics(featurizer.emb) if len(featurizer.emb) else np.zeros(0, np.int64)
    for (u, s, e), idx in groups.items():
        rows = np.asarray(idx)
        cols = interaction_features(featurizer.emb[s:e], text_emb[rows], featurizer.profile.get(u),
                                    hist_topics_all[s:e], text_topics[rows])
        x[rows, 0:8] = cols[:, :8]
        x[rows, 14] = cols[:, 8]
    x[:, 8:12] = text_features(texts, idf)
    if isinstance(popularity, PopularityTable):
        x[:, 12] = popularity.exact(texts)
        x[:, 13] = popularity.knn(text_emb)
    else:
        x[:, 12:14] = popularity
    if position is not None:
        x[:, 15] = position
    return x


def position_ctr(clicked: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Logged CTR per position (the examination model of COEC)."""
    n = int(position.max()) + 1 if len(position) else 1
    shows = np.bincount(position, minlength=n).astype(float)
    clicks = np.bincount(position, weights=clicked, minlength=n)
    mean = clicks.sum() / max(shows.sum(), 1)
    return (clicks + 10 * mean) / (shows + 10)


def _lgb(x: np.ndarray, y: np.ndarray, objective: str, seed: int, trees: int, leaves: int):
    """A LightGBM booster (deterministic, two threads); ``predict`` gives probabilities."""
    import lightgbm as lgb

    params = {"objective": objective, "learning_rate": 0.03, "num_leaves": leaves,
              "min_data_in_leaf": 40, "bagging_fraction": 0.8, "bagging_freq": 1,
              "feature_fraction": 0.9, "lambda_l2": 1.0, "seed": seed, "deterministic": True,
              "force_row_wise": True, "num_threads": 1, "verbose": -1}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(FEATURES)), num_boost_round=trees)


def fit_feature_ranker(ex: RankerExamples, *, depth_weight: float = 0.3, seed: int = 0,
                       trees: int = 300, leaves: int = 15) -> FeatureRanker:
    """Fit the feature ranker on ``ex`` (built by ``build_examples``, which keeps the
    featurizer, user ids, times and starter embeddings)."""
    from sklearn.cluster import KMeans

    from icebreaker_ray.reward.ranker import log_slice

    feats = ex.featurizer
    if feats is None or ex.emb is None:
        raise ValueError("fit_feature_ranker needs examples from build_examples (featurizer, emb)")
    summaries = feats.summaries
    idf = idf_table(summaries)
    k = min(NUM_TOPICS, len(feats.emb))
    centroids = np.zeros((0, feats.dim), np.float32)
    if k >= 2:
        rows = np.random.default_rng(seed).permutation(len(feats.emb))[:TOPIC_SAMPLE]
        km = KMeans(k, n_init=2, random_state=seed).fit(feats.emb[np.sort(rows)])
        c = km.cluster_centers_
        centroids = (c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-9)).astype(np.float32)
    pctr = position_ctr(ex.clicked, ex.position)
    # Out-of-fold popularity: each fold's rows see the clicks of the other folds only.
    fold = log_slice([f"pop-{r}" for r in ex.request_id], OOF_FOLDS)
    pop = np.ones((len(ex), 2))
    for f in range(OOF_FOLDS):
        inside, rest = fold == f, fold != f
        if not inside.any():
            continue
        table = PopularityTable.fit([s for s, r in zip(ex.starter, rest, strict=True) if r],
                                    ex.emb[rest], ex.clicked[rest], ex.position[rest], pctr)
        pop[inside, 0] = table.exact([s for s, i in zip(ex.starter, inside, strict=True) if i])
        pop[inside, 1] = table.knn(ex.emb[inside])
    full = PopularityTable.fit(ex.starter, ex.emb, ex.clicked, ex.position, pctr)
    ranker = FeatureRanker(None, None, idf, centroids, full, depth_weight)
    x = ranker.featurize(feats, ex.user_id, ex.starter, ex.emb, ex.ts, position=ex.position,
                         popularity=pop)
    depth = np.minimum(ex.depth, DEPTH_CAP) / DEPTH_CAP
    ranker.click_model = _lgb(x, ex.clicked, "binary", seed, trees, leaves)
    ranker.depth_model = _lgb(x, depth, "cross_entropy", seed, trees, leaves)
    return ranker
