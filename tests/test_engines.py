"""Generation engines (isg/engines.py) and their GGUF export (isg/gguf_export.py) on the
tiny random Llama: same prompts in, N completions and parsed lists out, seeded;
llama.cpp on an f32 GGUF of the model writes what transformers writes, token for token;
a changed model folder is converted again; the vllm configs build from the preset."""

from __future__ import annotations

import shutil

import pytest
from isg_support import fake_embed

from icebreaker_ray.isg.engines import EngineError, EngineSpec, HFEngine
from icebreaker_ray.isg.filters import FilterParams, SafetyFilter
from icebreaker_ray.isg.generate import GenerationParams, generate
from icebreaker_ray.isg.prompts import generator_messages

CONVS = [generator_messages(x, k=3) for x in
         (["One Piece cosplay"], ["sourdough starter", "ramen in Osaka"], ["chess openings"])]
FILTER = FilterParams(k=3, sensitive_threshold=1.01)  # the hashed embedder is no safety model


@pytest.fixture(scope="module")
def hf_engine(tiny_generator):
    return EngineSpec(batch_size=8).load(tiny_generator)


@pytest.fixture(scope="module")
def llama_engine(tiny_generator):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    # f32: the GGUF holds exactly the HF weights, so greedy decoding must agree.
    return EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="f32", threads=2).load(tiny_generator)


@pytest.fixture(params=["hf", "llamacpp"])
def engine(request, hf_engine):
    return hf_engine if request.param == "hf" else request.getfixturevalue("llama_engine")


def test_engine_samples_n_seeded_completions_per_chat(engine):
    out = engine.sample(CONVS, num_return=3, max_new_tokens=12, seed=7)
    assert [len(x) for x in out] == [3, 3, 3]
    assert all(isinstance(t, str) and t for x in out for t in x)
    assert engine.sample(CONVS, num_return=3, max_new_tokens=12, seed=7) == out  # seeded
    other = engine.sample(CONVS, num_return=3, max_new_tokens=12, seed=8)
    assert other != out
    # a prompt's samples differ from each other (not one sample copied N times)
    assert all(len(set(x)) > 1 for x in out)


def test_generate_parses_and_filters_through_either_engine(engine):
    params = GenerationParams(k=3, num_candidates=3, max_new_tokens=16, batch_size=8, filter=FILTER)
    results = generate(engine, [["One Piece cosplay"], ["sourdough", "ramen"]], fake_embed, params, seed=0)
    safety = SafetyFilter(fake_embed, FILTER)
    for res in results:
        assert len(res.candidates) == 3 and all(c.text for c in res.candidates)
        assert res.reason in {"ok", "merged", "too_few_valid"}
        assert all(safety.is_safe(s) for s in res.starters)


def test_streaming_reports_every_sequence_up_to_its_final_text(engine):
    seen: dict[int, tuple[str, bool]] = {}
    steps = []

    def on_step(news):
        steps.append(len(news))
        for seq, (text, done) in news.items():
            assert not seen.get(seq, ("", False))[1], "a finished sequence reported again"
            seen[seq] = (text, done)

    out = engine.sample(CONVS[:2], num_return=2, max_new_tokens=10, seed=3, on_step=on_step)
    assert len(steps) >= 10  # one report per decoding step
    assert {s: t for s, (t, _) in seen.items()} == {i * 2 + j: out[i][j] for i in range(2) for j in range(2)}
    assert all(done for _, done in seen.values())


def test_gguf_export_reproduces_hf_greedy_output(hf_engine, llama_engine):
    convs = [*CONVS, [{"role": "user", "content": "hi"}]]
    hf = hf_engine.sample(convs, num_return=2, max_new_tokens=16, do_sample=False)
    ll = llama_engine.sample(convs, num_return=2, max_new_tokens=16, do_sample=False)
    assert all(t for x in hf for t in x)  # real completions, not empty ones
    assert all(x[0] == x[1] for x in ll)  # greedy: a prompt's sequences agree in the batch
    assert ll == hf


def test_llamacpp_keeps_the_shared_prompt_prefix_between_calls(tiny_generator):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    spec = EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="f32", threads=2)
    warm = spec.load(tiny_generator)
    first = warm.sample(CONVS[:1], num_return=2, max_new_tokens=10, seed=5)
    prefix = list(warm.prefix)
    prompt = warm.tok(warm.tok.apply_chat_template(CONVS[0], tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"]
    # the system prompt and template are cached, the user's interests are not
    assert 10 < len(prefix) < len(prompt) and prompt[:len(prefix)] == prefix
    assert warm.tok.decode(prefix).rstrip().endswith("user")
    again = warm.sample(CONVS[1:], num_return=2, max_new_tokens=10, seed=5)
    assert warm.prefix == prefix  # reused, not recomputed
    # reused cells give what a cold engine computes from scratch
    assert spec.load(tiny_generator).sample(CONVS[1:], num_return=2, max_new_tokens=10, seed=5) == again
    assert spec.load(tiny_generator).sample(CONVS[:1], num_return=2, max_new_tokens=10, seed=5) == first
    # another system prompt: another shared prefix, and still the cold engine's output
    other = [[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "hi"}]]
    out = warm.sample(other, num_return=2, max_new_tokens=8, seed=1)
    assert warm.prefix != prefix and out == spec.load(tiny_generator).sample(other, num_return=2,
                                                                              max_new_tokens=8, seed=1)


def test_stale_gguf_is_converted_again(tiny_generator, tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    import json

    from icebreaker_ray.isg.gguf_export import gguf_dir, gguf_file
    from icebreaker_ray.models import load_generator, tiny_random_generator

    model = tmp_path / "model"
    shutil.copytree(tiny_generator, model)
    first = gguf_file(str(model), "f32")
    manifest = gguf_dir(str(model)) / "manifest-f32.json"
    created = json.loads(manifest.read_text())["created"]
    assert gguf_file(str(model), "f32") == first  # fresh: reused
    assert json.loads(manifest.read_text())["created"] == created
    # retrain in place: other weights in the same folder
    other = tiny_random_generator(tmp_path / "other", seed=1)
    shutil.copy(f"{other}/model.safetensors", model / "model.safetensors")
    assert gguf_file(str(model), "f32") == first
    assert json.loads(manifest.read_text())["created"] != created
    # ... and the new GGUF holds the new weights: greedy output follows the new model
    from icebreaker_ray.isg.engines import LlamaCppEngine

    m, tok = load_generator(str(model))
    hf = HFEngine(m, tok).sample(CONVS[:2], max_new_tokens=12, do_sample=False)
    ll = LlamaCppEngine(first, tok, threads=2).sample(CONVS[:2], max_new_tokens=12, do_sample=False)
    assert ll == hf


def test_quantized_gguf_from_the_f16_copy(tiny_generator, tmp_path):
    """q4_0 is made by llama.cpp's quantizer from the f16 GGUF: a smaller file, recorded in
    its own manifest, reused while fresh, that the engine loads and samples from."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    import json
    import os

    from icebreaker_ray.isg.gguf_export import gguf_dir, gguf_file

    model = tmp_path / "model"
    shutil.copytree(tiny_generator, model)
    q4 = gguf_file(str(model), "q4_0")
    f16 = gguf_dir(str(model)) / "model-f16.gguf"
    assert f16.is_file() and os.path.getsize(q4) < 0.8 * f16.stat().st_size  # tokenizer data is most of the tiny one
    manifest = json.loads((gguf_dir(str(model)) / "manifest-q4_0.json").read_text())
    assert manifest["outtype"] == "q4_0" and manifest["bytes"] == os.path.getsize(q4)
    assert gguf_file(str(model), "q4_0") == q4
    assert json.loads((gguf_dir(str(model)) / "manifest-q4_0.json").read_text())["created"] == manifest["created"]
    engine = EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="q4_0", threads=2).load(str(model))
    out = engine.sample(CONVS[:2], num_return=2, max_new_tokens=8, seed=3)
    assert [len(x) for x in out] == [2, 2] and all(t for x in out for t in x)


def test_the_config_offers_exactly_the_weight_types_the_exporter_writes():
    # config.py cannot import isg/ (it sits below it), so the Literal repeats the list
    from typing import get_args

    from icebreaker_ray.config import GenerationSection
    from icebreaker_ray.isg.gguf_export import OUTTYPES

    offered = get_args(GenerationSection.model_fields["gguf_outtype"].annotation)
    assert sorted(offered) == sorted(OUTTYPES)


def test_bad_engine_settings_fail_clearly(tiny_generator, tmp_path):
    from icebreaker_ray.config import ConfigError, load_config
    from icebreaker_ray.isg.gguf_export import GGUFExportError, gguf_file

    with pytest.raises(ConfigError, match="generation.engine"):
        load_config("local-cpu", ["generation.engine=onnx"])
    cfg = load_config("local-cpu", ["generation.engine=vllm"])
    with pytest.raises(EngineError, match="GPU"):
        EngineSpec.from_config(cfg).load(tiny_generator)
    with pytest.raises(ValueError, match="outtype"):
        gguf_file(tiny_generator, "q2_k")
    with pytest.raises(GGUFExportError, match="no config.json"):
        gguf_file(str(tmp_path))


def test_vllm_configs_build_from_the_gpu_preset():
    import pyarrow as pa

    from icebreaker_ray.config import load_config
    from icebreaker_ray.isg import vllm

    cfg = load_config("gpu-cluster", ["generation.engine=vllm"])
    rows = vllm.candidate_rows(pa.table({"user_id": ["u1", "u2"], "interests": [["a b"], ["c"]]}), cfg)
    assert rows.num_rows == 2 * cfg.generation.num_candidates
    seeds = [r["sampling_params"]["seed"] for r in rows.to_pylist()]
    assert len(set(seeds)) == len(seeds)  # every candidate row samples on its own
    assert rows.column("messages")[0].as_py() == rows.column("messages")[1].as_py()  # one prompt per user
    pytest.importorskip("ray.data.llm")
    proc = vllm.processor_config(cfg, "s3://icebreaker-runs/prod/sft/model")
    assert proc.model_source.endswith("sft/model")
    assert proc.engine_kwargs["enable_prefix_caching"] is True
    assert proc.engine_kwargs["dtype"] == "bfloat16"
    assert proc.batch_size == cfg.generation.batch_size
    try:
        from ray.serve.llm import LLMConfig  # noqa: F401  (needs vLLM installed)
    except ImportError:
        pytest.skip("ray.serve.llm needs vLLM (pip install 'ray[llm]'), not installable here")
    llm = vllm.llm_config(cfg, "s3://icebreaker-runs/prod/sft/model")
    assert llm.deployment_config["autoscaling_config"]["max_replicas"] == 16


# ----------------------------------------------------------------------------- serving batchers


def _collect():
    seen: dict[int, tuple[str, bool]] = {}

    def on_step(news):
        for j, (text, done) in news.items():
            assert not seen.get(j, ("", False))[1], "a finished sample reported again"
            seen[j] = (text, done)
    return seen, on_step


def test_continuous_batcher_gives_what_one_call_per_request_gives(tiny_generator):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    from icebreaker_ray.isg.engines import ContinuousBatcher, make_batcher

    spec = EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="f32", threads=2)
    sampling = dict(temperature=0.9, top_p=0.95, max_new_tokens=12)
    # room for two requests of two samples: the third waits until one has left the batch
    batcher = make_batcher(spec.load(tiny_generator), num_return=2, max_requests=2, **sampling)
    assert isinstance(batcher, ContinuousBatcher) and batcher.max_sequences == 4
    convs = [*CONVS, generator_messages(["knitting a first sweater"], k=3)]
    streams = [_collect() for _ in convs]
    futures = [batcher.submit(c, on_step, seed=10 + i) for i, (c, (_, on_step)) in enumerate(zip(convs, streams, strict=True))]
    results = [f.result(timeout=120) for f in futures]
    batcher.close()
    alone = spec.load(tiny_generator)
    for i, conv in enumerate(convs):
        assert results[i] == alone.sample([conv], num_return=2, seed=10 + i, **sampling)[0]
        seen, _ = streams[i]
        assert {j: t for j, (t, _) in seen.items()} == dict(enumerate(results[i]))
        assert all(done for _, done in seen.values())


def test_a_lone_request_splits_over_two_contexts_and_merges_when_company_comes(tiny_generator):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    from icebreaker_ray.isg.engines import make_batcher

    spec = EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="f32", threads=2)
    sampling = dict(temperature=0.9, top_p=0.95, max_new_tokens=12)
    batcher = make_batcher(spec.load(tiny_generator), num_return=2, max_requests=4,
                           split_alone=True, **sampling)
    alone = spec.load(tiny_generator)
    expected = [alone.sample([c], num_return=2, seed=20 + i, **sampling)[0] for i, c in enumerate(CONVS)]

    # one at a time: each request's second sample decodes on the side lane
    seen, on_step = _collect()
    first = batcher.submit(CONVS[0], on_step, seed=20).result(timeout=120)
    assert batcher.side.moves == 1 and batcher.side.job is None  # copied in, then finished there
    assert first == expected[0]
    assert {j: t for j, (t, _) in seen.items()} == dict(enumerate(first))

    # company: the others arrive after the first request's first step (it runs split),
    # so its side sequence moves back into the main context and all decode together
    futures = []

    def company(news):
        if not futures:
            futures.extend(batcher.submit(c, seed=21 + i) for i, c in enumerate(CONVS[1:]))

    head = batcher.submit(CONVS[0], company, seed=20)
    assert [head.result(timeout=120), *(f.result(timeout=120) for f in futures)] == expected
    assert batcher.side.moves == 3  # in and back out for the first; the others never split
    batcher.close()


def test_continuous_batcher_fails_one_request_not_the_others(tiny_generator):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make setup builds it)")
    from icebreaker_ray.isg.engines import ContinuousBatcher

    engine = EngineSpec(kind="llamacpp", batch_size=8, gguf_outtype="f32", threads=2).load(tiny_generator)
    batcher = ContinuousBatcher(engine, num_return=2, max_sequences=4, temperature=0.9, top_p=0.95,
                                max_new_tokens=8, max_prompt_tokens=200)
    too_long = [{"role": "user", "content": "word " * 4000}]

    def broken(news):
        raise RuntimeError("a caller's callback failed")

    bad = batcher.submit(too_long)
    good = batcher.submit(CONVS[0], broken, seed=1)
    with pytest.raises(EngineError, match="does not fit"):
        bad.result(timeout=120)
    assert len(good.result(timeout=120)) == 2  # the broken callback did not stop generation
    assert len(batcher.submit(CONVS[1], seed=2).result(timeout=120)) == 2  # still serving
    batcher.close()


def test_static_batcher_routes_each_request_its_samples(hf_engine):
    from icebreaker_ray.isg.engines import StaticBatcher, make_batcher

    batcher = make_batcher(hf_engine, num_return=2, max_requests=8, temperature=0.9, top_p=0.95,
                           max_new_tokens=8)
    assert isinstance(batcher, StaticBatcher)
    streams = [_collect() for _ in CONVS]
    futures = [batcher.submit(c, on_step) for c, (_, on_step) in zip(CONVS, streams, strict=True)]
    results = [f.result(timeout=120) for f in futures]
    batcher.close()
    for texts, (seen, _) in zip(results, streams, strict=True):
        assert len(texts) == 2 and {j: t for j, (t, _) in seen.items()} == dict(enumerate(texts))
