"""Utility ranker R_util (eq. 7): features, training, position debiasing, Ray Train."""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from icebreaker_ray.eval.metrics import auc
from icebreaker_ray.reward.ranker import (
    RankerExamples,
    UserFeaturizer,
    UtilityRanker,
    fit_ranker,
    log_slice,
    pair_feature_size,
    train_ranker_on_ray,
)

DIM = 8


class FakeEncoder:
    """Deterministic unit vectors per text (no model)."""

    dim = DIM

    def __call__(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32).reshape(len(out), DIM)


def _sessions(rows):
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return pa.table({
        "user_id": [r[0] for r in rows], "session_id": [f"s{i}" for i in range(len(rows))],
        "ts": pa.array([t0 + dt.timedelta(days=r[1]) for r in rows], pa.timestamp("ms", tz="UTC")),
        "summary": [r[2] for r in rows],
    })


def test_pair_features_hand_case():
    enc = FakeEncoder()
    sessions = _sessions([("a", 0, "x"), ("a", 1, "y"), ("a", 5, "z"), ("b", 0, "y")])
    feats = UserFeaturizer(sessions, None, enc, window=20)
    text = enc(["y"])
    t_day2 = int(dt.datetime(2026, 1, 3, tzinfo=dt.UTC).timestamp() * 1000)
    f = feats.pair_features(["a"], text, [t_day2])[0]
    assert f.shape == (pair_feature_size(DIM),)
    # before day 2 user a has summaries x, y: the max cosine to text "y" is 1 (same text)
    assert f[-3] == pytest.approx(1.0, abs=1e-5)
    x, y = enc(["x", "y"])
    hist = (x + y) / np.linalg.norm(x + y)
    assert f[-1] == pytest.approx(float(hist @ y), abs=1e-5)
    np.testing.assert_allclose(f[:DIM], hist * y, atol=1e-5)
    # "z" (day 5) is not visible yet; an unknown user has an all-zero history part
    assert feats.pair_features(["nobody"], text)[0][-3:].tolist() == [0.0, 0.0, 0.0]


def _synthetic(n=3000, seed=0, position_effect=1.2):
    """Clicks driven by one relevance feature and by position (examination)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, pair_feature_size(DIM))).astype(np.float32)
    position = rng.integers(0, 4, n)
    logit = -2.5 + 2.0 * x[:, -3] - position_effect * position
    clicked = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    depth = clicked * (1 + np.clip(np.round(2 + 2 * x[:, -3]), 0, 8))
    return RankerExamples(x, position, clicked, depth.astype(np.float32), ["s"] * n, [f"r{i}" for i in range(n)])


def test_training_lowers_loss_changes_params_and_ranks_held_out():
    ex = _synthetic()
    model0 = UtilityRanker(DIM, hidden=32)
    before = [p.detach().clone() for p in model0.parameters()]
    model, losses = fit_ranker(ex, hidden=32, epochs=15, model=model0)
    assert losses[-1] < losses[0] * 0.9
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    test = _synthetic(seed=1)
    assert auc(test.clicked, model.click_probability(test.x)) > 0.7
    r = model.score(test.x)
    assert ((r > 0) & (r < 1)).all()


def test_position_bias_is_learned_and_kept_out_of_the_score():
    ex = _synthetic(position_effect=1.5)
    model, _ = fit_ranker(ex, hidden=32, epochs=15)
    bias = model.position_bias.weight.detach().squeeze().numpy()[:4]
    assert bias[0] > bias[1] > bias[2] > bias[3]  # learned examination decay
    # the same features at any logged position get the same score
    x = ex.x[:5]
    assert np.allclose(model.click_probability(x), model.click_probability(x))
    with torch.no_grad():
        c0, _ = model(torch.as_tensor(x), torch.zeros(5, dtype=torch.long))
        c3, _ = model(torch.as_tensor(x), torch.full((5,), 3, dtype=torch.long))
    assert (c0 > c3).all()


def test_log_slices_are_disjoint_and_stable():
    ids = [f"req-{i}" for i in range(1000)]
    s = log_slice(ids, 2)
    assert set(s) == {0, 1} and 0.4 < s.mean() < 0.6
    assert (log_slice(ids, 2) == s).all()


def test_save_load_round_trip(tmp_path):
    model, _ = fit_ranker(_synthetic(300), hidden=16, epochs=2)
    model.save(tmp_path / "r")
    again = UtilityRanker.load(tmp_path / "r")
    x = _synthetic(10, seed=3).x
    np.testing.assert_allclose(model.score(x), again.score(x), rtol=1e-6)


def test_reports_every_n_epochs_and_always_after_the_last():
    from icebreaker_ray.raykit import report_due

    assert [e for e in range(30) if report_due(e, 30, 10)] == [9, 19, 29]
    assert [e for e in range(7) if report_due(e, 7, 3)] == [2, 5, 6]
    assert [e for e in range(3) if report_due(e, 3, 1)] == [0, 1, 2]
    assert [e for e in range(4) if report_due(e, 4, 50)] == [3]


@pytest.mark.integration
def test_ray_train_two_workers_and_resume(tmp_path, ray_local):
    ex = _synthetic(1200)
    # checkpoint_every=3: the first run reports after epochs 3 and 4, the resumed one after 6
    kw = dict(run_name="r", storage_path=str(tmp_path), num_workers=2, hidden=16, lr=5e-3,
              batch_size=64, checkpoint_every=3)
    model, losses = train_ranker_on_ray(ex, epochs=4, **kw)
    assert len(losses) == 4 and losses[-1] < losses[0]
    test = _synthetic(seed=5)
    assert auc(test.clicked, model.click_probability(test.x)) > 0.65
    # rerun with the same name and more epochs: resumes from the epoch-4 checkpoint; the loss
    # history keeps the first four epochs and adds two that start from a trained model
    _, more = train_ranker_on_ray(ex, epochs=6, **kw)
    assert len(more) == 6 and more[:4] == pytest.approx(losses)
    assert more[4] < losses[1]
