"""Preference mining for PMA (paper §2.3.2): sample candidate pools, search lists, pair them.

    pools = sample_candidates(users, interests, model_dir, cfg)        # Ray Data, generator actors
    pairs = search_pairs(pools, prompts, ranker_dir, sessions, users, cfg)   # Ray Data, search actors

1. Candidate pool C (Algorithm 1 line 1): for each user, the current generator samples
   ``generation.num_candidates`` lists from the trigger interests; every parsed starter
   that passes the rule filter joins the pool (deduplicated), up to ``search.N``. A share
   ``search.teacher_mix_ratio`` of the pool comes from the teacher-distilled starters of
   the SIT corpus (App. C.3: distilled starters keep preference learning from collapsing).
2. Hybrid reward list search (Algorithm 1) with R_util from the ``util`` ranker (for its
   bootstrap ensemble, the conservative mean - ``search.kappa`` * std of the members) and
   sentence embeddings for R_div gives S+ and the hierarchical negatives (utility,
   diversity, joint failure); each negative becomes one (chosen=S+, rejected) pair. Logs
   without clicks have no ranker (``ranker_dir`` None): the same search then runs with the
   click-free proxy :func:`~icebreaker_ray.reward.proxy.interest_similarity` as R_util.

Both steps run as Ray Data ``map_batches`` over an actor pool, so they shard across
workers; the per-user algorithm is the pure function :func:`pairs_for_user`. Sampling is
seeded per batch from the user ids in it, so a run is reproducible whichever actor gets
which batch.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from icebreaker_ray.data.schemas import schema
from icebreaker_ray.isg.prompts import generator_messages
from icebreaker_ray.raykit import map_actor_pool
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.search.list_search import (
    ListSearchParams,
    hybrid_reward_list_search,
    member_agreement,
)

NEGATIVE_TYPES = ("utility", "diversity", "joint")
#: What R_util was in a mining pass (the mine manifest's ``utility``).
UTILITY_RANKER = "util ranker (trained on clicks)"
UTILITY_PROXY = "interest-similarity proxy (no clicks: reward/proxy.py)"
POOL_SCHEMA = pa.schema([("user_id", pa.string()), ("interests", pa.list_(pa.string())),
                         ("starters", pa.list_(pa.string()))])


def search_params(cfg) -> ListSearchParams:
    s = cfg.search
    return ListSearchParams(K=s.K, J=s.J, M=s.M, lam=s.lam, util_gap=s.util_gap,
                            util_tolerance=s.util_tolerance, div_gap=s.div_gap,
                            div_tolerance=s.div_tolerance, div_redundancy=s.div_redundancy)


def prompt_for(interests: Sequence[str], k: int, max_chars: int) -> str:
    """The chat prompt a pair is conditioned on, as JSON messages (what DPO trains on)."""
    return json.dumps(generator_messages(list(interests), k=k, max_chars=max_chars))


def mix_pool(generated: Sequence[str], teacher: Sequence[str], n: int, teacher_ratio: float) -> list[str]:
    """Pool C of at most ``n`` distinct starters, ``teacher_ratio`` of them distilled."""
    m = min(len(teacher), int(round(teacher_ratio * n)))
    pool = list(dict.fromkeys([*teacher[:m], *generated]))
    return pool[:n]


def pairs_for_user(user_id: str, prompt: str, pool: Sequence[str], utility: np.ndarray,
                   emb: np.ndarray, params: ListSearchParams, round_: int, seed: int,
                   negatives: Sequence[str] = NEGATIVE_TYPES, members: np.ndarray | None = None,
                   min_agreement: float = 0.0) -> list[dict[str, Any]]:
    """Algorithm 1 on one user's pool -> one preference pair per negative type found.

    ``members`` (members, N): the ranker ensemble's own utilities; with ``min_agreement``
    > 0 a pair is kept only when at least that share of the members rank S+ above the
    negative by eq. 8 (:func:`~icebreaker_ray.search.list_search.member_agreement`)."""
    if len(pool) < params.K:
        return []
    res = hybrid_reward_list_search(np.asarray(utility, np.float64), emb, params,
                                    rng=seed + zlib.crc32(user_id.encode()))
    chosen = [pool[i] for i in res.best]
    rows = []
    for kind in negatives:
        neg = res.negatives.get(kind)
        if neg is None:
            continue
        if members is not None and min_agreement > 0 and member_agreement(
                members, emb, res.best, neg.indices, params.lam) < min_agreement:
            continue
        rows.append({
            "user_id": user_id, "prompt": prompt, "chosen": chosen,
            "rejected": [pool[i] for i in neg.indices], "negative_type": kind,
            "chosen_v_util": res.v_util, "chosen_v_div": res.v_div,
            "rejected_v_util": float(neg.v_util), "rejected_v_div": float(neg.v_div),
            "round": round_,
        })
    return rows


# ----------------------------------------------------------------------------- Ray actors


class ListSearcher:
    """Ray Data actor holding R_util and the embedder: pools -> preference pairs
    (``ranker_dir`` None: R_util is the click-free interest-similarity proxy)."""

    def __init__(self, ranker_dir: str | None, sessions: pa.Table, users: pa.Table, embedder: str,
                 params: ListSearchParams, round_: int, seed: int, k: int, max_chars: int,
                 negatives: Sequence[str], kappa: float = 0.0, min_agreement: float = 0.0) -> None:
        from icebreaker_ray.models import TextEncoder
        from icebreaker_ray.reward.ranker import UserFeaturizer, load_ranker, member_utilities

        self.encoder = TextEncoder(embedder)
        self.ranker = load_ranker(ranker_dir) if ranker_dir else None
        self.kappa, self.min_agreement, self._members = kappa, min_agreement, member_utilities
        self.features = UserFeaturizer(sessions, users, self.encoder) if self.ranker else None
        self.params, self.round, self.seed = params, round_, seed
        self.k, self.max_chars, self.negatives = k, max_chars, list(negatives)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for uid, interests, pool in zip(batch.column("user_id").to_pylist(),
                                        batch.column("interests").to_pylist(),
                                        batch.column("starters").to_pylist(), strict=True):
            if len(pool) < self.params.K:
                continue
            with self.encoder.scoped():  # the user's pool alone: the same whichever actor/block
                emb = self.encoder(pool)
            members = None
            if self.ranker is None:
                with self.encoder.scoped():
                    utility = interest_similarity(emb, self.encoder(list(interests)))
            else:
                members, utility = self._members(self.ranker, self.features, [uid] * len(pool),
                                                    pool, emb, self.kappa)
            rows += pairs_for_user(uid, prompt_for(interests, self.k, self.max_chars), pool,
                                   utility, emb, self.params, self.round, self.seed, self.negatives,
                                   members, self.min_agreement)
        return pa.Table.from_pylist(rows, schema=schema("preference_pairs"))


def pools_from_lists(lists: pa.Table, requests: pa.Table, cfg) -> pa.Table:
    """Candidate pools C: each user's sampled valid starters mixed with a share
    ``search.teacher_mix_ratio`` of their teacher-distilled starters, at most ``search.N``."""
    teacher = dict(zip(requests.column("user_id").to_pylist(),
                       requests.column("teacher_starters").to_pylist(), strict=True))
    interests = dict(zip(requests.column("user_id").to_pylist(),
                         requests.column("interests").to_pylist(), strict=True))
    users = lists.column("user_id").to_pylist()
    pools = [mix_pool(sampled, teacher.get(uid) or [], cfg.search.N, cfg.search.teacher_mix_ratio)
             for uid, sampled in zip(users, lists.column("sampled").to_pylist(), strict=True)]
    return pa.table({"user_id": users, "interests": [interests[u] for u in users], "starters": pools},
                    schema=POOL_SCHEMA)


def sample_candidates(requests: pa.Table, model_dir: str, cfg, gen_params) -> pa.Table:
    """``requests`` (user_id, interests, teacher_starters) -> pools (user_id, interests, starters)."""
    from icebreaker_ray.isg.batch import generate_lists

    return pools_from_lists(generate_lists(requests, model_dir, cfg, gen_params), requests, cfg)


def search_pairs(pools: pa.Table, ranker_dir: str | None, sessions: pa.Table, users: pa.Table, cfg,
                 round_: int, negatives: Sequence[str] = NEGATIVE_TYPES) -> pa.Table:
    out = map_actor_pool(pools, ListSearcher,
               dict(ranker_dir=ranker_dir, sessions=sessions, users=users,
                    embedder=cfg.models.embedder, params=search_params(cfg), round_=round_,
                    seed=cfg.run.seed, k=cfg.generation.K, max_chars=cfg.filter.max_chars,
                    negatives=negatives, kappa=cfg.search.kappa,
                    min_agreement=cfg.search.min_agreement),
               cfg.search.num_actors, 16, schema("preference_pairs"))
    return out.sort_by([("user_id", "ascending"), ("negative_type", "ascending")])
