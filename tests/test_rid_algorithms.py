"""Pure RID algorithms (no Ray, no real models): eq. 3, training, gating, baselines,
candidate pruning, the judge backends' defined behaviour on bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from icebreaker_ray.config import GatingSection, ScorerSection
from icebreaker_ray.rid import gating, judge, scorer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids spin-waiting on a shared 2-core box. Restored after
    each test: a module-level setting would hold for the whole pytest process, and the
    embedder's float path (so the simulated world's logged propensities, in the last bits)
    depends on the thread count, so later tests comparing with a CLI run would differ."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- eq. 3


def test_contrastive_loss_matches_hand_computed_eq3():
    # Two users; user 0 owns items 0 (positive), 1 (negative), 2 (excluded revisit);
    # user 1 owns items 3 (positive) and 4 (negative).
    s = torch.tensor([[0.9, 0.1, 0.8, -0.2, 0.3],
                      [0.0, 0.5, 0.4, 0.7, -0.1]])
    owner = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([1.0, 0.0, -1.0, 1.0, 0.0])
    # h+ = item 0 of user 0: denominator {0} ∪ N_intra {1} ∪ N_inter {3, 4} (item 2 excluded)
    l0 = -math.log(math.exp(0.9) / (math.exp(0.9) + math.exp(0.1) + math.exp(-0.2) + math.exp(0.3)))
    # h+ = item 3 of user 1: {3} ∪ {4} ∪ user 0's items {0, 1, 2}
    l1 = -math.log(math.exp(0.7) / (math.exp(0.7) + math.exp(-0.1) + math.exp(0.0) + math.exp(0.5)
                                    + math.exp(0.4)))
    got = scorer.contrastive_loss(s, owner, labels, temperature=1.0)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # the temperature divides the cosine before the softmax
    hot = scorer.contrastive_loss(s, owner, labels, temperature=0.5)
    assert hot.item() == pytest.approx(
        scorer.contrastive_loss(s * 2, owner, labels, temperature=1.0).item(), rel=1e-6)


def test_contrastive_loss_without_positives_is_zero_with_a_graph():
    s = torch.zeros(1, 3, requires_grad=True)
    loss = scorer.contrastive_loss(s, torch.zeros(3, dtype=torch.long), torch.zeros(3))
    assert loss.item() == 0.0
    loss.backward()  # differentiable, so DDP workers without positives still all-reduce


# ----------------------------------------------------------------------------- training


def _toy_examples(n_users=40, seed=0, dim=32):
    """Each user has 2-3 "interests" (directions); summaries of a recurring interest are
    positives, one-off summaries negatives. Solvable only by looking at the history."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(30, dim))
    users, sess_user, sids, embs, pos = [], [], [], [], set()
    for u in range(n_users):
        uid = f"u{u}"
        users.append(uid)
        rec = rng.choice(30, 2, replace=False)
        items = [(t, True) for t in rec for _ in range(3)] + [(t, False) for t in rng.choice(30, 4)]
        for k, (t, p) in enumerate(items):
            e = topics[t] + 0.3 * rng.normal(size=dim)
            sid = f"{uid}-{k}"
            sess_user.append(uid)
            sids.append(sid)
            embs.append(e / np.linalg.norm(e))
            if p and t not in rec[:0]:
                pos.add(sid)
    return scorer.build_user_examples(users, np.array(sess_user), np.array(sids),
                                      np.array(embs, np.float32), pos)


def test_training_lowers_the_loss_and_changes_parameters():
    data = _toy_examples()
    scfg = ScorerSection(dim=16, hidden=32, epochs=15, batch_size=8, lr=3e-3)
    model = scorer.new_model(data, scfg, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = scorer.evaluate_loss(model, data, scfg)
    model, history = scorer.train_scorer(data, scfg, seed=0, model=model)
    loss1 = scorer.evaluate_loss(model, data, scfg)
    assert loss1 < 0.8 * loss0, (loss0, loss1)
    assert history[-1] < history[0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert set(changed) == set(before)  # every tower's weights moved
    # and the scores now rank the recurring interests above the one-offs
    scores = np.concatenate(scorer.score_sessions(model, data))
    labels = np.concatenate(data.labels)
    from icebreaker_ray.eval.metrics import auc

    assert auc(labels > 0.5, scores) > 0.8


def _toy_text_examples(n_users=16, seed=0):
    """As _toy_examples, in words: each user returns to 2 subjects (positives) and touches 4
    one-off subjects; the summaries are text, for a scorer that fine-tunes its encoder."""
    rng = np.random.default_rng(seed)
    subjects = ["sourdough baking", "chess openings", "marathon training", "jazz guitar chords",
                "filing tax returns", "bonsai pruning", "rust borrow checker", "knitting socks",
                "tide pools", "espresso grinders", "medieval castles", "houseplant pests",
                "saving for retirement", "learning Korean", "drone photography", "board game design"]
    templates = ["Asked about {}", "More questions on {}", "Talked through {} tips"]
    users, sess_user, sids, texts, pos = [], [], [], [], set()
    for u in range(n_users):
        uid = f"u{u}"
        users.append(uid)
        picks = rng.choice(len(subjects), 6, replace=False)
        items = [(picks[i], k < 2) for i in (0, 1) for k in range(3)] + [(t, False) for t in picks[2:]]
        for k, (t, p) in enumerate(items):
            sid = f"{uid}-{k}"
            sess_user.append(uid)
            sids.append(sid)
            texts.append(templates[k % 3].format(subjects[t]))
            if p:
                pos.add(sid)
    n = len(sids)
    return scorer.build_user_examples(users, np.array(sess_user), np.array(sids), np.zeros((n, 4), np.float32),
                                      pos, texts=np.array(texts, dtype=object),
                                      profile_text={"u0": "likes baking"})


def test_finetuning_the_text_encoder_lowers_the_loss_and_moves_the_encoder(tiny_embedder, tmp_path):
    data = _toy_text_examples()
    assert data.item_text is not None and data.profile_text[0] == "likes baking" and data.profile_text[1] == ""
    scfg = ScorerSection(dim=16, hidden=32, epochs=12, batch_size=8, lr=3e-3, encoder_lr=1e-3,
                         finetune_text_encoder=True)
    model = scorer.new_model(data, scfg, seed=0, encoder=tiny_embedder)
    assert isinstance(model, scorer.FinetunedScorer) and model.config["in_dim"] == 32
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    loss0 = scorer.evaluate_loss(model, data, scfg)
    model, history = scorer.train_scorer(data, scfg, seed=0, model=model)
    loss1 = scorer.evaluate_loss(model, data, scfg)
    assert loss1 < 0.9 * loss0 and history[-1] < history[0], (loss0, loss1, history)
    moved = [k for k, v in model.encoder.state_dict().items() if not torch.equal(v, enc_before[k])]
    assert any("word_embeddings" in k for k in moved) and any("attention" in k for k in moved)

    # Saved: heads + the fine-tuned encoder; scoring through the saved pair (the path
    # distill-interests and the server take) gives the in-memory model's scores.
    scorer.save_scorer(model, tmp_path / "s", {"t_split_days": 1.0})
    enc_path = scorer.text_encoder_path(tmp_path / "s")
    assert enc_path and enc_path.endswith("encoder")
    from icebreaker_ray.models import TextEncoder

    texts = data.item_text[0]
    emb = TextEncoder(enc_path)(texts)
    again = scorer.score_rows(scorer.load_scorer(tmp_path / "s"), np.array(["u0"] * len(texts)), emb,
                              profiles={"u0": TextEncoder(enc_path)(["likes baking"])[0]})
    model.eval()
    with torch.no_grad():
        direct = model([*texts], torch.zeros(len(texts), dtype=torch.long), ["likes baking"])[0].numpy()
    assert np.allclose(again, direct, atol=1e-4)
    # a frozen-mode scorer names no encoder of its own
    frozen, _ = scorer.train_scorer(_toy_examples(6), ScorerSection(dim=8, hidden=16, epochs=1, batch_size=4))
    scorer.save_scorer(frozen, tmp_path / "f")
    assert scorer.text_encoder_path(tmp_path / "f") is None


def test_text_mode_needs_texts(tiny_embedder):
    data = _toy_examples(4)
    scfg = ScorerSection(dim=8, hidden=16, epochs=1, batch_size=4)
    model = scorer.new_model(data, scfg, encoder=tiny_embedder)
    with pytest.raises(ValueError, match="texts="):
        scorer.train_scorer(data, scfg, model=model)


def test_scorer_roundtrip(tmp_path):
    data = _toy_examples(6)
    scfg = ScorerSection(dim=8, hidden=16, epochs=1, batch_size=4)
    model, _ = scorer.train_scorer(data, scfg)
    scorer.save_scorer(model, tmp_path / "s", {"t_split_days": 1.0})
    again = scorer.load_scorer(tmp_path / "s")
    a = scorer.score_sessions(model, data)
    b = scorer.score_sessions(again, data)
    assert all(np.allclose(x, y) for x, y in zip(a, b, strict=True))


def test_scorer_bad_input_shapes():
    scfg = ScorerSection(dim=8, hidden=16, epochs=1, batch_size=2)
    # a user with no sessions is dropped; one with a single session is a valid example
    data = scorer.build_user_examples(["a", "b", "c"], np.array(["b"]), np.array(["b-0"]),
                                      np.ones((1, 4), np.float32) / 2, {"b-0"})
    assert data.user_ids == ["b"] and len(data.item_emb[0]) == 1
    model, history = scorer.train_scorer(data, scfg)
    assert np.isfinite(history).all()
    assert scorer.score_rows(model, np.array([]), np.zeros((0, 4), np.float32)).shape == (0,)
    one = scorer.score_rows(model, np.array(["b"]), np.ones((1, 4), np.float32) / 2)
    assert one.shape == (1,) and -1.0 - 1e-5 <= one[0] <= 1.0 + 1e-5
    # 10k summaries for one user: scored in one call, cosine range
    rng = np.random.default_rng(0)
    big = rng.normal(size=(10_000, 4)).astype(np.float32)
    s = scorer.score_rows(model, np.array(["b"] * 10_000), big)
    assert s.shape == (10_000,) and np.all(np.abs(s) <= 1 + 1e-5)


# ----------------------------------------------------------------------------- gating


def _bucketed(rng, n, centre):
    """Held-out data where revisited summaries score around ``centre`` + 0.2, others ``centre``."""
    y = rng.random(n) < 0.3
    s = centre + 0.2 * y + 0.03 * rng.normal(size=n)
    return s, y


def test_thresholds_increase_with_activity_when_the_data_says_so():
    rng = np.random.default_rng(0)
    parts = [_bucketed(rng, 400, c) for c in (0.1, 0.2, 0.3, 0.4)]
    s = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    b = np.repeat(np.arange(4), 400)
    fit = gating.fit_thresholds(s, y, b, 4, enforce_monotone=False)
    assert fit.raw_monotone and not fit.projected
    assert np.all(np.diff(fit.thresholds) > 0.05), fit.thresholds
    # a single pooled threshold would be wrong for the extreme buckets
    assert fit.thresholds[0] < 0.25 < fit.thresholds[3]
    for info in fit.per_bucket:
        assert info["f1"] > 0.9


def test_thresholds_not_forced_when_data_disagrees_unless_enforced():
    rng = np.random.default_rng(1)
    parts = [_bucketed(rng, 400, c) for c in (0.3, 0.1, 0.4)]
    s = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    b = np.repeat(np.arange(3), 400)
    raw = gating.fit_thresholds(s, y, b, 3, enforce_monotone=False)
    assert not raw.raw_monotone and raw.thresholds == raw.raw
    enforced = gating.fit_thresholds(s, y, b, 3, enforce_monotone=True)
    assert enforced.projected and np.all(np.diff(enforced.thresholds) >= -1e-12)
    # PAVA pools the violating pair of equal weight to its mean, leaves the rest
    assert enforced.thresholds[0] == pytest.approx((raw.raw[0] + raw.raw[1]) / 2)
    assert enforced.thresholds[2] == pytest.approx(raw.raw[2])


def test_recall_objective_and_empty_buckets():
    rng = np.random.default_rng(2)
    s, y = _bucketed(rng, 500, 0.2)
    b = np.zeros(500, int)
    fit = gating.fit_thresholds(s, y, b, 2, objective="recall", target_recall=0.95)
    kept = s >= fit.thresholds[0]
    assert kept[y].mean() >= 0.95
    assert (s > fit.thresholds[0])[y].mean() < 0.95  # the highest threshold that reaches it
    assert fit.per_bucket[1]["fallback"]  # bucket 1 has no held-out data: pooled threshold
    assert fit.raw[1] == pytest.approx(fit.raw[0])
    # nothing ever revisited: thresholds above every score, nothing selected
    none = gating.fit_thresholds(s, np.zeros(500, bool), b, 1)
    assert not (s >= none.thresholds[0]).any()


def test_select_interests_applies_eq4_and_the_cap():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.5, 0.45, 0.1])
    users = np.array(["a", "a", "a", "a", "b", "b", "c"])
    buckets = np.array([1, 1, 1, 1, 0, 0, 0])
    keep = gating.select_interests(scores, users, buckets, [0.4, 0.75], max_interests=5)
    assert keep.tolist() == [True, True, False, False, True, True, False]
    capped = gating.select_interests(scores, users, buckets, [0.4, 0.75], max_interests=1)
    assert capped.tolist() == [True, False, False, False, True, False, False]
    # user c has nothing over tau: no interest (cold start downstream), not an error
    assert gating.select_interests(np.array([]), np.array([]), np.array([]), [0.1], 3).shape == (0,)
    assert GatingSection().max_interests >= 1


def test_rule_based_prefers_frequent_and_recent():
    e = np.eye(3, dtype=np.float32)
    emb = np.stack([e[0], e[0], e[0], e[1], e[2]])
    users = np.array(["a"] * 5)
    days = np.array([0.0, 1.0, 2.0, 9.0, 3.0])
    s = gating.rule_based_scores(users, days, emb, 0.9, half_life_days=2.0, recency_weight=0.5, now_days=10)
    assert s[:3].min() > s[3] > s[4]  # frequency beats recency, recency breaks the tie
    assert gating.non_distillation_scores(4).tolist() == [1, 1, 1, 1]


# ----------------------------------------------------------------------------- judge


def _sessions(user_counts: dict[str, int], dim=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for uid, n in user_counts.items():
        for k in range(n):
            rows.append({"user_id": uid, "session_id": f"{uid}-{k:05d}",
                         "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=k),
                         "summary": f"summary {k} of {uid}"})
    df = pd.DataFrame(rows)
    emb = rng.normal(size=(len(df), dim)).astype(np.float32)
    return df, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_candidate_pairs_are_pruned_and_ordered():
    df, emb = _sessions({"none": 0, "one": 1, "few": 6})
    # make session 5 of "few" a near copy of session 1
    emb[df.index[df.session_id == "few-00005"]] = emb[df.index[df.session_id == "few-00001"]]
    pairs = judge.candidate_pairs(df, emb, k=2)
    assert set(pairs.user_id) == {"few"}  # no sessions / one session: no pairs
    assert len(pairs) == 1 + 2 * 4  # later session 1 has one earlier, the rest k=2
    assert (pairs.earlier_session_id < pairs.later_session_id).all()
    top = pairs[pairs.later_session_id == "few-00005"].sort_values("similarity").iloc[-1]
    assert top.earlier_session_id == "few-00001" and top.similarity == pytest.approx(1.0)


def test_candidate_pairs_linear_for_a_10k_session_user():
    df, emb = _sessions({"heavy": 10_000}, dim=16)
    pairs = judge.candidate_pairs(df, emb, k=3, max_history=200)
    assert len(pairs) == 3 * 10_000 - (3 + 2 + 1)  # sessions 0-2 have fewer than 3 earlier ones
    # the earlier session is within the last max_history sessions
    e = pairs.earlier_session_id.str[-5:].astype(int)
    later = pairs.later_session_id.str[-5:].astype(int)
    assert ((later - e) <= 200).all() and ((later - e) >= 1).all()


def test_embedding_judge_and_empty_or_enormous_summaries():
    j = judge.EmbeddingJudge(0.5)
    v = j(["a", "", "b"], ["a", "x", "  "], [0.9, 0.99, 0.99])
    assert v.labels == ["MATCH", "NO_MATCH", "NO_MATCH"]  # empty never matches
    assert judge.clean_summary(None, 10) == "" and judge.clean_summary("  x ", 10) == "x"
    assert len(judge.clean_summary("y" * 1_000_000, 2000)) == 2000


class _Scripted(judge._PromptJudge):
    def __init__(self, replies):
        self.replies = replies
        self.prompts = []

    def complete(self, prompts):
        self.prompts += prompts
        return self.replies[: len(prompts)], [r is None for r in self.replies[: len(prompts)]]


def test_prompt_judge_parses_and_counts_unparseable_as_no_match():
    j = _Scripted(["<label> MATCH </label>", "I think so?", None, "<label>NO_MATCH</label>"])
    v = j(["a", "b", "c", "d", ""], ["a2", "b2", "c2", "d2", "e2"])
    assert v.labels == ["MATCH", "NO_MATCH", "NO_MATCH", "NO_MATCH", "NO_MATCH"]
    assert v.parsed_ok == [True, False, False, True, True]
    assert v.failed == [False, False, True, False, False]
    assert len(j.prompts) == 4  # the empty pair is never sent
    assert "[Earlier session summary]: a" in j.prompts[0] and "MATCH or NO_MATCH" in j.prompts[0]
