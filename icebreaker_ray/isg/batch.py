"""Starter lists for many users at once: the generator on a Ray Data actor pool.

    requests = pa.table({"user_id": [...], "interests": [[...], ...]})
    lists = generate_lists(requests, "runs/demo/sft/model", cfg)
    lists.column("starters")      # the filtered K-list per user (what a user is shown)
    lists.column("alternatives")  # every other sampled list that passed on its own
    lists.column("sampled")       # every valid starter sampled, in order (a mining pool)

Evaluation (one call per method), mining (the candidate pool C of Algorithm 1) and the
self-reinforced rounds (the lists deployed in the simulated world, and the pools mined
from the same samples) all sample through this one function, so a model is always
judged on exactly what the filter lets out. Each actor holds one copy of the model;
sampling is seeded from the user ids of each batch, so a run is reproducible whichever
actor gets which batch.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icebreaker_ray.raykit import map_actor_pool

if TYPE_CHECKING:
    from icebreaker_ray.config import Config
    from icebreaker_ray.isg.generate import GenerationParams

_STR_LIST = pa.list_(pa.string())
LISTS_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("starters", _STR_LIST),
    ("alternatives", pa.list_(_STR_LIST)),
    ("sampled", _STR_LIST),
    ("reason", pa.string()),
    ("num_candidates", pa.int32()),
    ("num_complete", pa.int32()),
    ("rejections", pa.string()),  # JSON {reason: count} from the rule filter
])


class ListGenerator:
    """Ray Data actor holding a generator: (user_id, interests) -> filtered lists."""

    def __init__(self, model_dir: str, embedder: str, gen_params: GenerationParams, seed: int) -> None:
        from icebreaker_ray.isg.filters import SafetyFilter
        from icebreaker_ray.models import TextEncoder, load_generator

        self.model, self.tok = load_generator(model_dir)
        self.encoder = TextEncoder(embedder)
        self.params, self.seed = gen_params, seed
        self.safety = SafetyFilter(self.encoder, gen_params.filter_params())

    def __call__(self, batch: pa.Table) -> pa.Table:
        from icebreaker_ray.isg.generate import generate

        users = batch.column("user_id").to_pylist()
        interests = batch.column("interests").to_pylist()
        seed = self.seed + zlib.crc32("|".join(users).encode()) % 1_000_000
        results = generate(self.model, self.tok, interests, self.encoder, self.params,
                           seed=seed, safety=self.safety)
        rows: list[dict[str, Any]] = []
        for uid, res in zip(users, results, strict=True):
            complete = [c.kept for c in res.candidates if c.complete]
            rows.append({
                "user_id": uid,
                "starters": res.starters,
                "alternatives": [k for k in complete if k != res.starters],
                "sampled": list(dict.fromkeys(s for c in res.candidates for s in c.kept)),
                "reason": res.reason,
                "num_candidates": len(res.candidates),
                "num_complete": len(complete),
                "rejections": json.dumps(dict(res.rejections), sort_keys=True),
            })
        return pa.Table.from_pylist(rows, schema=LISTS_SCHEMA)


def generate_lists(requests: pa.Table, model_dir: str, cfg: Config,
                   params: GenerationParams | None = None, *, actors: int | None = None) -> pa.Table:
    """Sample and filter one list per row of ``requests`` (``user_id``, ``interests``).

    Runs ``actors`` (default ``search.num_actors``) generator actors over Ray Data; the
    caller has started Ray. Rows come back sorted by ``user_id``.
    """
    import os

    from icebreaker_ray.isg.generate import GenerationParams

    params = params or GenerationParams.from_config(cfg)
    if "://" not in model_dir:
        model_dir = os.path.abspath(model_dir)  # Ray workers run in another directory
    out = map_actor_pool(
        requests.select(["user_id", "interests"]), ListGenerator,
        dict(model_dir=model_dir, embedder=cfg.models.embedder, gen_params=params, seed=cfg.run.seed),
        actors or cfg.search.num_actors, params.batch_size, LISTS_SCHEMA,
    )
    return out.sort_by("user_id")


def complete_share(lists: pa.Table) -> float:
    """Share of all sampled candidate lists that parsed and passed the filter with K starters."""
    total = sum(lists.column("num_candidates").to_pylist())
    return sum(lists.column("num_complete").to_pylist()) / total if total else 0.0
