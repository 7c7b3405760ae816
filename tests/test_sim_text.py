"""Realistic summary text (sim/text.py): same world, other words; greetings are about nothing.

Organic histories only (no encoder), so the file runs in seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from icebreaker_ray.config import ConfigError, load_config
from icebreaker_ray.rid.noise import is_greeting
from icebreaker_ray.sim import textstats
from icebreaker_ray.sim.catalog import load_catalog
from icebreaker_ray.sim.deploy import NO_SUBJECT_PREFIX, SimEnv
from icebreaker_ray.sim.text import (
    STYLES,
    SummaryWriter,
    VoiceError,
    _default_bank_data,
    add_typo,
    draw_voice,
    parse_voice_bank,
    strip_article,
)
from icebreaker_ray.sim.world import GREETING, NO_SUBJECT, WorldParams


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _organic(catalog, style: str, num_users: int = 40, days: int = 20, seed: int = 3,
             first_user: int = 0):
    env = SimEnv.organic(catalog, num_users, seed, first_user=first_user,
                         world_params=WorldParams(text_style=style))
    return env, env.run_days(range(days))


@pytest.fixture(scope="module")
def pair(catalog):
    """The same 80 users over 40 days in both styles."""
    return (_organic(catalog, "realistic", 80, 40), _organic(catalog, "catalog", 80, 40))


# --------------------------------------------------------------------- catalog style


def test_catalog_style_reproduces_the_old_world_exactly(catalog):
    """The rows below were rendered by the code before text styles existed (commit
    428da5b, ``SimEnv.organic(load_catalog(), 12, 3).run_days(range(10))``)."""
    _, log = _organic(catalog, "catalog", 12, 10)
    rows, truth = log.sessions.to_pylist(), log.session_truth.to_pylist()
    assert len(rows) == 52
    assert [(r["session_id"], r["summary"], t["subject"]) for r, t in zip(rows[:6], truth[:6], strict=True)] == [
        ("u0000002-0000-00", "Read news about Raspberry Pi projects and wanted a summary of a retro gaming console", "raspberry_pi"),
        ("u0000005-0000-00", "Wanted books similar to the Hogwarts books", "harry_potter"),
        ("u0000005-0000-01", "Needed quick help with presentation outlines on an investor pitch", "slide_outlines"),
        ("u0000005-0000-02", "Looking for live recordings related to nylon-string guitar", "classical_guitar"),
        ("u0000009-0000-00", "Asked for a training plan focused on reading routes", "bouldering"),
        ("u0000002-0001-00", "Sought urgent advice on pain in the chest", "chest_pain"),
    ]
    blob = json.dumps([(r["session_id"], r["summary"], t["subject"], t["origin"])
                       for r, t in zip(rows, truth, strict=True)])
    assert hashlib.sha256(blob.encode()).hexdigest() == \
        "9847d6001a0ba96a363e4c25f3902caf89f55daab2e78f5b90f9c312203517ba"


def test_unknown_style_is_rejected(catalog):
    with pytest.raises(ValueError, match="unknown text style"):
        SummaryWriter(catalog, "fancy")
    with pytest.raises(ConfigError, match="sim.text_style"):
        load_config("quick", ["sim.text_style=fancy"])
    for preset in ("local-cpu", "quick", "gpu-cluster"):
        assert load_config(preset).sim.text_style == "realistic"
    assert set(STYLES) == {"realistic", "catalog"}


# --------------------------------------------------------------------- same world


def test_styles_share_subjects_hidden_state_and_events(pair):
    """Only the words differ: every session with a subject has the same subject, origin,
    day and time in both styles, and the day's events (visits, sessions) are identical."""
    (env_r, real), (env_c, cat) = pair
    t_real = [t for t in real.session_truth.to_pylist() if t["origin"] != GREETING]
    t_cat = cat.session_truth.to_pylist()
    key = ("user_id", "subject", "origin", "day")
    assert [tuple(t[k] for k in key) for t in t_real] == [tuple(t[k] for k in key) for t in t_cat]
    s_real = {r["session_id"]: r for r in real.sessions.to_pylist()}
    ts_real = [s_real[t["session_id"]]["ts"] for t in t_real]
    assert ts_real == cat.sessions.column("ts").to_pylist()
    assert real.events.to_pylist() == cat.events.to_pylist()
    for u, v in zip(env_r.users, env_c.users, strict=True):
        assert list(u.long_subjects) == list(v.long_subjects)
        assert [(s.subject, s.start_day) for s in u.short] == [(s.subject, s.start_day) for s in v.short]
    # ... while the words do differ
    same = sum(a == b for a, b in zip((s_real[t["session_id"]]["summary"] for t in t_real),
                                       cat.sessions.column("summary").to_pylist(), strict=True))
    assert same < 0.2 * len(t_cat)


def test_a_typo_keeps_the_hidden_subject(pair, catalog):
    """Summaries where a word of the subject's name or alias is misspelled ("Fireren") are
    about that subject in the truth, the same subject the catalog-style twin session has."""
    (_, real), (_, cat) = pair
    truth = [t for t in real.session_truth.to_pylist() if t["origin"] != GREETING]
    text = {r["session_id"]: r["summary"] for r in real.sessions.to_pylist()}
    twin = cat.session_truth.column("subject").to_pylist()
    hits = []
    for t, twin_subject in zip(truth, twin, strict=True):
        tokens = set(textstats.words(text[t["session_id"]]))
        names = {w for form in catalog.subject(t["subject"]).surface_forms
                 for w in textstats.words(form) if len(w) >= 4 and w.isalpha()}
        typos = [(w, x) for w in names - tokens for x in tokens if _one_edit(w, x)]
        if typos:
            hits.append((text[t["session_id"]], typos[0]))
            assert t["subject"] == twin_subject
    assert len(hits) >= 10, hits


def _one_edit(a: str, b: str) -> bool:
    """Damerau distance exactly 1 (drop, insert/double, swap, substitute)."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def test_add_typo_is_one_edit_and_keeps_the_first_letter():
    rng = np.random.default_rng(0)
    for word in ("sourdough", "Frieren", "marathon", "kimchi", "tiles"):
        for _ in range(50):
            typo = add_typo(word, rng)
            assert typo[0] == word[0] and _one_edit(word, typo), (word, typo)
    assert add_typo("cat", rng) == "cat"  # too short to touch
    assert [strip_article(t) for t in ("the Wano arc", "a Roth IRA", "The Bear")] == \
        ["Wano arc", "Roth IRA", "The Bear"]


# --------------------------------------------------------------------- determinism


def test_same_seed_same_text_and_shards_agree(catalog):
    _, a = _organic(catalog, "realistic", 30, 12, seed=9)
    _, b = _organic(catalog, "realistic", 30, 12, seed=9)
    _, c = _organic(catalog, "realistic", 30, 12, seed=10)
    assert a.sessions.to_pylist() == b.sessions.to_pylist()
    assert a.session_truth.to_pylist() == b.session_truth.to_pylist()
    assert a.sessions.column("summary").to_pylist() != c.sessions.column("summary").to_pylist()
    _, lo = _organic(catalog, "realistic", 15, 12, seed=9, first_user=0)
    _, hi = _organic(catalog, "realistic", 15, 12, seed=9, first_user=15)
    split = sorted(lo.sessions.to_pylist() + hi.sessions.to_pylist(), key=lambda r: r["session_id"])
    assert sorted(a.sessions.to_pylist(), key=lambda r: r["session_id"]) == split


# --------------------------------------------------------------------- greetings


def test_greetings_have_no_subject_and_are_never_an_interest(pair):
    (env, real), _ = pair
    truth = real.session_truth.to_pandas()
    greet = truth[truth["origin"] == GREETING]
    assert 0.02 < len(greet) / len(truth) < 0.12, len(greet) / len(truth)
    assert (greet["kind"] == GREETING).all() and (greet["category"] == GREETING).all()
    assert (greet["subject"] == NO_SUBJECT_PREFIX + greet["session_id"]).all()
    assert greet["subject"].is_unique
    # no catalog subject is a greeting, and no hidden interest either
    catalog_ids = {s.id for s in env.world.subjects}
    assert not set(greet["subject"]) & catalog_ids
    assert not (truth.loc[truth["origin"] != GREETING, "subject"].str.startswith(NO_SUBJECT_PREFIX)).any()
    for u in env.users:
        assert NO_SUBJECT not in list(u.long_subjects) and all(s.subject >= 0 for s in u.short)
    # truth code groups by subject: a greeting is never a revisit nor seen twice
    t = truth.sort_values(["user_id", "day", "session_id"])
    revisit = t.duplicated(["user_id", "subject"])
    assert not revisit[t["origin"] == GREETING].any()
    n = truth.groupby(["user_id", "subject"])["session_id"].transform("size")
    assert (n[truth["origin"] == GREETING] == 1).all()


def test_judge_quality_never_counts_two_greetings_as_one_subject(pair):
    from icebreaker_ray.eval.rid_quality import judge_quality

    (_, real), _ = pair
    truth = real.session_truth.to_pandas()
    by_user = truth[truth["origin"] == GREETING].groupby("user_id")["session_id"].apply(list)
    twice = [ids for ids in by_user if len(ids) >= 2]
    assert twice
    pairs = pd.DataFrame({"earlier_session_id": [ids[0] for ids in twice],
                          "later_session_id": [ids[1] for ids in twice], "label": "MATCH"})
    res = judge_quality(pairs, truth)
    assert res["true_pairs"] == 0 and res["precision"] == 0.0


def test_events_do_not_count_greetings_as_sessions(pair):
    (_, real), _ = pair
    per_day = real.session_truth.to_pandas().query("origin != @GREETING").groupby(["user_id", "day"]).size()
    for e in real.events.to_pylist():
        assert e["sessions"] == per_day.get((e["user_id"], e["day"]), 0)


def test_the_noise_rule_catches_every_greeting_phrasing(catalog):
    """Every greeting the world can write, with each user's casing and typos, is a greeting
    to rid/noise.py (so none becomes a trigger interest)."""
    writer = SummaryWriter(catalog, "realistic")
    rng = np.random.default_rng(0)
    missed = set()
    for i in range(3000):
        voice = draw_voice(np.random.default_rng(i))
        text = writer.greeting(rng, voice)
        if not is_greeting(text):
            missed.add(text)
    assert not missed, sorted(missed)[:10]
    for phrase in writer.bank.greetings:
        assert is_greeting(phrase), phrase


# --------------------------------------------------------------------- text quality


def test_realistic_text_is_varied_noisy_and_readable(pair):
    (_, real), (_, cat) = pair
    texts = real.sessions.column("summary").to_pylist()
    old = cat.sessions.column("summary").to_pylist()
    lower = np.mean([t == t.lower() for t in texts])
    assert 0.3 < lower < 0.8, lower  # many users write in lower case, not all
    n_words = np.array([len(textstats.words(t)) for t in texts])
    assert n_words.min() <= 1 and np.percentile(n_words, 90) >= 10  # one-word to long
    assert len(set(texts)) / len(texts) > len(set(old)) / len(old) * 0.9  # not a lookup key
    # more distinct word types per token than the catalog templates
    budget = 8000
    assert textstats.vocabulary(texts, budget, 0)["types"] > textstats.vocabulary(old, budget, 0)["types"]
    # mixed intents and greeting openers occur
    assert any(" btw " in t or ". also " in t for t in texts)
    assert all("{" not in t and "}" not in t for t in texts)


def test_every_frame_renders_for_every_subject_of_its_section(catalog):
    writer = SummaryWriter(catalog, "realistic")
    bank = writer.bank
    rng = np.random.default_rng(0)
    for subject in catalog.subjects:
        if subject.kind == "functional":
            frames = bank.functional[subject.id]
        elif subject.kind == "sensitive":
            frames = bank.sensitive
        else:
            frames = bank.any_regular + bank.categories.get(subject.category_id, ())
        for frame in frames:
            text = writer._fill(frame, subject, rng)
            assert text.strip() and "{" not in text, (subject.id, frame)
    assert set(bank.contexts) == set(bank.categories) == {c.id for c in catalog.regular_categories}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["categories"].update(no_such_category=["x {subject}"]), "unknown ids"),
    (lambda d: d["any_regular"].append("about {subjekt}"), "subjekt"),
    (lambda d: d["functional"].pop("translation"), "no frames for"),
    (lambda d: d["greetings"].append("hi {subject}"), "allowed"),
    (lambda d: d.pop("closers"), "expected keys"),
])
def test_voice_bank_validation(catalog, mutate, message):
    data = copy.deepcopy(_default_bank_data())
    parse_voice_bank(data, catalog)  # the packaged bank is valid
    mutate(data)
    with pytest.raises(VoiceError, match=message):
        parse_voice_bank(data, catalog)


# --------------------------------------------------------------------- report


def test_text_comparison_without_chitchat_still_renders(pair):
    (_, real), _ = pair
    truth = real.session_truth.to_pandas().set_index("session_id")
    ids = real.sessions.column("session_id").to_pylist()
    res = textstats.text_comparison(
        real.sessions.column("summary").to_pylist(), truth.loc[ids, "origin"].tolist(),
        truth.loc[ids, "kind"].tolist(), encode=None, functional_threshold=0.32, seed=0,
        text_style="realistic", chitchat=(None, "ModuleNotFoundError: chitchat_dataset"))
    md = textstats.markdown(res)
    assert "could not be read here (ModuleNotFoundError: chitchat_dataset)" in md
    assert res["sim"]["greeting_truth"] > 0 and res["sim"]["functional_truth"] > 0.1
    assert "not measured" in md
    real_side = ["hello?", "i love hiking in utah, we went to zion last week", "ok"]
    res2 = textstats.text_comparison(["Rust question", "hi"], ["long", GREETING],
                                     ["regular", GREETING], encode=None, functional_threshold=0.32,
                                     seed=0, text_style="realistic", chitchat=(real_side, None))
    assert res2["chitchat"]["greeting_rule"] == pytest.approx(2 / 3)
    assert res2["sim"]["vocabulary"]["tokens"] == res2["chitchat"]["vocabulary"]["tokens"] == 3
    assert "| greeting / one-word sessions, rule `noise.is_greeting` | 50.0% | 66.7% |" in textstats.markdown(res2)
