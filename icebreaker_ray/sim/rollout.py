"""Putting starter lists in front of simulated users: a deployment, or an A/B test.

    state = load_state(out, cfg)                       # the world where the logs end
    log = deploy(state, cfg, lists_by_user, days=7, source="round-1")
    log.impressions, log.sessions                      # what production would log
    save_state(out, "round-1", state)                  # the next round continues from here

    arms = ab_test(state, cfg, {"baseline": None, "icebreaker": lists}, users, days=14)
    arms["icebreaker"].events                          # per-visit events of the test users

This is the only door from the learned side into the world, and it lets through what a
real deployment would: impression and session logs and their aggregate online metrics.
Hidden state stays in ``OUT/sim-truth/``; callers never touch a user's interests or the
oracle. Users not given lists (and any list shorter than K) are served by the deployed
retrieval baseline, as a production system falls back to its previous policy.
"""

from __future__ import annotations

import io as _io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.eval.metrics import online_metrics
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.sim.deploy import DayLog, SimEnv
from icebreaker_ray.sim.policy import Slate
from icebreaker_ray.sim.stage import TRUTH_DIR, baseline_policy_factory, load_truth_envs

Lists = Mapping[str, Sequence[Sequence[str]]]  # user_id -> lists to rotate through, day by day


@dataclass
class WorldState:
    """The simulated world at one moment: its shards and the first day not yet lived."""

    envs: list[SimEnv]
    day: int

    def attach(self, encoder: TextEncoder) -> WorldState:
        for env in self.envs:
            env.encoder = encoder
        return self

    def fork(self) -> WorldState:
        return WorldState([env.fork() for env in self.envs], self.day)

    @property
    def user_ids(self) -> list[str]:
        return [u.user_id for env in self.envs for u in env.users]


def _state_uri(out: str, name: str) -> str:
    return io.join(out, TRUTH_DIR, f"world-{name}.pkl")


def load_state(out: str, cfg: Config, name: str | None = None) -> WorldState:
    """The world at the end of the logs (``name=None``) or as a deployment left it."""
    if cfg.data.source != "sim":
        raise ValueError("a deployment in the simulated world needs data.source: sim "
                         f"(this run ingested {cfg.data.source!r})")
    if name is None:
        state = WorldState(load_truth_envs(out), cfg.sim.num_days)
    else:
        state = pickle.loads(io.read_bytes(_state_uri(out, name)))
    return state.attach(TextEncoder(cfg.models.embedder))


def save_state(out: str, name: str, state: WorldState) -> None:
    encoders = [env.encoder for env in state.envs]
    for env in state.envs:
        env.encoder = None  # a model does not belong in the saved world state
    try:
        buf = _io.BytesIO()
        pickle.dump(state, buf)
        io.write_bytes(_state_uri(out, name), buf.getvalue())
    finally:
        for env, enc in zip(state.envs, encoders, strict=True):
            env.encoder = enc


class ListPolicy:
    """Serve each listed user one of their lists (rotating by day), filled up to K from
    the retrieval baseline; everyone else gets the baseline."""

    def __init__(self, lists: Lists | None, fallback, k: int, name: str) -> None:
        self.lists = {u: [list(x) for x in v if len(x)] for u, v in (lists or {}).items()}
        self.fallback, self.k, self.name = fallback, k, name
        self.served = 0
        self.filled = 0  # starters that came from the fallback inside a listed user's slate

    def __call__(self, user_ids: Sequence[str], histories: dict[str, list[str]], day: int) -> list[Slate]:
        base = self.fallback(user_ids, histories, day)
        slates = []
        for uid, slate in zip(user_ids, base, strict=True):
            options = self.lists.get(uid)
            if not options:
                slates.append(slate)
                continue
            chosen = list(options[day % len(options)][: self.k])
            fill = [s for s in slate.starters if s not in chosen][: self.k - len(chosen)]
            self.served += 1
            self.filled += len(fill)
            slates.append(Slate(chosen + fill, None))
        return slates


def _merge(logs: list[DayLog]) -> DayLog:
    def cat(attr: str) -> pa.Table:
        tables = [getattr(x, attr) for x in logs if getattr(x, attr).num_rows]
        return pa.concat_tables(tables) if tables else getattr(logs[0], attr)

    merged = DayLog(cat("sessions"), cat("impressions"), cat("events"), cat("session_truth"))
    if merged.events.num_rows:
        merged.metrics = online_metrics(merged.events)
    return merged


def deploy(state: WorldState, cfg: Config, lists: Lists | None, days: int, source: str) -> DayLog:
    """Live ``days`` more days with ``lists`` deployed; advances ``state`` in place.

    Returns the logs of those days (``session_truth`` is hidden: callers outside ``sim``
    and ``eval`` must not read it) and the online metrics of every visit.
    """
    encoder = state.envs[0].encoder
    policy = ListPolicy(lists, baseline_policy_factory(cfg.run.seed, cfg.generation.K)(encoder),
                        cfg.generation.K, source)
    window = range(state.day, state.day + days)
    logs = [env.run_days(window, policy, source) for env in state.envs]
    state.day += days
    merged = _merge(logs)
    merged.metrics.update(listed_visits=float(policy.served),
                          fallback_starters=float(policy.filled))
    return merged


def restrict(events: pa.Table, users: Sequence[str]) -> pa.Table:
    """The rows of ``events`` (any table with ``user_id``) that belong to ``users``."""
    import pyarrow.compute as pc

    return events.filter(pc.is_in(events.column("user_id"), pa.array(sorted(set(users)))))


def ab_test(state: WorldState, cfg: Config, arms: Mapping[str, Lists | None], users: Sequence[str],
            days: int) -> dict[str, DayLog]:
    """Each arm lives the same ``days`` from a copy of ``state`` (same users, same random
    streams); only ``users`` see the arm's lists, and only their events are returned."""
    out, members = {}, set(users)
    for name, lists in arms.items():
        twin = state.fork()
        log = deploy(twin, cfg, {u: v for u, v in (lists or {}).items() if u in members},
                     days, f"ab-{name}")
        events = restrict(log.events, users)
        impressions = restrict(log.impressions, users)
        out[name] = DayLog(restrict(log.sessions, users), impressions, events,
                           restrict(log.session_truth, users))
        if events.num_rows:
            out[name].metrics = online_metrics(events)
    return out


def oracle_click_probabilities(state: WorldState, lists: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """The true click probability of every starter of each user's list, shown as a slate
    on the current day (the ground truth behind the oracle-graded offline metrics)."""
    by_user = {u.user_id: (env, u) for env in state.envs for u in env.users}
    result: dict[str, np.ndarray] = {}
    for env in state.envs:
        members = [(uid, starters) for uid, starters in lists.items()
                   if uid in by_user and by_user[uid][0] is env]
        if not members:
            continue
        probs, *_ = env.click_probabilities([by_user[u][1] for u, _ in members],
                                            [list(s) for _, s in members], state.day)
        for (uid, starters), row in zip(members, probs, strict=True):
            result[uid] = row[: len(starters)].copy()
    return result
