"""Candidate sampling throughput: generated tokens/s, batched vs unbatched, real SmolLM2.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sampling.py --users 4 --candidates 8

Samples ``candidates`` lists for each of ``users`` prompts with
:func:`icebreaker_ray.isg.generate.sample_chat` (what ``generate`` runs), once with
``batch_size=1`` (the baseline: one ``model.generate`` per candidate) and once with
``--batch`` sequences per call. Generated tokens are counted from the decoded
completions, so both runs count the same way. Prints both figures and the ratio.
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
    print(f"model {args.model}: {args.users} prompts x {args.candidates} candidates, "
          f"max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} threads")
    print(f"unbatched (batch 1): {n1 / t1:.1f} generated tokens/s ({n1} tokens in {t1:.1f} s)")
    print(f"batched (batch {args.batch}): {nb / tb:.1f} generated tokens/s ({nb} tokens in {tb:.1f} s)")
    print(f"ratio (batched / unbatched): {(nb / tb) / (n1 / t1):.2f}x")


if __name__ == "__main__":
    main()
