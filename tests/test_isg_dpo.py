"""List-wise DPO (eq. 6) on Ray Train: a tiny random model learns to prefer the chosen
starter list over the rejected one."""

from __future__ import annotations

import json

import pytest
import torch

from icebreaker_ray.config import DPOSection
from icebreaker_ray.isg.dpo import dpo_examples, train_dpo
from icebreaker_ray.isg.prompts import generator_messages, render_completion
from icebreaker_ray.isg.sft import export_model, losses, training_log

CHOSEN = ["Which One Piece arc should I start with?", "Best sourdough flour for beginners?",
          "Explain the Rust borrow checker simply", "Recommend a cozy anime for tonight"]
REJECTED = ["How to spend a vacation?", "How to spend a vacation?",
            "Translate this paragraph for me?", "How to spend a vacation?"]


def _pairs(n: int = 8) -> list[dict]:
    prompt = json.dumps(generator_messages(["One Piece", "sourdough", "Rust"], k=4))
    return [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED} for _ in range(n)]


def _margin(model, tok, example) -> float:
    """log pi(chosen | prompt) - log pi(rejected | prompt), summed over completion tokens."""
    prompt = tok.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    scores = []
    for key in ("chosen", "rejected"):
        c_ids = tok(example[key][0]["content"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([p_ids, c_ids], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        targets = ids[0, 1:]
        token_logp = logp[torch.arange(len(targets)), targets]
        scores.append(float(token_logp[p_ids.shape[1] - 1:].sum()))
    return scores[0] - scores[1]


def test_dpo_examples_render_whole_lists():
    ex = dpo_examples(_pairs(1))[0]
    assert ex["prompt"][-1]["role"] == "user"
    assert ex["chosen"] == [{"role": "assistant", "content": render_completion(CHOSEN)}]
    assert ex["rejected"] == [{"role": "assistant", "content": render_completion(REJECTED)}]


def test_no_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo([], "unused", DPOSection(), str(tmp_path), "x")


@pytest.mark.integration
def test_dpo_raises_chosen_over_rejected_margin(tiny_generator, ray_local, tmp_path):
    from icebreaker_ray.models import load_generator

    examples = dpo_examples(_pairs())
    before_model, tok = load_generator(tiny_generator)
    before = _margin(before_model, tok, examples[0])
    params0 = {k: v.clone() for k, v in before_model.state_dict().items()}
    # as in local-cpu: one two-core worker, DeepSpeed ZeRO-2, bf16 (fp32 master weights)
    train = DPOSection(num_workers=1, cpus_per_worker=2, zero_stage=2, max_steps=12,
                       per_device_batch_size=4, bf16=True,
                       learning_rate=5e-3, beta=0.1, save_steps=12, max_length=256)
    result = train_dpo(examples, tiny_generator, train, str(tmp_path / "rt"), "dpo-tiny")
    history = training_log(result)
    assert len(losses(history)) >= 2
    out = export_model(result.checkpoint, tmp_path / "model", tiny_generator)
    after_model, _ = load_generator(out)
    changed = [k for k, v in after_model.state_dict().items() if not torch.equal(v, params0[k])]
    assert len(changed) >= len(params0) // 2
    after = _margin(after_model, tok, examples[0])
    assert after > before + 1.0, (before, after)
