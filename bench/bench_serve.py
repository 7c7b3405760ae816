"""Online serving latency and throughput: the Ray Serve app vs plain ``transformers.generate``.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve.py                    # real SmolLM2
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve.py --run runs/demo    # the run's SFT model
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve.py --duration 60 --requests 8

Both sides sample the same number of candidate lists per request (``--candidates``) with
the same model, sampling settings and prompt, and answer with a K-list that passed the
same safety filter:

* **baseline**: one ``model.generate`` per request (its N candidates in one call), no
  batching across requests, requests served one at a time, parse + filter
  (``isg.generate.select_list``), in a Ray actor so it runs at the same OS priority as
  the Serve replicas (Ray starts workers at nice 15). Time to first token: the
  streamer's first token, counted from when the request was submitted.
* **serve**: the full application over HTTP (ingress, interest distillation, batched
  generation with continuous batching, ranking, filter). Full list: ``POST /v1/starters``
  with ``refresh`` (no cache). First token: the ``first_token`` event of
  ``POST /v1/starters/stream``; first starter: its first filtered ``starter`` event.

With ``--run``, the ``--known`` first known users' lists are precomputed first
(``icebreaker precompute``, timed) and each is then asked for once: the known-user path.
Latency p50/p99 at concurrency 1 and 8, then requests/s sustained for ``--duration``
seconds at concurrency 8 (errors counted). Each request carries a different pasted
history, so nothing is answered from the cache. The baseline runs first and its actor is
killed before the server starts, so the two never share the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HISTORIES = [
    "Asked about One Piece's Wano arc", "Sourdough starter troubleshooting",
    "Marathon training plan for a beginner", "Local LLM deployment with Ollama",
    "Budget travel in Japan in spring", "Rust borrow checker errors", "Houseplant care in winter",
    "Chess openings for beginners", "Learning jazz piano voicings", "Home espresso grind size",
    "Birdwatching gear for a first trip", "Knitting a first sweater", "Photography at night",
    "Board games for four players", "Learning Spanish with podcasts", "Building a mechanical keyboard",
]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}


def run_concurrent(fn, n_requests: int, concurrency: int) -> list[dict]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(fn, range(n_requests)))


# ----------------------------------------------------------------------------- baseline


class Baseline:
    """Plain unbatched ``transformers.generate``: one request at a time."""

    def __init__(self, cfg, model_path: str, candidates: int) -> None:
        import torch

        from icebreaker_ray.isg.engines import HFEngine
        from icebreaker_ray.isg.filters import FilterParams, SafetyFilter
        from icebreaker_ray.isg.generate import GenerationParams
        from icebreaker_ray.models import TextEncoder, load_generator
        from icebreaker_ray.serve.components import BatchSampler

        torch.set_num_threads(2)
        model, tok = load_generator(model_path, cfg.models.dtype)
        params = GenerationParams.from_config(cfg)
        self.sampler = BatchSampler(HFEngine(model, tok, params.batch_size), params, candidates)
        self.safety = SafetyFilter(TextEncoder(cfg.models.embedder), FilterParams.from_config(cfg, cfg.generation.K))
        self.k = cfg.generation.K
        self.lock = threading.Lock()

    def request(self, i: int) -> dict:
        """One request; times are absolute (``time.time()``) so the caller can include
        the time the request waited for the actor."""
        from icebreaker_ray.isg.generate import select_list
        from icebreaker_ray.serve.components import GenJob

        first: list[float] = []
        with self.lock:
            [texts] = self.sampler.run(
                [GenJob([HISTORIES[i % len(HISTORIES)]], self.k, stream=True)],
                lambda updates: first.append(time.time()) if not first else None)
            result = select_list(texts, self.safety, self.k, [HISTORIES[i % len(HISTORIES)]])
        end = time.time()
        return {"end": end, "first_token": first[0] if first else end, "valid": len(result.starters)}


def bench_baseline(cfg, model: str, candidates: int, args) -> dict:
    """The baseline in a Ray actor: the same worker niceness as the Serve replicas (Ray
    runs workers at nice 15), one request at a time (the actor runs calls serially)."""
    import ray

    actor = ray.remote(num_cpus=0.5)(Baseline).remote(cfg, model, candidates)
    ray.get(actor.request.remote(0))  # load + warm-up

    def one(i: int) -> dict:
        submitted = time.time()
        r = ray.get(actor.request.remote(i))
        return {"latency": r["end"] - submitted, "ttft": r["first_token"] - submitted,
                "valid": r["valid"]}

    out = {}
    for conc in (1, 8):
        rows = run_concurrent(one, requests_for(args, conc), conc)
        out[f"c{conc}"] = {"list": summary([r["latency"] for r in rows]),
                           "ttft": summary([r["ttft"] for r in rows]),
                           "short_lists": sum(r["valid"] < cfg.generation.K for r in rows)}
    ray.kill(actor)
    return out


def requests_for(args, concurrency: int) -> int:
    return max(args.requests, concurrency)


# ----------------------------------------------------------------------------- serve


def body(i: int, salt: str) -> dict:
    return {"summaries": [f"{HISTORIES[i % len(HISTORIES)]} ({salt}{i})"], "refresh": True}


def serve_list(client: httpx.Client, i: int, salt: str) -> dict:
    start = time.perf_counter()
    resp = client.post("/v1/starters", json=body(i, salt))
    return {"latency": time.perf_counter() - start, "ok": resp.status_code == 200,
            "valid": len(resp.json().get("starters", [])) if resp.status_code == 200 else 0}


def serve_stream(client: httpx.Client, i: int, salt: str) -> dict:
    start = time.perf_counter()
    out = {"ttft": None, "first_starter": None, "latency": None, "ok": False}
    with client.stream("POST", "/v1/starters/stream", json=body(i, salt)) as resp:
        for line in resp.iter_lines():
            if not line:
                continue
            event = json.loads(line)["event"]
            now = time.perf_counter() - start
            if event == "first_token" and out["ttft"] is None:
                out["ttft"] = now
            elif event == "starter" and out["first_starter"] is None:
                out["first_starter"] = now
            elif event == "done":
                out["latency"], out["ok"] = now, True
    return out


def sustained(url: str, seconds: float, concurrency: int) -> dict:
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            i = 0
            while time.monotonic() < stop:
                i += 1
                try:
                    r = serve_list(c, i * 97 + n, f"s{n}-")
                    key = "ok" if r["ok"] and r["valid"] else "errors"
                except httpx.HTTPError:
                    key = "errors"
                with lock:
                    counts[key] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    return {**counts, "seconds": took, "rps": counts["ok"] / took}


def bench_known(client: httpx.Client, users: list[str]) -> dict:
    """Known users answered from the precomputed store: each user once, one at a time
    (a second request would be the per-replica TTL cache, not the store)."""
    rows = []
    for user in users:
        start = time.perf_counter()
        resp = client.post("/v1/starters", json={"user_id": user})
        rows.append({"latency": time.perf_counter() - start, "ok": resp.status_code == 200,
                     "source": resp.json().get("source") if resp.status_code == 200 else None})
    return {"list": summary([r["latency"] for r in rows if r["ok"]]),
            "precomputed": sum(r["source"] == "precomputed" for r in rows),
            "errors": sum(not r["ok"] for r in rows)}


def bench_serve(cfg, run_dir: str | None, model: str, args, known: list[str] | None = None) -> dict:
    from ray import serve

    from icebreaker_ray.raykit import init_ray, shutdown
    from icebreaker_ray.serve.app import run_local

    init_ray(cfg)  # already up (the baseline ran on it): a no-op
    url = run_local(cfg, run_dir=run_dir, model=model, key="")
    out: dict = {}
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            for i in range(2):  # warm-up (first-call costs in every replica)
                serve_list(c, i, "warm")
                serve_stream(c, i, "warmstream")
            for conc in (1, 8):
                n = requests_for(args, conc)
                lists = run_concurrent(lambda i, c=c, conc=conc: serve_list(c, i, f"l{conc}-"), n, conc)
                streams = run_concurrent(lambda i, c=c, conc=conc: serve_stream(c, i, f"t{conc}-"), n, conc)
                out[f"c{conc}"] = {
                    "list": summary([r["latency"] for r in lists if r["ok"]]),
                    "ttft": summary([r["ttft"] for r in streams if r["ttft"] is not None]),
                    "first_starter": summary([r["first_starter"] for r in streams if r["first_starter"]]),
                    "stream_done": summary([r["latency"] for r in streams if r["ok"]]),
                    "errors": sum(not r["ok"] for r in lists + streams),
                    "short_lists": sum(r["valid"] < cfg.generation.K for r in lists if r["ok"]),
                }
            if known:
                out["known"] = bench_known(c, known)
        out["sustained"] = sustained(url, args.duration, 8)
    finally:
        serve.shutdown()
        shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Serving latency/throughput vs plain generate")
    ap.add_argument("--config", default="local-cpu")
    ap.add_argument("--run", default=None, help="run directory: its scorer/ranker/logs, and its SFT model")
    ap.add_argument("--model", default=None, help="generator (default: RUN/sft/model, else SmolLM2)")
    ap.add_argument("--candidates", type=int, default=None, help="lists per request (default: config)")
    ap.add_argument("--requests", type=int, default=6, help="requests per latency measurement")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the sustained run")
    ap.add_argument("--known", type=int, default=32,
                    help="with --run: precompute this many known users' lists, then time them")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from icebreaker_ray.config import load_config
    from icebreaker_ray.models import resolve_generator

    overrides = [f"serve.port={_free_port()}"]
    if args.candidates:
        overrides.append(f"serve.num_candidates={args.candidates}")
    cfg = load_config(args.config, overrides)
    sft = Path(args.run, "sft", "model") if args.run else None
    model = resolve_generator(args.model or (str(sft) if sft and sft.is_dir() else cfg.models.generator))
    from icebreaker_ray.serve.components import candidates_per_request

    candidates = candidates_per_request(cfg)
    load = os.getloadavg()[0]

    from icebreaker_ray.raykit import init_ray

    init_ray(cfg)
    base = bench_baseline(cfg, model, candidates, args)
    known, pre = None, None
    if args.run and args.known:
        from icebreaker_ray.serve.components import known_histories
        from icebreaker_ray.serve.precompute import precompute

        sessions = Path(args.run, "simulate", "sessions.parquet")
        known = sorted(known_histories(str(sessions), cfg.serve.max_summary_chars))[: args.known]
        res = precompute(cfg, args.run, users=known, model=model, force=True)
        pre = {"users": len(known), "seconds": res.seconds}
    served = bench_serve(cfg, args.run, model, args, known)
    result = {"model": model, "candidates": candidates, "K": cfg.generation.K,
              "engine": cfg.generation.engine, "precompute": pre,
              "max_new_tokens": cfg.generation.max_new_tokens, "load_avg_at_start": load,
              "load_avg_at_end": os.getloadavg()[0], "baseline": base, "serve": served}
    print(json.dumps(result, indent=2))
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def render(r: dict) -> str:
    """The Markdown table that goes into BENCHMARKS.md."""
    rows = ["| measure | concurrency | Ray Serve app | plain generate, unbatched |",
            "| --- | ---: | ---: | ---: |"]
    for conc in (1, 8):
        s, b = r["serve"][f"c{conc}"], r["baseline"][f"c{conc}"]
        rows.append(f"| full list p50 / p99 (s) | {conc} | {s['list']['p50']:.2f} / {s['list']['p99']:.2f} "
                    f"| {b['list']['p50']:.2f} / {b['list']['p99']:.2f} |")
        rows.append(f"| first token p50 / p99 (s) | {conc} | {s['ttft']['p50']:.2f} / {s['ttft']['p99']:.2f} "
                    f"| {b['ttft']['p50']:.2f} / {b['ttft']['p99']:.2f} |")
        rows.append(f"| first filtered starter p50 (s) | {conc} | {s['first_starter']['p50']:.2f} | – |")
    if r["serve"].get("known"):
        kn, pre = r["serve"]["known"], r["precompute"]
        rows.append(f"| known user, precomputed list p50 / p99 (ms) | 1 | {1000 * kn['list']['p50']:.0f} / "
                    f"{1000 * kn['list']['p99']:.0f} ({kn['precomputed']} of {kn['list']['n']} from the store; "
                    f"precompute: {pre['users']} users in {pre['seconds']:.0f} s) | – |")
    sus = r["serve"]["sustained"]
    rows.append(f"| sustained, {sus['seconds']:.0f} s | 8 | {sus['rps']:.2f} req/s, {sus['errors']} errors "
                f"({sus['ok']} answered) | – |")
    return "\n".join(rows)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
