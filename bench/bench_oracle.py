"""Benchmark: the vectorized click oracle vs scoring (user, list) pairs one at a time.

    python bench/bench_oracle.py                      # 10,000 pairs, 2,000-starter pool
    python bench/bench_oracle.py --pairs 50000 --chunk 5000 --loop-pairs 1000

The world, the oracle and MiniLM are set up once; a pool of ~2,000 catalog starters
(regular, functional and sensitive subjects plus generic starters) is rendered and
embedded once, and its text features are computed once. Timed afterwards, with nothing
re-embedded:

- vectorized: ``ClickOracle.click_probabilities`` over all pairs at once (in chunks of
  ``--chunk`` pairs to bound the (U, K, S) and (U, K, d) temporaries);
- loop: the same function called once per pair (U = 1), the way a per-user Python loop
  would use it. It is timed on ``--loop-pairs`` pairs and extrapolated to ``--pairs``.

Both paths share the per-user interest vectors (built once, timed separately) and must
give the same probabilities on the looped subset.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from icebreaker_ray.models import TextEncoder
from icebreaker_ray.sim.catalog import all_starters, load_catalog
from icebreaker_ray.sim.oracle import ClickOracle, TextFeatures
from icebreaker_ray.sim.world import World


def render_pool(world: World, size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct starters: every subject's rendered starters plus generic ones."""
    texts = [t for s in world.subjects for t in all_starters(s)]
    texts += [t for c in world.catalog.categories for t in c.generic_starters]
    texts = list(dict.fromkeys(texts))
    return [texts[i] for i in sorted(rng.choice(len(texts), min(size, len(texts)), replace=False))]


def score_vectorized(oracle: ClickOracle, feats: TextFeatures, interests: np.ndarray,
                     bias: np.ndarray, decay: np.ndarray, idx: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(idx.shape, np.float64)
    for lo in range(0, len(idx), chunk):
        hi = lo + chunk
        out[lo:hi] = oracle.click_probabilities(interests[lo:hi], bias[lo:hi], decay[lo:hi],
                                                feats, idx[lo:hi])
    return out


def score_loop(oracle: ClickOracle, feats: TextFeatures, interests: np.ndarray,
               bias: np.ndarray, decay: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.empty(idx.shape, np.float64)
    for i in range(len(idx)):
        out[i] = oracle.click_probabilities(interests[i : i + 1], bias[i : i + 1],
                                            decay[i : i + 1], feats, idx[i : i + 1])[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000, help="(user, list) pairs to score")
    ap.add_argument("--users", type=int, default=10_000, help="distinct simulated users")
    ap.add_argument("--pool", type=int, default=2_000, help="starters in the rendered pool")
    ap.add_argument("--k", type=int, default=4, help="starters per list")
    ap.add_argument("--chunk", type=int, default=2_500, help="pairs per vectorized call")
    ap.add_argument("--loop-pairs", type=int, default=500, help="pairs timed in the loop")
    ap.add_argument("--repeats", type=int, default=3, help="vectorized runs (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    encoder = TextEncoder()
    world = World(load_catalog())
    oracle = ClickOracle(world, encoder(ClickOracle.subject_texts(world)))
    pool = render_pool(world, args.pool, rng)
    feats = oracle.features(pool, encoder(pool))
    setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    users = [world.new_user(args.seed, i) for i in range(args.users)]
    who = rng.integers(0, args.users, args.pairs)
    day = 0
    interests = np.stack([users[u].interest_weights(day, world.num_subjects) for u in who])
    bias = np.array([users[u].click_bias for u in who])
    decay = np.array([users[u].position_decay for u in who])
    # K distinct starters per list, drawn uniformly from the pool.
    idx = np.stack([rng.choice(len(pool), args.k, replace=False) for _ in range(args.pairs)])
    prep = time.perf_counter() - t0

    vec_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        probs = score_vectorized(oracle, feats, interests, bias, decay, idx, args.chunk)
        vec_times.append(time.perf_counter() - t0)
    vec = min(vec_times)

    n_loop = min(args.loop_pairs, args.pairs)
    t0 = time.perf_counter()
    loop_probs = score_loop(oracle, feats, interests[:n_loop], bias[:n_loop], decay[:n_loop],
                            idx[:n_loop])
    loop_measured = time.perf_counter() - t0
    loop = loop_measured * args.pairs / n_loop
    np.testing.assert_allclose(loop_probs, probs[:n_loop], rtol=1e-5, atol=1e-9)

    print(f"pool: {len(pool)} starters (embedded once); users: {args.users}; K = {args.k}; "
          f"setup (MiniLM load + embeddings + features) {setup:.1f} s; users + interest "
          f"vectors + lists {prep:.1f} s (not in the table)")
    print(f"mean P(any click) per list: {probs.sum(axis=1).mean():.4f}")
    print()
    print("| method | pairs | seconds | pairs/s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| vectorized `click_probabilities` (chunks of {args.chunk}, best of "
          f"{args.repeats}) | {args.pairs:,} | {vec:.3f} | {args.pairs / vec:,.0f} |")
    print(f"| Python loop, one pair per call (timed on {n_loop:,} pairs: {loop_measured:.2f} s; "
          f"extrapolated) | {args.pairs:,} | {loop:.2f} | {args.pairs / loop:,.0f} |")
    print()
    print(f"speed-up of the vectorized oracle: {loop / vec:.1f}x "
          f"(identical probabilities on the {n_loop:,} looped pairs)")


if __name__ == "__main__":
    main()
