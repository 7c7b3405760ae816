"""Starter lists for many users at once: the generator on a Ray Data actor pool.

    requests = pa.table({"user_id": [...], "interests": [[...], ...]})
    lists = generate_lists(requests, "runs/demo/sft/model", cfg)
    lists.column("starters")      # the filtered K-list per user (what a user is shown)
    lists.column("alternatives")  # every other sampled list that passed on its own
    lists.column("sampled")       # every valid starter sampled, in order (a mining pool)

    # several (model, requests) jobs in one pass over one actor pool
    sft_lists, dpo_lists = generate_many([(sft_dir, requests), (dpo_dir, requests)], cfg)

Evaluation (every method and ablation in one ``generate_many`` pass), mining (the
candidate pool C of Algorithm 1) and the self-reinforced rounds (the lists deployed in
the simulated world, and the pools mined from the same samples) all sample through this
module, so a model is always judged on exactly what the filter lets out. Each actor
holds one model at a time, in the configured generation engine (``generation.engine``,
:mod:`icebreaker_ray.isg.engines`), and swaps it when a block names another (jobs are laid out
model by model, so an actor loads each model about once); sampling is seeded from the
user ids of each batch, so a run is reproducible whichever actor gets which batch, and
a job gives the same lists alone or in a ``generate_many`` pass.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icebreaker_ray.data import io
from icebreaker_ray.raykit import map_blocks, split_blocks

if TYPE_CHECKING:
    from icebreaker_ray.config import Config
    from icebreaker_ray.isg.engines import Engine, EngineSpec
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
    ("num_parsed", pa.int32()),  # starters parsed from all candidates, before the filter
])


class ListGenerator:
    """Ray Data actor holding a generator: (user_id, interests, model, job) -> filtered lists.

    Each batch is one job's block, so it names one ``model``, loaded on first use in place
    of the one held before; ``job`` is passed through.
    """

    def __init__(self, embedder: str, gen_params: GenerationParams, seed: int,
                 engine: EngineSpec | None = None) -> None:
        from icebreaker_ray.isg.engines import EngineSpec
        from icebreaker_ray.isg.filters import SafetyFilter
        from icebreaker_ray.models import TextEncoder

        self.loaded: tuple[str, Engine] | None = None
        self.encoder = TextEncoder(embedder)
        self.params, self.seed = gen_params, seed
        self.spec = engine or EngineSpec(batch_size=gen_params.batch_size)
        self.safety = SafetyFilter(self.encoder, gen_params.filter_params())

    def _engine(self, model_dir: str) -> Engine:
        if self.loaded is None or self.loaded[0] != model_dir:
            self.loaded = None  # free the old weights before loading the new ones
            self.loaded = (model_dir, self.spec.load(model_dir))
        return self.loaded[1]

    def __call__(self, batch: pa.Table) -> pa.Table:
        models = set(batch.column("model").to_pylist())
        if len(models) != 1:
            raise ValueError(f"a generation batch must name one model, got {sorted(models)}")
        with self.encoder.scoped():  # the filter's embeddings depend on this batch only
            out = self._sample(models.pop(), batch)
        return out.append_column("job", batch.column("job"))

    def _sample(self, model_dir: str, batch: pa.Table) -> pa.Table:
        from icebreaker_ray.isg.generate import generate

        engine = self._engine(model_dir)
        users = batch.column("user_id").to_pylist()
        interests = batch.column("interests").to_pylist()
        seed = self.seed + zlib.crc32("|".join(users).encode()) % 1_000_000
        results = generate(engine, interests, self.encoder, self.params,
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
                "num_parsed": sum(c.parsed for c in res.candidates),
            })
        return pa.Table.from_pylist(rows, schema=LISTS_SCHEMA)


def generate_lists(requests: pa.Table, model_dir: str, cfg: Config,
                   params: GenerationParams | None = None, *, actors: int | None = None) -> pa.Table:
    """Sample and filter one list per row of ``requests`` (``user_id``, ``interests``).

    Runs ``actors`` (default ``search.num_actors``) generator actors over Ray Data; the
    caller has started Ray. Rows come back sorted by ``user_id``.
    """
    return generate_many([(model_dir, requests)], cfg, params, actors=actors)[0]


def generate_many(jobs: Sequence[tuple[str, pa.Table]], cfg: Config,
                  params: GenerationParams | None = None, *,
                  actors: int | None = None) -> list[pa.Table]:
    """:func:`generate_lists` for several ``(model_dir, requests)`` jobs in one Ray Data
    pass: one actor pool (started once, not once per job) works through every job's
    batches, so the pool stays busy across jobs instead of idling on each job's last batch.
    Returns one table per job, in order, each sorted by ``user_id``.
    """
    from icebreaker_ray.isg.engines import EngineSpec
    from icebreaker_ray.isg.generate import GenerationParams

    params = params or GenerationParams.from_config(cfg)
    actors = actors or cfg.search.num_actors
    blocks: list[pa.Table] = []
    for job, (model_dir, requests) in enumerate(jobs):
        # Ray workers run in another directory; a URI is copied once per node on load.
        model_dir = io.absolute(model_dir)
        table = requests.select(["user_id", "interests"])
        table = table.append_column("model", pa.array([model_dir] * table.num_rows, pa.string()))
        table = table.append_column("job", pa.array([job] * table.num_rows, pa.int32()))
        # Each job is cut into batches exactly as it would be alone (same seeds, same lists).
        blocks += [b for b in split_blocks(table, actors, params.batch_size) if b.num_rows]
    if not blocks:  # no requests at all: no actor pool to start
        return [LISTS_SCHEMA.empty_table() for _ in jobs]
    out = map_blocks(blocks, ListGenerator,
                     dict(embedder=cfg.models.embedder, gen_params=params, seed=cfg.run.seed,
                          engine=replace(EngineSpec.from_config(cfg), batch_size=params.batch_size)),
                     actors, LISTS_SCHEMA.append(pa.field("job", pa.int32())))
    job_ids = out.column("job").to_numpy(zero_copy_only=False)
    lists = out.drop_columns(["job"])
    return [lists.filter(pa.array(job_ids == j)).sort_by("user_id") for j in range(len(jobs))]


def invented_share(lists: pa.Table) -> float:
    """Share of all parsed starters that the filter rejected as invented entities (words
    neither ordinary English nor in the prompt's interests; isg/filters.py)."""
    parsed = sum(n or 0 for n in lists.column("num_parsed").to_pylist())
    invented = sum(json.loads(r or "{}").get("invented_entity", 0)
                   for r in lists.column("rejections").to_pylist())
    return invented / parsed if parsed else 0.0


def complete_share(lists: pa.Table) -> float:
    """Share of all sampled candidate lists that parsed and passed the filter with K starters."""
    total = sum(lists.column("num_candidates").to_pylist())
    return sum(lists.column("num_complete").to_pylist()) / total if total else 0.0
