"""generate(): N sampled candidate lists -> parse -> rule filter -> K starters (or fewer,
with a reason). Never raises on model output."""

from __future__ import annotations

import pytest
from isg_support import fake_embed
from typer.testing import CliRunner

from icebreaker_ray.cli import app
from icebreaker_ray.isg.engines import HFEngine
from icebreaker_ray.isg.filters import FilterParams, SafetyFilter
from icebreaker_ray.isg.generate import (
    GenerationParams,
    format_pass_rate,
    generate,
    sample_chat,
    select_list,
)
from icebreaker_ray.isg.prompts import render_completion

# The hashed fake embedder is not a safety classifier: switch the semantic check off.
PARAMS = FilterParams(k=3, sensitive_threshold=1.01)
GOOD = ["Which One Piece arc should I read first?", "Best ramen shops in Osaka?",
        "Recommend a sci-fi novel like Dune.", "How do I start a sourdough starter?"]


@pytest.fixture(scope="module")
def safety():
    return SafetyFilter(fake_embed, PARAMS)


def test_first_complete_candidate_wins(safety):
    texts = ["no format at all", render_completion(GOOD[:1]), render_completion(GOOD[1:4])]
    res = select_list(texts, safety, k=3)
    assert res.reason == "ok" and res.starters == GOOD[1:4]
    assert [c.complete for c in res.candidates] == [False, False, True]
    assert format_pass_rate([res]) == pytest.approx(1 / 3)


def test_stop_early_reads_up_to_the_list_and_picks_the_same(safety):
    after = render_completion([GOOD[0], "What are the early symptoms of cancer?", GOOD[2]])
    texts = ["no format at all", render_completion(GOOD[1:4]), after]
    full, early = select_list(texts, safety, k=3), select_list(texts, safety, k=3, stop_early=True)
    assert early.starters == full.starters == GOOD[1:4] and early.reason == "ok"
    assert len(early.candidates) == 2 and len(full.candidates) == 3
    assert full.rejections["sensitive_keyword"] == 1 and early.rejections["sensitive_keyword"] == 0
    # with no complete candidate, every one is read and pooled either way
    pooled = [render_completion(GOOD[:2]), render_completion(GOOD[1:3])]
    assert (select_list(pooled, safety, k=3, stop_early=True).starters
            == select_list(pooled, safety, k=3).starters == GOOD[:3])


def test_incomplete_candidates_are_pooled_through_the_filter(safety):
    texts = [render_completion([GOOD[0], GOOD[1]]),
             render_completion([GOOD[1], "What are the early symptoms of cancer?", GOOD[2]])]
    res = select_list(texts, safety, k=3)
    assert res.reason == "merged"
    assert res.starters == GOOD[:3]  # the duplicate and the sensitive starter are gone
    assert res.rejections["sensitive_keyword"] == 1


@pytest.mark.parametrize("garbage", ["", "<sug></sug>", "<sug> && && </sug>", "\x00\ufffd" * 50,
                                     "</sug><sug><think>", "a" * 10_000])
def test_garbage_output_never_raises(safety, garbage):
    res = select_list([garbage, garbage], safety, k=3)
    assert res.reason == "too_few_valid" and len(res.starters) < 3
    assert not any(c.complete for c in res.candidates)


def test_generate_with_tiny_model(tiny_generator):
    from icebreaker_ray.models import load_generator

    model, tok = load_generator(tiny_generator)
    params = GenerationParams(k=3, num_candidates=3, max_new_tokens=24, batch_size=4, filter=PARAMS)
    results = generate(HFEngine(model, tok, params.batch_size), [["One Piece cosplay"], ["sourdough", "ramen in Osaka"]],
                       fake_embed, params, seed=0)
    assert len(results) == 2
    for res in results:
        assert len(res.candidates) == 3  # N candidates per user were sampled
        assert len(res.starters) <= 3
        assert res.reason in {"ok", "merged", "too_few_valid"}
        # a random model rarely writes K valid starters; whatever it wrote was filtered
        safety = SafetyFilter(fake_embed, PARAMS)
        assert all(safety.is_safe(s) for s in res.starters)
        assert (len(res.starters) == 3) == (res.reason != "too_few_valid")


def test_batched_sampling_returns_n_per_prompt(tiny_generator):
    from icebreaker_ray.models import load_generator

    model, tok = load_generator(tiny_generator)
    convs = [[{"role": "user", "content": f"prompt {i}"}] for i in range(3)]
    out = sample_chat(model, tok, convs, num_return=2, max_new_tokens=5, batch_size=4, seed=1)
    assert [len(x) for x in out] == [2, 2, 2]
    assert all(isinstance(t, str) for x in out for t in x)


def test_shared_prompt_prefill_gives_what_each_prompt_gives_alone(tiny_generator):
    """One prefill per prompt, its KV cache repeated for the samples (and copied when a
    prompt's samples take several generate calls), left padding across prompts of different
    lengths: greedy completions equal a plain generate of each prompt alone."""
    import torch

    from icebreaker_ray.models import load_generator

    model, tok = load_generator(tiny_generator)
    convs = [[{"role": "user", "content": text}] for text in
             ["hi", "tell me about sourdough starters and ramen in Osaka please", "One Piece"]]
    # batch_size=2 with 3 samples: two generate calls per prompt (2 + 1), prompts one by one
    out = sample_chat(model, tok, convs, num_return=3, max_new_tokens=12, batch_size=2,
                      do_sample=False)
    for conv, texts in zip(convs, out, strict=True):
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            alone = model.generate(input_ids=ids, do_sample=False, max_new_tokens=12,
                                   pad_token_id=tok.pad_token_id)
        expected = tok.decode(alone[0, ids.shape[1]:], skip_special_tokens=True)
        assert texts == [expected] * 3
    # four prompts of two samples in one call each: the same completions, batched
    again = sample_chat(model, tok, convs, num_return=2, max_new_tokens=12, batch_size=8,
                        do_sample=False)
    assert [x[:2] for x in out] == again


def test_cli_generate_from_summaries_file(tiny_generator, tmp_path, monkeypatch):
    import icebreaker_ray.models as models

    monkeypatch.setattr(models, "TextEncoder", lambda *a, **k: fake_embed)  # no MiniLM here
    f = tmp_path / "summaries.txt"
    f.write_text("Asked about One Piece cosplay\n\nLooking for ramen in Osaka\n")
    result = CliRunner().invoke(app, [
        "generate", "--model", tiny_generator, "--summaries-file", str(f),
        "--set", "generation.num_candidates=2", "--set", "generation.max_new_tokens=16",
        "--set", "filter.sensitive_threshold=1.0"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "2 interests" in text and "2 candidates" in text and "K=4" in text


def test_cli_generate_needs_user_or_file(tiny_generator):
    result = CliRunner().invoke(app, ["generate", "--model", tiny_generator])
    assert result.exit_code != 0


def _write_sessions(out: str) -> None:
    import datetime as dt

    import pyarrow as pa

    from icebreaker_ray.data import io

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [{"user_id": "u1", "session_id": f"s{i}", "ts": t0 + dt.timedelta(days=i),
             "summary": f"Talked about topic {i}"} for i in range(8)]
    writer = io.StageWriter(out, "simulate")
    writer.write_table("sessions", pa.Table.from_pylist(rows))
    writer.commit(pinned=True)


def test_user_interests_raw_takes_the_most_recent_summaries(tmp_path):
    from icebreaker_ray.isg.stage import user_interests

    out = str(tmp_path / "run")
    _write_sessions(out)
    assert user_interests(out, "raw", max_items=3) == {
        "u1": ["Talked about topic 5", "Talked about topic 6", "Talked about topic 7"]}
    with pytest.raises(ValueError):
        user_interests(out, "nope")


def test_cli_generate_for_a_user_falls_back_to_raw_summaries(tiny_generator, tmp_path, monkeypatch):
    import icebreaker_ray.models as models

    monkeypatch.setattr(models, "TextEncoder", lambda *a, **k: fake_embed)
    out = str(tmp_path / "run")
    _write_sessions(out)
    args = ["generate", "--model", tiny_generator, "--out", out, "--set",
            "generation.num_candidates=2", "--set", "generation.max_new_tokens=16"]
    result = CliRunner().invoke(app, [*args, "--user", "u1"])
    assert result.exit_code == 0, result.output
    assert "recent summaries" in " ".join(result.output.split())
    unknown = CliRunner().invoke(app, [*args, "--user", "nobody"])
    assert unknown.exit_code == 2 and "nobody" in unknown.output
