"""Ready answers for known users: a batch job writes each known user's list, the server
answers from it in milliseconds.

    icebreaker precompute --out runs/demo                  # every known user missing or stale
    icebreaker precompute --out runs/demo --users u0000003,u0000007 --force

    store = PrecomputedLists.load(layout.precomputed_lists("runs/demo"))
    entry = store.get("u0000003", history, k=4, model_version=art.model_version)

The job (:func:`precompute`) runs the server's own path for every user on a Ray Data
actor pool: :class:`~icebreaker_ray.serve.components.InterestDistillerCore` (I* from the
user's logged history), the generation engine (:class:`BatchSampler`, ``N`` candidate
lists sharing the prompt) and :class:`ListSelectorCore` (the evaluated list policy, R_util
scores, cold-start fill). So a stored list is what the server would have generated for the
same history, one sampling draw of it.

An entry answers a request only while it is fresh: the same user, the same K, the same
model version (a retrained or newly promoted generator makes every entry stale) and the
same history, compared as a SHA-256 of the summaries the distiller would read
(:func:`history_digest`). A request that pastes new sessions for a known user changes that
history, so it is generated online; so is ``refresh: true``, an unknown user and a pasted
history. Rerunning the job regenerates only missing and stale entries (``--force``: all).

The store is one Parquet table (``RUN/serve/precomputed.parquet``, schema
``precomputed_lists``) written atomically through the storage layer, so it can live in
object storage next to the run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.serve.artifacts import Artifacts, locate

log = logging.getLogger(__name__)

TABLE = "precomputed_lists"


def history_digest(history: Sequence[str]) -> str:
    """The fingerprint of the summaries a list was made from (order matters)."""
    h = hashlib.sha256()
    for text in history:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    user_id: str
    k: int
    history_sha256: str
    model_version: str
    interests: list[str]
    starters: list[str]
    scores: list[float]
    sources: list[str]

    @classmethod
    def from_row(cls, row: dict) -> Entry:
        """An entry from a row of the ``precomputed_lists`` table (extra columns ignored)."""
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


class PrecomputedLists:
    """The store as the server holds it: ``(user_id, k) -> Entry``."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries = {(e.user_id, e.k): e for e in entries}

    @classmethod
    def load(cls, uri: str | None) -> PrecomputedLists:
        """The table at ``uri``; an empty store when there is none."""
        if not uri or not io.exists(uri):
            return cls()
        table = io.read_table(uri, TABLE, allow_empty=True)
        return cls(Entry.from_row(r) for r in table.to_pylist())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, user_id: str | None, history: Sequence[str], k: int,
            model_version: str) -> Entry | None:
        """The entry for this request, or None when missing or stale."""
        entry = self.entries.get((user_id, k)) if user_id else None
        if entry is None or entry.model_version != model_version:
            return None
        return entry if entry.history_sha256 == history_digest(history) else None

    def table(self) -> pa.Table:
        now = int(time.time() * 1000)
        rows = [{**e.__dict__, "created_at": now} for e in self.entries.values()]
        rows.sort(key=lambda r: (r["user_id"], r["k"]))
        return pa.Table.from_pylist(rows, schema=schema(TABLE))


# ----------------------------------------------------------------------------- batch job


class ListMaker:
    """Ray Data actor: the server's distiller, engine and selector for a block of users."""

    def __init__(self, cfg: Config, art: Artifacts, k: int) -> None:
        from icebreaker_ray.isg.engines import EngineSpec
        from icebreaker_ray.isg.generate import GenerationParams
        from icebreaker_ray.models import set_offline
        from icebreaker_ray.serve.components import (
            BatchSampler,
            InterestDistillerCore,
            ListSelectorCore,
            candidates_per_request,
        )

        set_offline(cfg.models.offline)
        self.cfg, self.art, self.k = cfg, art, k
        self.distiller = InterestDistillerCore(cfg, art)
        self.selector = ListSelectorCore(cfg, art)
        self.sampler = BatchSampler(EngineSpec.from_config(cfg).load(art.generator),
                                    GenerationParams.from_config(cfg), candidates_per_request(cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from icebreaker_ray.serve.components import GenJob

        users = batch.column("user_id").to_pylist()
        distilled = [self.distiller.distill(u, None) for u in users]
        warm = [i for i, d in enumerate(distilled) if not d.cold_start]
        texts = self.sampler.run([GenJob(distilled[i].interests, self.k) for i in warm]) if warm else []
        by_user = dict(zip(warm, texts, strict=True))
        rows = []
        for i, (uid, d) in enumerate(zip(users, distilled, strict=True)):
            if d.cold_start:
                picks = self.selector.cold_start(self.k)
            else:
                picks = self.selector.select(uid, d.history, d.interests, by_user[i], self.k, d.profile)
            rows.append({"user_id": uid, "k": self.k, "history_sha256": history_digest(d.history),
                         "model_version": self.art.model_version, "interests": d.interests,
                         "starters": [p.text for p in picks], "scores": [p.score for p in picks],
                         "sources": [p.source for p in picks], "created_at": int(time.time() * 1000)})
        return pa.Table.from_pylist(rows, schema=schema(TABLE))


@dataclass
class PrecomputeResult:
    path: str
    generated: int   # entries written by this call
    kept: int        # fresh entries left as they were
    total: int       # entries in the store now
    seconds: float


def precompute(cfg: Config, run_dir: str, *, users: Sequence[str] | None = None,
               k: int | None = None, force: bool = False, model: str | None = None,
               actors: int | None = None) -> PrecomputeResult:
    """Generate and store the lists of the run's known users (or of ``users``): those
    missing or stale in the store, every one with ``force``. Returns what it did."""
    from icebreaker_ray.raykit import init_ray, map_blocks, split_blocks
    from icebreaker_ray.serve.components import candidates_per_request, known_histories

    started = time.perf_counter()
    k = k or cfg.generation.K
    art = locate(cfg, run_dir, model)
    if art.run_dir is None:
        raise io.DataError(f"{run_dir}: not a run directory")
    path = layout.precomputed_lists(art.run_dir)
    store = PrecomputedLists.load(path)
    # The distiller's view of each known user's history, without loading any model.
    histories = known_histories(art.sessions_parquet, cfg.serve.max_summary_chars)
    known = sorted(histories)
    wanted = known if users is None else list(dict.fromkeys(users))
    unknown = [u for u in wanted if u not in histories]
    if unknown:
        raise io.DataError(f"not known users of {art.run_dir} (no sessions in its logs): "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    cap = cfg.serve.max_summaries
    todo = [u for u in wanted if force or store.get(u, histories[u][-cap:], k, art.model_version) is None]
    log.info("precompute: %d of %d users to generate (model %s, k=%d)", len(todo), len(wanted),
             art.model_version, k)
    if todo:
        init_ray(cfg)
        actors = actors or cfg.search.num_actors
        per_call = max(1, cfg.generation.batch_size // candidates_per_request(cfg))  # users per engine call
        blocks = split_blocks(pa.table({"user_id": todo}), actors, per_call)
        made = map_blocks([b for b in blocks if b.num_rows], ListMaker,
                          {"cfg": cfg, "art": art, "k": k}, actors, schema(TABLE))
        for row in made.to_pylist():
            store.entries[(row["user_id"], row["k"])] = Entry.from_row(row)
    if todo or not io.exists(path):
        io.write_table(store.table(), path, TABLE)
    return PrecomputeResult(path, len(todo), len(wanted) - len(todo), len(store),
                            round(time.perf_counter() - started, 1))
