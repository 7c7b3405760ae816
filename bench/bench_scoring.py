"""Benchmark: summaries scored per second through Ray Data (actor pool) vs one plain process.

    .venv/bin/python bench/bench_scoring.py --n 4000 --actors 2

Both paths do the same work per summary as distill-interests: MiniLM embedding + the
resonance scorer's text tower (E_text), in batches, on the same summaries. The Ray Data path
is ``icebreaker_ray.rid.stage.embed_rows`` (the stage's own code); the baseline calls the
same actor class directly in this process. Ray start-up is excluded (the stage's cluster is
already up in a pipeline run), actor start-up (model load) is included on both sides.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def summaries(n: int, seed: int = 0) -> list[str]:
    from icebreaker_ray.sim.catalog import load_catalog, render_summary

    cat = load_catalog()
    rng = np.random.default_rng(seed)
    subjects = cat.subjects
    # unique texts, so the encoder's cache cannot help either side
    return [f"{render_summary(subjects[int(rng.integers(len(subjects)))], rng)} (#{i})" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--plain-threads", type=int, default=0,
                    help="torch threads of the plain process (0: torch's default, one per core)")
    args = ap.parse_args()
    if args.plain_threads:
        import torch

        torch.set_num_threads(args.plain_threads)

    from icebreaker_ray.config import ScorerSection, load_config
    from icebreaker_ray.models import set_offline
    from icebreaker_ray.raykit import init_ray
    from icebreaker_ray.rid import scorer
    from icebreaker_ray.rid.stage import EmbedActor, embed_rows

    set_offline()
    cfg = load_config(None, [f"judge.num_actors={args.actors}"])
    texts = summaries(args.n)
    tmp = tempfile.mkdtemp()
    data = scorer.build_user_examples(["u"], np.array(["u"]), np.array(["s"]), np.zeros((1, 384), np.float32), set())
    scorer.save_scorer(scorer.new_model(data, ScorerSection()), tmp)

    # one plain process: the same actor class, called batch by batch
    t0 = time.perf_counter()
    actor = EmbedActor(cfg.models.embedder, cfg.judge.max_summary_chars, tmp)
    z_plain = []
    for s in range(0, len(texts), args.batch_size):
        chunk = np.array(texts[s: s + args.batch_size], dtype=object)
        z_plain.append(actor({"_row": np.arange(len(chunk)), "summary": chunk})["z"])
    plain_s = time.perf_counter() - t0
    z_plain = np.concatenate(z_plain)

    init_ray(cfg)
    t0 = time.perf_counter()
    out = embed_rows(cfg, texts, scorer_dir=tmp, batch_size=args.batch_size, num_actors=args.actors)
    ray_s = time.perf_counter() - t0
    assert np.allclose(out["z"], z_plain, atol=1e-4), "the two paths disagree"

    plain, ray_rate = args.n / plain_s, args.n / ray_s
    import os

    import torch

    print(f"summaries: {args.n}, batch {args.batch_size}, cores {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f}, plain torch threads {torch.get_num_threads()}")
    print(f"one plain process      : {plain:8.1f} summaries/s ({plain_s:.1f} s)")
    print(f"Ray Data, {args.actors} actors     : {ray_rate:8.1f} summaries/s ({ray_s:.1f} s)")
    print(f"ratio Ray Data / plain : {ray_rate / plain:.2f}x")


if __name__ == "__main__":
    main()
