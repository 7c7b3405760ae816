"""The simulated world's users behave as their hidden state says (no embeddings needed).

Everything here runs organic histories (``SimEnv.organic``: no starter screen, no encoder),
so the whole file takes a few seconds. The statistical checks compare what the logs show
with what the hidden state predicts, and each also shows that a world ignoring that piece
of hidden state would be rejected, so none of them can pass vacuously.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from icebreaker_ray.sim.catalog import Catalog, load_catalog
from icebreaker_ray.sim.deploy import SimEnv
from icebreaker_ray.sim.world import UserState

LOGGED_SESSION_COLUMNS = ["user_id", "session_id", "ts", "summary"]
SESSION_ID_RE = re.compile(r"^u\d{7}-\d{4}-\d{2}$")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _organic(catalog: Catalog, num_users: int, seed: int, days: int, first_user: int = 0):
    env = SimEnv.organic(catalog, num_users, seed, first_user=first_user)
    return env, env.run_days(range(days))


def _by_user(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["session_id"]):
        out[r["user_id"]].append(r)
    return dict(out)


# --------------------------------------------------------------------- reproducibility


def test_same_seed_same_sessions_other_seed_differs(catalog: Catalog) -> None:
    _, a = _organic(catalog, 30, seed=11, days=10)
    _, b = _organic(catalog, 30, seed=11, days=10)
    _, c = _organic(catalog, 30, seed=12, days=10)
    assert a.sessions.num_rows > 50
    assert a.sessions.to_pylist() == b.sessions.to_pylist()
    assert a.session_truth.to_pylist() == b.session_truth.to_pylist()
    assert a.events.to_pylist() == b.events.to_pylist()
    assert a.sessions.to_pylist() != c.sessions.to_pylist()
    # Not just a reshuffle: the other seed writes different text.
    assert set(a.sessions.column("summary").to_pylist()) != set(c.sessions.column("summary").to_pylist())


def test_shards_generate_the_same_users(catalog: Catalog) -> None:
    _, whole = _organic(catalog, 40, seed=5, days=12)
    _, lo = _organic(catalog, 20, seed=5, days=12, first_user=0)
    _, hi = _organic(catalog, 20, seed=5, days=12, first_user=20)
    whole_users = _by_user(whole.sessions.to_pylist())
    split_users = _by_user(lo.sessions.to_pylist() + hi.sessions.to_pylist())
    assert len(whole_users) > 20
    assert set(whole_users) == set(split_users)
    for uid, rows in whole_users.items():
        assert rows == split_users[uid], uid
    truth = _by_user(whole.session_truth.to_pylist())
    split_truth = _by_user(lo.session_truth.to_pylist() + hi.session_truth.to_pylist())
    assert truth == split_truth
    # The second shard really holds users 20..39, not a copy of 0..19.
    assert {r["user_id"] for r in hi.sessions.to_pylist()} <= {f"u{i:07d}" for i in range(20, 40)}


# --------------------------------------------------------------------- hidden behaviour


@dataclass
class Run:
    env: SimEnv
    truth: list[dict]  # session_truth rows of every day
    events: list[dict]
    shorts: dict[tuple[int, int, int], tuple[float, float]]  # (user, subject, start) -> (w, half-life)

    @property
    def users(self) -> dict[str, UserState]:
        return {u.user_id: u for u in self.env.users}

    def subject_index(self, subject_id: str) -> int:
        return self.env.world.catalog.subjects.index(self.env.world.catalog.subject(subject_id))


RUN_USERS, RUN_DAYS = 300, 40


@pytest.fixture(scope="module")
def run(catalog: Catalog) -> Run:
    """300 users over 40 days, one day at a time so short-lived interests can be recorded
    (the world drops them once faded, so they are snapshotted after every day)."""
    env = SimEnv.organic(catalog, RUN_USERS, seed=7)
    truth: list[dict] = []
    events: list[dict] = []
    shorts: dict[tuple[int, int, int], tuple[float, float]] = {}
    for day in range(RUN_DAYS):
        log = env.run_days(range(day, day + 1))
        truth += log.session_truth.to_pylist()
        events += log.events.to_pylist()
        for u in env.users:
            for s in u.short:
                shorts[(u.index, s.subject, s.start_day)] = (s.weight, s.half_life)
    return Run(env, truth, events, shorts)


def _pearson_z(counts: dict[str, Counter], users: dict[str, UserState],
               probs: dict[str, np.ndarray], min_n: int = 5) -> float:
    """Pooled Pearson chi-square of per-user multinomial counts against ``probs``, as a
    z-score using the exact mean (df) and variance of X² for a multinomial of size n:
    Var = 2(k-1) + (Σ 1/p_i - k² - 2k + 2) / n. Exact moments make the pooled test valid
    although many per-user expected counts are below 5 (where the chi-square law is not)."""
    x2 = df = var = 0.0
    for uid, c in counts.items():
        n = sum(c.values())
        if n < min_n:
            continue
        p = probs[uid]
        k = len(p)
        observed = np.array([c[j] for j in range(k)], np.float64)
        expected = n * p
        x2 += float(((observed - expected) ** 2 / expected).sum())
        df += k - 1
        var += 2 * (k - 1) + ((1 / p).sum() - k * k - 2 * k + 2) / n
    return (x2 - df) / np.sqrt(var)


def test_long_term_revisits_follow_hidden_propensities(run: Run) -> None:
    """Per user, sessions of origin "long" split over the long-term subjects in proportion
    to weight × propensity (``World.interest_choice`` restricted to long-term entries)."""
    users = run.users
    counts: dict[str, Counter] = defaultdict(Counter)  # user -> Counter(position in long_subjects)
    for r in run.truth:
        if r["origin"] == "long":
            u = users[r["user_id"]]
            pos = list(u.long_subjects).index(run.subject_index(r["subject"]))
            counts[r["user_id"]][pos] += 1
    expected: dict[str, np.ndarray] = {}
    for uid, u in users.items():
        subj, prob, origin = run.env.world.interest_choice(u, RUN_DAYS)
        is_long = np.array(origin) == "long"
        assert list(subj[is_long]) == list(u.long_subjects)
        expected[uid] = prob[is_long] / prob[is_long].sum()
    assert sum(sum(c.values()) for c in counts.values()) > 2000

    z = _pearson_z(counts, users, expected)
    assert abs(z) < 4.0, f"revisits deviate from weight x propensity: z = {z:.2f}"

    # Power: the same data reject a world that ignored the propensities, so the check
    # above could fail. (Weights alone span only 0.55..1, so most of the signal is in the
    # propensities; "uniform over long-term subjects" is rejected even more strongly.)
    def normalized(x: np.ndarray) -> np.ndarray:
        return x / x.sum()

    z_weights = _pearson_z(counts, users, {k: normalized(u.long_weights.astype(float))
                                          for k, u in users.items()})
    z_uniform = _pearson_z(counts, users, {k: normalized(np.ones(len(u.long_subjects)))
                                          for k, u in users.items()})
    assert z_weights > 6.0 and z_uniform > 6.0, (z_weights, z_uniform)


def test_more_active_users_have_more_sessions(run: Run) -> None:
    per_user = Counter(r["user_id"] for r in run.truth)
    users = run.env.users
    rho = stats.spearmanr([u.p_visit for u in users], [per_user[u.user_id] for u in users]).statistic
    assert rho > 0.5, rho
    visits = Counter(e["user_id"] for e in run.events)
    rho_visits = stats.spearmanr([u.p_visit for u in users], [visits[u.user_id] for u in users]).statistic
    assert rho_visits > 0.7, rho_visits


def test_short_term_interests_fade(run: Run) -> None:
    """Sessions on a short-lived interest cluster right after it starts. Were interests not
    to fade, they would be spread over every remaining day of the run, so the observed
    mean age is compared with that no-fade counterfactual built from the same start days."""
    starts: dict[tuple[int, int], list[int]] = defaultdict(list)
    for user, subject, start in run.shorts:
        starts[(user, subject)].append(start)
    users = run.users
    ages, weights = [], []
    for r in run.truth:
        if r["origin"] != "short":
            continue
        user, subject = users[r["user_id"]].index, run.subject_index(r["subject"])
        start = max(d for d in starts[(user, subject)] if d <= r["day"])
        weight, half_life = run.shorts[(user, subject, start)]
        ages.append(r["day"] - start)
        weights.append(weight * 0.5 ** ((r["day"] - start) / half_life))
    assert len(ages) > 100
    # A faded-out interest (weight <= 0.05) is never revisited as a short-term interest.
    assert min(weights) > 0.05
    no_fade = [age for (_, _, start) in run.shorts for age in range(RUN_DAYS - start)]
    mean_age, no_fade_age = float(np.mean(ages)), float(np.mean(no_fade))
    assert mean_age < 0.5 * no_fade_age, (mean_age, no_fade_age)
    assert np.median(ages) <= 5
    # Short-lived interests come from exploration and only a few of them spawn.
    assert 0 < len(run.shorts) < len(run.truth) / 5


def test_functional_sessions_are_frequent(run: Run) -> None:
    users = run.users
    # Sessions about something: greeting-only ones ("hello?") are not drawn from p_functional.
    about = [r for r in run.truth if r["origin"] != "greeting"]
    n = len(about)
    functional = sum(r["origin"] == "functional" for r in about)
    assert all(r["kind"] == "functional" for r in run.truth if r["origin"] == "functional")
    share = functional / n
    # Each session is functional with its user's p_functional, so the expected share is the
    # session-weighted mean; 4 binomial standard errors allow for chance.
    per_user = Counter(r["user_id"] for r in about)
    expected = sum(per_user[uid] * u.p_functional for uid, u in users.items()) / n
    se = np.sqrt(expected * (1 - expected) / n)
    assert abs(share - expected) < 4 * se, (share, expected, se)
    assert abs(share - np.mean([u.p_functional for u in users.values()])) < 0.05
    assert share > 0.15  # frequent: one session in four or so


def test_sensitive_sessions_only_for_users_with_that_habit(run: Run) -> None:
    users = run.users
    sensitive = [r for r in run.truth if r["kind"] == "sensitive"]
    assert len(sensitive) > 20
    for r in sensitive:
        u = users[r["user_id"]]
        assert u.p_sensitive > 0, r
        assert r["subject"] == run.env.world.subjects[u.sensitive_subject].id
        assert r["origin"] == "sensitive"
    with_habit = {uid for uid, u in users.items() if u.p_sensitive > 0}
    assert 0 < len(with_habit) < len(users)
    assert {r["user_id"] for r in sensitive} <= with_habit


# --------------------------------------------------------------------- logs vs truth


def test_logged_sessions_carry_no_hidden_truth(catalog: Catalog) -> None:
    _, log = _organic(catalog, 60, seed=3, days=14)
    assert log.sessions.column_names == LOGGED_SESSION_COLUMNS
    assert log.sessions.num_rows == log.session_truth.num_rows > 100
    truth = {r["session_id"]: r for r in log.session_truth.to_pylist()}
    # Multi-word snake_case ids ("one_piece", "personal_finance") never occur in natural
    # text, so finding one means an id leaked. Single-word ids ("docker", "croissants")
    # are ordinary words that summaries may legitimately contain and are not checked.
    snake_ids = [s.id for s in catalog.subjects if "_" in s.id]
    snake_ids += [c.id for c in catalog.categories if "_" in c.id]
    assert len(snake_ids) > 100
    for row in log.sessions.to_pylist():
        assert SESSION_ID_RE.match(row["session_id"]), row["session_id"]
        assert row["session_id"].startswith(row["user_id"] + "-")
        hidden = truth[row["session_id"]]
        assert hidden["subject"] not in row["session_id"]
        assert not [i for i in snake_ids if i in row["summary"]], row["summary"]
