"""Candidate sampling throughput: generated tokens/s, real SmolLM2, engine against engine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sampling.py --users 8 --candidates 4 \
        --engines hf,llamacpp --parity-users 24          # default mode: the engines
    ... --engines llamacpp:q8_0,llamacpp:q4_0        # one engine, two GGUF weight types
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sampling.py --hf-batching   # hf only, three ways

Engines (default): samples ``candidates`` lists for each of ``users`` prompts with each
engine of ``--engines`` (:mod:`icebreaker_ray.isg.engines`, what mining, evaluation and
serving sample through) on the same prompts and settings, in the same run; the first is
the baseline. Then one list alone (one prompt, one candidate: a request's latency floor),
and parity: :func:`~icebreaker_ray.isg.generate.generate` for ``--parity-users`` users
(trigger interests of ``--run``, else a fixed list) with each engine, same seed, and the
format pass rate (share of sampled lists that parse and pass the filter with K starters).

``--hf-batching``: :func:`icebreaker_ray.isg.generate.sample_chat` once with
``batch_size=1`` (one ``model.generate`` per candidate) and once with ``--batch``
sequences per call, where each prompt is prefilled once and its KV cache repeated for
its candidates; the third run, :func:`unshared`, is the baseline for that sharing: the
same batches, but every sequence prefills its own copy of the prompt (sample_chat before
2026-11-22).

Generated tokens are counted from the decoded completions with the HF tokenizer, so every
run counts the same way.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch

from icebreaker_ray.isg.generate import sample_chat
from icebreaker_ray.isg.prompts import generator_messages
from icebreaker_ray.models import load_generator

INTERESTS = [["Asked about One Piece's Wano arc"], ["sourdough starter troubleshooting"],
             ["marathon training plan"], ["local LLM deployment with Ollama"],
             ["budget travel in Japan"], ["Rust borrow checker"], ["houseplant care"],
             ["chess openings for beginners"]]


def run(model, tok, convs, candidates: int, batch: int, max_new_tokens: int) -> tuple[float, int]:
    t = time.perf_counter()
    out = sample_chat(model, tok, convs, num_return=candidates, max_new_tokens=max_new_tokens,
                      batch_size=batch, seed=0)
    took = time.perf_counter() - t
    tokens = sum(len(tok(x, add_special_tokens=False).input_ids) for texts in out for x in texts)
    return took, tokens


def unshared(model, tok, convs, candidates: int, batch: int, max_new_tokens: int) -> tuple[float, int]:
    """Baseline: each prompt repeated ``candidates`` times, cut into batches of ``batch``
    sequences, one plain ``generate`` per batch (the prompt prefilled once per sequence)."""
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    flat = [p for p in prompts for _ in range(candidates)]
    torch.manual_seed(0)
    t, tokens = time.perf_counter(), 0
    for start in range(0, len(flat), batch):
        enc = tok(flat[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, do_sample=True, temperature=0.9, top_p=0.95,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        tokens += sum(len(tok(x, add_special_tokens=False).input_ids) for x in texts)
    return time.perf_counter() - t, tokens


def timed(engine, tok, convs, candidates: int, max_new_tokens: int) -> tuple[float, int]:
    t = time.perf_counter()
    out = engine.sample(convs, num_return=candidates, max_new_tokens=max_new_tokens, seed=0)
    took = time.perf_counter() - t
    return took, sum(len(tok(x, add_special_tokens=False).input_ids) for texts in out for x in texts)


def timed_one_by_one(engine, tok, convs, candidates: int, max_new_tokens: int) -> tuple[float, int]:
    """Every candidate in its own call, one sequence each (what several high-level
    ``Llama.__call__`` calls do): the prompt is prefilled once per candidate."""
    t, tokens = time.perf_counter(), 0
    for i, conv in enumerate(convs):
        for j in range(candidates):
            [[text]] = engine.sample([conv], num_return=1, max_new_tokens=max_new_tokens,
                                     seed=i * candidates + j)
            tokens += len(tok(text, add_special_tokens=False).input_ids)
    return time.perf_counter() - t, tokens


def parity_interests(run: str | None, users: int) -> tuple[list[str], list[list[str]]]:
    """(user ids, prompt interests): the run's first users' trigger interests, else a fixed list."""
    if run is None:
        return [f"fixed-{i}" for i in range(users)], [INTERESTS[i % len(INTERESTS)] for i in range(users)]
    from icebreaker_ray import layout

    by_user = layout.trigger_interests(run)
    ids = sorted(by_user)[:users]
    return ids, [by_user[u] for u in ids]


def oracle_p_click(cfg, run: str | None, ids: list[str], lists: list[list[str]]) -> float | None:
    """Mean true P(click any starter) of the lists under the simulator of ``run`` (None
    without a simulated run): the utility figure of Table 1."""
    if run is None or cfg.data.source != "sim":
        return None
    import numpy as np

    from icebreaker_ray.eval.stage import latest_state
    from icebreaker_ray.sim.rollout import oracle_click_probabilities

    probs = oracle_click_probabilities(latest_state(run, cfg), {u: s for u, s in zip(ids, lists, strict=True) if s})
    return float(np.mean([probs[u].sum() if u in probs else 0.0 for u in ids]))


def bench_engines(args, threads: int) -> None:
    from icebreaker_ray.config import load_config
    from icebreaker_ray.isg.engines import EngineSpec
    from icebreaker_ray.isg.filters import SafetyFilter
    from icebreaker_ray.isg.generate import (
        GenerationParams,
        format_pass_rate,
        generate,
        invented_rate,
    )
    from icebreaker_ray.models import TextEncoder, load_tokenizer, resolve_generator

    cfg = load_config(args.config, [f"generation.max_new_tokens={args.max_new_tokens}"])
    path = resolve_generator(args.model)
    tok = load_tokenizer(path)
    convs = [generator_messages(x, k=cfg.generation.K) for x in (INTERESTS * 4)[: args.users]]
    print(f"model {args.model} ({path}), {args.users} prompts x {args.candidates} candidates, "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch}, {threads} threads, "
          f"llamacpp GGUF {args.outtype}; load average {os.getloadavg()[0]:.1f}", flush=True)
    engines, base = {}, None

    def report(kind, took, tokens, one=None, one_tokens=0, load_s=0.0):
        nonlocal base
        tps = tokens / took
        base = base or (kind, tps)
        alone = f" | one list alone {one:.2f} s ({one_tokens} tokens)" if one is not None else ""
        print(f"{kind}: {tps:6.1f} generated tokens/s ({tokens} tokens in {took:.2f} s; "
              f"{took / (len(convs) * args.candidates):.3f} s per candidate){alone} | load {load_s:.1f} s"
              f" | {tps / base[1]:.2f}x {base[0]} | load average {os.getloadavg()[0]:.1f}", flush=True)

    for kind in args.engines.split(","):
        # "llamacpp:q4_0" picks the GGUF weight type of that entry (default --outtype)
        engine_kind, _, outtype = kind.partition(":")
        t = time.perf_counter()
        engine = EngineSpec(kind=engine_kind, batch_size=args.batch, gguf_outtype=outtype or args.outtype,
                            threads=threads).load(path)
        load_s = time.perf_counter() - t  # includes the GGUF export the first time
        engine.sample(convs[:1], num_return=1, max_new_tokens=8, seed=0)  # warm-up
        took, tokens = timed(engine, tok, convs, args.candidates, args.max_new_tokens)
        one, one_tokens = timed(engine, tok, convs[:1], 1, args.max_new_tokens)
        engines[kind] = engine
        report(kind, took, tokens, one, one_tokens, load_s)
        if engine_kind == "llamacpp" and args.one_by_one:
            took, tokens = timed_one_by_one(engine, tok, convs, args.candidates, args.max_new_tokens)
            report("llamacpp, one sequence per call", took, tokens)
    if not args.parity_users:
        return
    ids, interests = parity_interests(args.run, args.parity_users)
    params = GenerationParams.from_config(cfg)
    params = GenerationParams(**{**vars(params), "num_candidates": args.candidates, "batch_size": args.batch})
    safety = SafetyFilter(TextEncoder(cfg.models.embedder), params.filter_params())
    print(f"parity: {len(interests)} users ({'trigger interests of ' + args.run if args.run else 'fixed list'}), "
          f"{params.num_candidates} lists each, seed 0, K={params.k}")
    for kind, engine in engines.items():
        t = time.perf_counter()
        res = generate(engine, interests, safety.embed, params, seed=0, safety=safety)
        took = time.perf_counter() - t
        lists = sum(len(r.candidates) for r in res)
        p_click = oracle_p_click(cfg, args.run, ids, [r.starters for r in res])
        truth = f"oracle P(click) {p_click:.3f}; " if p_click is not None else ""
        print(f"{kind:>9}: format pass rate {format_pass_rate(res):.3f} of {lists} lists; "
              f"users with K starters {sum(len(r.starters) == params.k for r in res)}/{len(res)}; "
              f"invented-entity rate {invented_rate(res):.3f}; {truth}{took:.1f} s", flush=True)
        reasons = Counter()
        for r in res:
            reasons.update(r.rejections)
        statuses = Counter(c.status for r in res for c in r.candidates)
        print(f"{'':>9}  parse status {dict(statuses)}; rejected starters {dict(reasons.most_common(6))}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Sampling tokens/s: engines, or hf batching")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--config", default="local-cpu")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--engines", default="hf,llamacpp")
    ap.add_argument("--outtype", default="q8_0")
    ap.add_argument("--parity-users", type=int, default=0)
    ap.add_argument("--one-by-one", action="store_true",
                    help="also llamacpp with one sequence per call (no batched decoding)")
    ap.add_argument("--run", default=None, help="run whose trigger interests the parity check uses")
    ap.add_argument("--hf-batching", action="store_true", help="the older hf-only comparison")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    if not args.hf_batching:
        bench_engines(args, threads)
        return
    model, tok = load_generator(args.model)
    convs = [generator_messages(x, k=4) for x in (INTERESTS * 4)[: args.users]]
    run(model, tok, convs[:1], 1, 1, 8)  # warm-up
    t1, n1 = run(model, tok, convs, args.candidates, 1, args.max_new_tokens)
    tb, nb = run(model, tok, convs, args.candidates, args.batch, args.max_new_tokens)
    tu, nu = unshared(model, tok, convs, args.candidates, args.batch, args.max_new_tokens)
    print(f"model {args.model}: {args.users} prompts x {args.candidates} candidates, "
          f"max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} threads")
    print(f"unbatched (batch 1): {n1 / t1:.1f} generated tokens/s ({n1} tokens in {t1:.1f} s)")
    print(f"batched (batch {args.batch}), shared prefill: {nb / tb:.1f} generated tokens/s "
          f"({nb} tokens in {tb:.1f} s)")
    print(f"batched (batch {args.batch}), prefill per sequence: {nu / tu:.1f} generated tokens/s "
          f"({nu} tokens in {tu:.1f} s)")
    print(f"ratio (batched / unbatched): {(nb / tb) / (n1 / t1):.2f}x")
    print(f"ratio (shared / per-sequence prefill), tokens/s: {(nb / tb) / (nu / tu):.2f}x; "
          f"seconds per candidate: {tb / (len(convs) * args.candidates):.2f} vs "
          f"{tu / (len(convs) * args.candidates):.2f}")


if __name__ == "__main__":
    main()
