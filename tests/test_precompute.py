"""Precomputed lists for known users (issue 19, serve/precompute.py): which entries answer a
request, the server's distiller answering from the store, and the batch job on Ray Data
with the tiny generator: it writes every asked-for user once, leaves fresh entries alone
and regenerates the one whose user has a new session."""

from __future__ import annotations

import pytest
from serve_support import USERS, build_run

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.serve.precompute import Entry, PrecomputedLists, history_digest, precompute


def _entry(user: str, history: list[str], k: int = 4, version: str = "dpo:abc") -> Entry:
    return Entry(user, k, history_digest(history), version, history[-1:],
                 [f"Question {i} for {user}?" for i in range(k)], [0.5] * k, ["generated"] * k)


def test_an_entry_answers_only_its_user_k_model_and_history():
    history = ["Baking sourdough", "Planning a trip to Osaka"]
    store = PrecomputedLists([_entry("u1", history)])
    assert store.get("u1", history, 4, "dpo:abc").starters[0] == "Question 0 for u1?"
    assert store.get("u1", [*history, "A new session"], 4, "dpo:abc") is None  # new session: stale
    assert store.get("u1", history[::-1], 4, "dpo:abc") is None  # order is part of the history
    assert store.get("u1", history, 3, "dpo:abc") is None
    assert store.get("u1", history, 4, "iterate:def") is None  # another generator
    assert store.get("u2", history, 4, "dpo:abc") is None
    assert store.get(None, history, 4, "dpo:abc") is None
    # Summaries are joined with a separator: ["a b"] and ["a", "b"] are different histories.
    assert history_digest(["a b"]) != history_digest(["a", "b"])


def test_store_round_trips_through_its_table(tmp_path):
    store = PrecomputedLists([_entry("u1", ["x"]), _entry("u2", ["y", "z"], k=2)])
    path = str(tmp_path / "serve" / "precomputed.parquet")
    io.write_table(store.table(), path, "precomputed_lists")
    again = PrecomputedLists.load(path)
    assert again.entries == store.entries
    assert len(PrecomputedLists.load(str(tmp_path / "missing.parquet"))) == 0


def test_distiller_answers_a_known_user_from_the_store(tmp_path):
    """The server's InterestDistillerCore: a fresh entry is the answer (no model runs);
    pasted new sessions, no K (a refresh) or an entry of another model make it distill."""
    from icebreaker_ray.serve.artifacts import locate
    from icebreaker_ray.serve.components import InterestDistillerCore

    run = build_run(tmp_path / "run")
    cfg = load_config("local-cpu")
    art = locate(cfg, run, "some-model")
    history = USERS["u0000001"][2]
    entries = [_entry("u0000001", history, version=art.model_version),
               _entry("u0000002", USERS["u0000002"][2], version="an-older-model")]
    io.write_table(PrecomputedLists(entries).table(), layout.precomputed_lists(run), "precomputed_lists")
    core = InterestDistillerCore(cfg, art)

    d = core.distill("u0000001", None, 4)
    assert d.method == "precomputed" and not d.cold_start
    assert [p.text for p in d.precomputed] == entries[0].starters
    assert d.interests == entries[0].interests and d.history == history
    assert core.distill("u0000001", None, None).precomputed is None  # refresh
    assert core.distill("u0000001", None, 3).precomputed is None  # another K
    pasted = core.distill("u0000001", ["Rye bread hydration"], 4)
    assert pasted.precomputed is None and pasted.method == "rid"
    assert core.distill("u0000002", None, 4).precomputed is None  # stale: older model


@pytest.mark.slow
def test_batch_job_writes_missing_and_regenerates_stale_entries(tmp_path, ray_local, tiny_generator):
    run = build_run(tmp_path / "run")
    cfg = load_config("local-cpu", ["generation.max_new_tokens=24", "generation.engine=hf"])
    users = ["u0000001", "u0000002", "u0000005"]  # u0000005 has no session: not known
    with pytest.raises(io.DataError, match="u0000005"):
        precompute(cfg, run, users=users, model=tiny_generator)

    first = precompute(cfg, run, users=users[:2], model=tiny_generator)
    assert (first.generated, first.kept, first.total) == (2, 0, 2)
    store = PrecomputedLists.load(first.path)
    for user in users[:2]:
        entry = store.entries[(user, cfg.generation.K)]
        assert len(entry.starters) == cfg.generation.K  # filled from the cold-start list if need be
        assert entry.history_sha256 == history_digest(USERS[user][2])
        assert entry.model_version == "tiny-llama" and entry.interests

    again = precompute(cfg, run, users=users[:2], model=tiny_generator)
    assert (again.generated, again.kept) == (0, 2)

    # The run's logs now hold a new session of u0000001 (the stages rewritten, the store
    # kept): only its entry is stale.
    assert build_run(tmp_path / "run", (("u0000001", "Rye bread hydration for a dense crumb"),)) == run
    third = precompute(cfg, run, users=users[:2], model=tiny_generator)
    assert (third.generated, third.kept, third.total) == (1, 1, 2)
    entry = PrecomputedLists.load(third.path).entries[("u0000001", cfg.generation.K)]
    assert entry.history_sha256 == history_digest([*USERS["u0000001"][2],
                                                   "Rye bread hydration for a dense crumb"])
    assert precompute(cfg, run, users=users[:1], model=tiny_generator, force=True).generated == 1
