"""The per-request work of the server, as plain classes (the Serve deployments wrap them).

    distiller = InterestDistillerCore(cfg, art)       # I* for one user (paper §2.2, eq. 4)
    d = distiller.distill("u0000003", summaries=None)
    queue = GenerationQueue(EngineSpec.from_config(cfg).load(art.generator), params, 8, max_requests=8)
    texts = queue.submit(GenJob(d.interests, k=4)).result()  # N sampled lists, batched with others
    selector = ListSelectorCore(cfg, art)
    picks = selector.select("u0000003", d.history, d.interests, texts, k=4)

* :class:`InterestDistillerCore` reproduces the ``distill-interests`` path for one user:
  embed the summaries, score them with the resonance scorer s_phi, keep those above the
  threshold tau_b of the user's activity bucket, best ``gating.max_interests`` first.
  Without a scorer in the run, it falls back to the most recent
  ``generation.max_summaries`` summaries (the PE input). No history at all: cold start.
* :class:`GenerationQueue` samples each request's candidate lists as soon as it arrives,
  batched with the requests already running (continuous batching on llamacpp), and
  reports progress per step, so a streaming request sees each starter as soon as the model
  has finished writing it; :class:`BatchSampler` does the same for a known batch of jobs in
  one engine call (precompute, benchmarks).
* :class:`ListSelectorCore` picks the list by the policy evaluation grades
  (:func:`~icebreaker_ray.isg.generate.select_list`: the first sampled candidate that
  keeps K starters after the rule/safety filter of training,
  :class:`~icebreaker_ray.isg.filters.SafetyFilter`, else the valid starters pooled) and
  scores each starter with the utility ranker R_util (relevance to I* when the run has no
  ranker). When fewer than K valid starters were generated, the cold-start list fills the
  rest, so an answer always has K filtered starters. The cold-start list is the run's most clicked logged starters
  (popular), ordered greedily by popularity + lambda * marginal diversity (diverse);
  without logs it is the catalog's generic starters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.isg.engines import Engine, news_by_request
from icebreaker_ray.isg.filters import FilterParams, SafetyFilter
from icebreaker_ray.isg.generate import GenerationParams, select_list
from icebreaker_ray.isg.parse import parse_starters
from icebreaker_ray.isg.prompts import generator_messages
from icebreaker_ray.reward.diversity import marginal_diversity_gains
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.rid import gating, noise, scorer
from icebreaker_ray.rid.judge import clean_summary
from icebreaker_ray.serve.artifacts import Artifacts
from icebreaker_ray.serve.precompute import PrecomputedLists

log = logging.getLogger(__name__)

#: Starters a SafetyFilter keeps from one request's pooled candidates (it caps at ``k``).
POOL_CAP = 256
#: Cold-start list length kept ready: enough to fill any K (<= 10) around generated ones.
COLD_START_SIZE = 32
#: Window of recent summaries the ranker's E_user averages (UserFeaturizer default).
RANKER_WINDOW = 20
ANONYMOUS = "anonymous"


def _read(path: str | None, columns: Sequence[str]) -> pa.Table | None:
    if not path:
        return None
    fs, inner = io.resolve(path)
    return pq.read_table(inner, columns=list(columns), filesystem=fs)


# ----------------------------------------------------------------------------- interests


def known_histories(sessions_parquet: str | None, max_chars: int) -> dict[str, list[str]]:
    """Each logged user's cleaned summaries, oldest first (what the distiller reads)."""
    table = _read(sessions_parquet, ["user_id", "ts", "summary"])
    if table is None:
        return {}
    out: dict[str, list[str]] = {}
    for row in table.sort_by([("user_id", "ascending"), ("ts", "ascending")]).to_pylist():
        text = clean_summary(row["summary"], max_chars)
        if text:
            out.setdefault(row["user_id"], []).append(text)
    return out


@dataclass
class Distilled:
    """What the distiller hands on: the prompt input I* and the history behind it."""

    interests: list[str]
    history: list[str]  # the user's summaries used, oldest first (ranker context)
    cold_start: bool
    method: str  # "rid" (scorer + gating), "recent" (no scorer), "none", "precomputed"
    known_user: bool = False
    profile: str | None = None
    # The answer from the precomputed store (serve/precompute.py) when it has a fresh one.
    precomputed: list[Pick] | None = None


class InterestDistillerCore:
    """Trigger interests I* for one request (see module docstring)."""

    def __init__(self, cfg: Config, art: Artifacts, encoder: Callable | None = None) -> None:
        from icebreaker_ray.models import TextEncoder

        self.cfg = cfg
        # A scorer trained with its own fine-tuned encoder scores that encoder's embeddings.
        self.encoder = encoder or TextEncoder(scorer.text_encoder_path(art.scorer_dir) or cfg.models.embedder)
        self.scorer = scorer.load_scorer(art.scorer_dir) if art.scorer_dir else None
        self.functional_prototypes = noise.prototype_embeddings(self.encoder)
        self.thresholds: list[float] | None = None
        if art.thresholds_json:
            self.thresholds = io.read_json(art.thresholds_json)["thresholds"]
        self.histories = known_histories(art.sessions_parquet, cfg.serve.max_summary_chars)
        self.model_version = art.model_version
        self.store = PrecomputedLists.load(layout.precomputed_lists(art.run_dir) if art.run_dir else None)
        if len(self.store):
            log.info("precomputed lists: %d entries", len(self.store))
        users = _read(art.users_parquet, ["user_id", "activity_bucket", "profile"])
        rows = users.to_pylist() if users is not None else []
        self.buckets = {r["user_id"]: int(r["activity_bucket"]) for r in rows}
        self.profiles = {r["user_id"]: r["profile"] for r in rows if r.get("profile")}
        self._bucket_counts, self._bucket_floor = self._bucket_table()

    def _bucket_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Known users' (session count -> bucket), for placing an unknown user by activity:
        the highest bucket any known user with at most that many sessions is in."""
        pairs = sorted((len(self.histories.get(u, [])), b) for u, b in self.buckets.items())
        if not pairs:
            return np.zeros(0, int), np.zeros(0, int)
        counts = np.array([c for c, _ in pairs])
        return counts, np.maximum.accumulate(np.array([b for _, b in pairs]))

    def known_users(self) -> list[str]:
        return sorted(self.histories)

    def bucket(self, user_id: str | None, n_summaries: int) -> int:
        if user_id in self.buckets:
            return self.buckets[user_id]
        i = int(np.searchsorted(self._bucket_counts, n_summaries, side="right")) - 1
        return int(self._bucket_floor[i]) if i >= 0 else 0

    def history(self, user_id: str | None, summaries: Sequence[str] | None) -> list[str]:
        """Known history (from the run's logs) then the pasted summaries, most recent last,
        at most ``serve.max_summaries`` of them."""
        known = self.histories.get(user_id, []) if user_id else []
        pasted = [clean_summary(s, self.cfg.serve.max_summary_chars) for s in summaries or []]
        merged = [s for s in [*known, *pasted] if s]
        return merged[-self.cfg.serve.max_summaries:]

    def distill(self, user_id: str | None, summaries: Sequence[str] | None = None,
                k: int | None = None) -> Distilled:
        """I* for a request; with ``k``, a fresh precomputed answer instead when the store
        has one for this user, K, model and history (no model runs then)."""
        history = self.history(user_id, summaries)
        known = user_id in self.histories or user_id in self.buckets
        profile = self.profiles.get(user_id) if user_id else None
        entry = self.store.get(user_id, history, k, self.model_version) if k and known else None
        if entry is not None:
            picks = [Pick(t, float(sc), src) for t, sc, src in
                     zip(entry.starters, entry.scores, entry.sources, strict=True)]
            return Distilled(entry.interests, history, False, "precomputed", known, profile, picks)
        if not history:
            return Distilled([], [], True, "none", known, profile)
        if self.scorer is None:
            recent = list(dict.fromkeys(reversed(history)))[: self.cfg.generation.max_summaries]
            return Distilled(recent, history, False, "recent", known, profile)
        return Distilled(self._gate(user_id, history, profile), history, False, "rid", known, profile)

    def _gate(self, user_id: str | None, history: list[str], profile: str | None) -> list[str]:
        """Eq. 4 for one user: s_phi over the history, tau_b of the bucket, capped; the best
        eligible summary when none passes: the one rule of :func:`icebreaker_ray.rid.gating.trigger_interests`."""
        uid = user_id or ANONYMOUS
        emb = self.encoder(history)
        profiles = None
        if profile and self.scorer.config.get("use_profile", True):
            profiles = {uid: self.encoder([clean_summary(profile, self.cfg.judge.max_summary_chars)])[0]}
        uids = np.array([uid] * len(history))
        scores = scorer.score_rows(self.scorer, uids, emb, profiles=profiles)
        eligible = noise.eligibility_from_config(self.cfg, uids, history, emb,
                                                 self.functional_prototypes).eligible
        cap = self.cfg.gating.max_interests
        # Without fitted thresholds every eligible summary passes; the cap still applies.
        thresholds = self.thresholds or [-np.inf]
        keep = gating.select_interests(scores, uids, [self.bucket(user_id, len(history))] * len(history),
                                       thresholds, cap, eligible)
        return gating.trigger_interests(uids, history, scores, keep, eligible)[uid]


# ----------------------------------------------------------------------------- generation


def candidates_per_request(cfg: Config) -> int:
    """Candidate lists sampled per request: ``serve.num_candidates``, else
    ``eval.num_candidates``, the number evaluate samples per user, so that a served list
    is drawn the way the graded one was (the first of them that passes the filter)."""
    return cfg.serve.num_candidates or cfg.eval.num_candidates


@dataclass
class GenJob:
    """One request's generation: its prompt input and list length."""

    interests: list[str]
    k: int
    stream: bool = False


@dataclass
class GenUpdate:
    """Progress of one job: the first token arrived, starters the model finished writing
    (raw, not yet filtered), or the final candidate texts (``texts``)."""

    first_token: bool = False
    new_starters: list[str] = field(default_factory=list)
    texts: list[str] | None = None

    @property
    def empty(self) -> bool:
        return not (self.first_token or self.new_starters or self.texts is not None)


def finished_starters(text: str, done: bool) -> list[str]:
    """Starters of a partial ``<sug> a && b && c`` that the model has finished: all but
    the last one while it is still writing, all once the sequence has ended."""
    found = parse_starters(text).starters
    return found if done else found[:-1]


class BatchSampler:
    """Samples ``num_candidates`` lists for every job of a batch in one engine call
    (:mod:`icebreaker_ray.isg.engines`: the candidates of a request share its prompt):
    the batch path (precompute, benchmarks). Serving takes requests one by one:
    :class:`GenerationQueue`."""

    def __init__(self, engine: Engine, params: GenerationParams, num_candidates: int) -> None:
        self.engine, self.params = engine, params
        self.num_candidates = num_candidates

    def run(self, jobs: Sequence[GenJob],
            emit: Callable[[list[GenUpdate]], None] | None = None) -> list[list[str]]:
        """Generate; returns the candidate texts per job. ``emit`` (if given) receives one
        :class:`GenUpdate` per job whenever a streaming job has news."""
        convs = [generator_messages(job.interests, k=job.k, max_chars=self.params.max_chars)
                 for job in jobs]
        on_step = None
        if emit and any(j.stream for j in jobs):
            trackers = [JobProgress() if j.stream else None for j in jobs]
            n = self.num_candidates

            def on_step(news: dict[int, tuple[str, bool]]) -> None:
                updates = [GenUpdate() for _ in jobs]
                for i, part in news_by_request(news, n).items():
                    if trackers[i] is not None:
                        updates[i] = trackers[i].step(part)
                if not all(u.empty for u in updates):
                    emit(updates)

        return self.engine.sample(
            convs, num_return=self.num_candidates, temperature=self.params.temperature,
            top_p=self.params.top_p, max_new_tokens=self.params.max_new_tokens, on_step=on_step)


class JobProgress:
    """One request's streaming bookkeeping: the engine reports ``{sample: (text so far,
    finished)}`` after each step; :meth:`step` turns it into what is new for the caller
    (the first token, starters the model has finished writing)."""

    def __init__(self) -> None:
        self.reported: dict[int, int] = {}  # finished starters already sent, per sample
        self.started = False

    def step(self, news: dict[int, tuple[str, bool]]) -> GenUpdate:
        update = GenUpdate()
        if news and not self.started:
            self.started = update.first_token = True
        for sample, (text, done) in news.items():
            found = finished_starters(text, done)
            if len(found) > self.reported.get(sample, 0):
                update.new_starters.extend(found[self.reported.get(sample, 0):])
                self.reported[sample] = len(found)
        return update


class GenerationQueue:
    """Serving: each request's ``num_candidates`` lists are sampled as soon as it arrives,
    beside whatever the engine is already generating (continuous batching on llamacpp;
    on other engines, the requests pending when the engine is free share its next call):
    :func:`~icebreaker_ray.isg.engines.make_batcher`. Nobody waits for a batch to fill."""

    def __init__(self, engine: Engine, params: GenerationParams, num_candidates: int,
                 max_requests: int, split_alone: bool = False) -> None:
        from icebreaker_ray.isg.engines import make_batcher

        self.params = params
        self.batcher = make_batcher(engine, num_return=num_candidates, max_requests=max_requests,
                                    temperature=params.temperature, top_p=params.top_p,
                                    max_new_tokens=params.max_new_tokens, split_alone=split_alone)

    def submit(self, job: GenJob, emit: Callable[[GenUpdate], None] | None = None) -> Future:
        """Queue one request; the future's result is its candidate texts. ``emit`` (if
        given) receives a :class:`GenUpdate` whenever the request has news."""
        conv = generator_messages(job.interests, k=job.k, max_chars=self.params.max_chars)
        on_step = None
        if emit is not None:
            tracker = JobProgress()

            def on_step(news: dict[int, tuple[str, bool]]) -> None:
                update = tracker.step(news)
                if not update.empty:
                    emit(update)

        return self.batcher.submit(conv, on_step)

    def close(self) -> None:
        self.batcher.close()


# ----------------------------------------------------------------------------- list selection


@dataclass(frozen=True)
class Pick:
    text: str
    score: float
    source: str  # "generated" | "cold_start"


def greedy_diverse(utility: np.ndarray, emb: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of a K-list built greedily by utility + lam * R_div(P, s) (eq. 8 summed)."""
    chosen: list[int] = []
    remaining = list(range(len(utility)))
    while remaining and len(chosen) < k:
        gains = marginal_diversity_gains(emb[chosen], emb[remaining])
        best = int(np.argmax(utility[remaining] + lam * gains))
        chosen.append(remaining.pop(best))
    return chosen


class ListSelectorCore:
    """Filter, rank, diversify and fill a K-list (see module docstring)."""

    def __init__(self, cfg: Config, art: Artifacts, encoder: Callable | None = None) -> None:
        from icebreaker_ray.models import TextEncoder
        from icebreaker_ray.reward.ranker import load_ranker

        self.cfg = cfg
        self.encoder = encoder or TextEncoder(cfg.models.embedder)
        self.safety = SafetyFilter(self.encoder, FilterParams.from_config(cfg, POOL_CAP))
        self.ranker = load_ranker(art.ranker_dir) if art.ranker_dir else None
        self.lam = cfg.search.lam
        self.cold = self._cold_start_list(art.impressions_parquet)

    # -- cold start ------------------------------------------------------------------

    def _popular(self, impressions_parquet: str | None) -> dict[str, float]:
        """Logged starters -> popularity (clicks, then share of impressions clicked)."""
        table = _read(impressions_parquet, ["starter", "clicked"])
        if table is None or table.num_rows == 0:
            return {}
        stats = table.group_by("starter").aggregate([("clicked", "sum"), ("clicked", "count")])
        clicks = np.asarray(stats["clicked_sum"].to_numpy(), float)
        shows = np.asarray(stats["clicked_count"].to_numpy(), float)
        pop = (clicks + clicks / np.maximum(shows, 1)) / max(float(clicks.max()) + 1.0, 1.0)
        return dict(zip(stats["starter"].to_pylist(), pop.tolist(), strict=True))

    def _catalog(self) -> dict[str, float]:
        """The catalog's generic starters (popular categories first), then its pool."""
        from icebreaker_ray.sim.catalog import load_catalog
        from icebreaker_ray.sim.policy import generic_starters, starter_pool

        catalog = load_catalog()
        generic = generic_starters(catalog)
        out = {s: 0.5 * (1.0 - i / max(len(generic), 1)) for i, s in enumerate(generic)}
        for s in starter_pool(catalog, seed=self.cfg.run.seed):
            out.setdefault(s, 0.0)
        return out

    def _cold_start_list(self, impressions_parquet: str | None) -> list[Pick]:
        popular = self._popular(impressions_parquet)
        top = sorted(popular, key=lambda s: -popular[s])[: 4 * COLD_START_SIZE]
        kept = self.safety.filter(top).kept
        if len(kept) < COLD_START_SIZE:  # too few logs: top up from the catalog
            catalog = self._catalog()
            extra = sorted(catalog, key=lambda s: -catalog[s])[: 4 * COLD_START_SIZE]
            kept = self.safety.filter([*kept, *extra]).kept
            popular = {**catalog, **popular}
        kept = kept[: 4 * COLD_START_SIZE]
        utility = np.array([popular.get(s, 0.0) for s in kept])
        order = greedy_diverse(utility, self.encoder(kept), COLD_START_SIZE, self.lam)
        return [Pick(kept[i], float(utility[i]), "cold_start") for i in order]

    def cold_start(self, k: int) -> list[Pick]:
        return self.cold[:k]

    # -- generated lists --------------------------------------------------------------

    def screen(self, shown: Sequence[str], new: Sequence[str],
               interests: Sequence[str]) -> list[str]:
        """Streaming: the starters of ``new`` that pass the filter next to ``shown``
        (grounded in the request's trigger ``interests``, as in :meth:`select`)."""
        kept = self.safety.filter([*shown, *new], interests).kept
        return [s for s in kept if s not in set(shown)]

    def utility(self, user_id: str | None, history: Sequence[str], profile: str | None,
                interests: Sequence[str], texts: Sequence[str], emb: np.ndarray) -> np.ndarray:
        """R_util(u, s) from the ranker over the request's history; without a ranker (a
        run before clicks), the click-free proxy: the best cosine to a trigger interest."""
        if self.ranker is None:
            if not interests:
                return np.zeros(len(texts))
            return interest_similarity(emb, self.encoder(list(interests)))
        from icebreaker_ray.reward.ranker import UserFeaturizer

        uid = user_id or ANONYMOUS
        recent = list(history)[-RANKER_WINDOW:]
        sessions = pa.table({"user_id": [uid] * len(recent),
                             "ts": pa.array(range(len(recent)), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                             "summary": recent})
        users = pa.table({"user_id": [uid], "profile": [profile or ""]})
        feats = UserFeaturizer(sessions, users, self.encoder, window=RANKER_WINDOW)
        return self.ranker.utility(feats, [uid] * len(texts), list(texts), emb)

    def select(self, user_id: str | None, history: Sequence[str], interests: Sequence[str],
               candidates: Sequence[str], k: int, profile: str | None = None) -> list[Pick]:
        """The K-list for one request from its raw candidate texts (never fewer than K):
        :func:`~icebreaker_ray.isg.generate.select_list`, the policy evaluation grades (the
        first sampled list that keeps K starters, else the valid ones pooled), grounded in
        the interests the model read; the cold-start list fills what is missing. Each
        starter's score is its R_util (the click-free proxy without a ranker); the order
        is the model's."""
        # One encoder pass for what the filter and R_util embed below (the encoder caches
        # by text): the first candidate's starters (often the list: later candidates are
        # only read when it fails), the ranker's history window and profile, or the
        # proxy's interests. Three small batches cost about three times one.
        first = [self.safety.embedded_text(s) for s in parse_starters(candidates[0]).starters
                 ] if candidates else []
        context = ([*list(history)[-RANKER_WINDOW:], profile or ""] if self.ranker is not None
                   else list(interests))
        self.encoder(list(dict.fromkeys([*first, *context])))
        valid = select_list(candidates, self.safety, k, interests, stop_early=True).starters
        picks: list[Pick] = []
        if valid:
            util = self.utility(user_id, history, profile, interests, valid, self.encoder(valid))
            picks = [Pick(text, float(u), "generated") for text, u in zip(valid, util, strict=True)]
        return self.fill(picks, k)

    def fill(self, picks: list[Pick], k: int) -> list[Pick]:
        """Top up ``picks`` to K from the cold-start list, through the filter (no near-dups)."""
        if len(picks) >= k:
            return picks[:k]
        by_text = {p.text: p for p in [*self.cold, *picks]}
        merged = self.safety.filter([p.text for p in picks] + [p.text for p in self.cold]).kept
        return [by_text[t] for t in merged[:k]]
