"""Mined preference pairs against the truth: where Algorithm 1's pairs go wrong, and which
SELECTNEGATIVES rule makes them right, on a finished run's candidate pools.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pairs.py --out runs/demo \
        --config configs/local-cpu.yaml

For every mining round of the run (round 0: ``OUT/mine``; round r: ``OUT/iterate/round-r``)
it reads the candidate pools C the generator sampled, scores every starter with that
round's ``util`` ranker ensemble (each member's R_util: the conservative reward is their
mean - ``search.kappa`` std) and with the truth (the oracle's P(click) of the starter shown
alone at the top, in the world that round was mined in), and prints:

1. **Within-pool ranking quality.** Algorithm 1 compares starters *of one user*, so the
   figure that matters is how well R_util orders one pool, not the held-out click AUC
   across users (which a user's base rate alone can carry): the mean over pools of the
   pairwise concordance with the truth (ties in the truth skipped), for the conservative
   reward, the members' mean, the click-free interest-similarity proxy (reward/proxy.py)
   and the truth itself (1.0 by construction, the ceiling).
2. **Pairs under each rule.** Algorithm 1 and SELECTNEGATIVES rerun on the same pools with
   each variant of the mining rule; every pair is graded like the report's "preference
   pairs vs the oracle" (:func:`icebreaker_ray.eval.stage.pair_agreement`: the chosen list's
   slate P(click) against the rejected list's, ties half): pairs and share of them right,
   per negative type. "as configured" must reproduce the report's figures for the round;
   "truth as R_util" is the ceiling of each negative type's definition (a diversity
   negative has comparable utility by definition, so only a slate effect of the truth can
   make it right or wrong).

Nothing here trains; it reads the run and the world the run's simulator saved. Sim runs
only (the truth is the simulated world's). A round mines ``search.max_users`` users, too few
pairs to tell rules apart (one pair of 60 is 1.7 points); ``--more-users N`` samples fresh
pools for N more training users (never held out, never the gate's validation users) from
the generator that round mined with (round 0: SFT; round 1: round 0's DPO model).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.eval.stage import pair_agreement
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.reward.ranker import UserFeaturizer, load_ranker, member_utilities
from icebreaker_ray.search.list_search import ListSearchParams
from icebreaker_ray.search.mine import pairs_for_user, prompt_for, search_params
from icebreaker_ray.sim.rollout import load_state, oracle_click_probabilities


def concordance(score: np.ndarray, truth: np.ndarray) -> float:
    """Share of starter pairs of one pool that ``score`` orders like ``truth`` (score ties
    half, truth ties skipped); NaN when the truth ties everywhere."""
    ds = np.sign(score[:, None] - score[None, :])
    dt = np.sign(truth[:, None] - truth[None, :])
    upper = np.triu(np.ones_like(dt, dtype=bool), 1) & (dt != 0)
    if not upper.any():
        return float("nan")
    agree = (ds[upper] == dt[upper]) + 0.5 * (ds[upper] == 0)
    return float(agree.mean())


def more_pools(out: str, cfg, round_: int, have: set[str], n: int) -> list[dict]:
    """Fresh candidate pools for ``n`` training users not in ``have``, sampled by the
    generator that mined ``round_``, as mining samples them."""
    from icebreaker_ray.isg.generate import GenerationParams
    from icebreaker_ray.raykit import init_ray
    from icebreaker_ray.search.mine import sample_candidates
    from icebreaker_ray.search.stage import mining_requests

    if round_ > 1:
        raise SystemExit("--more-users supports rounds 0 and 1")
    wide = cfg.model_copy(update={"search": cfg.search.model_copy(update={"max_users": None})})
    requests = mining_requests(out, wide, round_)
    fresh = [i for i, u in enumerate(requests.column("user_id").to_pylist()) if u not in have]
    rng = np.random.default_rng([cfg.run.seed, round_, 17])
    requests = requests.take(sorted(rng.choice(fresh, min(n, len(fresh)), replace=False).tolist()))
    model = layout.sft_generator(out) if round_ == 0 else layout.dpo_generator(out)
    init_ray(cfg)
    return sample_candidates(requests, io.absolute(model), cfg, GenerationParams.from_config(cfg)).to_pylist()


def round_inputs(out: str, cfg, round_: int, more_users: int = 0) -> dict:
    """Pools, the ranker, the logs the ranker scored with and the world, as mining saw them."""
    sessions = [io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")]
    if round_ == 0:
        pools_uri, ranker_dir, state_name = io.join(out, "mine", "candidates.parquet"), layout.util_ranker(out), None
    else:
        here = f"round-{round_}"
        pools_uri = io.join(out, "iterate", here, "candidates.parquet")
        ranker_dir, state_name = io.join(out, "iterate", here, "util"), here
        sessions += [io.read_table(io.join(out, "iterate", f"round-{r}", "sessions.parquet"), "sessions")
                     for r in range(1, round_ + 1)]
    pools = io.read_table(pools_uri, "candidates").to_pylist()
    if more_users:
        pools += more_pools(out, cfg, round_, {p["user_id"] for p in pools}, more_users)
    return {"pools": pools, "ranker": ranker_dir,
            "sessions": pa.concat_tables(sessions), "state": state_name}


def grade(pairs: Sequence[dict], state) -> dict[str, dict[str, float]]:
    return pair_agreement(pairs, lambda lists: oracle_click_probabilities(state, lists))


def score_pools(inp: dict, state, cfg, encoder, users: pa.Table, interests: dict) -> list[dict]:
    """Each pool with its embeddings, the ranker members' utilities, the conservative
    reward, the click-free proxy and the truth per starter."""
    ranker = load_ranker(inp["ranker"])
    featurizer = UserFeaturizer(inp["sessions"], users, encoder)
    pools = []
    for row in inp["pools"]:
        uid, pool = row["user_id"], list(row["starters"])
        if len(pool) < cfg.search.K:
            continue
        with encoder.scoped():
            emb = encoder(pool)
            proxy = interest_similarity(emb, encoder(list(interests[uid])))
        members, cons = member_utilities(ranker, featurizer, [uid] * len(pool), pool, emb,
                                         cfg.search.kappa)
        members = cons[None] if members is None else members
        truth = np.array([float(oracle_click_probabilities(state, {uid: [s]})[uid][0]) for s in pool])
        pools.append({"uid": uid, "pool": pool, "emb": emb, "members": members, "cons": cons,
                      "mean": members.mean(axis=0), "truth": truth,
                      "proxy": np.asarray(proxy, np.float64),
                      "prompt": prompt_for(interests[uid], cfg.generation.K, cfg.filter.max_chars)})
    return pools


def mined(pools: list[dict], params: ListSearchParams, utility: str, round_: int, cfg,
          min_agreement: float = 0.0) -> list[dict]:
    """The pairs of Algorithm 1 on every pool with ``pool[utility]`` as R_util."""
    rows = []
    for p in pools:
        rows += pairs_for_user(p["uid"], p["prompt"], p["pool"], p[utility], p["emb"], params,
                               round_, cfg.run.seed, cfg.dpo.negatives, p["members"], min_agreement)
    return rows


def analyse(out: str, cfg, round_: int, encoder, users: pa.Table, interests: dict,
            more_users: int = 0) -> dict:
    t0 = time.perf_counter()
    inp = round_inputs(out, cfg, round_, more_users)
    state = load_state(out, cfg, inp["state"])
    pools = score_pools(inp, state, cfg, encoder, users, interests)
    kappa = cfg.search.kappa
    quality = {f"R_util (mean - {kappa:g} std)": "cons", "R_util (members' mean)": "mean",
               "interest-similarity proxy": "proxy"}
    print(f"\n## round {round_}: {len(pools)} pools, mean size "
          f"{np.mean([len(p['pool']) for p in pools]):.1f} ({time.perf_counter() - t0:.0f} s to score)")
    print("\nwithin-pool concordance with the truth (mean over pools; 0.5 = chance)")
    result: dict = {"concordance": {}, "pairs": {}}
    for name, key in quality.items():
        v = np.array([concordance(p[key], p["truth"]) for p in pools])
        v = v[np.isfinite(v)]
        result["concordance"][name] = float(v.mean())
        print(f"  {name:34s} {v.mean():.3f}  (pools above 0.5: {np.mean(v > 0.5):.0%})")
    base = search_params(cfg)
    variants = {
        "as configured": (base, "cons", cfg.search.min_agreement),
        "util_gap 0.35": (replace(base, util_gap=0.35), "cons", cfg.search.min_agreement),
        "util_gap 0.5": (replace(base, util_gap=0.5), "cons", cfg.search.min_agreement),
        "div_gap 0.2": (replace(base, div_gap=0.2), "cons", cfg.search.min_agreement),
        "div_gap 0.3": (replace(base, div_gap=0.3), "cons", cfg.search.min_agreement),
        "no redundancy rule (div_gap alone)": (replace(base, div_redundancy=None), "cons",
                                               cfg.search.min_agreement),
        "div_redundancy 0.8": (replace(base, div_redundancy=0.8), "cons", cfg.search.min_agreement),
        "div_redundancy 0.85": (replace(base, div_redundancy=0.85), "cons", cfg.search.min_agreement),
        "div_redundancy 0.9": (replace(base, div_redundancy=0.9), "cons", cfg.search.min_agreement),
        "kappa 0 (members' mean)": (base, "mean", cfg.search.min_agreement),
        "min_agreement 0.8": (base, "cons", 0.8),
        "min_agreement 1": (base, "cons", 1.0),
        "interest-similarity proxy": (base, "proxy", 0.0),
        "truth as R_util (ceiling)": (base, "truth", 0.0),
    }
    print("\npairs under each rule: n, chosen truly better (ties half)")
    types = ["utility", "diversity", "joint", "all"]
    print(f"  {'rule':36s} " + " ".join(f"{t:>16s}" for t in types))
    for name, (params, utility, agree) in variants.items():
        graded = grade(mined(pools, params, utility, round_, cfg, agree), state)
        result["pairs"][name] = graded
        cells = [f"{graded[t]['pairs']:4d} {graded[t]['chosen_wins']:6.1%}    " if t in graded
                 else f"{'-':>16s}" for t in types]
        print(f"  {name:36s} " + " ".join(cells))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default="configs/local-cpu.yaml")
    ap.add_argument("--rounds", default=None, help="comma-separated rounds (default: all mined)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--more-users", type=int, default=0,
                    help="sample fresh pools for this many more training users per round")
    args = ap.parse_args()
    cfg = load_config(args.config)
    out = args.out
    rounds = [0] + [r for r in range(1, cfg.iterate.rounds + 1)
                    if io.exists(io.join(out, "iterate", f"round-{r}", "candidates.parquet"))]
    if args.rounds:
        rounds = [int(r) for r in args.rounds.split(",")]
    encoder = TextEncoder(cfg.models.embedder)
    users = io.read_table(io.table_uri(out, "simulate", "users"), "users")
    interests = layout.trigger_interests(out)
    report = {f"round {r}": analyse(out, cfg, r, encoder, users, interests, args.more_users)
              for r in rounds}
    if args.json:
        io.write_json(args.json, report)


if __name__ == "__main__":
    main()
