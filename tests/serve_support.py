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


def build_run(root: Path) -> str:
    """Write the run directory under ``root`` and return its path."""
    from icebreaker_ray.reward.ranker import UtilityRanker
    from icebreaker_ray.rid.scorer import ResonanceScorer, save_scorer

    run = str(root)
    day = 86_400_000
    sim = io.StageWriter(run, "simulate")
    sim.write_table("users", pa.table({
        "user_id": list(USERS), "activity_bucket": pa.array([b for b, _, _ in USERS.values()], pa.int32()),
        "profile": [p for _, p, _ in USERS.values()]}, schema=schema("users")))
    rows = [(u, f"{u}-{i:04d}", (i + 1) * day, s) for u, (_, _, ss) in USERS.items() for i, s in enumerate(ss)]
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
