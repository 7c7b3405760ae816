"""Scaling to 100M users, on paper: per-item costs measured here -> work and GPU-hours per stage.

    .venv/bin/python bench/scaling_costs.py --run runs/quick-e2e          # a run through `mine`
    .venv/bin/python bench/scaling_costs.py --run runs/demo --users 1e8 --gpu-hour-usd 3

Measured from the run (the simulated world, or your own logs in the same schema):
sessions per user-day, judged pairs per session, users with trigger interests, teacher rows
per user, mined pairs per user, and token counts (SmolLM2 tokenizer, chat template) of a
summary, a SIT example, a generated list and a DPO pair. Measured on this machine: MiniLM
embeddings per second on the CPU. Everything else is an *assumption*, printed with the
table: the GPU throughputs (public orders of magnitude, not measured here) and the
scenario (history window, rounds, eval sample, daily requests) taken from
configs/gpu-cluster.yaml where it says.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq

# ----------------------------------------------------------------------------- assumptions

#: GPU throughputs on one H100 80GB SXM (bf16). Assumptions, not measurements.
GPU = {
    # sentence-transformers lists all-MiniLM-L6-v2 at ~14k sentences/s on a V100; assume 20k on H100.
    "embed_per_s": 20_000,
    # 7B decoding under vLLM with large batches and short outputs (prefix-cached prompts):
    # the low end of published 7-8B H100 output throughputs (2.5k-5k tok/s per GPU).
    "gen_tok_per_s": 2_500,
    # 7B prefill (prompt tokens) under vLLM, per GPU.
    "prefill_tok_per_s": 20_000,
    # 7B full fine-tuning, ZeRO-3, bf16: 6 * 7e9 FLOPs/token at 40% MFU of 989 TFLOP/s.
    "train_tok_per_s": 0.40 * 989e12 / (6 * 7e9),
}
#: DPO does policy forward+backward (6N) plus a reference forward (2N) per token.
DPO_COST_FACTOR = 8 / 6

#: The 100M-user scenario (configs/gpu-cluster.yaml where noted).
SCENARIO = {
    "window_days": 28,            # history the offline pipeline reads
    "K": 4,                       # generation.K
    "num_candidates": 16,         # generation.num_candidates (lists sampled per user in mine)
    "rounds": 4,                  # iterate.rounds (mine -> dpo per round)
    "sft_examples": 16 * 8 * 4 * 2000,   # sft: 16 workers x batch 8 x accumulation 4 x 2000 steps
    "dpo_pairs": 16 * 4 * 8 * 1000,      # dpo: 16 workers x batch 4 x accumulation 8 x 1000 steps
    "scorer_epochs": 4,           # scorer.epochs with finetune_text_encoder: true
    "mine_users_sampled": 1_000_000,  # search.max_users per round in the sampled variant
    "eval_users": 1_000_000,      # held-out users the evaluation samples for
    "eval_policies": 6,           # baseline, PE, PE+RID, SFT, SFT+DPO, ICEBREAKER
    "dau_share": 0.30,            # daily active users / users
    "requests_per_dau": 1.0,      # empty-chat screens that ask for starters per active user-day
    "judge_prompt_tokens": 250,   # Table 5 prompt + two summaries, for an LLM judge backend
    "teacher_output_tokens": 400,  # <think> + 5-20 starters, for an LLM teacher backend
}


# ----------------------------------------------------------------------------- measurements


def _table(run: str, stage: str, name: str):
    return pq.read_table(f"{run}/{stage}/{name}.parquet").to_pandas()


def measure(run: str, embed_sample: int) -> dict[str, float]:
    """Per-user and per-item quantities of ``run`` plus MiniLM's CPU speed here."""
    from icebreaker_ray.isg.prompts import render_completion
    from icebreaker_ray.isg.sft import sit_examples
    from icebreaker_ray.models import TextEncoder, load_tokenizer

    users = _table(run, "simulate", "users")
    sessions = _table(run, "simulate", "sessions")
    pairs = _table(run, "label-revisits", "revisit_pairs")
    interests = _table(run, "distill-interests", "interests")
    corpus = _table(run, "distill-corpus", "sit_corpus")
    prefs = _table(run, "mine", "preference_pairs")
    candidates = _table(run, "mine", "candidates")
    impressions = _table(run, "simulate", "impressions")

    days = max((sessions["ts"].max() - sessions["ts"].min()).total_seconds() / 86400, 1.0)
    tok = load_tokenizer("smollm2-135m-instruct")

    def ntok(texts) -> float:
        return float(np.mean([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]))

    def chat_tokens(messages) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    k = SCENARIO["K"]
    examples = sit_examples(corpus.to_dict("records"), k=k)
    prompt_tok = float(np.mean([chat_tokens(e["prompt"]) for e in examples]))
    list_tok = ntok([e["completion"][0]["content"] for e in examples])
    pair_tok = float(np.mean([chat_tokens(list(p)) + ntok([render_completion(c)]) + ntok([render_completion(r)])
                              for p, c, r in zip(prefs["prompt"].map(_messages), prefs["chosen"],
                                                 prefs["rejected"], strict=True)]))
    mined_users = candidates["user_id"].nunique()

    enc = TextEncoder()
    texts = [f"{s} (#{i})" for i, s in enumerate(sessions["summary"].tolist() * 8)][:embed_sample]
    enc(["warm-up"])
    start = time.perf_counter()
    enc(texts)
    embed_cpu = len(texts) / (time.perf_counter() - start)

    n_users = len(users)
    return {
        "users": n_users,
        "days": days,
        "sessions_per_user_day": len(sessions) / n_users / days,
        "impressions_per_user_day": len(impressions) / n_users / days,
        "pairs_per_session": len(pairs) / max(len(sessions), 1),
        "interest_users_share": interests.loc[interests["selected"], "user_id"].nunique() / n_users,
        "corpus_rows_per_user": len(corpus) / n_users,
        "pairs_per_mined_user": len(prefs) / max(mined_users, 1),
        "summary_tokens": ntok(sessions["summary"].tolist()),
        "sft_example_tokens": prompt_tok + list_tok,
        "prompt_tokens": prompt_tok,
        "list_tokens": list_tok,
        "dpo_pair_tokens": pair_tok,
        "embed_cpu_per_s": embed_cpu,
    }


def _messages(prompt):
    """A stored DPO prompt (JSON chat messages or plain text) as chat messages."""
    import json

    if isinstance(prompt, str):
        try:
            return json.loads(prompt)
        except ValueError:
            return [{"role": "user", "content": prompt}]
    return list(prompt)


# ----------------------------------------------------------------------------- the table


def table(m: dict[str, float], users: float, gpus_per_node: int) -> list[tuple[str, str, str, float, str]]:
    """(stage, work, amount, H100-hours, how) rows for ``users`` users."""
    s = SCENARIO
    hour = 3600.0
    summaries = users * m["sessions_per_user_day"] * s["window_days"]
    judged = summaries * m["pairs_per_session"]
    with_interests = users * m["interest_users_share"]
    lists_per_user = s["num_candidates"]
    embed_h = summaries / GPU["embed_per_s"] / hour
    gen_h = lambda lists, prompts: (lists * m["list_tokens"] / GPU["gen_tok_per_s"]  # noqa: E731
                                    + prompts * m["prompt_tokens"] / GPU["prefill_tok_per_s"]) / hour
    mined_lists = with_interests * lists_per_user * s["rounds"]
    sampled = min(with_interests, s["mine_users_sampled"])
    sampled_lists = sampled * lists_per_user * s["rounds"]
    sft_tokens = s["sft_examples"] * m["sft_example_tokens"]
    dpo_tokens = s["dpo_pairs"] * m["dpo_pair_tokens"] * s["rounds"]
    eval_lists = s["eval_users"] * s["eval_policies"] * lists_per_user
    requests = users * s["dau_share"] * s["requests_per_dau"]
    impressions = users * m["impressions_per_user_day"] * s["window_days"]
    return [
        ("label-revisits", "summaries embedded / pairs judged", f"{summaries:.3g} / {judged:.3g}", embed_h,
         f"embedding judge; an LLM judge adds {judged * s['judge_prompt_tokens'] / GPU['prefill_tok_per_s'] / hour:,.0f} h"),
        ("train-scorer", "summary encodings (fine-tuned encoder)", f"{0.75 * summaries * s['scorer_epochs']:.3g}",
         3 * 0.75 * summaries * s["scorer_epochs"] / GPU["embed_per_s"] / hour, "fwd+bwd = 3x an embedding, 75% train split"),
        ("distill-interests", "summaries scored", f"{summaries:.3g}", embed_h, "MiniLM + text tower"),
        ("distill-corpus", "teacher calls", f"{users * m['corpus_rows_per_user']:.3g}",
         users * m["corpus_rows_per_user"] * s["teacher_output_tokens"] / GPU["gen_tok_per_s"] / hour,
         "7B-class LLM teacher (the sim teacher is CPU only)"),
        ("sft", "tokens trained", f"{sft_tokens:.3g}", sft_tokens / GPU["train_tok_per_s"] / hour,
         "bounded by steps x global batch, not by users"),
        ("train-ranker", "impressions (starters embedded)", f"{impressions:.3g}",
         impressions / GPU["embed_per_s"] / hour, "two small heads on embeddings"),
        ("mine", "lists sampled (all users with interests, all rounds)", f"{mined_lists:.3g}",
         gen_h(mined_lists, with_interests * s["rounds"]), f"pairs mined: {with_interests * m['pairs_per_mined_user'] * s['rounds']:.3g}"),
        ("mine, sampled", f"lists sampled ({sampled:.0e} users per round)", f"{sampled_lists:.3g}",
         gen_h(sampled_lists, sampled * s["rounds"]), "search.max_users: the pipeline's default way to mine"),
        ("dpo", "tokens trained", f"{dpo_tokens:.3g}", DPO_COST_FACTOR * dpo_tokens / GPU["train_tok_per_s"] / hour,
         "bounded by steps; x rounds"),
        ("evaluate", "lists sampled (eval sample x policies)", f"{eval_lists:.3g}",
         gen_h(eval_lists, s["eval_users"] * s["eval_policies"]), "offline metrics + simulated A/B"),
        ("serve (per day)", "requests/day", f"{requests:.3g}", gen_h(requests * lists_per_user, requests),
         f"= {gen_h(requests * lists_per_user, requests) / 24:.0f} H100s busy around the clock, "
         f"{gen_h(requests * lists_per_user, requests) / 24 / gpus_per_node:.1f} nodes"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run directory with stages through `mine`")
    ap.add_argument("--users", type=float, default=1e8)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--embed-sample", type=int, default=2000)
    args = ap.parse_args()

    m = measure(args.run, args.embed_sample)
    print(f"## measured per item (run: {args.run}, {m['users']} users, {m['days']:.1f} days)")
    for key, value in m.items():
        if key not in ("users", "days"):
            print(f"- {key}: {value:.3f}")
    print("\n## assumptions\n" + "\n".join(f"- {k}: {v:,.0f}" for k, v in GPU.items()))
    print("\n".join(f"- {k}: {v:,}" for k, v in SCENARIO.items()))
    rows = table(m, args.users, args.gpus_per_node)
    offline = [r for r in rows if not r[0].startswith(("serve", "mine, sampled"))]
    total = sum(r[3] for r in offline)
    hours = {r[0]: r[3] for r in rows}
    total_sampled = total - hours["mine"] + hours["mine, sampled"]
    print(f"\n## {args.users:.3g} users\n")
    print("| stage | work | amount | H100-hours | node-hours (8xH100) | notes |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for stage, work, amount, hours, how in rows:
        print(f"| {stage} | {work} | {amount} | {hours:,.1f} | {hours / args.gpus_per_node:,.1f} | {how} |")
    print(f"| **offline total** | | | **{total:,.0f}** | **{total / args.gpus_per_node:,.0f}** | one pass, mining every user |")
    print(f"| **offline total, sampled mining** | | | **{total_sampled:,.0f}** | **{total_sampled / args.gpus_per_node:,.0f}** | |")
    print(f"\nMiniLM on this CPU: {m['embed_cpu_per_s']:.0f} summaries/s -> embedding the 100M-user window "
          f"on CPUs would take {args.users * m['sessions_per_user_day'] * SCENARIO['window_days'] / m['embed_cpu_per_s'] / 3600:,.0f} core-group-hours "
          f"(2 cores) vs {rows[0][3]:,.1f} H100-hours.")


if __name__ == "__main__":
    main()
