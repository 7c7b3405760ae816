"""Supervised Interest-Expanded Instruction Tuning (SIT, §2.3.1, eq. 5) on Ray Train.

    examples = sit_examples(corpus_rows, k=4)      # conversational prompt / completion
    result = train_sft(examples, "smollm2-135m-instruct", cfg.sft, storage_path, "demo-sft")
    export_model(result.checkpoint, "runs/demo/sft/model")   # HF directory, LoRA merged

eq. 5, L_SIT = -E_(I*, S)~D_cov [log pi_theta(S | I*)]: the prompt is the generator's
own chat prompt over the trigger interests I* and the completion is the teacher's list
S rendered as ``<sug> s1 && … </sug>``. TRL's ``SFTTrainer`` computes the loss on the
completion tokens only (prompt-completion format, ``completion_only_loss=True``).

Ray glue: each Ray Train worker runs :func:`hf_train_loop` — TRL ``SFTTrainer`` wrapped
with ``prepare_trainer`` plus :func:`report_checkpoints`, so every HF checkpoint
(model, optimizer, scheduler, DeepSpeed shards, trainer state) becomes a Ray Train
checkpoint. Rerunning with the same ``RunConfig(name, storage_path)`` hands the latest
one back through ``ray.train.get_checkpoint()`` and training resumes from its step;
``FailureConfig(max_failures)`` restarts a crashed worker group the same way.
DeepSpeed comes from ``zero_stage`` (0 = off; ZeRO-2 runs on CPU with gloo; ZeRO-3 +
bf16 for the gpu-cluster preset), LoRA from ``lora`` (peft).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icebreaker_ray.isg.prompts import generator_messages, render_completion

if TYPE_CHECKING:
    from icebreaker_ray.config import TrainSection

log = logging.getLogger(__name__)

#: The HF checkpoint's folder inside a Ray Train checkpoint.
HF_CHECKPOINT = "checkpoint"
#: Files of an HF checkpoint that make up the model (the rest is optimizer/trainer state).
_STATE_PREFIXES = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args",
                   "global_step", "latest", "zero_to_", "scaler")


# ----------------------------------------------------------------------------- data


def sit_examples(rows: Iterable[dict[str, Any]], k: int, max_chars: int = 64) -> list[dict[str, Any]]:
    """D_cov rows (``interests``, ``starters``) -> SFTTrainer prompt/completion examples.

    The teacher writes 5-20 starters per interest set; the generator is asked for K,
    so each teacher list is cut into consecutive chunks of K, each one example (a
    shorter tail chunk is dropped: the generator must learn to write exactly K).

    >>> ex = sit_examples([{"interests": ["ramen"], "starters": ["A?", "B?", "C?"]}], k=2)
    >>> len(ex), ex[0]["completion"][0]["content"]
    (1, '<sug> A? && B? </sug>')
    """
    out = []
    for row in rows:
        interests = list(row["interests"])
        starters = list(row["starters"])
        for i in range(0, len(starters) - k + 1, k):
            out.append({
                "prompt": generator_messages(interests, k=k, max_chars=max_chars),
                "completion": [{"role": "assistant", "content": render_completion(starters[i : i + k])}],
            })
    return out


# ----------------------------------------------------------------------------- config


def deepspeed_config(zero_stage: int) -> dict[str, Any] | None:
    """The DeepSpeed config for ``zero_stage`` (None when 0: plain DDP / one process).

    "auto" values are filled in by the HF integration from ``SFTConfig``, so batch size,
    accumulation, clipping and bf16 are set in one place only.
    """
    if zero_stage == 0:
        return None
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        # Write a full model at save time, so every checkpoint is a loadable HF model.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        # HF's AdamW is used as DeepSpeed's client optimizer (there is no CPU build of
        # DeepSpeed's fused Adam here).
        "zero_allow_untested_optimizer": True,
    }


def loop_config(train: TrainSection, model_path: str, examples: list[dict[str, Any]],
                seed: int = 0) -> dict[str, Any]:
    """Everything a Ray Train worker needs, as plain data (pickled to the workers)."""
    return {
        "model_path": model_path,
        "examples": examples,
        "train": train.model_dump(mode="json"),
        "seed": seed,
    }


# ----------------------------------------------------------------------------- worker


def _sft_config(train: dict[str, Any], output_dir: str, seed: int) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        max_steps=train["max_steps"],
        per_device_train_batch_size=train["per_device_batch_size"],
        gradient_accumulation_steps=train["gradient_accumulation_steps"],
        learning_rate=train["learning_rate"],
        warmup_steps=train.get("warmup_ratio", 0.0),  # a float < 1 is a ratio in transformers 5
        max_length=train["max_length"],
        bf16=train["bf16"],
        use_cpu=not train["use_gpu"],
        deepspeed=deepspeed_config(train["zero_stage"]),
        completion_only_loss=True,
        logging_steps=train.get("logging_steps", 1),
        save_strategy="steps",
        save_steps=train["save_steps"],
        save_total_limit=1,  # Ray Train keeps the history; the worker's disk only the latest
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
    )


def _lora_config(lora: dict[str, Any] | None) -> Any:
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")


def _resume_dir(tmp: str) -> str | None:
    """The HF checkpoint inside Ray Train's latest checkpoint, copied locally, or None."""
    from icebreaker_ray.raykit import restore_checkpoint

    local = restore_checkpoint(os.path.join(tmp, "resume"))
    if local is None:
        return None
    inner = os.path.join(local, HF_CHECKPOINT)
    return inner if os.path.isdir(inner) else local


def report_checkpoints() -> Any:
    """A TrainerCallback that reports every HF checkpoint to Ray Train through
    :func:`raykit.report` (what Ray's RayTrainReportCallback does): the metrics are the
    log history merged, and each rank adds its files of the latest HF checkpoint (rank 0
    the model; every rank its RNG state and DeepSpeed shards) under ``checkpoint/``."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    from icebreaker_ray.raykit import report

    class ReportCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            metrics: dict[str, Any] = {}
            for entry in state.log_history:
                metrics.update(entry)
            last = get_last_checkpoint(args.output_dir)
            report(metrics, None if last is None else
                   lambda d: shutil.copytree(last, os.path.join(d, HF_CHECKPOINT)))

    return ReportCheckpoints()


def step_timer(warmup: int = 2) -> Any:
    """A TrainerCallback that records the median wall time per optimizer step (after
    ``warmup`` steps) as ``step_time_s`` in the log history at each checkpoint, so it
    reaches Ray Train's metrics and the checkpoint's trainer state. Used by the stage and
    by bench/bench_sft.py."""
    import statistics
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            ends = self.ends[warmup:]
            # DefaultFlowCallback ran first and decided whether this step saves: record
            # now, so the entry is inside the checkpoint's trainer_state.json too.
            if control.should_save and len(ends) >= 2:
                gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
                state.log_history.append({"step_time_s": statistics.median(gaps), "step": state.global_step})

    return StepTimer()


def build_sft_trainer(model: Any, tok: Any, train: dict[str, Any], output_dir: str, seed: int,
                      dataset: Any, peft_config: Any, callbacks: list[Any]) -> Any:
    """The SIT trainer of :func:`hf_train_loop`: TRL SFTTrainer, completion-only loss."""
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=_sft_config(train, output_dir, seed), train_dataset=dataset,
                      processing_class=tok, peft_config=peft_config, callbacks=callbacks)


def native_bf16(use_gpu: bool) -> bool:
    """Whether this worker's hardware computes in bf16 natively: a CUDA device that
    supports it (Ampere and newer), or a CPU with oneDNN's bf16 kernels (AVX-512 BW/VL/DQ,
    AVX-512 BF16, AMX). Elsewhere PyTorch falls back to scalar bf16 code: on an AVX2-only
    CPU a bf16 matmul of a 135M model's shapes runs ~40x slower than fp32."""
    import torch

    if use_gpu:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_bf16(requested: bool, use_gpu: bool) -> bool:
    """``bf16: true`` where the hardware has it; fp32 (with a warning) where it does not."""
    if requested and not native_bf16(use_gpu):
        log.warning("bf16 requested but this %s has no native bf16; training in fp32 "
                    "(bf16 would be emulated, many times slower)", "GPU" if use_gpu else "CPU")
        return False
    return requested


def hf_train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: a TRL trainer (SFT or DPO, from ``config["build"]``) with
    DeepSpeed and LoRA from the config, reporting every HF checkpoint to Ray Train."""
    import torch
    from datasets import Dataset
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import AutoModelForCausalLM, TrainerCallback

    from icebreaker_ray.models import load_tokenizer, resolve_generator

    # The worker's own hardware decides (a cluster may mix node types).
    train = {**config["train"], "bf16": resolve_bf16(config["train"]["bf16"], config["train"]["use_gpu"])}
    torch.manual_seed(config["seed"])
    if not train["use_gpu"]:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model_path = resolve_generator(config["model_path"])  # a storage URI: this node's copy
    tok = load_tokenizer(model_path)
    tok.padding_side = "right"  # training pads on the right; generation on the left
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if train["bf16"] else torch.float32)

    with tempfile.TemporaryDirectory(prefix="sft-") as tmp:
        resume = _resume_dir(tmp)

        class _StartStep(TrainerCallback):
            # Records where this attempt began (0, or the resumed checkpoint's step); it
            # reaches the reported metrics through the log history.
            def on_train_begin(self, args, state, control, **kwargs):
                state.log_history.append({"start_step": state.global_step, "step": state.global_step})

        trainer = config["build"](
            model, tok, train, os.path.join(tmp, "out"), config["seed"],
            Dataset.from_list(config["examples"]), _lora_config(train.get("lora")),
            [_StartStep(), step_timer(), report_checkpoints()],
        )
        trainer = prepare_trainer(trainer)
        trainer.train(resume_from_checkpoint=resume)


# ----------------------------------------------------------------------------- driver


def train_sft(
    examples: list[dict[str, Any]],
    model_path: str,
    train: TrainSection,
    storage_path: str,
    name: str,
    *,
    seed: int = 0,
) -> Any:
    """Run SIT under Ray Train's TorchTrainer; returns the ``ray.train.Result``.

    Rerun with the same ``storage_path``/``name`` to resume from the latest checkpoint.
    ``model_path`` must be a local HF directory (see ``models.resolve_generator``).
    """
    if not examples:
        raise ValueError("the SIT corpus gave no training examples (empty corpus?)")
    return run_hf_training(build_sft_trainer, examples, model_path, train, storage_path, name,
                           seed=seed)


def run_hf_training(
    build: Any,
    examples: list[dict[str, Any]],
    model_path: str,
    train: TrainSection,
    storage_path: str,
    name: str,
    *,
    seed: int = 0,
) -> Any:
    """Run :func:`hf_train_loop` with the trainer ``build`` makes (SFT or DPO) on Ray Train
    workers; FailureConfig, checkpoint retention and resume as in the module docstring."""
    from icebreaker_ray.raykit import fit_on_ray

    return fit_on_ray(
        hf_train_loop, {**loop_config(train, model_path, examples, seed), "build": build},
        num_workers=train.num_workers, run_name=name, storage_path=storage_path,
        max_failures=train.max_failures, use_gpu=train.use_gpu, cpus_per_worker=train.cpus_per_worker,
        keep_checkpoints=train.keep_checkpoints,
        worker_env={"OMP_NUM_THREADS": str(train.cpus_per_worker)},
    )


def _is_state_file(name: str) -> bool:
    return name.startswith(_STATE_PREFIXES)


def export_model(checkpoint: Any, target: str | Path, base_model: str | None = None) -> str:
    """Write the model of a Ray Train SFT/DPO checkpoint as a plain HF directory.

    Optimizer, scheduler and DeepSpeed state are left out; a LoRA adapter is merged
    into ``base_model`` so the result always loads with ``models.load_generator``.
    """
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    with checkpoint.as_directory() as d:
        src = Path(d) / "checkpoint"
        src = src if src.is_dir() else Path(d)
        if (src / "adapter_config.json").is_file():
            _merge_lora(src, tmp, base_model)
        else:
            tmp.mkdir(parents=True)
            for item in src.iterdir():
                if item.is_file() and not _is_state_file(item.name):
                    shutil.copy2(item, tmp / item.name)
    if not (tmp / "config.json").is_file():
        raise RuntimeError(f"checkpoint {checkpoint.path} holds no HF model (config.json missing)")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return str(target)


def _merge_lora(src: Path, out: Path, base_model: str | None) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from icebreaker_ray.models import load_tokenizer, resolve_generator

    base_path = resolve_generator(
        base_model or json.loads((src / "adapter_config.json").read_text())["base_model_name_or_path"])
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(src)).merge_and_unload()
    merged.save_pretrained(out)
    load_tokenizer(str(src) if (src / "tokenizer_config.json").is_file() else base_path).save_pretrained(out)


def training_log(result: Any) -> list[dict[str, Any]]:
    """The HF ``log_history`` of the final checkpoint (loss per logged step)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        for cand in (Path(d) / "checkpoint" / "trainer_state.json", Path(d) / "trainer_state.json"):
            if cand.is_file():
                return json.loads(cand.read_text()).get("log_history", [])
    return []


def losses(history: Sequence[dict[str, Any]]) -> list[float]:
    return [float(h["loss"]) for h in history if "loss" in h]
