"""The ``mine`` stage: preference pairs for DPO from the current generator (Algorithm 1).

    icebreaker mine --config configs/local-cpu.yaml --out runs/demo

Reads trigger interests (``distill-interests``), the SIT corpus (``distill-corpus``, for
the teacher share of each pool), the generator (``sft``) and the ``util`` ranker
(``train-ranker``; on logs without clicks, where train-ranker did not run, the click-free
proxy instead, and the manifest's ``utility`` says which). Writes ``OUT/mine/``:
- ``candidates.parquet``: each mined user's candidate pool C;
- ``preference_pairs.parquet``: S+ against each negative type found (hierarchical pairs);
- ``feedback_pairs.parquet``: the vanilla SFT+DPO baseline's pairs, from logged feedback
  only (a clicked list against an unclicked list of the same user), no list search.
Held-out evaluation users (``eval.holdout_fraction``) are never mined, nor are the round
gate's validation users (:func:`validation_users`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.data.splits import hash_fraction, is_holdout
from icebreaker_ray.isg.generate import GenerationParams
from icebreaker_ray.layout import trigger_interests
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.search.mine import (
    UTILITY_PROXY,
    UTILITY_RANKER,
    prompt_for,
    sample_candidates,
    search_pairs,
)


def validation_users(interests: Mapping[str, Sequence[str]], cfg: Config) -> list[str]:
    """The round gate's validation slice: ``iterate.validation_users`` users that are not
    held out (``eval.holdout_fraction``: the graded users are never looked at here), those
    with the smallest key of a second hash split (seed ``"<run.seed>:validation"``,
    independent of the held-out split), sorted. Stable across runs and rounds."""
    pool = [u for u in interests if not is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed)]
    pool.sort(key=lambda u: (hash_fraction(u, f"{cfg.run.seed}:validation"), u))
    return sorted(pool[: cfg.iterate.validation_users])


def training_users(interests: dict[str, list[str]], cfg: Config, round_: int,
                   exclude: Collection[str] = ()) -> list[str]:
    """The users mined in ``round_`` (round 0 included): not held out, not the round gate's
    validation users (with ``iterate.gate``: the gate compares generators on users none of
    them was trained on), not in ``exclude``, at most ``search.max_users`` of them (a seeded
    sample per round)."""
    skip = set(exclude) | set(validation_users(interests, cfg) if cfg.iterate.gate else ())
    users = sorted(u for u in interests
                   if not is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed) and u not in skip)
    cap = cfg.search.max_users
    if cap is not None and len(users) > cap:
        rng = np.random.default_rng([cfg.run.seed, round_])
        users = sorted(rng.choice(users, cap, replace=False).tolist())
    return users


def mining_requests(out: str, cfg: Config, round_: int, exclude: Collection[str] = ()) -> pa.Table:
    interests = trigger_interests(out)
    corpus = io.read_table(io.table_uri(out, "distill-corpus", "sit_corpus"), "sit_corpus")
    teacher = {r["user_id"]: r["starters"] for r in corpus.to_pylist()}
    users = training_users(interests, cfg, round_, exclude)
    return pa.table({
        "user_id": users,
        "interests": [interests[u] for u in users],
        "teacher_starters": pa.array([teacher.get(u, []) for u in users], pa.list_(pa.string())),
    })


def feedback_pairs(impressions: pa.Table, prompts: dict[str, str], per_user: int, seed: int) -> pa.Table:
    """Vanilla DPO pairs: lists the user clicked in vs lists they ignored (logged feedback)."""
    lists: dict[str, dict[str, Any]] = {}
    for row in impressions.to_pylist():
        entry = lists.setdefault(row["request_id"], {"user": row["user_id"], "items": [], "clicked": False})
        entry["items"].append((row["position"], row["starter"]))
        entry["clicked"] |= row["clicked"]
    by_user: dict[str, dict[bool, list[list[str]]]] = defaultdict(lambda: {True: [], False: []})
    for entry in lists.values():
        by_user[entry["user"]][entry["clicked"]].append([s for _, s in sorted(entry["items"])])
    rng = np.random.default_rng(seed)
    rows = []
    nan = float("nan")
    for uid in sorted(by_user):
        good, bad = by_user[uid][True], by_user[uid][False]
        if uid not in prompts or not good or not bad:
            continue
        for chosen in good[:per_user]:
            rejected = bad[int(rng.integers(len(bad)))]
            rows.append({"user_id": uid, "prompt": prompts[uid], "chosen": chosen, "rejected": rejected,
                         "negative_type": "feedback", "chosen_v_util": nan, "chosen_v_div": nan,
                         "rejected_v_util": nan, "rejected_v_div": nan, "round": 0})
    return pa.Table.from_pylist(rows, schema=schema("preference_pairs"))


def mine_round(cfg: Config, out: str, model_dir: str, round_: int) -> tuple[pa.Table, pa.Table]:
    """Candidate pools and preference pairs for one round, from the generator in ``model_dir``."""
    requests = mining_requests(out, cfg, round_)
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")
    users = io.read_table(io.table_uri(out, "simulate", "users"), "users")
    init_ray(cfg)
    pools = sample_candidates(requests, model_dir, cfg, GenerationParams.from_config(cfg))
    pairs = search_pairs(pools, layout.util_ranker(out), sessions, users, cfg,
                         round_, cfg.dpo.negatives)
    candidates = pa.table({"user_id": pools.column("user_id"),
                           "round": pa.array([round_] * pools.num_rows, pa.int32()),
                           "starters": pools.column("starters")})
    return candidates, pairs


def pair_stats(pairs: pa.Table, candidates: pa.Table) -> dict[str, Any]:
    df = pairs.to_pandas()
    sizes = [len(s) for s in candidates.column("starters").to_pylist()]
    stats: dict[str, Any] = {
        "users": candidates.num_rows, "mean_pool_size": float(np.mean(sizes)) if sizes else 0.0,
        "pairs": int(len(df)), "pairs_by_type": df["negative_type"].value_counts().to_dict(),
    }
    if len(df):
        for col in ("chosen_v_util", "chosen_v_div", "rejected_v_util", "rejected_v_div"):
            stats[f"mean_{col}"] = float(df[col].mean())
    return stats


def mine(cfg: Config, out: str) -> dict[str, Any]:
    """Round 0: mine from the SFT generator; also write the vanilla feedback pairs."""
    candidates, pairs = mine_round(cfg, out, layout.sft_generator(out), round_=0)
    interests = trigger_interests(out)
    prompts = {u: prompt_for(i, cfg.generation.K, cfg.filter.max_chars) for u, i in interests.items()
               if not is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed)}
    impressions = io.read_table(io.table_uri(out, "simulate", "impressions"), "impressions",
                                allow_empty=True)
    feedback = feedback_pairs(impressions, prompts, cfg.search.feedback_pairs_per_user, cfg.run.seed)
    writer = io.StageWriter(out, "mine")
    writer.write_table("candidates", candidates)
    writer.write_table("preference_pairs", pairs)
    writer.write_table("preference_pairs", feedback, "feedback_pairs.parquet")
    stats = {**pair_stats(pairs, candidates), "feedback_pairs": feedback.num_rows,
             "utility": UTILITY_RANKER if layout.util_ranker(out) else UTILITY_PROXY}
    return writer.commit(metrics=stats,
                         node_ids=[node_id()])
