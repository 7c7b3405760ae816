"""Benchmark: hybrid reward list search (Algorithm 1) vs exhaustive search over all K-subsets.

    python bench/bench_list_search.py --users 500
    python bench/bench_list_search.py --users 200 --pool-sizes 12 20 40 --lam 1.0

For each pool size N, seeded synthetic users get utilities uniform in (0, 1) and random unit
embeddings (d=384) where about half of the candidates sit in near-duplicate clusters (cosine
≈ 0.75–0.95 to each other), the way sampled starters repeat themselves. Both searches maximize
the eq. 8 Score v̂_util + λ·v̂_div; the table reports the beam's S+ Score as a fraction of the
exhaustive optimum, the time per user of each (same process, same pools), and how often each
negative type of SELECTNEGATIVES was found. "coherent" is the beam with K·R_div in line 11
(ListSearchParams.coherent_running_value), whose running value is K × the eq. 8 Score.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np

from icebreaker_ray.reward.diversity import normalize_rows
from icebreaker_ray.search.list_search import (
    NEGATIVE_TYPES,
    ListSearchParams,
    exhaustive_list_search,
    hybrid_reward_list_search,
)


def make_user(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Utilities in (0, 1) and unit embeddings with near-duplicate clusters for one user."""
    utility = rng.uniform(0.01, 0.99, n)
    centers = normalize_rows(rng.standard_normal((max(1, n // 4), dim)))
    own = normalize_rows(rng.standard_normal((n, dim)))
    in_cluster = rng.random(n) < 0.5
    spread = rng.uniform(0.2, 0.6, n)[:, None]  # cosine to the cluster center ≈ 1/√(1+spread²)
    clustered = centers[rng.integers(0, centers.shape[0], n)] + spread * own
    return utility, normalize_rows(np.where(in_cluster[:, None], clustered, own))


def run(n: int, users: int, params: ListSearchParams, dim: int, seed: int) -> dict[str, float]:
    pools = [make_user(np.random.default_rng([seed, n, u]), n, dim) for u in range(users)]
    coherent = dataclasses.replace(params, coherent_running_value=True)
    timings = dict.fromkeys(("beam", "beam+neg", "exhaustive"), 0.0)
    ratios, ratios_coherent = [], []
    found = dict.fromkeys(NEGATIVE_TYPES, 0)
    hybrid_reward_list_search(*pools[0], params)  # warm-up: first calls pay one-off costs
    exhaustive_list_search(*pools[0], params.K, params.lam)
    for u, (utility, emb) in enumerate(pools):
        t0 = time.perf_counter()
        beam = hybrid_reward_list_search(utility, emb, params, mine_negatives=False)
        t1 = time.perf_counter()
        full = hybrid_reward_list_search(utility, emb, params, rng=u)
        t2 = time.perf_counter()
        _, optimum = exhaustive_list_search(utility, emb, params.K, params.lam)
        t3 = time.perf_counter()
        timings["beam"] += t1 - t0
        timings["beam+neg"] += t2 - t1
        timings["exhaustive"] += t3 - t2
        ratios.append(beam.best_value / optimum)
        alt = hybrid_reward_list_search(utility, emb, coherent, mine_negatives=False)
        ratios_coherent.append(alt.best_value / optimum)
        for kind in NEGATIVE_TYPES:
            found[kind] += full.negatives[kind] is not None
    ratios_a, coherent_a = np.array(ratios), np.array(ratios_coherent)
    return {
        "n_lists": math.comb(n, params.K),
        "mean": ratios_a.mean(),
        "min": ratios_a.min(),
        "optimal": (ratios_a >= 1 - 1e-12).mean(),
        "mean_coherent": coherent_a.mean(),
        "optimal_coherent": (coherent_a >= 1 - 1e-12).mean(),
        **{f"ms_{k}": 1e3 * v / users for k, v in timings.items()},
        **{f"found_{k}": v / users for k, v in found.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500, help="seeded users per pool size")
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[12, 20], metavar="N")
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--J", type=int, default=ListSearchParams.J)
    parser.add_argument("--M", type=int, default=ListSearchParams.M)
    parser.add_argument("--lam", type=float, default=ListSearchParams.lam)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = ListSearchParams(K=args.K, J=args.J, M=args.M, lam=args.lam)
    rows = [(n, run(n, args.users, params, args.dim, args.seed)) for n in args.pool_sizes]

    print(
        f"list search, K={params.K} J={params.J} M={params.M} λ={params.lam}, "
        f"{args.users} users per N, d={args.dim}, seed={args.seed}\n"
    )
    print(
        "| N | C(N,K) | beam/exh. mean | min | beam optimal | coherent mean | coherent optimal "
        "| beam ms/user | exhaustive ms/user | exh./beam time | beam+negatives ms/user |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in rows:
        print(
            f"| {n} | {r['n_lists']} | {r['mean']:.4f} | {r['min']:.4f} | {r['optimal']:.1%} "
            f"| {r['mean_coherent']:.4f} | {r['optimal_coherent']:.1%} "
            f"| {r['ms_beam']:.3f} | {r['ms_exhaustive']:.3f} "
            f"| {r['ms_exhaustive'] / r['ms_beam']:.2f}x | {r['ms_beam+neg']:.3f} |"
        )
    print("\nnegatives found (share of users)\n")
    print("| N | " + " | ".join(NEGATIVE_TYPES) + " |")
    print("|---|" + "---|" * len(NEGATIVE_TYPES))
    for n, r in rows:
        print(f"| {n} | " + " | ".join(f"{r[f'found_{k}']:.1%}" for k in NEGATIVE_TYPES) + " |")


if __name__ == "__main__":
    main()
