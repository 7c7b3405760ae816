"""Deploying lists in the simulated world, and the A/B test built on it (sim/rollout.py)."""

from __future__ import annotations

import numpy as np
import pytest

from icebreaker_ray.config import load_config
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.sim.catalog import load_catalog
from icebreaker_ray.sim.deploy import SimEnv
from icebreaker_ray.sim.policy import Slate
from icebreaker_ray.sim.rollout import (
    ListPolicy,
    WorldState,
    ab_test,
    deploy,
    oracle_click_probabilities,
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def cfg():
    return load_config("configs/quick.yaml")


@pytest.fixture()
def state(encoder) -> WorldState:
    env = SimEnv.create(load_catalog(), encoder, num_users=24, seed=3)
    env.run_days(range(10), None, "none")  # a history to retrieve from
    return WorldState([env], 10)


def _listed(state: WorldState, n: int) -> dict[str, list[list[str]]]:
    users = state.user_ids[:n]
    return {u: [["Which One Piece arc hooked you first?", "What sourdough hydration do you use?"],
                ["How do you plan a trip to Kyoto in autumn?"]] for u in users}


def test_list_policy_rotates_lists_and_fills_from_the_fallback():
    fallback = lambda users, hist, day: [Slate(["a?", "b?", "c?", "d?"], [0.25] * 4) for _ in users]  # noqa: E731
    policy = ListPolicy({"u1": [["x?", "y?"], ["z?"]]}, fallback, k=4, name="t")
    day0, other = policy(["u1", "u2"], {}, 0)
    assert day0.starters == ["x?", "y?", "a?", "b?"] and day0.propensities is None
    assert other.starters == ["a?", "b?", "c?", "d?"]
    [day1] = policy(["u1"], {}, 1)
    assert day1.starters == ["z?", "a?", "b?", "c?"]
    assert policy.served == 2 and policy.filled == 5


def test_deploy_logs_listed_starters_and_advances_the_world(state, cfg):
    lists = _listed(state, 8)
    log = deploy(state, cfg, lists, days=3, source="round-1")
    assert state.day == 13
    imp = log.impressions.to_pandas()
    assert set(imp["source"]) == {"round-1"}
    listed = imp[imp["user_id"].isin(lists)]
    assert len(listed) > 0
    shown = set(listed["starter"])
    assert "Which One Piece arc hooked you first?" in shown or "How do you plan a trip to Kyoto in autumn?" in shown
    # Every slate is K long: lists shorter than K were filled from the baseline.
    assert (imp.groupby("request_id").size() == cfg.generation.K).all()
    assert log.metrics["listed_visits"] > 0 and log.sessions.num_rows > 0


def test_ab_arms_start_from_the_same_world(state, cfg):
    users = state.user_ids[:12]
    lists = _listed(state, 12)
    logs = ab_test(state, cfg, {"a": None, "a-again": None, "b": lists}, users, days=4)
    assert state.day == 10  # the A/B forks; the state itself does not move
    a, again, b = logs["a"], logs["a-again"], logs["b"]
    assert a.events.equals(again.events)  # same users, same random streams
    assert set(a.events.column("user_id").to_pylist()) <= set(users)
    b_shown = set(b.impressions.column("starter").to_pylist())
    assert "Which One Piece arc hooked you first?" in b_shown
    assert not a.impressions.equals(b.impressions)


def test_oracle_click_probabilities_per_slot(state):
    uid = state.user_ids[0]
    probs = oracle_click_probabilities(state, {uid: ["Which One Piece arc hooked you first?", "What now?"],
                                               "not-a-user": ["x?"]})
    assert set(probs) == {uid}
    assert probs[uid].shape == (2,) and np.all(probs[uid] >= 0) and probs[uid].sum() < 1
