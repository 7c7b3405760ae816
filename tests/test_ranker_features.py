"""The feature ranker (reward/features.py), the bootstrap ensemble and its conservative
reward (reward/ranker.py): hand-computed cases and a small synthetic log."""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
import pyarrow as pa
import pytest

from icebreaker_ray.eval.metrics import auc
from icebreaker_ray.reward.features import (
    FeatureRanker,
    PopularityTable,
    fit_feature_ranker,
    idf_table,
    interaction_features,
    recency_weights,
    text_features,
)
from icebreaker_ray.reward.ranker import (
    RankerEnsemble,
    UserFeaturizer,
    build_examples,
    conservative_score,
    conservative_utility,
    load_ranker,
    log_slice,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class TableEncoder:
    """Fixed unit vectors for known texts; unknown texts get a seeded random direction."""

    def __init__(self, table: dict[str, list[float]], dim: int = 3):
        self.table, self.dim = table, dim

    def __call__(self, texts):
        out = []
        for t in texts:
            v = np.asarray(self.table[t], float) if t in self.table else \
                np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32).reshape(len(out), self.dim)


def _sessions(rows):
    return pa.table({
        "user_id": [r[0] for r in rows], "session_id": [f"s{i}" for i in range(len(rows))],
        "ts": pa.array([T0 + dt.timedelta(days=r[1]) for r in rows], pa.timestamp("ms", tz="UTC")),
        "summary": [r[2] for r in rows],
    })


def test_interaction_features_hand_case():
    # User history, oldest first: anime, cooking, anime again (a recurring interest).
    hist = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], float)
    starters = np.array([[1, 0, 0], [0, 1, 0]], float)
    w = 0.5 ** (np.array([2, 1, 0]) / 5)  # recency weights, latest = 1
    assert recency_weights(3) == pytest.approx(w)
    f = interaction_features(hist, starters, profile=np.array([0.6, 0.8, 0]),
                             hist_topics=np.array([0, 1, 0]), text_topics=np.array([0, 1]))
    # anime starter: cosines [1, 0, 1]
    assert f[0, :5] == pytest.approx([1, 2 / 3, 2 / 3, (w[0] + w[2]) / w.sum(), 1])
    assert f[0, 5] == pytest.approx(1.0)  # recurring summaries are 0 and 2, both cos 1
    assert f[0, 6] == pytest.approx(0.6)  # profile cosine
    assert f[0, 7] == pytest.approx((w[0] + w[2]) / w.sum())  # topic agreement
    assert f[0, 8] == pytest.approx(np.log(4))
    # cooking starter: cosines [0, 1, 0]; the cooking summary never recurs
    assert f[1, :6] == pytest.approx([1, 1 / 3, 1 / 3, w[1] / w.sum(), 0, 0])
    assert f[1, 6] == pytest.approx(0.8)
    assert f[1, 7] == pytest.approx(w[1] / w.sum())
    # no history: everything but the profile cosine is 0
    assert interaction_features(np.zeros((0, 3)), starters).tolist() == [[0.0] * 9] * 2


def test_featurize_reads_the_window_before_the_impression():
    enc = TableEncoder({"anime": [1, 0, 0], "cook": [0, 1, 0], "anime again": [1, 0, 0],
                        "Which anime?": [1, 0, 0]})
    feats = UserFeaturizer(_sessions([("a", 0, "anime"), ("a", 1, "cook"), ("a", 2, "anime again")]),
                           None, enc)
    ranker = FeatureRanker(None, None, idf_table(feats.summaries), np.zeros((0, 3)),
                           PopularityTable([], np.zeros((0, 3)), np.zeros(0), np.zeros(0)))
    day2 = int((T0 + dt.timedelta(days=1, hours=12)).timestamp() * 1000)
    x_now, x_day2 = ranker.featurize(feats, ["a", "a"], ["Which anime?"] * 2,
                                     enc(["Which anime?"] * 2), [None, day2])
    assert x_now[:3] == pytest.approx([1, 2 / 3, 2 / 3])
    assert x_day2[:3] == pytest.approx([1, 0.5, 0.5])  # only anime, cook before day 1.5
    assert x_day2[5] == 0.0  # nothing recurs yet
    assert x_now[12:14].tolist() == [1.0, 1.0]  # no logs: popularity prior 1
    assert x_now[15] == 0.0  # scored at position 0


def test_text_features_length_and_idf():
    idf = idf_table(["Luffy gear fight", "Luffy again", "pasta dinner"])
    assert idf["luffy"] == pytest.approx(np.log(4 / 3) + 1)
    assert idf["gear"] == pytest.approx(np.log(2) + 1)
    f = text_features(["Luffy gear?", "the and"], idf)
    assert f[0].tolist() == pytest.approx([11, 2, (idf["luffy"] + idf["gear"]) / 2, idf["gear"]])
    assert f[1, 2:].tolist() == [0.0, 0.0]  # stop words only: no content


def test_popularity_is_clicks_over_expected_clicks():
    emb = np.eye(3, dtype=np.float32)
    table = PopularityTable.fit(["a", "a", "b"], emb[[0, 0, 1]], np.array([1.0, 0, 0]),
                                np.array([0, 1, 0]), np.array([0.2, 0.1]))
    assert table.exact(["a", "b", "new"]) == pytest.approx([21 / 20.3, 20 / 20.2, 1.0])
    # kNN with k=1: the nearest logged starter's COEC
    assert table.knn(emb[[0, 1]], k=1) == pytest.approx([21 / 20.3, 20 / 20.2])


class Fixed:
    """A stand-in ranker member returning fixed utilities."""

    kind = "fixed"

    def __init__(self, values):
        self.values = np.asarray(values, float)

    def utility(self, featurizer, user_ids, texts, text_emb, before_ms=None):
        return self.values


def test_conservative_score_hand_made_ensemble():
    members = np.array([[0.5, 0.2], [0.7, 0.4], [0.6, 0.0]])
    # means [0.6, 0.2]; population stds [sqrt(0.02/3), sqrt(0.08/3)]
    std = np.sqrt([0.02 / 3, 0.08 / 3])
    assert conservative_score(members, 1.0) == pytest.approx([0.6 - std[0], 0.2 - std[1]])
    assert conservative_score(members, 2.0) == pytest.approx([0.6 - 2 * std[0], 0.0])  # clipped
    assert conservative_score(members, 0.0) == pytest.approx([0.6, 0.2])
    ens = RankerEnsemble([Fixed(m) for m in members])
    assert ens.utility(None, ["u", "u"], ["s", "t"], None) == pytest.approx([0.6, 0.2])
    got = conservative_utility(ens, None, ["u", "u"], ["s", "t"], None, kappa=1.0)
    assert got == pytest.approx([0.51835, 0.03670], abs=1e-5)
    # the over-rated starter (high mean, high spread) loses to the agreed-on one
    ens2 = RankerEnsemble([Fixed([0.9, 0.5]), Fixed([0.1, 0.5])])
    assert ens2.utility(None, ["u"] * 2, ["s", "t"], None) == pytest.approx([0.5, 0.5])
    assert np.argmax(conservative_utility(ens2, None, ["u"] * 2, ["s", "t"], None, 0.5)) == 1
    # one ranker: its own utility
    assert conservative_utility(Fixed([0.3]), None, ["u"], ["s"], None, 1.0) == pytest.approx([0.3])


def _synthetic_world(seed=0, users=60, days=20, dim=6):
    """Users with one of ``dim`` topics; a starter is clicked mostly when it is on topic."""
    rng = np.random.default_rng(seed)
    basis = np.eye(dim)
    table, sessions, imps = {}, [], []
    for u in range(users):
        topic = u % dim
        for d in range(days):
            s = f"u{u} day{d} summary"
            t = topic if rng.random() < 0.8 else int(rng.integers(dim))
            table[s] = basis[t] + 0.3 * rng.normal(size=dim)
            sessions.append((f"u{u}", d, s))
        for d in range(5, days):
            for pos in range(4):
                k = int(rng.integers(dim))
                text = f"starter on topic {k} number {int(rng.integers(8))}"
                table.setdefault(text, basis[k] + 0.2 * rng.normal(size=dim))
                p = 0.35 if k == topic else 0.03
                clicked = bool(rng.random() < p / (1 + 0.5 * pos))
                imps.append((f"u{u}", d, f"r{u}-{d}", text, pos, clicked, 3 if clicked else 0))
    ts = [T0 + dt.timedelta(days=d, hours=12) for _, d, *_ in imps]
    impressions = pa.table({
        "user_id": [r[0] for r in imps], "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "request_id": [r[2] for r in imps], "starter": [r[3] for r in imps],
        "position": [r[4] for r in imps], "clicked": [r[5] for r in imps],
        "depth": [r[6] for r in imps],
    })
    return TableEncoder(table, dim), _sessions(sessions), impressions


def test_feature_ranker_beats_chance_on_a_synthetic_log(tmp_path):
    enc, sessions, impressions = _synthetic_world()
    ex = build_examples(impressions, UserFeaturizer(sessions, None, enc), enc)
    test_mask = log_slice(ex.request_id, 4) == 0
    train, test = ex.subset(~test_mask), ex.subset(test_mask)
    ranker = fit_feature_ranker(train, seed=0, trees=60, leaves=7)
    x = ranker.featurize(test.featurizer, test.user_id, test.starter, test.emb, test.ts)
    p = ranker.click_probability(x)
    assert ((p > 0) & (p < 1)).all()
    assert auc(test.clicked, p) > 0.75
    util = ranker.utility(test.featurizer, test.user_id, test.starter, test.emb, test.ts)
    assert ((util > 0) & (util < 1)).all()
    # save / load through the one loader, also as an ensemble
    ranker.save(tmp_path / "f")
    again = load_ranker(tmp_path / "f")
    assert isinstance(again, FeatureRanker)
    np.testing.assert_allclose(
        again.utility(test.featurizer, test.user_id, test.starter, test.emb, test.ts), util, rtol=1e-6)
    RankerEnsemble([ranker, again]).save(tmp_path / "e")
    ens = load_ranker(tmp_path / "e")
    assert isinstance(ens, RankerEnsemble) and len(ens.members) == 2
    np.testing.assert_allclose(
        conservative_utility(ens, test.featurizer, test.user_id, test.starter, test.emb, 1.0,
                             test.ts), util, rtol=1e-5, atol=1e-9)  # identical members: std 0


def test_logged_statistics_split_like_train_ranker():
    from icebreaker_ray.data.splits import RANKER_SLICES, ranker_holdout
    from icebreaker_ray.sim.stage import _logged_rows, logged_statistics

    _, _, impressions = _synthetic_world(users=12, days=10)
    stats = logged_statistics(impressions)
    clicked = np.asarray(impressions.column("clicked").to_pylist())
    assert stats["all"] == {"impressions": impressions.num_rows, "requests": 12 * 5,
                            "clicks": int(clicked.sum())}
    parts = [v for halves in stats["slices"].values() for v in halves.values()]
    assert sum(p["impressions"] for p in parts) == impressions.num_rows
    assert sum(p["clicks"] for p in parts) == int(clicked.sum())
    requests = impressions.column("request_id").to_pylist()
    util = log_slice(requests, len(RANKER_SLICES)) == RANKER_SLICES["util"]
    held = ranker_holdout(requests)
    assert stats["slices"]["util"]["test"]["clicks"] == int(clicked[util & held].sum())
    assert _logged_rows(stats).count("\n") == 4


def test_ranker_section_of_the_report():
    from icebreaker_ray.eval.report import _ranker_section

    md = _ranker_section({"util": {"kind": "features", "members": 5, "train_clicks": 1500,
                                   "train_impressions": 30000, "test_clicks": 350,
                                   "test_impressions": 7000, "click_auc": 0.8,
                                   "click_auc_popularity": 0.7, "click_auc_mlp": 0.65,
                                   "click_auc_features": 0.79}})
    assert "| util | features | 5 | 1500 / 30000 | 350 / 7000 | 0.800 | 0.700 | 0.650 | 0.790 |" in md
    assert _ranker_section(None) == ""
