"""PMA variants graded by the truth on tuning users: which preference data and DPO settings
make the generator better for users, without looking at the held-out (graded) users.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pma.py --out runs/demo \
        --variant "lr 1e-5: dpo.learning_rate=1e-5" \
        --variant "redundant div: search.div_redundancy=0.9"

On a finished run it grades, by the simulator's truth, the lists of the run's SFT,
SFT+DPO (logged feedback) and ICEBREAKER round-0 (``dpo``) generators and of each variant:
DPO from the run's SFT model with the variant's settings. A variant that changes a
``search.*`` setting re-mines round 0's pairs from the run's own candidate pools with the
run's util ranker (Algorithm 1 only: no new sampling); ``pairs=feedback`` /
``pairs=mined+feedback`` (a pseudo-setting of this bench) trains on the logged-feedback
pairs / both sets.

Tuning users: every user that is neither held out (evaluation grades those) nor mined in
round 0 (``--users`` caps them, a seeded sample); lists are drawn as evaluation draws them
(``eval.num_candidates`` candidates, the first that passes the filter, else the valid ones
pooled, else fewer than K). Per model: format pass (share of sampled lists with K valid
starters), full-K share, invented-entity share, the oracle's P(click) of the list with a
95% bootstrap interval, and the paired difference against SFT and SFT+DPO on the same
users; per variant also its pairs' agreement with the oracle ("chosen truly better").
Scratch models go to ``--scratch`` (deleted unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.data.splits import is_holdout
from icebreaker_ray.eval.stage import _requests, as_dict, pair_agreement
from icebreaker_ray.isg.batch import complete_share, generate_many, invented_share
from icebreaker_ray.isg.generate import GenerationParams
from icebreaker_ray.raykit import init_ray
from icebreaker_ray.sim.rollout import load_state, oracle_click_probabilities

PAIRS = ("mined", "feedback", "mined+feedback")


def parse_variant(spec: str) -> tuple[str, list[str], str]:
    """``"name: a.b=1, c.d=2"`` -> (name, config overrides, pair set)."""
    name, _, rest = spec.partition(":")
    overrides, pairs = [], "mined"
    for item in (s.strip() for s in rest.split(",")):
        if not item:
            continue
        if item.startswith("pairs="):
            pairs = item.split("=", 1)[1]
            if pairs not in PAIRS:
                raise SystemExit(f"{spec!r}: pairs must be one of {', '.join(PAIRS)}")
        else:
            overrides.append(item)
    return name.strip(), overrides, pairs


def pairs_for(out: str, cfg, overrides: list[str], pairs: str) -> list[dict]:
    from icebreaker_ray.search.mine import search_pairs

    rows: list[dict] = []
    if "mined" in pairs:
        if any(o.startswith("search.") for o in overrides):
            sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")
            users = io.read_table(io.table_uri(out, "simulate", "users"), "users")
            interests = layout.trigger_interests(out)
            cand = io.read_table(io.join(out, "mine", "candidates.parquet"), "candidates")
            pools = pa.table({"user_id": cand.column("user_id"),
                              "interests": [interests[u] for u in cand.column("user_id").to_pylist()],
                              "starters": cand.column("starters")})
            rows += search_pairs(pools, layout.util_ranker(out), sessions, users, cfg, 0,
                                 cfg.dpo.negatives).to_pylist()
        else:
            rows += io.read_table(io.join(out, "mine", "preference_pairs.parquet"),
                                  "preference_pairs").to_pylist()
    if "feedback" in pairs:
        rows += io.read_table(io.join(out, "mine", "feedback_pairs.parquet"),
                              "preference_pairs").to_pylist()
    return rows


def train_variant(out: str, cfg, rows: list[dict], scratch: Path, name: str) -> str:
    from icebreaker_ray.isg.stage import dpo_round

    writer = io.StageWriter(str(scratch), f"pma-{abs(hash(name)) % 10**8}")
    dpo_round(cfg, writer, rows, io.absolute(layout.sft_generator(out)), "model", "pma")
    return writer.path("model")


def boot_ci(x: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default="configs/local-cpu.yaml")
    ap.add_argument("--variant", action="append", default=[], help='"name: key=value, ..."')
    ap.add_argument("--users", type=int, default=160)
    ap.add_argument("--scratch", default="runs/bench-pma")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    out, scratch = args.out, Path(args.scratch)
    init_ray(cfg)

    interests = layout.trigger_interests(out)
    mined = set(io.read_table(io.join(out, "mine", "candidates.parquet"), "candidates")
                .column("user_id").to_pylist())
    tuning = sorted(u for u in interests
                    if u not in mined and not is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed))
    if len(tuning) > args.users:
        rng = np.random.default_rng([cfg.run.seed, 404])
        tuning = sorted(rng.choice(tuning, args.users, replace=False).tolist())
    state = load_state(out, cfg, None)  # the world where the logs end: round 0's world
    print(f"{len(tuning)} tuning users (not held out, not mined in round 0)")

    models = {"SFT": layout.sft_generator(out), "SFT+DPO": layout.vanilla_generator(out),
              "ICEBREAKER r0 (run)": layout.dpo_generator(out)}
    agreement: dict[str, dict] = {}
    for spec in args.variant:
        name, overrides, which = parse_variant(spec)
        vcfg = load_config(args.config, overrides)
        t0 = time.perf_counter()
        rows = pairs_for(out, vcfg, overrides, which)
        agreement[name] = pair_agreement(rows, lambda lists: oracle_click_probabilities(state, lists))
        models[name] = train_variant(out, vcfg, rows, scratch, name)
        print(f"trained {name!r} on {len(rows)} pairs in {time.perf_counter() - t0:.0f} s")

    params = GenerationParams(**{**vars(GenerationParams.from_config(cfg)),
                                 "num_candidates": cfg.eval.num_candidates})
    requests = _requests(tuning, interests)
    tables = generate_many([(io.absolute(m), requests) for m in models.values()], cfg, params)
    results, clicks = {}, {}
    for (name, _), table in zip(models.items(), tables, strict=True):
        lists = as_dict(table)
        probs = oracle_click_probabilities(state, {u: s for u, s in lists.items() if s})
        clicks[name] = np.array([float(np.sum(probs.get(u, 0.0))) for u in tuning])
        reasons = Counter()
        for r in table.column("rejections").to_pylist():
            reasons.update(json.loads(r or "{}"))
        results[name] = {"format_pass": complete_share(table),
                         "full_k": float(np.mean([len(lists[u]) >= cfg.generation.K for u in tuning])),
                         "invented": invented_share(table), "p_click": float(clicks[name].mean()),
                         "p_click_ci": boot_ci(clicks[name]),
                         "rejections": dict(reasons.most_common(4))}
    for name in results:
        for ref in ("SFT", "SFT+DPO"):
            d = (clicks[name] - clicks[ref]) * 100
            results[name][f"vs {ref}"] = (float(d.mean()), *boot_ci(d))

    print("\n| model | format pass | full K | invented | P(click) [95%] | vs SFT (pts) | vs SFT+DPO (pts) | top rejections |")
    print("|---|---:|---:|---:|---|---|---|---|")
    for name, r in results.items():
        a, b = r["vs SFT"], r["vs SFT+DPO"]
        print(f"| {name} | {r['format_pass']:.1%} | {r['full_k']:.1%} | {r['invented']:.1%} | "
              f"{r['p_click']:.1%} [{r['p_click_ci'][0]:.1%}, {r['p_click_ci'][1]:.1%}] | "
              f"{a[0]:+.1f} [{a[1]:+.1f}, {a[2]:+.1f}] | {b[0]:+.1f} [{b[1]:+.1f}, {b[2]:+.1f}] | "
              f"{', '.join(f'{k} {v}' for k, v in r['rejections'].items())} |")
    if agreement:
        print("\npairs vs the oracle (variants): n, chosen truly better")
        for name, g in agreement.items():
            print(f"  {name}: " + "; ".join(f"{t} {v['pairs']} {v['chosen_wins']:.1%}" for t, v in g.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "pairs": agreement}, indent=1))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
