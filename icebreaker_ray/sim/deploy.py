"""HIDDEN TRUTH. The deployment loop: expose simulated users to a policy, day by day.

Only ``icebreaker_ray.sim`` and ``icebreaker_ray.eval`` may import this module.

    env = SimEnv.create(catalog, encoder, num_users=300, seed=0)
    warmup = env.run_days(range(0, 14), policy=None)              # organic history only
    logged = env.run_days(range(14, 28), policy=baseline)         # impressions are logged
    logged.metrics  # {"ctr": ..., "csr": ..., "active_days": ..., "avg_sessions": ..., "leave_rate": ...}

A policy is any callable ``policy(user_ids, histories, day) -> list[Slate | list[str]]``
that maps each visiting user's logged history (their session summaries so far) to the
starters shown on the empty-chat screen. On each visit the user clicks one starter or
none (the click oracle), starts a conversation on their own or leaves; a click opens a
session on the starter's subject whose depth grows with relevance, and a good
conversation raises the user's engagement (how likely they come back).

``fork()`` copies the whole world so an A/B test can run several policies from the
same state with the same random streams.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from icebreaker_ray.eval.metrics import online_metrics
from icebreaker_ray.sim.catalog import Catalog
from icebreaker_ray.sim.oracle import ClickOracle, OracleParams
from icebreaker_ray.sim.policy import Slate
from icebreaker_ray.sim.world import (
    GREETING,
    STREAM_CLICK,
    STREAM_STARTER_TEXT,
    SessionEvent,
    UserState,
    World,
    WorldParams,
    log_depth,
    rng_for,
)

Policy = Callable[[Sequence[str], dict[str, list[str]], int], Sequence[Slate | list[str]]]
START_TS = 1_767_225_600.0  # 2026-01-01 00:00 UTC, day 0 of every simulated world


@dataclass
class DayLog:
    """What a run of days produced: logged tables, hidden truth, and online metrics."""

    sessions: pa.Table
    impressions: pa.Table
    events: pa.Table  # one row per (user, day) visit: the online-metric units
    session_truth: pa.Table  # hidden: subject and origin of every session
    metrics: dict[str, float] = field(default_factory=dict)


#: Prefix of the truth's subject id of a session about nothing (see :func:`no_subject_id`).
NO_SUBJECT_PREFIX = "none:"


def no_subject_id(session_id: str) -> str:
    """The truth's subject of a greeting session: unique to that session. Truth code
    compares subject ids (same subject = a revisit, a subject seen again later = a relevant
    interest, one seen once = a one-off), so a unique id makes a greeting none of these:
    ``"hi"`` then ``"hello?"`` is no revisit. Its ``kind`` and ``category`` are
    ``"greeting"``. Never a catalog id (those are snake_case); not null, because two nulls
    compare equal in Python and would make every pair of greetings a revisit."""
    return NO_SUBJECT_PREFIX + session_id


def _slate(x: Slate | list[str]) -> Slate:
    return x if isinstance(x, Slate) else Slate(list(x), None)


class SimEnv:
    def __init__(self, world: World, oracle: ClickOracle | None, encoder, users: list[UserState],
                 seed: int) -> None:
        self.world, self.oracle, self.encoder, self.users, self.seed = world, oracle, encoder, users, seed
        self.histories: dict[str, list[str]] = {u.user_id: [] for u in users}
        self._seq: dict[tuple[int, int], int] = {}

    @classmethod
    def create(cls, catalog: Catalog, encoder, num_users: int, seed: int, *,
               first_user: int = 0, world_params: WorldParams | None = None,
               oracle_params: OracleParams | None = None) -> SimEnv:
        world = World(catalog, world_params)
        subject_emb = encoder(ClickOracle.subject_texts(world))
        oracle = ClickOracle(world, subject_emb, oracle_params)
        users = [world.new_user(seed, i) for i in range(first_user, first_user + num_users)]
        return cls(world, oracle, encoder, users, seed)

    @classmethod
    def organic(cls, catalog: Catalog, num_users: int, seed: int, *, first_user: int = 0,
                world_params: WorldParams | None = None) -> SimEnv:
        """Users without a starter screen (no oracle, no encoder): histories only."""
        world = World(catalog, world_params)
        users = [world.new_user(seed, i) for i in range(first_user, first_user + num_users)]
        return cls(world, None, None, users, seed)

    def fork(self) -> SimEnv:
        twin = copy.copy(self)
        twin.users = copy.deepcopy(self.users)
        twin.histories = {k: list(v) for k, v in self.histories.items()}
        twin._seq = dict(self._seq)
        return twin

    def interests(self, users: Sequence[UserState], day: int) -> np.ndarray:
        return np.stack([u.interest_weights(day, self.world.num_subjects) for u in users])

    # ------------------------------------------------------------------ scoring any lists

    def click_probabilities(self, users: Sequence[UserState], lists: Sequence[Sequence[str]],
                            day: int) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
        """Oracle click probabilities for each user's list: (U, K) plus text features."""
        k = max((len(s) for s in lists), default=0)
        texts = list(dict.fromkeys(t for s in lists for t in s))
        row = {t: i for i, t in enumerate(texts)}
        idx = np.zeros((len(lists), max(k, 1)), np.int64)
        mask = np.zeros_like(idx, bool)
        for u, starters in enumerate(lists):
            idx[u, : len(starters)] = [row[t] for t in starters]
            mask[u, : len(starters)] = True
        emb = self.encoder(texts) if texts else np.zeros((1, self.oracle.subject_emb.shape[1]), np.float32)
        feats = self.oracle.features(texts or [""], emb)
        interests = self.interests(users, day)
        probs = self.oracle.click_probabilities(
            interests,
            np.array([u.click_bias for u in users]),
            np.array([u.position_decay for u in users]),
            feats, idx, mask,
        )
        return probs * mask, idx, feats, interests

    # ------------------------------------------------------------------ the day loop

    def run_days(self, days: range, policy: Policy | None = None, source: str = "none",
                 progress: Callable[[int], None] | None = None) -> DayLog:
        sess: list[SessionEvent] = []
        imp: dict[str, list] = {k: [] for k in
                                ("user_id", "ts", "request_id", "starter", "position", "source",
                                 "clicked", "depth", "propensity")}
        ev: dict[str, list] = {k: [] for k in
                               ("user_id", "day", "shown", "clicked", "sessions", "started", "depth")}
        for day in days:
            visitors = [u for u in self.users if self.world.visits(u, day, self.seed)]
            slates: list[Slate] = []
            if policy is not None and visitors:
                slates = [_slate(s) for s in policy([u.user_id for u in visitors], self.histories, day)]
                if len(slates) != len(visitors):
                    raise ValueError(f"policy returned {len(slates)} lists for {len(visitors)} users")
                probs, idx, feats, interests = self.click_probabilities(
                    visitors, [s.starters for s in slates], day)
                rel = self.oracle.relevance(interests, feats, idx)
            for vi, user in enumerate(visitors):
                day_sessions: list[SessionEvent] = []
                clicked_pos, depth = -1, 0
                if slates:
                    rng = rng_for(self.seed, user.index, day, STREAM_CLICK)
                    p = probs[vi]
                    draw = rng.random()
                    cum = np.cumsum(p)
                    if draw < cum[-1]:
                        clicked_pos = int(np.searchsorted(cum, draw, side="right"))
                        depth = log_depth(float(self.oracle.depth_rate(rel[vi, clicked_pos])), rng)
                        day_sessions.append(self._starter_session(user, day, feats, idx[vi, clicked_pos], rng))
                        self.world.after_conversation(user, depth)
                    request_id = f"{source}-{user.user_id}-{day:04d}"
                    ts = int((START_TS + day * 86400 + 6 * 3600) * 1000)
                    slate = slates[vi]
                    for pos, starter in enumerate(slate.starters):
                        imp["user_id"].append(user.user_id)
                        imp["ts"].append(ts)
                        imp["request_id"].append(request_id)
                        imp["starter"].append(starter)
                        imp["position"].append(pos)
                        imp["source"].append(source)
                        imp["clicked"].append(pos == clicked_pos)
                        imp["depth"].append(depth if pos == clicked_pos else 0)
                        imp["propensity"].append(slate.propensities[pos] if slate.propensities else None)
                first = len(day_sessions)
                day_sessions += self.world.organic_sessions(user, day, self.seed, first, clicked_pos >= 0)
                # Sessions are numbered and read in time order (session ids follow ts).
                day_sessions.sort(key=lambda s: s.hour)
                for s in day_sessions:
                    self.histories[user.user_id].append(s.summary)
                sess += day_sessions
                ev["user_id"].append(user.user_id)
                ev["day"].append(day)
                ev["shown"].append(len(slates[vi].starters) if slates else 0)
                ev["clicked"].append(int(clicked_pos >= 0))
                # Greeting-only sessions are logged but are no conversation about anything.
                ev["sessions"].append(sum(s.has_subject for s in day_sessions))
                ev["started"].append(bool(day_sessions))
                ev["depth"].append(depth)
            for user in self.users:
                self.world.end_of_day(user, day)
            if progress:
                progress(day)
        return self._day_log(sess, imp, ev)

    def _starter_session(self, user: UserState, day: int, feats, text_row: int,
                         rng: np.random.Generator) -> SessionEvent:
        """A conversation opened by a starter: about the subject the starter names (or, for
        a generic starter, a subject of its category the user likes most)."""
        match = feats.match[text_row]
        if feats.specificity[text_row] >= 0.5:
            subject = int(match.argmax())
        else:
            cat = int(feats.cat_mass[text_row].argmax())
            in_cat = np.flatnonzero(self.world.subject_category == cat)
            w = user.interest_weights(day, self.world.num_subjects)[in_cat] + self.world.popularity[in_cat] * 0.1
            subject = int(rng.choice(in_cat, p=w / w.sum()))
        text_rng = self.world.text_rng(self.seed, user, day, STREAM_STARTER_TEXT)
        summary = self.world.summary(user, subject, rng, text_rng)
        return SessionEvent(user.index, day, 0, float(rng.uniform(6, 7)), summary, subject, "starter")

    def _day_log(self, sess: list[SessionEvent], imp: dict, ev: dict) -> DayLog:
        by_index = {u.index: u.user_id for u in self.users}
        rows: dict[str, list] = {"user_id": [], "session_id": [], "ts": [], "summary": []}
        truth: dict[str, list] = {"session_id": [], "user_id": [], "subject": [], "category": [],
                                  "kind": [], "origin": [], "day": []}
        for e in sess:
            uid = by_index[e.user]
            n = self._seq.get((e.user, e.day), 0)
            self._seq[(e.user, e.day)] = n + 1
            sid = f"{uid}-{e.day:04d}-{n:02d}"
            rows["user_id"].append(uid)
            rows["session_id"].append(sid)
            rows["ts"].append(int((START_TS + e.day * 86400 + e.hour * 3600) * 1000))
            rows["summary"].append(e.summary)
            if e.has_subject:
                subject = self.world.subjects[e.subject]
                subject_id, category, kind = subject.id, subject.category_id, subject.kind
            else:
                subject_id, category, kind = no_subject_id(sid), GREETING, GREETING
            for key, value in (("session_id", sid), ("user_id", uid), ("subject", subject_id),
                               ("category", category), ("kind", kind),
                               ("origin", e.origin), ("day", e.day)):
                truth[key].append(value)
        ts = pa.timestamp("ms", tz="UTC")
        sessions = pa.table({**rows, "ts": pa.array(rows["ts"], ts)})
        impressions = pa.table({
            **imp,
            "ts": pa.array(imp["ts"], ts),
            "position": pa.array(imp["position"], pa.int32()),
            "depth": pa.array(imp["depth"], pa.int32()),
            "propensity": pa.array(imp["propensity"], pa.float64()),
            "clicked": pa.array(imp["clicked"], pa.bool_()),
        })
        events = pa.table(ev)
        metrics: dict[str, float] = {}
        if events.num_rows:
            metrics = online_metrics(events)
            visits = events.num_rows
            metrics["leave_rate"] = 1.0 - sum(events.column("started").to_pylist()) / visits
            metrics["visits"] = float(visits)
        return DayLog(sessions, impressions, events, pa.table(truth), metrics)


def simulate_shard(catalog: Catalog, encoder_factory: Callable[[], Any], first_user: int,
                   num_users: int, seed: int, warmup_days: int, logged_days: int,
                   policy_factory: Callable[[Any], Policy] | None, k: int,
                   world_params: WorldParams | None = None) -> dict[str, Any]:
    """Generate one shard of users end to end (a Ray task on clusters, a call locally).

    Returns the pieces of :class:`DayLog` for the warm-up and logged periods plus the user
    tables. Results do not depend on how users are split into shards: every random stream
    is keyed by the global user index. One caveat, measured: the logged propensities'
    last bits (~1e-7) follow the embedder's float path, which depends on torch's thread
    count (a one-shard run uses the driver's cores, a Ray task one CPU); the draws
    themselves did not change in any test.
    """
    started = time.time()
    encoder = encoder_factory()
    env = SimEnv.create(catalog, encoder, num_users, seed, first_user=first_user,
                        world_params=world_params)
    warm = env.run_days(range(warmup_days), None, "none")
    policy = policy_factory(encoder) if policy_factory and logged_days else None
    logged = env.run_days(range(warmup_days, warmup_days + logged_days), policy, getattr(policy, "name", "none"))
    return {"env": env, "warm": warm, "logged": logged, "seconds": time.time() - started}
