"""Check the vllm engine on a GPU machine (vLLM does not run on the CPU dev machines).

    pip install "ray[llm]"   # vLLM
    python bench/check_vllm.py --model runs/prod/sft/model --config gpu-cluster --users 8

Samples ``generation.num_candidates`` lists for a few users through the Ray Data LLM
processor that ``isg/vllm.py`` builds from the preset, puts every user's candidates
through the same ``select_list`` + safety filter as the CPU engines, and prints the format
pass rate and one list per user; then builds the Serve LLM deployment config.
"""

from __future__ import annotations

import argparse

import pyarrow as pa


def main() -> None:
    import ray

    from icebreaker_ray.config import load_config
    from icebreaker_ray.isg.filters import SafetyFilter
    from icebreaker_ray.isg.generate import GenerationParams, format_pass_rate, select_list
    from icebreaker_ray.isg.vllm import build_sampler, candidate_rows, llm_config
    from icebreaker_ray.models import TextEncoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default="gpu-cluster")
    ap.add_argument("--users", type=int, default=8)
    args = ap.parse_args()
    cfg = load_config(args.config, ["generation.engine=vllm"])
    interests = [["Asked about One Piece's Wano arc"], ["sourdough starter troubleshooting"],
                 ["marathon training plan"], ["local LLM deployment with Ollama"]]
    requests = pa.table({"user_id": [f"u{i:04d}" for i in range(args.users)],
                         "interests": [interests[i % len(interests)] for i in range(args.users)]})
    ray.init(address=cfg.ray.address)
    out = build_sampler(cfg, args.model)(ray.data.from_arrow(candidate_rows(requests, cfg)))
    rows = sorted(out.take_all(), key=lambda r: (r["user_id"], r["candidate"]))
    params = GenerationParams.from_config(cfg)
    safety = SafetyFilter(TextEncoder(cfg.models.embedder), params.filter_params())
    by_user: dict[str, list[str]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r["text"])
    asked = dict(zip(requests["user_id"].to_pylist(), requests["interests"].to_pylist(), strict=True))
    results = [select_list(texts, safety, params.k, asked[uid]) for uid, texts in by_user.items()]
    print(f"{len(rows)} lists for {len(by_user)} users; format pass rate {format_pass_rate(results):.3f}")
    for uid, res in zip(by_user, results, strict=True):
        print(uid, res.reason, res.starters)
    print(llm_config(cfg, args.model).model_dump_json(indent=2)[:2000])


if __name__ == "__main__":
    main()
