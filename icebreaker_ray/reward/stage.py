"""The ``train-ranker`` stage: two utility rankers (eq. 7) on disjoint slices of the logs.

    icebreaker train-ranker --config configs/local-cpu.yaml --out runs/demo

Writes ``OUT/train-ranker/util/`` (the reward for list search and DPO) and
``OUT/train-ranker/eval/`` (the held-out LTR model f of the offline metrics), each trained
with Ray Train on its slice's training requests and measured on its held-out requests:
click AUC and depth correlation, next to a popularity baseline (smoothed CTR of the
starter text in the training requests).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.eval.metrics import auc
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.reward.ranker import (
    RankerExamples,
    UserFeaturizer,
    build_examples,
    log_slice,
    train_ranker_on_ray,
)

SLICES = {"util": 0, "eval": 1}


def popularity_scores(train: RankerExamples, test: RankerExamples, prior: float = 20.0) -> np.ndarray:
    """Baseline: each starter's smoothed CTR in the training requests."""
    shows: dict[str, float] = defaultdict(float)
    clicks: dict[str, float] = defaultdict(float)
    for s, c in zip(train.starter, train.clicked, strict=True):
        shows[s] += 1
        clicks[s] += c
    mean = float(train.clicked.mean()) if len(train) else 0.0
    return np.array([(clicks[s] + prior * mean) / (shows[s] + prior) for s in test.starter])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def fit_slice(part: RankerExamples, name: str, cfg: Config, storage_path: str, seed: int):
    """Train one ranker on ``part`` (minus a held-out fifth of its requests) with Ray Train;
    return the model and its held-out quality next to the popularity baseline."""
    held_out = log_slice([f"holdout-{x}" for x in part.request_id], 5) == 0
    train, test = part.subset(~held_out), part.subset(held_out)
    if train.clicked.sum() < 2:
        raise io.DataError(
            f"impressions: slice '{name}' has {int(train.clicked.sum())} clicks; the ranker "
            "needs clicked and unclicked impressions (log more days or users)")
    r = cfg.ranker
    model, losses = train_ranker_on_ray(
        train, run_name=f"ranker-{name}", storage_path=storage_path,
        num_workers=r.num_workers, hidden=r.hidden, depth_weight=r.depth_weight,
        epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, seed=seed,
        checkpoint_every=r.checkpoint_every,
    )
    p_click = model.click_probability(test.x)
    util = model.score(test.x)
    popularity = popularity_scores(train, test)
    return model, {
        "train_impressions": len(train), "test_impressions": len(test),
        "train_clicks": int(train.clicked.sum()), "test_clicks": int(test.clicked.sum()),
        "loss_first_epoch": losses[0] if losses else None,
        "loss_last_epoch": losses[-1] if losses else None,
        "click_auc": auc(test.clicked, p_click),
        "click_auc_popularity": auc(test.clicked, popularity),
        "depth_corr": _corr(util, test.depth),
        "depth_corr_popularity": _corr(popularity, test.depth),
    }


def train_ranker(cfg: Config, out: str) -> dict[str, Any]:
    """Fit the ``util`` and ``eval`` rankers and record their held-out quality."""
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")
    users = io.read_table(io.table_uri(out, "simulate", "users"), "users")
    impressions = io.read_table(io.table_uri(out, "simulate", "impressions"), "impressions")
    encoder = TextEncoder(cfg.models.embedder)
    examples = build_examples(impressions, UserFeaturizer(sessions, users, encoder), encoder)
    slices = log_slice(examples.request_id, len(SLICES))
    init_ray(cfg)
    writer = io.StageWriter(out, "train-ranker")
    metrics: dict[str, Any] = {}
    for name, index in SLICES.items():
        model, metrics[name] = fit_slice(examples.subset(slices == index), name, cfg,
                                         writer.path("ray"), cfg.run.seed + index)
        model.save(writer.path(name))
        writer.add_file(name)
    writer.write_json("metrics.json", metrics)
    return writer.commit(metrics=metrics,
                         node_ids=[node_id()])
