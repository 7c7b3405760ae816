"""Does SIT teach the format? Share of sampled lists that parse and pass the filter with
K starters, base SmolLM2-135M-Instruct vs the SFT model, on the same held-out users.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sft_format_effect.py --out runs/sft-effect \\
        --steps 60 --holdout 15

Runs the real stages on the embedded default (quick world): simulate, an ``interests``
table (the 3 most recent summaries of each user selected, standing in for
distill-interests), distill-corpus with the ``sim`` teacher on the training users only,
sft (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers), then samples ``generation.num_candidates``
lists per held-out user from both models with the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import pyarrow as pa

from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.isg.engines import HFEngine
from icebreaker_ray.isg.generate import GenerationParams, format_pass_rate, generate
from icebreaker_ray.isg.stage import raw_summaries
from icebreaker_ray.models import TextEncoder, load_generator, resolve_generator
from icebreaker_ray.pipeline import run_stage


def write_interests(out: str, users: set[str], recent: int = 3) -> None:
    """Stand-in for distill-interests: the ``recent`` latest summaries are selected."""
    rows = []
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions").to_pandas()
    for uid, g in sessions.sort_values(["user_id", "ts", "session_id"]).groupby("user_id"):
        if uid not in users:
            continue
        for i, (sid, summary) in enumerate(zip(g["session_id"], g["summary"], strict=True)):
            rows.append({"user_id": uid, "session_id": sid, "summary": summary,
                         "score": i / len(g), "selected": i >= len(g) - recent})
    writer = io.StageWriter(out, "distill-interests")
    writer.write_table("interests", pa.Table.from_pylist(rows))
    writer.commit(pinned=True)


def evaluate(model_name: str, interests: list[list[str]], params: GenerationParams, seed: int) -> dict:
    model, tok = load_generator(model_name)
    t = time.time()
    res = generate(HFEngine(model, tok, params.batch_size), interests, TextEncoder(), params, seed=seed)
    cands = [c for r in res for c in r.candidates]
    return {
        "pass_rate": format_pass_rate(res),
        "strict_pass_rate": sum(c.complete and c.status == "ok" for c in cands) / len(cands),
        "parse_ok_rate": sum(c.status == "ok" for c in cands) / len(cands),
        "users_with_k": sum(len(r.starters) == params.k for r in res) / len(res),
        "lists": len(cands),
        "seconds": time.time() - t,
        "example": res[0].candidates[0].text,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/sft-effect")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--holdout", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-users", type=int, default=None, help="evaluate on this many held-out users")
    ap.add_argument("--candidates", type=int, default=None, help="lists sampled per user")
    ap.add_argument("--eval-only", metavar="MODEL",
                    help="only evaluate MODEL (alias or HF dir) on the held-out users of --out")
    args = ap.parse_args()
    cfg = load_config("quick", [f"sft.max_steps={args.steps}", f"sft.save_steps={max(1, args.steps // 2)}",
                                f"sft.learning_rate={args.lr}", "ray.num_cpus=2"])
    t0 = time.time()
    run_stage("simulate", cfg, args.out)
    users = sorted(raw_summaries(args.out, 1))
    held_out, train_users = users[: args.holdout], set(users[args.holdout :])
    params = GenerationParams.from_config(cfg)
    if args.candidates:
        params = dataclasses.replace(params, num_candidates=args.candidates)
    held_out = held_out[: args.eval_users or len(held_out)]
    if args.eval_only:
        recent = raw_summaries(args.out, 3)
        model = resolve_generator(args.eval_only)
        res = evaluate(model, [recent[u] for u in held_out], params, args.seed)
        print(json.dumps({"model": args.eval_only, "users": len(held_out), **res}, indent=2))
        return
    if not io.is_complete(args.out, "distill-interests"):
        write_interests(args.out, train_users)
    corpus = run_stage("distill-corpus", cfg, args.out)
    sft = run_stage("sft", cfg, args.out)
    print("corpus:", corpus["metrics"], "\nsft:", sft["metrics"], f"\nstages took {time.time() - t0:.0f}s")

    # Held-out users' trigger interests, built the same way as the training users'.
    recent = raw_summaries(args.out, 3)
    interests = [recent[u] for u in held_out]
    report = {
        "users": len(held_out), "K": params.k, "candidates_per_user": params.num_candidates,
        "sft_steps": args.steps, "sft_metrics": sft["metrics"],
        "base": evaluate(resolve_generator(cfg.models.generator), interests, params, args.seed),
        "sft": evaluate(io.join(args.out, "sft", "model"), interests, params, args.seed),
    }
    print(json.dumps(report, indent=2, default=str))
    io.write_json(io.join(args.out, "sft-format-effect.json"), report)


if __name__ == "__main__":
    main()
