"""The personalized resonance scorer (paper §2.2, eq. 2-3).

    s_phi(u, h_t) = cos(E_user(H_u, u), E_text(h_t))                          (2)
    L_CL = -1/|D| sum log exp(s(u, h+)) / sum_{h in {h+} u N_u} exp(s(u, h))   (3)

E_text maps a summary's sentence embedding to a d-dim vector; E_user maps the mean of the
user's summary embeddings (H_u) and the embedded profile (the "crowd portrait") to the same
space. By default both towers are small MLP heads over frozen MiniLM embeddings (cheap on
CPU). With ``scorer.finetune_text_encoder`` (the GPU preset) the sentence encoder itself
trains with the heads (``FinetunedScorer``): summaries enter as text, the encoder gets its
own learning rate (``scorer.encoder_lr``), and the scorer directory carries the fine-tuned
encoder (``encoder/``), which everything that scores with this scorer must embed with
(``text_encoder_path``).

Training tuples (u, h+, N_u): h+ is a summary some later session revisits (judge MATCH);
N_intra are the user's summaries no later session matched; N_inter are the other users'
summaries in the minibatch. A minibatch is a set of users with all their summaries, so
both negative kinds come from one score matrix.

    data = build_user_examples(users_df, sessions_df, embeddings, positives, profile_emb)
    model, history = train_scorer(data, ScorerSection())          # plain torch, one process
    result = train_scorer_on_ray(data, cfg.scorer, storage)     # Ray Train TorchTrainer
    scores = score_sessions(model, data)                        # one score per summary

    text mode (fine-tune the encoder): build_user_examples(..., texts=summaries) and
    new_model(data, scfg, encoder="all-minilm-l6-v2"); the same train/evaluate functions.
"""

from __future__ import annotations

import io as _io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icebreaker_ray.data import io

# ----------------------------------------------------------------------------- data


@dataclass
class UserExamples:
    """One entry per user: the user's summaries (frozen embeddings) and their labels.

    ``item_emb[i]`` is (n_i, in_dim); ``labels[i]`` (n_i,) is 1 for revisit positives;
    ``profile[i]`` (in_dim,) is the embedded profile (zeros when absent).
    """

    user_ids: list[str]
    item_emb: list[np.ndarray]
    labels: list[np.ndarray]
    profile: np.ndarray
    session_ids: list[np.ndarray]
    # Text mode (fine-tuning the encoder): the summaries and profiles as text ("" = none).
    item_text: list[list[str]] | None = None
    profile_text: list[str] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def in_dim(self) -> int:
        return int(self.profile.shape[1])


def build_user_examples(user_ids: list[str], session_user: np.ndarray, session_ids: np.ndarray,
                        embeddings: np.ndarray, positive_ids: set[str],
                        profile_emb: dict[str, np.ndarray] | None = None,
                        revisit_ids: set[str] | None = None, texts: np.ndarray | None = None,
                        profile_text: dict[str, str] | None = None) -> UserExamples:
    """Group sessions by user (users without sessions are dropped: nothing to score).

    Labels: 1 for ``positive_ids`` (matched by a later session), -1 for ``revisit_ids`` that
    are not positives (sessions that revisit an earlier one but are not revisited
    themselves, e.g. the latest occurrence of an interest), 0 otherwise. The -1 rows are
    kept out of their own user's negatives: they are near-duplicates of a positive, and
    calling them "not resonant" would contradict the positive label (see contrastive_loss).
    ``texts`` (one per session, aligned with ``session_ids``) and ``profile_text`` add the
    raw text the encoder needs when it is fine-tuned.
    """
    dim = embeddings.shape[1]
    order = np.argsort(session_user, kind="stable")
    su, sids, emb = session_user[order], session_ids[order], embeddings[order]
    txt = np.asarray(texts, dtype=object)[order] if texts is not None else None
    out_t: list[list[str]] = []
    bounds = np.flatnonzero(np.r_[True, su[1:] != su[:-1], True])
    by_user = {su[a]: (a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)} if len(su) else {}
    out_u, out_e, out_l, out_p, out_s = [], [], [], [], []
    for uid in user_ids:
        if uid not in by_user:
            continue
        a, b = by_user[uid]
        out_u.append(uid)
        out_e.append(emb[a:b].astype(np.float32))
        out_s.append(sids[a:b])
        if txt is not None:
            out_t.append([str(t) for t in txt[a:b]])
        out_l.append(np.array([1.0 if s in positive_ids else -1.0 if s in (revisit_ids or ()) else 0.0
                               for s in sids[a:b]], np.float32))
        p = (profile_emb or {}).get(uid)
        out_p.append(np.zeros(dim, np.float32) if p is None else p.astype(np.float32))
    profile = np.stack(out_p) if out_p else np.zeros((0, dim), np.float32)
    if txt is None:
        return UserExamples(out_u, out_e, out_l, profile, out_s)
    return UserExamples(out_u, out_e, out_l, profile, out_s, out_t,
                        [str((profile_text or {}).get(u) or "") for u in out_u])


# ----------------------------------------------------------------------------- model


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


class ResonanceScorer(nn.Module):
    """Two towers, cosine score (eq. 2). Inputs are sentence embeddings (in_dim).

    E_user is a set encoder over the user's summaries (DeepSets: a per-summary MLP phi,
    mean-pooled, then an MLP rho over the pool and the profile). A plain mean of the raw
    embeddings cannot count how often an interest recurs (a linear kernel); phi learns
    summary vectors under which near-duplicates add up, so cos(u, z_t) can grow with how
    often the user returns to h_t's interest.
    """

    wants_text = False  # inputs are embeddings (see FinetunedScorer)

    def __init__(self, in_dim: int = 384, dim: int = 128, hidden: int = 256, use_profile: bool = True):
        super().__init__()
        self.config = {"in_dim": in_dim, "dim": dim, "hidden": hidden, "use_profile": use_profile}
        self.use_profile = use_profile
        self.text_tower = _mlp(in_dim, hidden, dim)
        self.phi = _mlp(in_dim, hidden, hidden)
        self.rho = _mlp(hidden + (in_dim if use_profile else 0), hidden, dim)

    def encode_text(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(emb), dim=-1)

    def pool_history(self, emb: torch.Tensor, owner: torch.Tensor, num_users: int) -> torch.Tensor:
        """Mean of phi(h) over each user's summaries: (num_users, hidden)."""
        phi = self.phi(emb)
        owner = owner.to(phi.device)
        sums = torch.zeros(num_users, phi.shape[1], dtype=phi.dtype, device=phi.device).index_add_(0, owner, phi)
        counts = torch.bincount(owner, minlength=num_users).clamp(min=1).to(phi.dtype)
        return sums / counts[:, None]

    def encode_user(self, pooled: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pooled, profile], -1) if self.use_profile else pooled
        return F.normalize(self.rho(x), dim=-1)

    def forward(self, item_emb: torch.Tensor, owner: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        """Scores (cosine) of each batch user against each batch item: (num_users, num_items).
        A user's history H_u is their items in ``item_emb`` (``owner`` maps item -> user row)."""
        u = self.encode_user(self.pool_history(item_emb, owner, len(profile)), profile)
        return u @ self.encode_text(item_emb).T


class FinetunedScorer(nn.Module):
    """The two towers over a sentence encoder that trains with them.

    Summaries and profiles enter as text; the encoder (a sentence-transformers model: mean
    pooling, L2 normalization) embeds them with gradients and ``heads`` (a ResonanceScorer
    over the encoder's output) is eq. 2 on top. An empty profile embeds to zeros, as in the
    frozen mode.
    """

    wants_text = True

    def __init__(self, encoder: nn.Module, heads: ResonanceScorer):
        super().__init__()
        self.encoder = encoder
        self.heads = heads

    @property
    def config(self) -> dict[str, Any]:
        return self.heads.config

    def embed(self, texts: list[str]) -> torch.Tensor:
        dim = self.heads.config["in_dim"]
        if not texts:
            return torch.zeros(0, dim)
        features = self.encoder.tokenize(list(texts))
        device = next(self.encoder.parameters()).device
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return F.normalize(self.encoder(features)["sentence_embedding"], dim=-1)

    def embed_profiles(self, texts: list[str]) -> torch.Tensor:
        has = [i for i, t in enumerate(texts) if t]
        out = torch.zeros(len(texts), self.heads.config["in_dim"], device=next(self.parameters()).device)
        if not has:
            return out
        idx = torch.tensor(has, device=out.device)
        return out.index_copy(0, idx, self.embed([texts[i] for i in has]).to(out.dtype))

    def forward(self, items: list[str], owner: torch.Tensor, profiles: list[str]) -> torch.Tensor:
        return self.heads(self.embed(items), owner, self.embed_profiles(profiles))


def contrastive_loss(scores: torch.Tensor, owner: torch.Tensor, labels: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Eq. 3 over a minibatch score matrix.

    ``scores`` (U, I): s(u, h) of every batch user against every batch item; ``owner`` (I,)
    the user row each item belongs to; ``labels`` (I,) 1 for revisit positives, 0 for
    unmatched summaries, -1 for summaries excluded from their user's negatives. For each
    positive h+ of user u the softmax runs over {h+} ∪ N_intra(u) (u's items labelled 0)
    ∪ N_inter (every item of the other users). Other positives of u are left out of the
    denominator: they are not negatives. ``temperature`` 1 is eq. 3 as printed.
    Returns 0 (with a graph) when the batch has no positive.
    """
    owner, labels = owner.to(scores.device), labels.to(scores.device)
    pos = torch.nonzero(labels > 0.5).squeeze(-1)
    if pos.numel() == 0:
        return scores.sum() * 0.0
    u = owner[pos]                                             # (P,)
    logits = scores[u] / temperature                           # (P, I)
    same_user = owner[None, :] == u[:, None]
    not_neg = (labels != 0)[None, :].expand_as(same_user)
    allowed = ~(same_user & not_neg)                           # drop u's non-negatives ...
    rows = torch.arange(len(pos), device=scores.device)
    allowed[rows, pos] = True                                  # ... except h+ itself
    logits = logits.masked_fill(~allowed, float("-inf"))
    return -(logits[rows, pos] - torch.logsumexp(logits, dim=-1)).mean()


# ----------------------------------------------------------------------------- training


def _batch(data: UserExamples, users: np.ndarray, max_items: int, rng: np.random.Generator,
           text: bool = False):
    """Items (a sample of at most ``max_items`` per user), their owner row and label, and
    the users' profiles. The sampled items are also the user's history. ``text``: items and
    profiles as lists of strings (for FinetunedScorer) instead of embedding tensors."""
    if text and data.item_text is None:
        raise ValueError("this scorer fine-tunes its text encoder: build the examples with texts=")
    profiles, items, owners, labels = [], [], [], []
    for row, i in enumerate(users):
        emb, lab = data.item_emb[i], data.labels[i]
        if len(emb) <= max_items:
            take = np.arange(len(emb))
        else:
            take = rng.choice(len(emb), max_items, replace=False)
        if text:
            profiles.append(data.profile_text[i])
            items.extend(data.item_text[i][j] for j in take)
        else:
            profiles.append(data.profile[i])
            items.append(emb[take])
        labels.append(lab[take])
        owners.append(np.full(len(take), row))
    t = torch.from_numpy
    owner, label = t(np.concatenate(owners)), t(np.concatenate(labels))
    if text:
        return items, owner, profiles, label
    return t(np.concatenate(items)), owner, t(np.stack(profiles)), label


def _to(model: nn.Module, batch: tuple) -> tuple:
    """Move a minibatch's tensors to the model's device (texts stay lists)."""
    device = next(model.parameters()).device
    return tuple(x.to(device) if torch.is_tensor(x) else x for x in batch)


def _optimizer(model: nn.Module, scfg) -> torch.optim.Optimizer:
    """AdamW; a fine-tuned encoder gets its own (small) learning rate, the heads ``scfg.lr``."""
    inner = getattr(model, "module", model)  # DDP
    if isinstance(inner, FinetunedScorer):
        groups = [{"params": inner.encoder.parameters(), "lr": scfg.encoder_lr},
                  {"params": inner.heads.parameters(), "lr": scfg.lr}]
        return torch.optim.AdamW(groups, lr=scfg.lr, weight_decay=scfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=scfg.lr, weight_decay=scfg.weight_decay)


def _wants_text(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "module", model), "wants_text", False))


def _epoch(model, opt, data, users, scfg, rng, batches: int) -> float:
    """One pass of ``batches`` minibatches over ``users`` (cycled if too few)."""
    model.train()
    order = rng.permutation(users)
    if len(order) < batches * scfg.batch_size:
        order = np.resize(order, batches * scfg.batch_size)
    losses = []
    for b in range(batches):
        idx = order[b * scfg.batch_size: (b + 1) * scfg.batch_size]
        items, owner, prof, lab = _to(model, _batch(data, idx, scfg.max_items_per_user, rng, _wants_text(model)))
        loss = contrastive_loss(model(items, owner, prof), owner, lab, scfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else 0.0


def evaluate_loss(model: nn.Module, data: UserExamples, scfg, seed: int = 0) -> float:
    """Mean eq.-3 loss over fixed minibatches (same batches for every call with this seed)."""
    rng = np.random.default_rng(seed)
    users = rng.permutation(len(data))
    model.eval()
    losses = []
    with torch.no_grad():
        for b in range(0, len(users), scfg.batch_size):
            items, owner, prof, lab = _to(model, _batch(data, users[b: b + scfg.batch_size],
                                                        scfg.max_items_per_user, rng, _wants_text(model)))
            if (lab > 0.5).any():
                losses.append(float(contrastive_loss(model(items, owner, prof), owner, lab, scfg.temperature)))
    return float(np.mean(losses)) if losses else 0.0


def new_model(data: UserExamples, scfg, seed: int = 0, encoder: str | None = None) -> nn.Module:
    """Untrained towers: heads over frozen embeddings, or (``encoder``: a sentence-transformers
    name or directory) a FinetunedScorer whose encoder trains too."""
    if encoder is None:
        torch.manual_seed(seed)
        return ResonanceScorer(data.in_dim, scfg.dim, scfg.hidden, scfg.use_profile)
    from icebreaker_ray.models import load_embedder

    st = load_embedder(encoder)
    torch.manual_seed(seed)
    return FinetunedScorer(st, ResonanceScorer(int(st.get_embedding_dimension()), scfg.dim, scfg.hidden,
                                               scfg.use_profile))


def train_scorer(data: UserExamples, scfg, seed: int = 0,
                 model: nn.Module | None = None) -> tuple[nn.Module, list[float]]:
    """Plain torch training loop in one process; returns the model and per-epoch losses."""
    model = model or new_model(data, scfg, seed)
    opt = _optimizer(model, scfg)
    rng = np.random.default_rng(seed)
    users = np.arange(len(data))
    batches = max(1, -(-len(data) // scfg.batch_size))
    # Small heads: one thread is fastest and does not spin-wait on a shared CPU box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = [_epoch(model, opt, data, users, scfg, rng, batches) for _ in range(scfg.epochs)]
    finally:
        torch.set_num_threads(threads)
    return model, history


@torch.no_grad()
def score_users(model: ResonanceScorer, user_ids: np.ndarray, emb: np.ndarray,
                profiles: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """E_user for every distinct user in ``user_ids`` over their rows of ``emb``.
    Returns (distinct user ids, (n_users, dim) L2-normalized vectors)."""
    model.eval()
    uniq, inv = np.unique(np.asarray(user_ids), return_inverse=True)
    prof = np.stack([(profiles or {}).get(u, np.zeros(emb.shape[1], np.float32)) for u in uniq]) \
        if len(uniq) else np.zeros((0, emb.shape[1]), np.float32)
    pooled = model.pool_history(torch.from_numpy(emb.astype(np.float32)), torch.from_numpy(inv.astype(np.int64)),
                                len(uniq))
    return uniq, model.encode_user(pooled, torch.from_numpy(prof.astype(np.float32))).numpy()


@torch.no_grad()
def encode_texts(model: ResonanceScorer, emb: np.ndarray) -> np.ndarray:
    """E_text for many summaries: (n, dim), L2-normalized."""
    model.eval()
    return model.encode_text(torch.from_numpy(emb.astype(np.float32))).numpy()


def score_rows(model: ResonanceScorer, user_ids: np.ndarray, emb: np.ndarray, z: np.ndarray | None = None,
               profiles: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """s_phi(u, h_t) (eq. 2) for every row: the user's history is all their rows here.
    ``z`` (E_text of the rows) may be precomputed, e.g. by the Ray Data actors."""
    user_ids = np.asarray(user_ids)
    if len(user_ids) == 0:
        return np.zeros(0, np.float32)
    z = encode_texts(model, emb) if z is None else z
    uniq, u = score_users(model, user_ids, emb, profiles)
    return np.einsum("ij,ij->i", z, u[np.searchsorted(uniq, user_ids)])


def score_sessions(model: ResonanceScorer, data: UserExamples) -> list[np.ndarray]:
    """s_phi(u, h_t) for every summary of every user in ``data``."""
    return [score_rows(model, np.array([u] * len(e)), e, profiles={u: data.profile[i]})
            for i, (u, e) in enumerate(zip(data.user_ids, data.item_emb, strict=True))]


# ----------------------------------------------------------------------------- persistence


ENCODER_DIR = "encoder"


def save_scorer(model: nn.Module, directory: str, extra: dict[str, Any] | None = None) -> None:
    """``scorer.pt`` + ``scorer.json`` in ``directory`` (a path or a storage URI); a
    FinetunedScorer also writes its encoder to ``encoder/`` (a sentence-transformers
    directory) and records it in scorer.json."""
    with io.output_dir(directory) as d:
        meta = {"text_encoder": "frozen"}
        if isinstance(model, FinetunedScorer):
            model.encoder.save(os.path.join(d, ENCODER_DIR))
            model, meta = model.heads, {"text_encoder": "finetuned", "encoder": ENCODER_DIR}
        torch.save(model.state_dict(), os.path.join(d, "scorer.pt"))
        with open(os.path.join(d, "scorer.json"), "w") as f:
            json.dump({**model.config, **meta, **(extra or {})}, f, indent=2)


def scorer_config(directory: str) -> dict[str, Any]:
    """The scorer's ``scorer.json`` (its towers, encoder mode and the stage's extras)."""
    return io.read_json(io.join(directory, "scorer.json"))


def text_encoder_path(directory: str | None) -> str | None:
    """The local directory of the fine-tuned encoder a scorer's inputs must be embedded
    with, or None (frozen mode: the run's ``models.embedder``)."""
    if not directory:
        return None
    conf = scorer_config(directory)
    if conf.get("text_encoder") != "finetuned":
        return None
    return os.path.join(io.local_dir(directory), conf["encoder"])


def load_scorer(directory: str) -> ResonanceScorer:
    """The towers' heads (embed inputs with ``text_encoder_path(directory)`` when it is set);
    ``directory`` may be a storage URI."""
    conf = scorer_config(directory)
    model = ResonanceScorer(conf["in_dim"], conf["dim"], conf["hidden"], conf["use_profile"])
    state = torch.load(_io.BytesIO(io.read_bytes(io.join(directory, "scorer.pt"))),
                       weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model


# ----------------------------------------------------------------------------- Ray Train


def _ray_train_loop(config: dict) -> None:
    """TorchTrainer worker: :func:`raykit.train_epochs` with the eq.-3 loss (DDP over gloo,
    users sharded so every rank runs the same number of minibatches, a checkpoint every
    ``scfg.checkpoint_every`` epochs and after the last, resume from the last one)."""
    from icebreaker_ray.raykit import train_epochs

    data: UserExamples = config["data"]
    scfg = config["scfg"]
    model = new_model(data, scfg, config["seed"], config.get("encoder"))
    text = _wants_text(model)

    def loss(ddp: nn.Module, users: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        items, owner, prof, lab = _to(ddp, _batch(data, users, scfg.max_items_per_user, rng, text))
        return contrastive_loss(ddp(items, owner, prof), owner, lab, scfg.temperature)

    train_epochs(model, loss, n=len(data), epochs=scfg.epochs, batch_size=scfg.batch_size,
                 every=scfg.checkpoint_every, seed=config["seed"],
                 optimizer=lambda ddp: _optimizer(ddp, scfg),
                 # A fine-tuned encoder has weights the sentence embedding never uses (BERT's pooler).
                 prepare_kwargs={"find_unused_parameters": True} if text else None)


def train_scorer_on_ray(data: UserExamples, scfg, storage_path: str, run_name: str = "train-scorer",
                        seed: int = 0, encoder: str | None = None) -> tuple[nn.Module, list[float], Any]:
    """Train with Ray Train (``scfg.num_workers`` TorchTrainer workers); rerunning with the
    same ``storage_path``/``run_name`` resumes from the last checkpoint. ``encoder``: fine-tune
    that sentence encoder with the heads (``data`` must carry texts). Returns the model
    loaded from the final checkpoint, rank 0's mean loss per epoch and the Result."""
    from icebreaker_ray.raykit import fit_on_ray, load_state

    result = fit_on_ray(
        _ray_train_loop, {"data": data, "scfg": scfg, "seed": seed, "encoder": encoder},
        num_workers=scfg.num_workers, run_name=run_name, storage_path=storage_path,
        max_failures=scfg.max_failures, use_gpu=scfg.use_gpu,
    )
    model = new_model(data, scfg, seed, encoder)
    with result.checkpoint.as_directory() as d:
        state = load_state(d, model)
    model.eval()
    return model, [float(x) for x in state["losses"]], result
