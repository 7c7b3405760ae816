"""The RID stages: ``label-revisits``, ``train-scorer``, ``distill-interests`` (paper §2.2).

    icebreaker label-revisits --out runs/demo     # OUT/label-revisits/revisit_pairs.parquet
    icebreaker train-scorer --out runs/demo       # OUT/train-scorer/scorer/ (two-tower, eq. 2-3)
    icebreaker distill-interests --out runs/demo  # OUT/distill-interests/interests.parquet (eq. 4)

- label-revisits: embeds every summary (Ray Data, actor pool), prunes (earlier, later)
  pairs to each later session's top-k most similar earlier sessions of the same user, and
  judges them with the configured backend in a second Ray Data actor pool.
- train-scorer: the latest ``scorer.holdout_fraction`` of the time span is held out; on
  the rest, summaries matched by a later session are positives, the others within-user
  negatives; the two towers train with Ray Train (TorchTrainer, checkpoints every epoch).
- distill-interests: scores every summary of every user through Ray Data (actor pool,
  batched embeddings + text tower; the cheap user tower runs on the driver), learns the
  per-bucket thresholds tau_b on the held-out revisits, and writes ``interests`` with
  scores and the selected trigger interests (at most ``gating.max_interests`` per user).

The pure algorithms live in judge.py, scorer.py and gating.py; this file is Ray glue.
"""

from __future__ import annotations

import io as _io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.raykit import init_ray, map_actor_pool, node_id, to_numpy
from icebreaker_ray.rid import gating, judge, noise, scorer

EMBEDDINGS_FILE = "session_embeddings.npz"
SCORER_DIR = "scorer"


# ----------------------------------------------------------------------------- Ray Data actors


class EmbedActor:
    """Ray Data actor: MiniLM embeddings (and, given a scorer, the text tower E_text; a
    scorer with a fine-tuned encoder replaces MiniLM by that encoder)."""

    def __init__(self, embedder: str, max_chars: int, scorer_dir: str | None = None) -> None:
        from icebreaker_ray.models import TextEncoder, set_offline

        set_offline()
        # A scorer that fine-tuned its encoder must see that encoder's embeddings.
        self.encoder = TextEncoder(scorer.text_encoder_path(scorer_dir) or embedder)
        self.max_chars = max_chars
        self.model = scorer.load_scorer(scorer_dir) if scorer_dir else None
        self.node = node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [judge.clean_summary(t, self.max_chars) for t in batch["summary"]]
        emb = self.encoder(texts)
        out = {"_row": batch["_row"], "emb": emb, "node": np.array([self.node] * len(texts))}
        if self.model is not None:
            out["z"] = scorer.encode_texts(self.model, emb)
        return out


class JudgeActor:
    """Ray Data actor: one judge backend per actor, applied to batches of candidate pairs."""

    def __init__(self, jcfg, cache: str | None) -> None:
        from icebreaker_ray.models import set_offline

        set_offline()
        self.judge = judge.make_judge(jcfg, cache)
        self.node = node_id()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        v = self.judge(batch["earlier_summary"].tolist(), batch["later_summary"].tolist(),
                       batch["similarity"].to_numpy())
        return batch.assign(label=v.labels, parsed_ok=v.parsed_ok, failed=v.failed, node=self.node)


def embed_rows(cfg: Config, summaries: list[str], scorer_dir: str | None = None,
               batch_size: int = 256, num_actors: int | None = None) -> dict[str, Any]:
    """Embed ``summaries`` (and encode them with the scorer's text tower) through Ray Data
    with an actor pool. Returns {"emb", "z" (when scorer_dir), "node_ids"} in input order."""
    init_ray(cfg)
    n = len(summaries)
    dim_z = None
    if n == 0:
        out = {"emb": np.zeros((0, 384), np.float32), "node_ids": []}
        if scorer_dir:
            dim_z = scorer.load_scorer(scorer_dir).config["dim"]
            out["z"] = np.zeros((0, dim_z), np.float32)
        return out
    table = map_actor_pool(
        pa.table({"_row": np.arange(n), "summary": summaries}), EmbedActor,
        {"embedder": cfg.models.embedder, "max_chars": cfg.judge.max_summary_chars, "scorer_dir": scorer_dir},
        num_actors or cfg.judge.num_actors, batch_size, batch_format="numpy")
    cols = to_numpy(table.sort_by("_row"))
    out = {"emb": cols["emb"].astype(np.float32), "node_ids": sorted(set(cols["node"].tolist()))}
    if "z" in cols:
        out["z"] = cols["z"].astype(np.float32)
    return out


# ----------------------------------------------------------------------------- helpers


def _read_inputs(out: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = io.read_table(io.table_uri(out, "simulate", "users"), "users").to_pandas()
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions", allow_empty=True).to_pandas()
    return users, sessions


def _days(ts: pd.Series) -> np.ndarray:
    """Timestamps as float days since the epoch."""
    return (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy() / 86400.0


def split_time(ts_days: np.ndarray, holdout_fraction: float) -> float:
    """The time (days) from which sessions are held out: the latest share of the span."""
    if len(ts_days) == 0:
        return 0.0
    lo, hi = float(ts_days.min()), float(ts_days.max())
    return lo + (1.0 - holdout_fraction) * (hi - lo)


def _save_npz(uri: str, **arrays) -> None:
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.write_bytes(uri, buf.getvalue())


def _load_npz(uri: str) -> dict[str, np.ndarray]:
    with np.load(_io.BytesIO(io.read_bytes(uri)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------------- label-revisits


def judge_pairs(cfg: Config, pairs: pd.DataFrame) -> pd.DataFrame:
    """Run the configured judge over candidate pairs with a Ray Data actor pool (rows in
    the order of ``pairs``)."""
    if pairs.empty:
        return pairs.assign(label=pd.Series(dtype=str), parsed_ok=pd.Series(dtype=bool),
                            failed=pd.Series(dtype=bool), node=pd.Series(dtype=str))
    init_ray(cfg)
    table = pa.Table.from_pandas(pairs.assign(_row=np.arange(len(pairs))), preserve_index=False)
    judged = map_actor_pool(table, JudgeActor, {"jcfg": cfg.judge, "cache": cfg.models.cache_dir},
                            cfg.judge.num_actors, cfg.judge.batch_size, batch_format="pandas")
    return judged.sort_by("_row").drop_columns(["_row"]).to_pandas()


def label_revisits(cfg: Config, out: str) -> dict[str, Any]:
    users, sessions = _read_inputs(out)
    summaries = [judge.clean_summary(s, cfg.judge.max_summary_chars) for s in sessions["summary"]]
    sessions = sessions.assign(summary=summaries)
    emb = embed_rows(cfg, summaries, batch_size=cfg.judge.batch_size * 4)
    pairs = judge.candidate_pairs(sessions, emb["emb"], cfg.judge.candidates_per_session,
                                  cfg.judge.max_history)
    judged = judge_pairs(cfg, pairs)
    n = len(judged)
    failures = int(judged["failed"].sum()) if n else 0
    if n and failures / n > cfg.judge.max_failure_rate:
        raise RuntimeError(
            f"label-revisits: {failures}/{n} judge requests failed after retries (more than "
            f"judge.max_failure_rate={cfg.judge.max_failure_rate}); is {cfg.judge.openai_url} up?")
    table = pa.table({
        "user_id": judged["user_id"].astype(str).tolist() if n else [],
        "earlier_session_id": judged["earlier_session_id"].astype(str).tolist() if n else [],
        "later_session_id": judged["later_session_id"].astype(str).tolist() if n else [],
        "label": judged["label"].tolist() if n else [],
        "judge": [cfg.judge.backend] * n,
    }, schema=pa.schema([(f, pa.string()) for f in
                         ("user_id", "earlier_session_id", "later_session_id", "label", "judge")]))
    writer = io.StageWriter(out, "label-revisits")
    writer.write_table("revisit_pairs", table)
    _save_npz(writer.path(EMBEDDINGS_FILE), session_id=sessions["session_id"].to_numpy().astype(str),
              emb=emb["emb"])
    writer.add_file(EMBEDDINGS_FILE)
    parse_fail = int((~judged["parsed_ok"].astype(bool)).sum()) if n else 0
    metrics = {
        "backend": cfg.judge.backend, "sessions": len(sessions), "pairs": n,
        "pairs_per_session": n / max(len(sessions), 1),
        "matches": int((judged["label"] == judge.MATCH).sum()) if n else 0,
        "parse_failures": parse_fail, "parse_failure_rate": parse_fail / n if n else 0.0,
        "request_failures": failures,
    }
    nodes = set(emb["node_ids"]) | (set(judged["node"].tolist()) if n else set())
    return writer.commit(metrics=metrics,
                         node_ids=[x for x in nodes if x] + [node_id()])


# ----------------------------------------------------------------------------- train-scorer


def revisit_positive_ids(pairs: pd.DataFrame, later_before: set[str] | None = None) -> set[str]:
    """Earlier sessions some later session revisits (MATCH), optionally only counting later
    sessions in ``later_before``."""
    m = pairs[pairs["label"] == judge.MATCH]
    if later_before is not None:
        m = m[m["later_session_id"].isin(later_before)]
    return set(m["earlier_session_id"])


def _profile_texts(cfg: Config, users: pd.DataFrame) -> dict[str, str]:
    prof = users[users["profile"].notna() & (users["profile"].astype(str).str.strip() != "")]
    if prof.empty or not cfg.scorer.use_profile:
        return {}
    return dict(zip(prof["user_id"], [judge.clean_summary(p, cfg.judge.max_summary_chars)
                                      for p in prof["profile"]], strict=True))


def _profile_embeddings(cfg: Config, users: pd.DataFrame, encoder: str | None = None) -> dict[str, np.ndarray]:
    """Embedded profiles (``encoder``: a scorer's fine-tuned encoder; default models.embedder)."""
    from icebreaker_ray.models import TextEncoder

    texts = _profile_texts(cfg, users)
    if not texts:
        return {}
    vecs = TextEncoder(encoder or cfg.models.embedder)(list(texts.values()))
    return dict(zip(texts, vecs, strict=True))


def training_examples(cfg: Config, users, sessions, emb, pairs, profiles, texts: bool = False):
    """Pre-split sessions of every user, labelled by pre-split revisits (see module doc).
    ``texts``: also carry the summaries and profiles as text (fine-tuning the encoder)."""
    days = _days(sessions["ts"])
    t_split = split_time(days, cfg.scorer.holdout_fraction)
    pre = days < t_split
    pre_ids = set(sessions.loc[pre, "session_id"])
    positives = revisit_positive_ids(pairs, later_before=pre_ids)
    m = pairs[(pairs["label"] == judge.MATCH) & pairs["later_session_id"].isin(pre_ids)]
    data = scorer.build_user_examples(users["user_id"].tolist(), sessions.loc[pre, "user_id"].to_numpy(),
                                      sessions.loc[pre, "session_id"].to_numpy(), emb[pre], positives,
                                      profiles, revisit_ids=set(m["later_session_id"]),
                                      texts=sessions.loc[pre, "summary"].map(
                                          lambda t: judge.clean_summary(t, cfg.judge.max_summary_chars)
                                      ).to_numpy() if texts else None,
                                      profile_text=_profile_texts(cfg, users) if texts else None)
    return data, t_split


def train_scorer(cfg: Config, out: str) -> dict[str, Any]:
    import ray

    users, sessions = _read_inputs(out)
    pairs = io.read_table(io.table_uri(out, "label-revisits", "revisit_pairs"), "revisit_pairs",
                          allow_empty=True).to_pandas()
    cached = _load_npz(io.join(out, "label-revisits", EMBEDDINGS_FILE))
    pos = dict(zip(cached["session_id"], range(len(cached["session_id"])), strict=True))
    emb = cached["emb"][[pos[s] for s in sessions["session_id"]]] if len(sessions) else cached["emb"]
    finetune = cfg.scorer.finetune_text_encoder
    # Fine-tuning embeds the profiles with the encoder being trained, from their text.
    profiles = {} if finetune else _profile_embeddings(cfg, users)
    encoder = (cfg.scorer.text_encoder or cfg.models.embedder) if finetune else None
    data, t_split = training_examples(cfg, users, sessions, emb, pairs, profiles, texts=finetune)
    if len(data) == 0:
        raise RuntimeError("train-scorer: no user has a session before the holdout split; nothing to train on")
    init_ray(cfg)
    untrained = scorer.new_model(data, cfg.scorer, cfg.run.seed, encoder)
    loss_before = scorer.evaluate_loss(untrained, data, cfg.scorer)
    del untrained
    writer = io.StageWriter(out, "train-scorer")
    model, history, result = scorer.train_scorer_on_ray(
        data, cfg.scorer, writer.path("ray-train"), run_name="train-scorer",
        seed=cfg.run.seed, encoder=encoder)
    loss_after = scorer.evaluate_loss(model, data, cfg.scorer)
    scorer.save_scorer(model, writer.path(SCORER_DIR),
                       {"t_split_days": t_split, "embedder": cfg.models.embedder})
    writer.add_file(SCORER_DIR)
    metrics = {
        "users": len(data), "summaries": int(sum(len(e) for e in data.item_emb)),
        "positives": int(sum((lab > 0.5).sum() for lab in data.labels)), "t_split_days": t_split,
        "loss_untrained": loss_before, "loss_trained": loss_after, "epoch_losses": history,
        "workers": cfg.scorer.num_workers, "checkpoint": str(result.checkpoint.path),
        "text_encoder": f"finetuned from {encoder}" if finetune else f"frozen {cfg.models.embedder}",
    }
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    return writer.commit(metrics=metrics,
                         node_ids=nodes[: cfg.scorer.num_workers] + [node_id()])


# ----------------------------------------------------------------------------- distill-interests


def distill_interests(cfg: Config, out: str) -> dict[str, Any]:
    users, sessions = _read_inputs(out)
    pairs = io.read_table(io.table_uri(out, "label-revisits", "revisit_pairs"), "revisit_pairs",
                          allow_empty=True).to_pandas()
    # A path or URI every actor can open (each loads the scorer from storage itself).
    scorer_dir = io.absolute(io.join(out, "train-scorer", SCORER_DIR))
    model = scorer.load_scorer(scorer_dir)
    t_split = float(scorer.scorer_config(scorer_dir)["t_split_days"])
    summaries = [judge.clean_summary(s, cfg.judge.max_summary_chars) for s in sessions["summary"]]
    # The functional prototypes go through the same encoder as the summaries (rid/noise.py).
    enc = embed_rows(cfg, summaries + list(noise.FUNCTIONAL_PROTOTYPES), scorer_dir=scorer_dir,
                     batch_size=cfg.scorer.score_batch_size, num_actors=cfg.scorer.num_actors)
    proto_emb = enc["emb"][len(summaries):]
    enc = {**enc, "emb": enc["emb"][: len(summaries)], "z": enc["z"][: len(summaries)]}
    profiles = _profile_embeddings(cfg, users, scorer.text_encoder_path(scorer_dir))
    bucket_of = dict(zip(users["user_id"], users["activity_bucket"], strict=True))
    uid = sessions["user_id"].to_numpy()
    buckets = np.array([bucket_of.get(u, 0) for u in uid], int)
    days = _days(sessions["ts"])

    # tau_b on held-out data: pre-split histories scored, label = revisited after the split.
    pre = days < t_split
    post_ids = set(sessions.loc[~pre, "session_id"])
    held_pos = revisit_positive_ids(pairs, later_before=post_ids)
    held_scores = scorer.score_rows(model, uid[pre], enc["emb"][pre], enc["z"][pre], profiles)
    held_labels = sessions.loc[pre, "session_id"].isin(held_pos).to_numpy()
    tau = gating.fit_thresholds(held_scores, held_labels, buckets[pre], cfg.gating.num_buckets,
                                cfg.gating.objective, cfg.gating.target_recall, cfg.gating.enforce_monotone)

    scores = scorer.score_rows(model, uid, enc["emb"], enc["z"], profiles)
    noise_mask = noise.eligibility_from_config(cfg, uid, summaries, enc["emb"], proto_emb)
    selected = gating.select_interests(scores, uid, buckets, tau.thresholds, cfg.gating.max_interests,
                                       noise_mask.eligible)
    table = pa.table({"user_id": uid.astype(str), "session_id": sessions["session_id"].astype(str).to_numpy(),
                      "summary": summaries, "score": scores.astype(np.float64), "selected": selected,
                      "eligible": noise_mask.eligible})
    writer = io.StageWriter(out, "distill-interests")
    writer.write_table("interests", table)
    writer.write_json("thresholds.json", tau.to_json())
    per_user = pd.Series(selected).groupby(uid).sum() if len(uid) else pd.Series(dtype=float)
    metrics = {
        "summaries": len(sessions), "users_with_sessions": int(per_user.size),
        "users_without_sessions": int(len(set(users["user_id"]) - set(uid))),
        "selected": int(selected.sum()), "interests_per_user": float(per_user.mean()) if per_user.size else 0.0,
        "users_with_no_interest": int((per_user == 0).sum()), "thresholds": tau.thresholds,
        "raw_thresholds_monotone": tau.raw_monotone, "held_out_positives": int(held_labels.sum()),
        "summaries_by_eligibility": noise_mask.counts(),
    }
    return writer.commit(metrics=metrics,
                         node_ids=[x for x in enc["node_ids"] if x] + [node_id()])
