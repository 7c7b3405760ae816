"""The ``vllm`` engine of the GPU presets: Ray Data LLM for batch sampling, Ray Serve LLM
for serving. vLLM does not run on the CPU machines this project is developed on; this
module builds the configs from our preset, and ``bench/check_vllm.py`` runs them on a GPU
machine.

    cfg = load_config("gpu-cluster", ["generation.engine=vllm"])
    proc = processor_config(cfg, "s3://icebreaker-runs/prod/sft/model")  # vLLMEngineProcessorConfig
    rows = candidate_rows(requests, cfg)          # one row per (user, candidate), seeded
    sampler = build_sampler(cfg, model)           # ray.data.llm.build_processor(...)
    texts = sampler(ray.data.from_arrow(rows))    # columns user_id, candidate, text
    llm = llm_config(cfg, model)                  # ray.serve.llm.LLMConfig for the generator

Ray Data LLM keeps only the first of vLLM's ``n`` outputs per row, so each of a user's
``num_candidates`` lists is its own row (``candidate_rows``) with its own seed, and vLLM's
prefix caching turns the repeated prompt into one prefill, as the CPU engines do by hand.
Prompts are the same chat messages (:func:`~icebreaker_ray.isg.prompts.generator_messages`)
and sampling the same settings (temperature, top-k 50, top-p, ``max_new_tokens``) as the
``hf`` and ``llamacpp`` engines, so a list sampled here goes through the same
``select_list`` and filter.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icebreaker_ray.isg.engines import TOP_K
from icebreaker_ray.isg.prompts import generator_messages

if TYPE_CHECKING:
    from icebreaker_ray.config import Config

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def engine_kwargs(cfg: Config) -> dict[str, Any]:
    """vLLM engine arguments shared by batch sampling and serving."""
    return {
        "dtype": _DTYPES[cfg.models.dtype],
        # The candidates of a user repeat one prompt: prefill it once.
        "enable_prefix_caching": True,
        # Prompt (trigger interests, system text) + completion; SFT trains at sft.max_length.
        "max_model_len": cfg.sft.max_length + cfg.generation.max_new_tokens,
        "max_num_seqs": max(cfg.generation.batch_size, cfg.generation.num_candidates),
        "tensor_parallel_size": 1,
    }


def sampling_params(cfg: Config, seed: int) -> dict[str, Any]:
    g = cfg.generation
    return {"temperature": g.temperature, "top_p": g.top_p, "top_k": TOP_K,
            "max_tokens": g.max_new_tokens, "seed": seed, "n": 1}


def processor_config(cfg: Config, model: str) -> Any:
    """The Ray Data LLM processor config of mine/evaluate sampling on the GPU workers."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs(cfg),
        batch_size=cfg.generation.batch_size,
        concurrency=cfg.search.num_actors,  # engine replicas, as many as the CPU path's actors
        chat_template_stage=True, tokenize_stage=True, detokenize_stage=True,
    )


def candidate_rows(requests: pa.Table, cfg: Config, num_candidates: int | None = None) -> pa.Table:
    """``(user_id, interests)`` -> one row per (user, candidate) with its chat messages and
    sampling params; the seed depends on the run seed, the user and the candidate only."""
    n = num_candidates or cfg.generation.num_candidates
    k = cfg.generation.K
    rows = []
    for uid, interests in zip(requests.column("user_id").to_pylist(),
                              requests.column("interests").to_pylist(), strict=True):
        messages = generator_messages(list(interests), k=k, max_chars=cfg.filter.max_chars)
        for j in range(n):
            seed = (cfg.run.seed + zlib.crc32(f"{uid}|{j}".encode())) % 2**31
            rows.append({"user_id": uid, "candidate": j, "messages": messages,
                         "sampling_params": sampling_params(cfg, seed)})
    return pa.Table.from_pylist(rows)


def build_sampler(cfg: Config, model: str) -> Any:
    """``ray.data.llm.build_processor`` over :func:`candidate_rows`: a Dataset of rows in,
    ``(user_id, candidate, text)`` out, ready for ``select_list``."""
    from ray.data.llm import build_processor

    return build_processor(
        processor_config(cfg, model),
        preprocess=lambda row: {"user_id": row["user_id"], "candidate": row["candidate"],
                                "messages": row["messages"], "sampling_params": row["sampling_params"]},
        postprocess=lambda row: {"user_id": row["user_id"], "candidate": row["candidate"],
                                 "text": row.get("generated_text") or ""},
    )


def llm_config(cfg: Config, model: str) -> Any:
    """Ray Serve LLM's config of the generator deployment (an ``LLMServer``), with the
    StarterGenerator's replicas and autoscaling from ``serve.deployments``."""
    from ray.serve.llm import LLMConfig

    d = cfg.serve.deployments.get("StarterGenerator")
    deployment: dict[str, Any] = {}
    if d is not None:
        deployment = {
            "autoscaling_config": {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                                   "target_ongoing_requests": d.target_ongoing_requests},
            "max_ongoing_requests": d.max_ongoing_requests,
        }
    return LLMConfig(
        model_loading_config={"model_id": "icebreaker-generator", "model_source": model},
        engine_kwargs=engine_kwargs(cfg),
        deployment_config=deployment,
    )
