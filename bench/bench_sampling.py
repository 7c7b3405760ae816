"""Candidate sampling throughput: generated tokens/s, real SmolLM2, three ways.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sampling.py --users 4 --candidates 8

Samples ``candidates`` lists for each of ``users`` prompts with
:func:`icebreaker_ray.isg.generate.sample_chat` (what ``generate`` runs): once with
``batch_size=1`` (one ``model.generate`` per candidate) and once with ``--batch``
sequences per call, where each prompt is prefilled once and its KV cache repeated for
its candidates. The third run, :func:`unshared`, is the baseline for that sharing: the
same batches, but every sequence prefills its own copy of the prompt (sample_chat before
2026-11-22). Generated tokens are counted from the decoded completions, so every run
counts the same way. Prints the figures and the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description="Sampling tokens/s, batched vs unbatched")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
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
