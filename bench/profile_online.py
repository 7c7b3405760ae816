"""Where the online path's time goes, one request at a time, in one process (no Serve hops).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_online.py --run runs/demo --requests 12

Runs the server's own per-request pieces (:mod:`icebreaker_ray.serve.components`) the way
the deployments run them, with their thread counts, on the same pasted one-summary
histories as ``bench/bench_serve.py``, and prints the median of each step:

* ``distill``: the interest distiller (MiniLM over the history, resonance scorer, noise
  rules, gating);
* ``prefill``: from the engine call to its first sampled token (tokenizing the prompt,
  prefilling it, the first sampling step), with the prompt length in tokens;
* ``first starter``: until the first starter is finished (the model wrote the separator
  after it), then ``screen``: the safety filter on it (the streamed path);
* ``candidate 0 done`` and ``all done``: until the first sampled list is complete, and all
  of them;
* ``select``: the list policy on the finished candidates (filter, then R_util scores).

The sum is the in-process floor of a full list; what ``bench_serve.py`` measures above it
is HTTP and Serve's hops between the four deployments.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_serve import HISTORIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--config", default="configs/local-cpu.yaml")
    ap.add_argument("--model", default=None, help="generator (default: what the server serves)")
    ap.add_argument("--requests", type=int, default=12)
    args = ap.parse_args()

    import torch

    from icebreaker_ray.config import load_config
    from icebreaker_ray.isg.engines import EngineSpec, make_batcher
    from icebreaker_ray.isg.generate import GenerationParams
    from icebreaker_ray.models import set_offline
    from icebreaker_ray.serve.app import deployment_settings
    from icebreaker_ray.serve.artifacts import locate
    from icebreaker_ray.serve.components import (
        InterestDistillerCore,
        ListSelectorCore,
        candidates_per_request,
        finished_starters,
    )

    cfg = load_config(args.config)
    set_offline(cfg.models.offline)
    art = locate(cfg, args.run, args.model)
    distiller, selector = InterestDistillerCore(cfg, art), ListSelectorCore(cfg, art)
    threads = deployment_settings(cfg, "StarterGenerator").num_threads
    engine = EngineSpec.from_config(cfg, threads=threads).load(art.generator)
    params = GenerationParams.from_config(cfg)
    n = candidates_per_request(cfg)
    # the generator deployment's batcher (with serve.split_alone, as the server runs it)
    batcher = make_batcher(engine, num_return=n, max_requests=cfg.serve.max_batch_size,
                           temperature=params.temperature, top_p=params.top_p,
                           max_new_tokens=params.max_new_tokens, split_alone=cfg.serve.split_alone)
    k = cfg.generation.K
    print(f"generator {art.generator} ({cfg.generation.engine}, {threads} threads, "
          f"split_alone={cfg.serve.split_alone}), {n} candidate lists per request, K={k}")

    rows = []
    for i in range(args.requests + 1):  # the first one warms up
        marks: dict[str, float] = {}
        summary = f"{HISTORIES[i % len(HISTORIES)]} (p{i})"
        torch.set_num_threads(deployment_settings(cfg, "InterestDistiller").num_threads or 1)
        t0 = time.perf_counter()
        d = distiller.distill(None, [summary])
        marks["distill"] = time.perf_counter() - t0

        clock = Marks(marks, finished_starters)
        texts = batcher.submit(_messages(d.interests, k, params), clock.step).result()
        marks["all"] = time.perf_counter() - clock.start
        torch.set_num_threads(deployment_settings(cfg, "ListSelector").num_threads or 1)
        if "first_text" in marks:
            t = time.perf_counter()
            selector.screen([], [marks["first_text"]], d.interests)
            marks["screen"] = time.perf_counter() - t
        t = time.perf_counter()
        picks = selector.select(None, d.history, d.interests, texts, k)
        marks["select"] = time.perf_counter() - t
        marks["generated"] = sum(p.source == "generated" for p in picks)
        if i:
            rows.append(marks)

    def med(key: str) -> float:
        vals = [r[key] for r in rows if key in r and not isinstance(r[key], str)]
        return float(np.median(vals)) * 1000 if vals else float("nan")

    text = engine.tok.apply_chat_template(_messages(["x"], k, params), tokenize=False,
                                          add_generation_prompt=True)
    prompt = engine.tok(text, add_special_tokens=False)["input_ids"]
    print(f"\n{len(rows)} requests, median ms (prompt ~{len(prompt)} tokens with one interest)")
    for label, key in [("distill", "distill"), ("prefill (to first token)", "prefill"),
                       ("first starter written", "first_raw"), ("screen (filter) it", "screen"),
                       ("candidate 0 done", "cand0"), ("all candidates done", "all"),
                       ("select (filter + R_util)", "select")]:
        print(f"  {label:28s} {med(key):8.1f}")
    print(f"  {'in-process full list':28s} {med('distill') + med('all') + med('select'):8.1f}")
    print(f"  {'in-process first starter':28s} {med('distill') + med('first_raw') + med('screen'):8.1f}")
    print(f"  generated starters per list: {np.mean([r['generated'] for r in rows]):.2f} of {k}")
    batcher.close()


class Marks:
    """The engine's ``on_step``: when the first token, the first finished starter and the
    first candidate list arrived, in seconds from construction."""

    def __init__(self, marks: dict, finished) -> None:
        self.marks, self.finished, self.start = marks, finished, time.perf_counter()

    def step(self, news) -> None:
        now = time.perf_counter() - self.start
        self.marks.setdefault("prefill", now)
        for seq, (text, done) in news.items():
            found = self.finished(text, done)
            if "first_raw" not in self.marks and found:
                self.marks["first_raw"], self.marks["first_text"] = now, found[0]
            if seq == 0 and done:
                self.marks.setdefault("cand0", now)


def _messages(interests, k, params):
    from icebreaker_ray.isg.prompts import generator_messages

    return generator_messages(interests, k=k, max_chars=params.max_chars)


if __name__ == "__main__":
    main()
