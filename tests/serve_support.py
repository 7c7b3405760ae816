"""Helpers for the serving tests: a small but complete run directory, and the real Serve
application started on 127.0.0.1 at a free port.

The run directory holds every artifact the server reads, written through the same
classes and ``StageWriter`` manifests as the pipeline: simulated-looking users, sessions
and logged impressions (with clicks), a resonance scorer and a utility ranker (real
model classes with freshly initialised weights: training them is other tests' job) and
gating thresholds. Building it takes well under a second.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa

from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema

USERS = {
    "u0000001": (3, "age 25-34, cook, chats in the evenings", [
        "Feeding schedule for a sourdough starter", "Why my sourdough loaf came out flat",
        "Best flour for a sourdough starter", "Planning a trip to Osaka for ramen"]),
    "u0000002": (2, "age 18-24, student, chats in the mornings", [
        "Which One Piece arc to read after Wano", "Cosplay ideas for Nico Robin",
        "Explaining LoRA fine-tuning simply"]),
    "u0000003": (1, None, ["Index funds versus ETFs for a beginner", "How compound interest works"]),
    "u0000004": (0, "age 35-44, teacher", ["Rust borrow checker errors with closures"]),
    "u0000005": (0, None, []),  # a known user without any session: cold start
}
LOGGED_STARTERS = [
    ("Recommend a feel-good movie for tonight?", 5), ("Explain LoRA fine-tuning simply", 3),
    ("Which One Piece arc should I read next?", 2), ("Plan a 3-day trip to Osaka?", 2),
    ("What can I bake with leftover sourdough starter?", 1), ("Suggest a beginner running plan", 1),
    ("What board game suits four players?", 0), ("How do index funds work?", 0),
]


def _ts(values: list[int]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))


def build_run(root: Path, extra_sessions: tuple[tuple[str, str], ...] = ()) -> str:
    """Write the run directory under ``root`` and return its path; ``extra_sessions``
    ((user, summary), ...) are logged after every user's sessions in :data:`USERS`."""
    from icebreaker_ray.reward.ranker import UtilityRanker
    from icebreaker_ray.rid.scorer import ResonanceScorer, save_scorer

    run = str(root)
    day = 86_400_000
    sim = io.StageWriter(run, "simulate")
    sim.write_table("users", pa.table({
        "user_id": list(USERS), "activity_bucket": pa.array([b for b, _, _ in USERS.values()], pa.int32()),
        "profile": [p for _, p, _ in USERS.values()]}, schema=schema("users")))
    rows = [(u, f"{u}-{i:04d}", (i + 1) * day, s) for u, (_, _, ss) in USERS.items() for i, s in enumerate(ss)]
    rows += [(u, f"{u}-extra-{i:04d}", (100 + i) * day, s) for i, (u, s) in enumerate(extra_sessions)]
    sim.write_table("sessions", pa.table({
        "user_id": [r[0] for r in rows], "session_id": [r[1] for r in rows],
        "ts": _ts([r[2] for r in rows]), "summary": [r[3] for r in rows]}))
    # User i clicked a starter when fewer than its click count of users came before.
    shown = [(u, s, i < clicks) for i, u in enumerate(list(USERS)[:4]) for s, clicks in LOGGED_STARTERS]
    sim.write_table("impressions", pa.table({
        "user_id": [u for u, _, _ in shown], "ts": _ts([day * 10] * len(shown)),
        "request_id": [f"log-{u}" for u, _, _ in shown], "starter": [s for _, s, _ in shown],
        "position": pa.array([i % 4 for i in range(len(shown))], pa.int32()),
        "source": ["retrieval"] * len(shown), "clicked": [c for _, _, c in shown],
        "depth": pa.array([0] * len(shown), pa.int32()),
        "propensity": pa.array([0.5] * len(shown), pa.float64())}))
    sim.commit()

    scorer_writer = io.StageWriter(run, "train-scorer")
    save_scorer(ResonanceScorer(in_dim=384, dim=32, hidden=64), scorer_writer.path("scorer"),
                {"t_split_days": 0.0, "embedder": "all-minilm-l6-v2"})
    scorer_writer.add_file("scorer")
    scorer_writer.commit()

    distill = io.StageWriter(run, "distill-interests")
    distill.write_json("thresholds.json", {"thresholds": [-1.0, -0.5, 0.0, 0.1]})
    distill.commit()

    ranker_writer = io.StageWriter(run, "train-ranker")
    UtilityRanker(dim=384, hidden=16).save(ranker_writer.path("util"))
    ranker_writer.add_file("util")
    ranker_writer.commit()
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    url: str
    run_dir: str
    store_path: str


def start_app(run_dir: str, model: str, overrides: list[str] | None = None,
              timeout_s: float = 240.0) -> RunningApp:
    """Start the real application on 127.0.0.1 (Ray must be up) and wait for /healthz."""
    from icebreaker_ray.config import load_config
    from icebreaker_ray.serve.app import run_local
    from icebreaker_ray.serve.artifacts import event_store_path

    cfg = load_config("local-cpu", [f"serve.port={free_port()}", "serve.host=127.0.0.1",
                                    "generation.max_new_tokens=48", *(overrides or [])])
    url = run_local(cfg, run_dir=run_dir, model=model, key="")
    wait_healthy(url, timeout_s)
    return RunningApp(url, run_dir, event_store_path(cfg, run_dir))


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/healthz", timeout=10)
            if resp.status_code == 200:
                return
            last = resp.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz not healthy after {timeout_s}s (last: {last!r})")


def stop_app() -> None:
    from ray import serve

    serve.shutdown()


# ----------------------------------------------------------------------------- in-process app


class _FakeMethod:
    """``handle.method.remote(*args)`` of a DeploymentHandle, answered in-process."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        result = self.fn(*args)
        if hasattr(result, "__anext__"):  # a streaming method: the async generator itself
            return result

        async def done():
            return result

        return done()


class _FakeDeployment:
    def __init__(self, **methods) -> None:
        for name, fn in methods.items():
            setattr(self, name, _FakeMethod(fn))

    def options(self, **_):
        return self


def fake_handles():
    """Handles whose deployments answer instantly without models: the distiller takes the
    pasted summaries (or the user's logged ones in :data:`USERS`) as interests, the
    generator and selector write numbered starters."""
    from icebreaker_ray.serve.components import Distilled, GenUpdate, Pick
    from icebreaker_ray.serve.web import Handles

    def distill(user_id, summaries, k=None):
        history = summaries or USERS.get(user_id or "", (0, None, []))[2]
        return Distilled(interests=history[-2:], history=history, cold_start=not history,
                         method="recent" if history else "none", known_user=user_id in USERS)

    def texts(job):
        return [f"Starter {i} about {job.interests[0][:20]}?" for i in range(job.k + 2)]

    async def stream(job):
        yield GenUpdate(first_token=True)
        yield GenUpdate(new_starters=texts(job)[:1])
        yield GenUpdate(texts=texts(job))

    def select(user_id, history, interests, candidates, k, profile=None):
        return [Pick(text, 1.0 - i / 10, "generated") for i, text in enumerate(candidates[:k])]

    return Handles(
        distiller=_FakeDeployment(distill=distill, known_users=lambda: sorted(USERS)),
        generator=_FakeDeployment(sample=texts, stream=stream),
        selector=_FakeDeployment(
            select=select, screen=lambda shown, new, interests: new,
            cold_start=lambda k: [Pick(s, float(c), "cold_start") for s, c in LOGGED_STARTERS[:k]]))


def in_process_app(store_path: str, overrides: list[str] | None = None):
    """The Ingress's real ASGI app (``make_http_app``: routes, limits, body parsing, event
    store) around :func:`fake_handles`; for Starlette's TestClient. Returns (app, store)."""
    from icebreaker_ray.config import load_config
    from icebreaker_ray.serve.store import EventStore
    from icebreaker_ray.serve.web import StarterService, make_http_app

    cfg = load_config("local-cpu", overrides or [])
    store = EventStore(store_path)
    service = StarterService(cfg, fake_handles(), store, "fake-model", has_scorer=False,
                             has_ranker=False)
    return make_http_app(service, None, cfg.serve.max_body_bytes), store


# ----------------------------------------------------------------------------- hostile input

_EVENT = ('{"event_id": "h-1", "request_id": "r-1", "user_id": "u0000001", '
          '"starter": "Which One Piece arc should I read next?", "type": "click"')


def _event_body(extra: str, position: str = "0") -> bytes:
    return f'{{"events": [{_EVENT}, "position": {position}{extra}}}]}}'.encode()


def _event_loc(field: str) -> list:
    return ["body", "events", 0, field]


#: id -> (path, raw request body, status, the ``loc`` its 422 must name). Strings are
#: written as JSON escapes (a lone ``\ud800`` is legal JSON text but not Unicode).
HOSTILE = {
    **{f"k-{tok}": ("/v1/starters", f'{{"k": {tok}}}'.encode(), 422, ["body", "k"])
       for tok in ("NaN", "Infinity", "-Infinity", "1e400")},
    "stream-k-NaN": ("/v1/starters/stream", b'{"k": NaN, "user_id": "u0000001"}', 422, ["body", "k"]),
    "refresh-NaN": ("/v1/starters", b'{"refresh": NaN}', 422, ["body", "refresh"]),
    "summary-NaN": ("/v1/starters", b'{"summaries": ["ok", -Infinity]}', 422, ["body", "summaries", 1]),
    "k-5000-digits": ("/v1/starters", b'{"k": 1' + b"0" * 5000 + b"}", 422, ["body", "k"]),
    "summaries-surrogate": ("/v1/starters", b'{"summaries": ["ok", "bad \\ud800 text"]}', 422,
                            ["body", "summaries", 1]),
    "summaries-utf8-surrogate": ("/v1/starters", b'{"summaries": ["\xed\xa0\x80"]}', 422,
                                 ["body", "summaries", 0]),
    "user-id-surrogate": ("/v1/starters", b'{"user_id": "u000\\udfff"}', 422, ["body", "user_id"]),
    "locale-surrogate": ("/v1/starters", b'{"locale": "en-\\udc00"}', 422, ["body", "locale"]),
    "field-name-surrogate": ("/v1/starters", b'{"k": 2, "us\\ud800er": "x"}', 422, ["body", "us\ufffder"]),
    **{f"position-{tok}": ("/v1/feedback", _event_body("", tok), 422, _event_loc("position"))
       for tok in ("NaN", "Infinity", "-Infinity", "1e400")},
    "starter-surrogate": ("/v1/feedback", _event_body(', "starter": "Hi \\ud83d?"'), 422,
                          _event_loc("starter")),
    "event-field-name-surrogate": ("/v1/feedback", _event_body(', "\\udc00": 1'), 422,
                                   _event_loc("\ufffd")),
    "ts-year-1-naive": ("/v1/feedback", _event_body(', "ts": "0001-01-01T00:00:00"'), 422,
                        _event_loc("ts")),
    "ts-naive": ("/v1/feedback", _event_body(', "ts": "2026-11-21T12:00:00"'), 422, _event_loc("ts")),
    "ts-year-1-utc": ("/v1/feedback", _event_body(', "ts": "0001-01-01T00:00:00Z"'), 422,
                      _event_loc("ts")),
    "ts-year-9999": ("/v1/feedback", _event_body(', "ts": "9999-12-31T23:59:59-23:59"'), 422,
                     _event_loc("ts")),
    "ts-huge-number": ("/v1/feedback", _event_body(', "ts": 1e300'), 422, _event_loc("ts")),
}
