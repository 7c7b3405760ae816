"""The ``train-ranker`` stage: two utility rankers (eq. 7) on disjoint slices of the logs.

    icebreaker train-ranker --config configs/local-cpu.yaml --out runs/demo

Writes ``OUT/train-ranker/util/`` (the reward for list search and DPO) and
``OUT/train-ranker/eval/`` (the held-out LTR model f of the offline metrics), each trained
on its slice's training requests and measured on its held-out requests: click AUC and
depth correlation, next to a popularity baseline (smoothed CTR of the starter text in the
training requests). Both ranker kinds are fitted on each slice (the MLP with Ray Train,
the feature ranker with LightGBM) and both AUCs reported; ``ranker.kind`` is the one
saved. The util slice saves a bootstrap ensemble of ``ranker.ensemble`` members (list
search reads mean - kappa * std); the eval ranker f is one model. Logs without clicks
train nothing; the manifest's ``metrics.not_run`` says why and what to do.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.data.splits import RANKER_SLICES, ranker_holdout
from icebreaker_ray.eval.metrics import auc
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.reward.features import fit_feature_ranker
from icebreaker_ray.reward.ranker import (
    RankerEnsemble,
    RankerExamples,
    UserFeaturizer,
    build_examples,
    fit_ranker,
    log_slice,
    train_ranker_on_ray,
)

SLICES = RANKER_SLICES


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


def bootstrap_requests(request_ids: list[str], seed: int) -> np.ndarray:
    """Row indices of a bootstrap resample by request (whole requests drawn with
    replacement, so the rows of one shown list stay together)."""
    uniq, inverse = np.unique(np.asarray(request_ids), return_inverse=True)
    if len(uniq) < 2:
        return np.arange(len(request_ids))
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse, minlength=len(uniq)))]
    draw = np.random.default_rng(seed).integers(0, len(uniq), len(uniq))
    return np.concatenate([order[bounds[i]:bounds[i + 1]] for i in draw])


def _fit_kind(kind: str, train: RankerExamples, name: str, cfg: Config, storage_path: str,
              seed: int, on_ray: bool = True):
    r = cfg.ranker
    if kind == "features":
        return fit_feature_ranker(train, depth_weight=r.depth_weight, seed=seed,
                                  trees=r.trees, leaves=r.leaves), []
    if on_ray:
        return train_ranker_on_ray(
            train, run_name=f"ranker-{name}", storage_path=storage_path,
            num_workers=r.num_workers, hidden=r.hidden, depth_weight=r.depth_weight,
            epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, seed=seed,
            checkpoint_every=r.checkpoint_every,
        )
    # Ensemble members: one process (an epoch of this MLP takes milliseconds).
    return fit_ranker(train, hidden=r.hidden, depth_weight=r.depth_weight, epochs=r.epochs,
                      lr=r.lr, batch_size=r.batch_size, seed=seed)


def _scores(model, ex: RankerExamples) -> tuple[np.ndarray, np.ndarray]:
    """(p_click, R_util) of a single ranker on ``ex``, scored as in deployment (position 0)."""
    x = model.featurize(ex.featurizer, ex.user_id, ex.starter, ex.emb, ex.ts) \
        if model.kind == "features" else ex.x
    return model.click_probability(x), model.score(x)


def fit_slice(part: RankerExamples, name: str, cfg: Config, storage_path: str, seed: int,
              members: int | None = None):
    """Train both ranker kinds on ``part`` (minus a held-out fifth of its requests), keep
    ``ranker.kind``; return the model and the held-out quality of both kinds next to the
    popularity baseline. ``members`` > 1 (default: ``ranker.ensemble`` for util slices, 1
    otherwise) also fits that many bootstrap resamples of the kept kind and returns their
    :class:`RankerEnsemble`, measured by its members' mean."""
    held_out = ranker_holdout(part.request_id)
    train, test = part.subset(~held_out), part.subset(held_out)
    if train.clicked.sum() < 2:
        raise io.DataError(
            f"impressions: slice '{name}' has {int(train.clicked.sum())} clicks; the ranker "
            "needs clicked and unclicked impressions (log more days or users)")
    kind = cfg.ranker.kind
    if members is None:
        members = cfg.ranker.ensemble if name.startswith("util") else 1
    models, quality, losses = {}, {}, []
    for k in ("mlp", "features"):
        models[k], hist = _fit_kind(k, train, name, cfg, storage_path, seed)
        if k == "mlp":
            losses = hist
        p_click, util = _scores(models[k], test)
        quality[k] = {"click_auc": auc(test.clicked, p_click), "depth_corr": _corr(util, test.depth)}
    model = models[kind]
    if members > 1:
        model = RankerEnsemble([model] + [
            _fit_kind(kind, train.take(bootstrap_requests(train.request_id, seed + 1000 * i)),
                      f"{name}-{i}", cfg, storage_path, seed + i, on_ray=False)[0]
            for i in range(1, members)])
    if isinstance(model, RankerEnsemble):
        per = np.stack([_scores(m, test) for m in model.members])  # (members, 2, n)
        p_click, util = per[:, 0].mean(axis=0), per[:, 1].mean(axis=0)
        spread = float(per[:, 1].std(axis=0).mean())
    else:
        p_click, util = _scores(model, test)
        spread = 0.0
    popularity = popularity_scores(train, test)
    return model, {
        "kind": kind, "members": members,
        "train_impressions": len(train), "test_impressions": len(test),
        "train_clicks": int(train.clicked.sum()), "test_clicks": int(test.clicked.sum()),
        "loss_first_epoch": losses[0] if losses else None,
        "loss_last_epoch": losses[-1] if losses else None,
        "click_auc": auc(test.clicked, p_click),
        "click_auc_popularity": auc(test.clicked, popularity),
        "click_auc_mlp": quality["mlp"]["click_auc"],
        "click_auc_features": quality["features"]["click_auc"],
        "depth_corr": _corr(util, test.depth),
        "depth_corr_popularity": _corr(popularity, test.depth),
        "ensemble_std": spread,
    }


def train_ranker(cfg: Config, out: str) -> dict[str, Any]:
    """Fit the ``util`` and ``eval`` rankers and record their held-out quality. On logs
    without clicks (your own, before a starter system logged any) nothing is trained: the
    stage records why (:func:`icebreaker_ray.layout.not_run`) and mining ranks by the
    click-free proxy instead."""
    why = layout.missing_clicks(out)
    if why:
        return layout.not_run(out, "train-ranker", layout.click_free_message(
            "train-ranker", why, "clicked and unclicked impressions to learn R_util (eq. 7) from"))
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
