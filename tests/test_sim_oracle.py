"""The click oracle reads starter text the way the issue asks (real MiniLM embeddings).

Users are built with ``World.new_user`` and then given interests we choose, so the
expected order of starters is known. Orders are checked over many random (user,
interest) cases rather than one hand-picked example, and every list-level check is set
up so that the oracle would fail it if the mechanism under test (duplicate penalty,
position bias, length penalty) did nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from icebreaker_ray.models import TextEncoder
from icebreaker_ray.sim.catalog import Catalog, all_starters, load_catalog, render_starter
from icebreaker_ray.sim.deploy import SimEnv
from icebreaker_ray.sim.oracle import ClickOracle, OracleParams
from icebreaker_ray.sim.policy import RetrievalPolicy, generic_starters, starter_pool
from icebreaker_ray.sim.world import UserState, World

pytestmark = pytest.mark.integration

SEED = 0
N_CASES = 60  # (user, interest) cases for the pairwise orders
K = 4


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def world(catalog: Catalog) -> World:
    return World(catalog)


@pytest.fixture(scope="module")
def oracle(world: World, encoder: TextEncoder) -> ClickOracle:
    return ClickOracle(world, encoder(ClickOracle.subject_texts(world)))


def interested_user(world: World, index: int, subjects: list[int],
                    weights: list[float] | None = None) -> UserState:
    """A generated user whose hidden long-term interests are replaced by ``subjects``."""
    user = world.new_user(SEED, index)
    n = len(subjects)
    user.long_subjects = np.asarray(subjects)
    user.long_weights = np.asarray(weights or [1.0] * n, np.float32)
    user.long_propensity = np.ones(n, np.float32)
    user.short = []
    return user


@dataclass
class Scorer:
    """Scores texts for users through the oracle, embedding each distinct text once."""

    oracle: ClickOracle
    encoder: TextEncoder

    def _batch(self, users: list[UserState], lists: list[list[str]]):
        texts = list(dict.fromkeys(t for s in lists for t in s))
        row = {t: i for i, t in enumerate(texts)}
        idx = np.array([[row[t] for t in s] for s in lists])
        feats = self.oracle.features(texts, self.encoder(texts))
        interests = np.stack([u.interest_weights(0, self.oracle.world.num_subjects) for u in users])
        return feats, idx, interests

    def values(self, users: list[UserState], lists: list[list[str]]) -> np.ndarray:
        """Standalone item values v_k (no position or duplicate effects): (U, K)."""
        feats, idx, interests = self._batch(users, lists)
        return self.oracle.item_values(interests, np.array([u.click_bias for u in users]), feats, idx)

    def relevance(self, users: list[UserState], lists: list[list[str]]) -> np.ndarray:
        feats, idx, interests = self._batch(users, lists)
        return self.oracle.relevance(interests, feats, idx)

    def probs(self, users: list[UserState], lists: list[list[str]]) -> np.ndarray:
        """P(click position k) for each shown list: (U, K)."""
        feats, idx, interests = self._batch(users, lists)
        return self.oracle.click_probabilities(
            interests, np.array([u.click_bias for u in users]),
            np.array([u.position_decay for u in users]), feats, idx)


@pytest.fixture(scope="module")
def scorer(oracle: ClickOracle, encoder: TextEncoder) -> Scorer:
    return Scorer(oracle, encoder)


# --------------------------------------------------------------------- item-level orders


@dataclass
class Cases:
    users: list[UserState]
    subjects: np.ndarray  # the interest of each case
    lists: list[list[str]]  # [specific on interest, generic of its category, off-interest, sensitive]
    values: np.ndarray  # (N, 4)
    recognized: np.ndarray  # (N,) the oracle reads the specific starter as its own subject


@pytest.fixture(scope="module")
def cases(world: World, oracle: ClickOracle, encoder: TextEncoder, scorer: Scorer) -> Cases:
    rng = np.random.default_rng(SEED)
    subjects = rng.choice(world.regular, N_CASES, replace=False)
    users, lists = [], []
    for i, s in enumerate(subjects):
        subject = world.subjects[s]
        # The user's own first interest weight (0.55..1), moved onto the chosen subject.
        users.append(interested_user(world, i, [int(s)], [float(world.new_user(SEED, i).long_weights[0])]))
        other_cats = world.regular[world.subject_category[world.regular] != world.subject_category[s]]
        generic = subject.category.generic_starters
        lists.append([
            render_starter(subject, rng),
            generic[int(rng.integers(len(generic)))],
            render_starter(world.subjects[int(rng.choice(other_cats))], rng),
            render_starter(world.subjects[int(rng.choice(world.sensitive))], rng),
        ])
    specific = [s[0] for s in lists]
    recognized = oracle.features(specific, encoder(specific)).match.argmax(axis=1) == subjects
    return Cases(users, subjects, lists, scorer.values(users, lists), recognized)


SPEC, GENERIC, OFF, SENSITIVE = range(4)


def _share(c: Cases, better: int, worse: int) -> float:
    return float((c.values[:, better] > c.values[:, worse]).mean())


def test_specific_on_interest_beats_generic(cases: Cases) -> None:
    assert _share(cases, SPEC, GENERIC) >= 0.9


def test_specific_on_interest_beats_off_interest(cases: Cases) -> None:
    # Whenever the oracle reads the rendered starter as being about its subject, the
    # on-interest starter must win. A few catalog names are not recognized by MiniLM at all
    # ("Hidden details in Succession I missed?" has best subject cosine < 0.25 and reads as
    # a generic text), which is why the unconditional share is only required to be >= 0.95.
    assert cases.recognized.mean() >= 0.9
    ok = cases.values[:, SPEC] > cases.values[:, OFF]
    assert ok[cases.recognized].all(), [cases.lists[i] for i in np.flatnonzero(~ok & cases.recognized)]
    assert ok.mean() >= 0.95


def test_generic_of_interest_category_beats_off_interest(cases: Cases) -> None:
    # With the category-level relevance switched off (w_cat = 0) the same cases score
    # <= 0.55, so this fails if generic starters get no credit for the user's category.
    assert _share(cases, GENERIC, OFF) >= 0.65


def test_generic_beats_off_interest_at_target_rate(cases: Cases) -> None:
    # The order, generic-of-interest-category over off-interest, 90% of the time.
    assert _share(cases, GENERIC, OFF) >= 0.9


def test_sensitive_starters_score_lowest(cases: Cases) -> None:
    assert (cases.values[:, SPEC] > cases.values[:, SENSITIVE]).all()
    assert _share(cases, GENERIC, SENSITIVE) >= 0.9
    assert _share(cases, OFF, SENSITIVE) >= 0.9


def test_one_piece_fan(catalog: Catalog, world: World, scorer: Scorer) -> None:
    """A readable anchor case: a user whose only interest is One Piece."""
    one_piece = catalog.subjects.index(catalog.subject("one_piece"))
    user = interested_user(world, 0, [one_piece])
    specific = all_starters(catalog.subject("one_piece"))[:6]
    generic = list(catalog.category("anime_acgn").generic_starters)
    off = [*all_starters(catalog.subject("index_funds"))[:3], *all_starters(catalog.subject("sourdough"))[:3]]
    sensitive = [t for s in catalog.subjects_in("sensitive")[:3] for t in all_starters(s)[:2]]
    texts = [*specific, *generic, *off, *sensitive]
    v = dict(zip(texts, scorer.values([user] * len(texts), [[t] for t in texts])[:, 0], strict=True))
    spec_v, gen_v = [v[t] for t in specific], [v[t] for t in generic]
    off_v, sens_v = [v[t] for t in off], [v[t] for t in sensitive]
    assert min(spec_v) > max(gen_v)
    assert min(spec_v) > max(off_v)
    assert np.mean(gen_v) > np.mean(off_v)  # on average: one anime generic loses to sourdough
    assert max(sens_v) < min(off_v) - 3.0


# --------------------------------------------------------------------- list effects


def _named(world: World, subject: int, limit: int = 12) -> list[str]:
    """Up to ``limit`` starters of a subject that use its canonical name (the least
    ambiguous wording for the encoder), in catalog order: consecutive ones share a
    template and differ in the facet, so they include close paraphrases."""
    s = world.subjects[subject]
    return [t for t in all_starters(s) if s.name in t][:limit]


def _interest_sets(world: World, n: int, size: int, rng: np.random.Generator) -> list[list[int]]:
    """n sets of ``size`` regular subjects, each from a different category."""
    out = []
    for _ in range(n):
        cats = rng.choice(np.unique(world.subject_category[world.regular]), size, replace=False)
        out.append([int(rng.choice(world.regular[world.subject_category[world.regular] == c]))
                    for c in cats])
    return out


def test_near_duplicate_lowers_list_value(world: World, encoder: TextEncoder, scorer: Scorer) -> None:
    """[a, a', b, c] with a' a paraphrase of a loses to [a, d, b, c], although d is chosen
    with a standalone value no higher than a' (so without the penalty it could not win)."""
    rng = np.random.default_rng(1)
    sets = _interest_sets(world, 20, 4, rng)
    # One encoder batch for every candidate (each model call has a fixed cost); all calls
    # below hit the encoder's cache.
    encoder([t for s1, s2, s3, s4 in sets
             for t in [*_named(world, s1), *_named(world, s4), _named(world, s2)[0],
                       _named(world, s3)[0]]])
    checked = 0
    for i, subjects in enumerate(sets):
        user = interested_user(world, 100 + i, subjects)
        s1, s2, s3, s4 = subjects
        first = _named(world, s1)
        emb = encoder(first)
        a = first[0]
        cos = emb @ emb[0]
        paraphrases = [t for t, c in zip(first, cos, strict=True) if 0.85 <= c < 0.999]
        if not paraphrases:
            continue
        a2 = paraphrases[0]
        options, b, c = _named(world, s4), _named(world, s2)[0], _named(world, s3)[0]
        v_a2 = scorer.values([user], [[a2]])[0, 0]
        v_opts = scorer.values([user] * len(options), [[t] for t in options])[:, 0]
        others = encoder([a, b, c])
        fits = [t for t, v in zip(options, v_opts, strict=True)
                if v_a2 - 0.75 <= v <= v_a2 and (encoder([t]) @ others.T).max() < 0.7]
        if not fits:
            continue
        d = fits[0]
        p_dup, p_distinct = scorer.probs([user, user], [[a, a2, b, c], [a, d, b, c]]).sum(axis=1)
        assert p_dup < p_distinct, (a, a2, d, p_dup, p_distinct)
        checked += 1
    assert checked >= 6


def test_exact_duplicates_are_worse_than_distinct(world: World, encoder: TextEncoder,
                                                  scorer: Scorer) -> None:
    rng = np.random.default_rng(2)
    sets = _interest_sets(world, 8, 4, rng)
    encoder([_named(world, s)[0] for subjects in sets for s in subjects])  # one batch
    for i, subjects in enumerate(sets):
        user = interested_user(world, 200 + i, subjects)
        distinct = [_named(world, s)[0] for s in subjects]
        values = scorer.values([user], [distinct])[0]
        order = np.argsort(-values)
        distinct = [distinct[j] for j in order]  # the best first: a is the best of the four
        emb = encoder(distinct)
        assert (emb @ emb.T - np.eye(K)).max() < 0.8  # the distinct list has no near-duplicates
        a = distinct[0]
        p_dup, p_distinct = scorer.probs([user, user], [[a] * K, distinct]).sum(axis=1)
        assert p_dup < p_distinct, (a, distinct, p_dup, p_distinct)


def test_position_bias_moves_clicks_to_the_top(world: World, encoder: TextEncoder,
                                               scorer: Scorer) -> None:
    rng = np.random.default_rng(3)
    sets = _interest_sets(world, 8, 4, rng)
    encoder([_named(world, s)[0] for subjects in sets for s in subjects])  # one batch
    for i, subjects in enumerate(sets):
        user = interested_user(world, 300 + i, subjects)
        shown = [_named(world, s)[0] for s in subjects]
        forward, backward = scorer.probs([user, user], [shown, shown[::-1]])
        # Each starter is clicked more often at the higher of its two positions.
        for k in range(K):
            at_k, at_mirror = forward[k], backward[K - 1 - k]
            if k < K - 1 - k:
                assert at_k > at_mirror, (k, forward, backward)
            elif k > K - 1 - k:
                assert at_k < at_mirror, (k, forward, backward)


def _lengthen(text: str, chars: int = 120) -> str:
    """The same question padded with on-topic filler to exactly ``chars`` characters."""
    filler = (" I would like a detailed answer with concrete examples, some background and"
              " practical tips for a beginner like me, please")
    body = (text.rstrip("?.") + "?" + filler)[: chars - 1].rstrip()
    return (body + "." * chars)[: chars - 1] + "?"


def test_long_starters_score_lower(world: World, scorer: Scorer) -> None:
    rng = np.random.default_rng(4)
    subjects = [int(s) for s in rng.choice(world.regular, 12, replace=False)]
    users = [interested_user(world, 400 + i, [s]) for i, s in enumerate(subjects)]
    short = [_named(world, s)[0] for s in subjects]
    long = [_lengthen(t) for t in short]
    assert all(len(t) <= 64 for t in short) and all(len(t) == 120 for t in long)
    v = scorer.values(users, [[s, t] for s, t in zip(short, long, strict=True)])
    rel = scorer.relevance(users, [[s, t] for s, t in zip(short, long, strict=True)])
    # The padded text stays on topic (relevance barely moves), so the drop in value comes
    # from length: 56 extra characters cost 0.08 each, more than relevance could explain.
    assert (np.abs(rel[:, 0] - rel[:, 1]) < 0.25).mean() >= 0.9
    assert (v[:, 0] - v[:, 1] > 2.0).all(), v


def test_depth_grows_with_relevance(world: World, oracle: ClickOracle, cases: Cases,
                                    scorer: Scorer) -> None:
    grid = np.linspace(0.0, 1.0, 21)
    assert np.all(np.diff(oracle.depth_rate(grid)) > 0)
    rel = scorer.relevance(cases.users, cases.lists)
    on, off = oracle.depth_rate(rel[:, SPEC]), oracle.depth_rate(rel[:, OFF])
    assert (on[cases.recognized] > off[cases.recognized]).all()
    assert on.mean() > 2 * off.mean()
    # Depth a clicked conversation actually gets (1 + Poisson(rate)) follows the rate.
    from icebreaker_ray.sim.world import log_depth

    rng = np.random.default_rng(5)
    low = np.mean([log_depth(float(oracle.depth_rate(np.array(0.0))), rng) for _ in range(2000)])
    high = np.mean([log_depth(float(oracle.depth_rate(np.array(1.0))), rng) for _ in range(2000)])
    assert high > low + 2


def test_oracle_params_move_values(world: World, encoder: TextEncoder, cases: Cases) -> None:
    """Guard against a vacuous oracle: the sensitive penalty really is what sinks sensitive
    starters (without it they would sit near off-interest ones)."""
    subject_emb = encoder(ClickOracle.subject_texts(world))
    lenient = Scorer(ClickOracle(world, subject_emb, OracleParams(pen_sensitive=0.0)), encoder)
    v = lenient.values(cases.users, cases.lists)
    gap = cases.values[:, OFF] - cases.values[:, SENSITIVE]
    assert gap.mean() > (v[:, OFF] - v[:, SENSITIVE]).mean() + 3.0


# --------------------------------------------------------------------- deployed baseline


def test_retrieval_baseline_end_to_end(catalog: Catalog, encoder: TextEncoder) -> None:
    env = SimEnv.create(catalog, encoder, num_users=80, seed=0)
    warm = env.run_days(range(10), None)
    assert warm.impressions.num_rows == 0
    policy = RetrievalPolicy(starter_pool(catalog), encoder, k=K, cold_start=generic_starters(catalog))
    log = env.run_days(range(10, 17), policy, "retrieval")
    m = log.metrics
    assert 0.005 <= m["ctr"] <= 0.10, m
    assert 0.05 <= m["leave_rate"] <= 0.4, m
    imp = log.impressions.to_pylist()
    assert len(imp) > 200
    by_request: dict[str, list[dict]] = {}
    for r in imp:
        by_request.setdefault(r["request_id"], []).append(r)
    for rows in by_request.values():
        assert [r["position"] for r in rows] == list(range(K))
        assert len({r["starter"] for r in rows}) == K
        assert sum(r["clicked"] for r in rows) <= 1
    assert all(0.0 < r["propensity"] <= 1.0 for r in imp)
    assert all(r["source"] == "retrieval" for r in imp)
    assert any(r["clicked"] for r in imp)
    assert all(r["depth"] >= 1 for r in imp if r["clicked"])
    # Nothing from the sensitive category is ever suggested by the baseline.
    sensitive = {t for s in catalog.subjects if s.kind == "sensitive" for t in all_starters(s)}
    assert not sensitive & {r["starter"] for r in imp}
