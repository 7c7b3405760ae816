"""The interaction-utility ranker R_util(u, s) (paper eq. 7), trained on logged impressions.

    R_util(u, s) = Proj([E_user(H_u, u); E_text(s)]) in (0, 1)

E_user is the mean sentence embedding of the user's most recent session summaries
(before the impression) next to an embedding of their profile; E_text embeds the starter.
Both encoders are frozen MiniLM here; the projection is a small MLP with two heads:
- click (short-term): P(click | shown), trained with a learned per-position bias added
  to the logit during training only, so position effects of the logging policy do not
  leak into the score (position debiasing);
- depth (long-term): the normalized depth of the conversation that followed,
  min(depth, depth_cap) / depth_cap, 0 when not clicked.
R_util = (1 - depth_weight) * p_click + depth_weight * depth_hat.

Two independently trained instances are fitted on disjoint slices of the logs (by
request id): ``util`` guides list search and DPO; ``eval`` is the held-out LTR model f of
the offline metrics, so we never grade with the model we optimized against.

    feats = UserFeaturizer(sessions, users, encoder)
    ranker, losses = fit_ranker(examples, epochs=30)     # pure torch, or on Ray Train:
    ranker, losses = train_ranker_on_ray(examples, run_name="util", storage_path=storage,
                                         epochs=30, checkpoint_every=10)
    texts = ["Which One Piece arc next?", "Translate this?"]
    ranker.score(feats.pair_features(["u0000001"] * 2, encoder(texts)))   # R_util per starter

Every ranker kind (this MLP, ``kind: mlp``; the LightGBM feature ranker of
:mod:`icebreaker_ray.reward.features`, ``kind: features``; a :class:`RankerEnsemble` of
either) answers the one scoring call that mining, grading and serving use, and
:func:`load_ranker` opens whichever a directory holds:

    ranker = load_ranker("runs/demo/train-ranker/util")
    ranker.utility(feats, ["u0000001"] * 2, texts, encoder(texts))       # R_util per starter
    conservative_utility(ranker, feats, ["u0000001"] * 2, texts, encoder(texts), kappa=1.0)
"""

from __future__ import annotations

import io as _io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from icebreaker_ray.data import io
from icebreaker_ray.data.splits import log_slice  # noqa: F401  (re-exported: the ranker slices)

DEPTH_CAP = 10
MAX_POSITIONS = 32


class UtilityRanker(nn.Module):
    """Proj([E_user; E_text]) with click and depth heads (eq. 7), over pair features
    (see :meth:`UserFeaturizer.pair_features`)."""

    def __init__(self, dim: int, hidden: int = 64, depth_weight: float = 0.3):
        super().__init__()
        self.dim, self.hidden, self.depth_weight = dim, hidden, depth_weight
        self.proj = nn.Sequential(
            nn.Linear(pair_feature_size(dim), hidden), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), nn.GELU(),
        )
        self.click_head = nn.Linear(hidden, 1)
        self.depth_head = nn.Linear(hidden, 1)
        self.position_bias = nn.Embedding(MAX_POSITIONS, 1)
        nn.init.zeros_(self.position_bias.weight)

    def forward(self, x: torch.Tensor, position: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        click = self.click_head(h).squeeze(-1)
        if position is not None:
            click = click + self.position_bias(position.clamp(max=MAX_POSITIONS - 1)).squeeze(-1)
        return click, self.depth_head(h).squeeze(-1)

    @torch.no_grad()
    def score(self, x: np.ndarray) -> np.ndarray:
        """R_util in (0, 1) for rows of pair features."""
        self.eval()
        click, depth = self(torch.as_tensor(x, dtype=torch.float32))
        w = self.depth_weight
        return ((1 - w) * torch.sigmoid(click) + w * torch.sigmoid(depth)).numpy()

    @torch.no_grad()
    def click_probability(self, x: np.ndarray) -> np.ndarray:
        self.eval()
        click, _ = self(torch.as_tensor(x, dtype=torch.float32))
        return torch.sigmoid(click).numpy()

    kind = "mlp"

    def featurize(self, featurizer: UserFeaturizer, user_ids: Sequence[str], texts: Sequence[str],
                  text_emb: np.ndarray, before_ms: Sequence[int | None] | None = None) -> np.ndarray:
        """This kind's input rows: :meth:`UserFeaturizer.pair_features` (texts unused)."""
        return featurizer.pair_features(user_ids, text_emb, before_ms)

    def utility(self, featurizer: UserFeaturizer, user_ids: Sequence[str], texts: Sequence[str],
                text_emb: np.ndarray, before_ms: Sequence[int | None] | None = None) -> np.ndarray:
        """R_util(u, s) of (user, starter) pairs: the one scoring call of every ranker kind."""
        return self.score(self.featurize(featurizer, user_ids, texts, text_emb, before_ms))

    def save(self, directory: str) -> None:
        """``ranker.pt`` + ``ranker.json`` in ``directory`` (a path or a storage URI)."""
        with io.output_dir(directory) as d:
            torch.save(self.state_dict(), os.path.join(d, "ranker.pt"))
            with open(os.path.join(d, "ranker.json"), "w") as f:
                json.dump({"dim": self.dim, "hidden": self.hidden, "depth_weight": self.depth_weight}, f)

    @classmethod
    def load(cls, directory: str) -> UtilityRanker:
        meta = io.read_json(io.join(directory, "ranker.json"))
        meta.pop("kind", None)
        model = cls(**meta)
        state = io.read_bytes(io.join(directory, "ranker.pt"))
        model.load_state_dict(torch.load(_io.BytesIO(state), weights_only=True))
        model.eval()
        return model


class RankerEnsemble:
    """Rankers fitted on bootstrap resamples of one slice. ``utility`` is the members'
    mean; ``conservative_utility`` the mean minus ``kappa`` standard deviations (clipped
    to [0, 1]), the reward list search maximizes so it does not chase what one member
    over-rates (Gao et al. 2022; Coste et al. 2023)."""

    kind = "ensemble"

    def __init__(self, members: Sequence):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)

    def member_utilities(self, featurizer: UserFeaturizer, user_ids: Sequence[str],
                         texts: Sequence[str], text_emb: np.ndarray,
                         before_ms: Sequence[int | None] | None = None) -> np.ndarray:
        """(members, n) utilities."""
        return np.stack([np.asarray(m.utility(featurizer, user_ids, texts, text_emb, before_ms), np.float64)
                         for m in self.members])

    def utility(self, featurizer, user_ids, texts, text_emb, before_ms=None) -> np.ndarray:
        return self.member_utilities(featurizer, user_ids, texts, text_emb, before_ms).mean(axis=0)

    def conservative_utility(self, featurizer, user_ids, texts, text_emb, before_ms=None,
                             kappa: float = 1.0) -> np.ndarray:
        return conservative_score(
            self.member_utilities(featurizer, user_ids, texts, text_emb, before_ms), kappa)

    def save(self, directory: str) -> None:
        """One sub-folder per member and ``ranker.json`` (a path or a storage URI)."""
        names = [f"member-{i}" for i in range(len(self.members))]
        with io.output_dir(directory) as d:
            for name, m in zip(names, self.members, strict=True):
                m.save(os.path.join(d, name))
            with open(os.path.join(d, "ranker.json"), "w") as f:
                json.dump({"kind": self.kind, "members": names}, f)

    @classmethod
    def load(cls, directory: str) -> RankerEnsemble:
        d = io.local_dir(directory)  # one download of every member
        meta = io.read_json(os.path.join(d, "ranker.json"))
        return cls([load_ranker(os.path.join(d, name)) for name in meta["members"]])


def conservative_score(member_scores: np.ndarray, kappa: float) -> np.ndarray:
    """mean - kappa * std over members (axis 0; population std), clipped to [0, 1]."""
    s = np.asarray(member_scores, np.float64)
    return np.clip(s.mean(axis=0) - kappa * s.std(axis=0), 0.0, 1.0)


def conservative_utility(ranker, featurizer: UserFeaturizer, user_ids: Sequence[str],
                         texts: Sequence[str], text_emb: np.ndarray, kappa: float,
                         before_ms: Sequence[int | None] | None = None) -> np.ndarray:
    """The list-search reward: mean - kappa * std for an ensemble, R_util for one ranker."""
    return member_utilities(ranker, featurizer, user_ids, texts, text_emb, kappa, before_ms)[1]


def member_utilities(ranker, featurizer: UserFeaturizer, user_ids: Sequence[str],
                     texts: Sequence[str], text_emb: np.ndarray, kappa: float,
                     before_ms: Sequence[int | None] | None = None
                     ) -> tuple[np.ndarray | None, np.ndarray]:
    """(each member's utilities (members, n), the list-search reward (n,)) for an
    ensemble; (None, R_util) for one ranker."""
    if isinstance(ranker, RankerEnsemble):
        members = ranker.member_utilities(featurizer, user_ids, texts, text_emb, before_ms)
        return members, conservative_score(members, kappa)
    return None, np.asarray(ranker.utility(featurizer, user_ids, texts, text_emb, before_ms), np.float64)


def load_ranker(directory: str):
    """Whichever ranker kind ``directory`` (a path or a storage URI) holds (``ranker.json``'s
    ``kind``; none: mlp)."""
    kind = io.read_json(io.join(directory, "ranker.json")).get("kind", "mlp")
    if kind == "ensemble":
        return RankerEnsemble.load(directory)
    if kind == "features":
        from icebreaker_ray.reward.features import FeatureRanker

        return FeatureRanker.load(directory)
    return UtilityRanker.load(directory)


def pair_feature_size(dim: int) -> int:
    return 3 * dim + 3


# ----------------------------------------------------------------------------- features


class UserFeaturizer:
    """E_user(H_u, u): mean embedding of the last ``window`` summaries before a time, next
    to the profile embedding. Users with no history get zeros for that half."""

    def __init__(self, sessions: pa.Table, users: pa.Table | None, encoder, window: int = 20):
        self.encoder, self.window = encoder, window
        order = np.lexsort((sessions.column("ts").cast(pa.int64()).to_numpy(),
                            np.asarray(sessions.column("user_id").to_pylist())))
        uids = np.asarray(sessions.column("user_id").to_pylist())[order]
        self.ts = sessions.column("ts").cast(pa.int64()).to_numpy()[order]
        summaries = [sessions.column("summary")[int(i)].as_py() for i in order]
        self.summaries = summaries
        emb = encoder(summaries) if summaries else np.zeros((0, 384), np.float32)
        self.dim = emb.shape[1] if len(emb) else int(encoder.dim)
        self.emb = emb
        self.cum = np.vstack([np.zeros((1, self.dim), np.float32), np.cumsum(emb, axis=0)])
        self.span: dict[str, tuple[int, int]] = {}
        if len(uids):
            starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
            ends = np.r_[starts[1:], len(uids)]
            self.span = {str(uids[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}
        self.profile: dict[str, np.ndarray] = {}
        if users is not None and "profile" in users.column_names:
            ids = users.column("user_id").to_pylist()
            profiles = [p or "" for p in users.column("profile").to_pylist()]
            vecs = encoder(profiles) if ids else []
            self.profile = {u: v for u, v, p in zip(ids, vecs, profiles, strict=True) if p}

    def _window(self, user_id: str, before_ms: int | None) -> tuple[int, int]:
        s, e = self.span.get(user_id, (0, 0))
        if before_ms is not None:
            e = s + int(np.searchsorted(self.ts[s:e], before_ms, side="left"))
        return max(s, e - self.window), e

    def pair_features(self, user_ids: Sequence[str], text_emb: np.ndarray,
                      before_ms: Sequence[int | None] | None = None) -> np.ndarray:
        """Features of (user, starter) pairs, as of a time (ms since epoch) or now (None):
        [hist * text, text, profile * text, max cos, top-3 mean cos, cos to the history
        mean], where hist is E_user (mean of the last ``window`` summaries). The max cosine
        to any recent summary carries a varied user's separate interests, which a single
        mean embedding blurs."""
        before = before_ms if before_ms is not None else [None] * len(user_ids)
        zero = np.zeros(self.dim, np.float32)
        rows = []
        for u, b, z in zip(user_ids, before, text_emb, strict=True):
            s, e = self._window(u, b)
            if e > s:
                hist = (self.cum[e] - self.cum[s]) / (e - s)
                hist = hist / (np.linalg.norm(hist) + 1e-9)
                cos = np.sort(self.emb[s:e] @ z)[::-1]
                stats = [cos[0], cos[:3].mean(), float(hist @ z)]
            else:
                hist, stats = zero, [0.0, 0.0, 0.0]
            prof = self.profile.get(u, zero)
            rows.append(np.concatenate([hist * z, z, prof * z, np.asarray(stats, np.float32)]))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, pair_feature_size(self.dim)), np.float32)


@dataclass
class RankerExamples:
    """Aligned arrays for training/evaluating the ranker."""

    x: np.ndarray  # pair features
    position: np.ndarray
    clicked: np.ndarray
    depth: np.ndarray
    starter: list[str]
    request_id: list[str]
    # What the feature ranker (reward/features.py) computes its own features from.
    user_id: list[str] | None = None
    ts: np.ndarray | None = None  # ms since epoch
    emb: np.ndarray | None = None  # starter embeddings
    featurizer: UserFeaturizer | None = None

    def __len__(self) -> int:
        return len(self.clicked)

    def subset(self, mask: np.ndarray) -> RankerExamples:
        return self.take(np.flatnonzero(mask))

    def take(self, idx: np.ndarray) -> RankerExamples:
        """Rows ``idx`` (repeats allowed: bootstrap resamples)."""
        def pick(v):
            return None if v is None else v[idx]

        return RankerExamples(self.x[idx], self.position[idx], self.clicked[idx],
                              self.depth[idx], [self.starter[i] for i in idx],
                              [self.request_id[i] for i in idx],
                              None if self.user_id is None else [self.user_id[i] for i in idx],
                              pick(self.ts), pick(self.emb), self.featurizer)


def build_examples(impressions: pa.Table, featurizer: UserFeaturizer, encoder) -> RankerExamples:
    starters = impressions.column("starter").to_pylist()
    users = impressions.column("user_id").to_pylist()
    ts = impressions.column("ts").cast(pa.int64()).to_numpy()
    emb = encoder(starters) if starters else np.zeros((0, featurizer.dim), np.float32)
    return RankerExamples(
        x=featurizer.pair_features(users, emb, ts.tolist()),
        position=np.asarray(impressions.column("position").to_pylist(), np.int64),
        clicked=np.asarray(impressions.column("clicked").to_pylist(), np.float32),
        depth=np.asarray(impressions.column("depth").to_pylist(), np.float32),
        starter=starters,
        request_id=impressions.column("request_id").to_pylist(),
        user_id=users, ts=ts, emb=np.asarray(emb, np.float32), featurizer=featurizer,
    )


# ----------------------------------------------------------------------------- training


def _tensors(ex: RankerExamples) -> dict[str, torch.Tensor]:
    return {
        "x": torch.as_tensor(ex.x),
        "position": torch.as_tensor(ex.position), "clicked": torch.as_tensor(ex.clicked),
        "depth": torch.as_tensor(np.minimum(ex.depth, DEPTH_CAP) / DEPTH_CAP, dtype=torch.float32),
    }


def _dim(ex: RankerExamples) -> int:
    return (ex.x.shape[1] - 3) // 3


def ranker_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    click, depth = model(batch["x"], batch["position"])
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(click, batch["clicked"]) + bce(depth, batch["depth"])


def fit_ranker(ex: RankerExamples, *, hidden: int = 64, depth_weight: float = 0.3,
               epochs: int = 30, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
               model: UtilityRanker | None = None) -> tuple[UtilityRanker, list[float]]:
    """Plain torch training (one process). Returns the model and the mean loss per epoch."""
    torch.manual_seed(seed)
    model = model or UtilityRanker(_dim(ex), hidden, depth_weight)
    data = _tensors(ex)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ex), generator=gen)
        total = 0.0
        for start in range(0, len(ex), batch_size):
            idx = perm[start:start + batch_size]
            loss = ranker_loss(model, {k: v[idx] for k, v in data.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / max(len(ex), 1))
    model.eval()
    return model, history


def _ray_loop(config: dict) -> None:
    """Ray Train worker: :func:`raykit.train_epochs` with the ranker's loss (every rank the
    same number of batches; DDP averages gradients; reports and checkpoints every
    ``checkpoint_every`` epochs and after the last; resumes from the last checkpoint)."""
    from icebreaker_ray.raykit import train_epochs

    ex: RankerExamples = config["examples"]
    torch.manual_seed(config["seed"])
    data = _tensors(ex)
    train_epochs(
        UtilityRanker(_dim(ex), config["hidden"], config["depth_weight"]),
        lambda model, idx, _rng: ranker_loss(model, {k: v[idx] for k, v in data.items()}),
        n=len(ex), epochs=config["epochs"], batch_size=config["batch_size"],
        every=config["checkpoint_every"], seed=config["seed"],
        optimizer=lambda model: torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=1e-2),
    )


def train_ranker_on_ray(ex: RankerExamples, *, run_name: str, storage_path: str, num_workers: int = 2,
                        hidden: int = 64, depth_weight: float = 0.3, epochs: int = 10,
                        lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
                        max_failures: int = 0, checkpoint_every: int = 1,
                        ) -> tuple[UtilityRanker, list[float]]:
    """Train on Ray Train workers (a checkpoint every ``checkpoint_every`` epochs and after
    the last; rerun to resume); returns the model and rank 0's loss per epoch over the
    whole run, resumed attempts included."""
    from icebreaker_ray.raykit import fit_on_ray, load_state

    result = fit_on_ray(
        _ray_loop,
        {"examples": ex, "hidden": hidden, "depth_weight": depth_weight, "epochs": epochs,
         "lr": lr, "batch_size": batch_size, "seed": seed, "checkpoint_every": checkpoint_every},
        num_workers=num_workers, run_name=run_name, storage_path=storage_path,
        max_failures=max_failures,
    )
    model = UtilityRanker(_dim(ex), hidden, depth_weight)
    with result.checkpoint.as_directory() as d:
        losses = load_state(d, model)["losses"]
    model.eval()
    return model, [float(x) for x in losses]
