"""Teacher backends behind one interface (Table 4): sim on simulated data, openai against
a local stub of an OpenAI-compatible server (including retries), and the distill-corpus
stage as Ray Data over an actor pool."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from isg_support import fake_embed

from icebreaker_ray.isg.filters import FilterParams
from icebreaker_ray.isg.prompts import render_completion
from icebreaker_ray.isg.teacher import OpenAITeacher, SimTeacher, make_teacher
from icebreaker_ray.sim.catalog import all_summaries, load_catalog, render_summary

PARAMS = FilterParams(k=20, sensitive_threshold=1.01)
GOOD = ["Which One Piece arc should I read first?", "Best ramen shops in Osaka?",
        "Recommend a sci-fi novel like Dune.", "How do I start a sourdough starter?",
        "Any tips for a first marathon?", "What makes Rust's borrow checker tick?"]


# ----------------------------------------------------------------------------- openai stub


class _Stub:
    """Scripted answers: each request pops the next (status, body) pair."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
                status, payload = stub.script.pop(0) if stub.script else (500, "")
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _chat(content):
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.fixture
def stub():
    servers = []

    def make(script):
        s = _Stub(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _openai(url, **kw):
    sleeps = []
    t = OpenAITeacher(fake_embed, PARAMS, url, "teacher-7b", timeout_s=5, max_retries=2,
                      backoff_s=0.5, api_key="sk-test", sleep=sleeps.append, **kw)
    return t, sleeps


def test_openai_teacher_retries_then_parses(stub):
    answer = "<think> they like anime </think>" + render_completion(GOOD)
    s = stub([(503, "overloaded"), (429, "slow down"), (200, _chat(answer))])
    teacher, sleeps = _openai(s.url)
    [starters] = teacher.distill([["One Piece cosplay"]])
    assert starters == GOOD
    assert teacher.retries == 2 and teacher.failures == 0
    assert sleeps == [0.5, 1.0]  # exponential backoff
    req = s.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "teacher-7b"
    assert "One Piece cosplay" in req["body"]["messages"][0]["content"]  # the Table 4 prompt


def test_openai_teacher_gives_up_without_raising(stub):
    s = stub([(500, "")] * 3)
    teacher, sleeps = _openai(s.url)
    assert teacher.distill([["ramen"]]) == [[]]
    assert teacher.failures == 1 and len(s.requests) == 3 and len(sleeps) == 2


def test_openai_teacher_does_not_retry_client_errors(stub):
    s = stub([(400, {"error": "bad request"}), (200, _chat(render_completion(GOOD)))])
    teacher, _ = _openai(s.url)
    assert teacher.distill([["ramen"]]) == [[]]
    assert len(s.requests) == 1 and teacher.failures == 1


def test_openai_teacher_survives_malformed_json_and_filters(stub):
    bad_list = render_completion([GOOD[0], GOOD[0], "How to treat my chest pain?", "x" * 200])
    s = stub([(200, "not json"), (200, {"choices": []}), (200, _chat(bad_list))])
    teacher, _ = _openai(s.url)
    [starters] = teacher.distill([["anime"]])
    assert starters == [GOOD[0]]  # duplicate, sensitive and too-long starters removed


def test_openai_teacher_times_out_and_retries():
    import socket

    # A listening socket that never answers: every request times out.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        teacher = OpenAITeacher(fake_embed, PARAMS, f"http://127.0.0.1:{sock.getsockname()[1]}/v1",
                                "m", timeout_s=0.3, max_retries=1, backoff_s=0, sleep=lambda s: None)
        assert teacher.distill([["ramen"]]) == [[]]
        assert teacher.retries == 1 and teacher.failures == 1
    finally:
        sock.close()


# ----------------------------------------------------------------------------- sim


_STOP = {"a", "an", "the", "and", "or", "of", "in", "on", "to", "for", "from", "with", "about",
         "asked", "s"}


def wide_embed(texts):
    """Binary bag of content words, hashed into many buckets: a fake that, like MiniLM,
    puts a summary next to the catalog subject it names."""
    import hashlib
    import re

    out = np.zeros((len(texts), 8192), np.float32)
    for i, text in enumerate(texts):
        for tok in set(re.findall(r"[a-z0-9]+", text.lower())) - _STOP:
            out[i, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 8192] = 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def sim_teacher():
    return SimTeacher(wide_embed, PARAMS, min_q=5, max_q=20, related_subjects=2)


def _subject(catalog, kind="regular", index=0):
    return catalog.subjects_of_kind(kind)[index]


def _naming_summary(subject):
    """A simulated session summary that names its subject."""
    return next(x for x in all_summaries(subject) if subject.name.lower() in x.lower())


def test_sim_teacher_writes_5_to_20_filtered_starters_about_the_interests(sim_teacher):
    catalog = load_catalog()
    subjects = [_subject(catalog, index=i) for i in (0, 15, 40)]
    interests = [[_naming_summary(s)] for s in subjects]
    results = sim_teacher.distill(interests)
    for subject, summary, starters in zip(subjects, interests, results, strict=True):
        assert sim_teacher.subjects[sim_teacher.match(summary[0])[0]] == subject
        assert 5 <= len(starters) <= 20
        assert len(set(starters)) == len(starters) and all(len(x) <= 64 for x in starters)
        own = [x for x in starters if any(f.lower() in x.lower() for f in subject.surface_forms)]
        others = [s for s in catalog.subjects_in(subject.category_id) if s != subject]
        related = [x for x in starters
                   if any(f.lower() in x.lower() for s in others for f in s.surface_forms)]
        assert own, (subject.name, starters)  # about the interest itself
        assert related, (subject.name, starters)  # association: same-category subjects


def test_sim_teacher_leaves_sensitive_and_functional_interests_out(sim_teacher):
    catalog = load_catalog()
    rng = np.random.default_rng(1)
    bad = [render_summary(s, rng) for s in (_subject(catalog, "sensitive"), _subject(catalog, "functional"))]
    raw = sim_teacher.complete([bad])[0]
    assert "</sug>" in raw
    assert sim_teacher.distill([bad]) == [[]]
    assert sim_teacher.distill([[]]) == [[]]


def test_sim_teacher_is_deterministic(sim_teacher):
    rng = np.random.default_rng(2)
    x = [[render_summary(_subject(load_catalog(), index=3), rng)]]
    assert sim_teacher.distill(x) == sim_teacher.distill(x)


def test_make_teacher_refuses_sim_on_real_data():
    from icebreaker_ray.config import load_config

    cfg = load_config(None, ["data.source=/data/logs", "teacher.backend=sim"])
    with pytest.raises(ValueError, match="simulated data"):
        make_teacher(cfg, fake_embed)
    cfg = load_config(None, ["teacher.backend=openai"])
    with pytest.raises(ValueError, match="openai_url"):
        make_teacher(cfg, fake_embed)


def test_teacher_module_never_imports_hidden_world():
    import ast
    import inspect

    import icebreaker_ray.isg.generate as gen
    import icebreaker_ray.isg.sft as sft
    import icebreaker_ray.isg.stage as stage
    import icebreaker_ray.isg.teacher as teacher

    for mod in (teacher, stage, sft, gen):
        tree = ast.parse(inspect.getsource(mod))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith(("icebreaker_ray.sim.world", "icebreaker_ray.sim.oracle",
                                                      "icebreaker_ray.sim.deploy"))], mod.__name__
        assert "sim-truth" not in inspect.getsource(mod)


def test_hf_teacher_samples_with_table4_prompt_and_never_raises(tiny_generator):
    from icebreaker_ray.isg.teacher import HFTeacher

    teacher = HFTeacher(fake_embed, PARAMS, tiny_generator, max_new_tokens=16, batch_size=4)
    raw = teacher.complete([["One Piece cosplay"], ["sourdough"]])
    assert len(raw) == 2 and all(isinstance(x, str) for x in raw)
    lists = teacher.distill([["One Piece cosplay"], ["sourdough"]])
    assert len(lists) == 2 and all(len(x) <= 20 for x in lists)
    assert teacher.name == f"hf:{tiny_generator}"


# ----------------------------------------------------------------------------- grounded

GROUNDED_USERS = {
    # (interests as a user wrote them, a key phrase of theirs the starters must reuse)
    "surfer": (["I went surfing in Puerto Rico with one of my best friends",
                "im saving up for a new longboard, maybe a Firewire"], "Puerto Rico"),
    "baker": (["Feeding schedule for a sourdough starter",
               "why did my sourdough loaf come out flat??"], "sourdough"),
    "fan": (["He's always been my favorite superhero, even before he joined the MCU",
             "rewatching Avengers Endgame this weekend lol"], "MCU"),
}


@pytest.fixture(scope="module")
def grounded():
    from icebreaker_ray.isg.teacher import GroundedTeacher
    from icebreaker_ray.models import TextEncoder

    return GroundedTeacher(TextEncoder(), FilterParams(k=20, max_chars=64), min_q=8, max_q=12)


def test_candidate_phrases_are_the_users_own_stop_word_free_ngrams():
    from icebreaker_ray.isg.teacher import candidate_phrases

    assert candidate_phrases("lol ok so i went surfing in Puerto Rico, it was awesome") == [
        "surfing", "Puerto", "Puerto Rico", "Rico"]
    assert candidate_phrases("hi / Hello? / haha yeah") == []


@pytest.mark.integration
def test_grounded_starters_reuse_the_users_key_phrases_and_pass_the_rules(grounded):
    from icebreaker_ray.isg.parse import parse_starters

    names = list(GROUNDED_USERS)
    answers = grounded.complete([GROUNDED_USERS[u][0] for u in names])
    lists = grounded.distill([GROUNDED_USERS[u][0] for u in names])
    for name, text, starters in zip(names, answers, lists, strict=True):
        interests, phrase = GROUNDED_USERS[name]
        assert text.startswith("<think>") and "</think>" in text  # the Table 4 answer format
        assert 8 <= len(parse_starters(text).starters) <= 12
        assert len(starters) >= 8, (name, starters)
        assert grounded.safety.filter(starters).kept == starters  # filtered already
        assert all(len(s) <= 64 for s in starters)
        assert any(phrase.lower() in s.lower() for s in starters), (name, starters)
        # every starter is built on a phrase taken from this user's own words
        own = " ".join(interests).lower()
        phrases = text.split("own words: ", 1)[1].split(". </think>", 1)[0].split(", ")
        assert all(p.lower() in own for p in phrases), phrases
        assert all(any(p in s for p in phrases) for s in starters), starters
    assert grounded.distill([["hi / Hello?"]]) == [[]]  # nothing to build on: no starters
    assert grounded.distill([GROUNDED_USERS["baker"][0]]) == [lists[1]]  # deterministic


@pytest.mark.integration
def test_grounded_teacher_drops_sensitive_phrases(grounded):
    [starters] = grounded.distill([["my chemotherapy side effects and cancer diagnosis",
                                    "Feeding schedule for a sourdough starter"]])
    assert starters and all("chemo" not in s.lower() and "cancer" not in s.lower() for s in starters)
    assert any("sourdough" in s.lower() for s in starters)


def test_auto_teacher_is_grounded_on_your_own_logs_and_sim_on_the_world():
    from icebreaker_ray.config import load_config
    from icebreaker_ray.isg.teacher import GroundedTeacher

    assert load_config(None, []).teacher.backend == "sim"
    cfg = load_config(None, ["data.source=/data/logs"])
    assert cfg.teacher.backend == "grounded"
    assert isinstance(make_teacher(cfg, fake_embed), GroundedTeacher)


def test_distill_drops_starters_that_name_what_the_interests_do_not(sim_teacher):
    from icebreaker_ray.isg.filters import grounding_vocabulary, invented_words
    from icebreaker_ray.isg.teacher import Teacher

    class Scripted(Teacher):
        def complete(self, interests):
            return [render_completion(["What got you into sourdough baking?",
                                       "Which Zorblax flour do you bake with?",
                                       "How do you feed a sourdough starter?"]) for _ in interests]

    out = Scripted(wide_embed, PARAMS).distill([["Sourdough starter keeps collapsing"]])
    assert out == [["What got you into sourdough baking?", "How do you feed a sourdough starter?"]]
    # the sim teacher's association (other subjects, facets) keeps only grounded names
    catalog = load_catalog()
    interests = [[_naming_summary(_subject(catalog, index=i))] for i in (0, 15, 40)]
    for items, starters in zip(interests, sim_teacher.distill(interests), strict=True):
        vocab = grounding_vocabulary(items)
        assert starters and not [s for s in starters if invented_words(s, vocab, PARAMS.vocab_min_zipf)]
