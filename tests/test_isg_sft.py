"""SIT (eq. 5) on Ray Train: the stage trains and exports a loadable HF model; a
two-worker DeepSpeed ZeRO-2 run on CPU completes and its checkpoint loads; a rerun with
the same run name resumes from the latest checkpoint; LoRA adapters are merged."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
import torch

from icebreaker_ray.config import TrainSection, load_config
from icebreaker_ray.data import io
from icebreaker_ray.isg.prompts import render_completion
from icebreaker_ray.isg.sft import (
    deepspeed_config,
    export_model,
    losses,
    sit_examples,
    train_sft,
    training_log,
)
from icebreaker_ray.pipeline import run_stage

STARTERS = [f"What is the best {w} for a beginner in {t}?"
            for t in ("anime", "baking", "chess", "running") for w in ("book", "tool", "habit", "club")]


def _corpus(n_users: int = 8) -> list[dict]:
    return [{"user_id": f"u{i}", "interests": [f"interest {i}", "anime"], "teacher": "sim",
             "starters": STARTERS[(i % 4) * 4 : (i % 4) * 4 + 4] + STARTERS[:4]} for i in range(n_users)]


def _params(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_sit_examples_are_prompt_completion_chunks_of_k():
    rows = [{"interests": ["ramen"], "starters": STARTERS[:9]}]
    ex = sit_examples(rows, k=4)
    assert len(ex) == 2  # 9 starters -> two lists of 4, the tail of 1 dropped
    assert ex[0]["prompt"][-1]["role"] == "user" and "ramen" in ex[0]["prompt"][-1]["content"]
    assert ex[0]["prompt"][0]["role"] == "system" and "exactly 4" in ex[0]["prompt"][0]["content"]
    assert ex[1]["completion"] == [{"role": "assistant", "content": render_completion(STARTERS[4:8])}]


def test_deepspeed_config_follows_zero_stage():
    assert deepspeed_config(0) is None
    assert deepspeed_config(2)["zero_optimization"] == {"stage": 2}
    z3 = deepspeed_config(3)["zero_optimization"]
    assert z3["stage"] == 3 and z3["stage3_gather_16bit_weights_on_model_save"]


def test_sft_stage_changes_parameters_and_lowers_loss(tiny_generator, ray_local, tmp_path):
    out = str(tmp_path / "run")
    writer = io.StageWriter(out, "distill-corpus")
    writer.write_table("sit_corpus", pa.Table.from_pylist(_corpus()))
    writer.commit(pinned=True)
    # local-cpu's training setup: one two-core worker, DeepSpeed ZeRO-2, bf16
    cfg = load_config("quick", [f"models.generator={tiny_generator}", "sft.num_workers=1",
                                "sft.cpus_per_worker=2", "sft.zero_stage=2", "sft.bf16=true",
                                "sft.max_steps=12", "sft.save_steps=12",
                                "sft.learning_rate=0.003", "sft.per_device_batch_size=4",
                                "sft.max_length=160", "run.name=t-stage"])
    manifest = run_stage("sft", cfg, out)
    m = manifest["metrics"]
    assert m["steps"] == 12 and m["start_step"] == 0 and m["examples"] == 16
    assert m["last_loss"] < m["first_loss"] - 0.5, m
    model_dir = tmp_path / "run" / "sft" / "model"
    assert (model_dir / "config.json").is_file()
    assert not any(p.name.startswith(("optimizer", "trainer_state")) for p in model_dir.iterdir())
    before, after = _params(tiny_generator), _params(str(model_dir))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, "training did not move the parameters"
    # the exported directory is what every later stage loads
    from icebreaker_ray.models import load_generator

    model, tok = load_generator(str(model_dir))
    assert tok.padding_side == "left" and model.config.vocab_size == len(tok)


@pytest.fixture(scope="module")
def zero2_run(tiny_generator, ray_local, tmp_path_factory):
    """A two-worker Ray Train run with DeepSpeed ZeRO-2 on CPU, 4 steps, saving every 2."""
    storage = str(tmp_path_factory.mktemp("ray-train"))
    examples = sit_examples(_corpus(), k=4)
    train = TrainSection(num_workers=2, zero_stage=2, max_steps=4, save_steps=2,
                         per_device_batch_size=2, learning_rate=1e-3, max_length=160)
    result = train_sft(examples, tiny_generator, train, storage, "resume-me")
    return storage, examples, train, result


def test_two_worker_zero2_run_completes_and_checkpoint_loads(zero2_run, tiny_generator, tmp_path):
    _, _, _, result = zero2_run
    assert result.error is None and result.metrics["step"] == 4
    with result.checkpoint.as_directory() as d:
        state = json.loads(open(f"{d}/checkpoint/trainer_state.json").read())
        assert state["global_step"] == 4
        # DeepSpeed wrote its ZeRO shards alongside the HF model
        assert any(name.startswith("global_step") for name in os.listdir(f"{d}/checkpoint"))
    model_dir = export_model(result.checkpoint, tmp_path / "model")
    from icebreaker_ray.models import load_generator

    model, tok = load_generator(model_dir)
    before = _params(tiny_generator)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    ids = model.generate(**tok(["hello"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert ids.shape[1] >= 2


def test_rerun_with_same_name_resumes_from_checkpoint(zero2_run, tiny_generator):
    storage, examples, train, _ = zero2_run
    longer = train.model_copy(update={"max_steps": 6})
    result = train_sft(examples, tiny_generator, longer, storage, "resume-me")
    history = training_log(result)
    starts = [h["start_step"] for h in history if "start_step" in h]
    assert starts[-1] == 4, starts  # began at the checkpoint, not at step 0
    assert result.metrics["step"] == 6
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # the first run's losses carried over, each step once
    assert len(losses(history)) == 6


def test_lora_adapter_is_merged_on_export(tiny_generator, ray_local, tmp_path):
    from icebreaker_ray.config import LoraSection

    train = TrainSection(num_workers=1, zero_stage=0, max_steps=3, save_steps=3,
                         per_device_batch_size=4, learning_rate=5e-3, max_length=160,
                         lora=LoraSection(r=4, alpha=8, dropout=0.0))
    result = train_sft(sit_examples(_corpus(4), k=4), tiny_generator, train, str(tmp_path), "lora")
    with result.checkpoint.as_directory() as d:
        assert "adapter_config.json" in os.listdir(f"{d}/checkpoint")
    model_dir = export_model(result.checkpoint, tmp_path / "merged", base_model=tiny_generator)
    assert "adapter_config.json" not in os.listdir(model_dir)
    before, after = _params(tiny_generator), _params(model_dir)
    assert set(before) == set(after)  # a plain model again, no lora_* weights
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # only the LoRA targets moved


def test_bf16_falls_back_to_fp32_where_the_hardware_has_none(monkeypatch, caplog):
    from icebreaker_ray.isg import sft

    monkeypatch.setattr(sft, "native_bf16", lambda use_gpu: False)
    with caplog.at_level("WARNING", logger=sft.log.name):
        assert sft.resolve_bf16(True, use_gpu=False) is False
    assert "no native bf16" in caplog.text and "CPU" in caplog.text
    assert sft.resolve_bf16(False, use_gpu=False) is False
    monkeypatch.setattr(sft, "native_bf16", lambda use_gpu: use_gpu)
    assert sft.resolve_bf16(True, use_gpu=True) is True      # a GPU that has it keeps it
    assert sft.resolve_bf16(True, use_gpu=False) is False
