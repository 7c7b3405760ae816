"""Personalized multi-dimensional alignment (PMA, §2.3.2): list-wise DPO (eq. 6) on Ray Train.

    examples = dpo_examples(pairs.to_pylist())      # prompt / chosen / rejected chats
    result = train_dpo(examples, "runs/demo/sft/model", cfg.dpo, storage_path, "demo-dpo")
    export_model(result.checkpoint, "runs/demo/dpo/model")

eq. 6, L_PMA = -E[log σ(β (log π(S_w | I*) - log π(S_l | I*)))] relative to the reference
policy: each pair's chosen and rejected are WHOLE starter lists rendered in the
generator's one output format (``<sug> s1 && … && sK </sug>``), so the preference is
list-level, as in the paper. The reference model is the model DPO starts from (the SFT
generator in round 0, the previous round's generator after); TRL builds it from the
initial weights when ``ref_model`` is None. β comes from ``dpo.beta``.

The Ray Train glue (DeepSpeed, LoRA, checkpoints every ``save_steps``, resume by
rerunning with the same run name, FailureConfig) is shared with SFT (``isg/sft.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from icebreaker_ray.isg.prompts import render_completion
from icebreaker_ray.isg.sft import deepspeed_config, run_hf_training

if TYPE_CHECKING:
    from icebreaker_ray.config import DPOSection


def dpo_examples(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``preference_pairs`` rows -> DPOTrainer conversational examples.

    >>> ex = dpo_examples([{"prompt": '[{"role": "user", "content": "hi"}]',
    ...                     "chosen": ["A?", "B?"], "rejected": ["A?", "A?"]}])
    >>> ex[0]["chosen"][0]["content"], ex[0]["rejected"][0]["content"]
    ('<sug> A? && B? </sug>', '<sug> A? && A? </sug>')
    """
    return [
        {
            "prompt": json.loads(row["prompt"]),
            "chosen": [{"role": "assistant", "content": render_completion(list(row["chosen"]))}],
            "rejected": [{"role": "assistant", "content": render_completion(list(row["rejected"]))}],
        }
        for row in rows
    ]


def dpo_trainer_args(train: dict[str, Any], output_dir: str, seed: int) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        beta=train["beta"],
        # eq. 6, plus the chosen list's NLL when dpo.sft_weight > 0
        loss_type=["sigmoid", "sft"] if train.get("sft_weight") else ["sigmoid"],
        loss_weights=[1.0, train["sft_weight"]] if train.get("sft_weight") else None,
        max_steps=train["max_steps"],
        per_device_train_batch_size=train["per_device_batch_size"],
        gradient_accumulation_steps=train["gradient_accumulation_steps"],
        learning_rate=train["learning_rate"],
        max_length=train["max_length"],
        bf16=train["bf16"],
        use_cpu=not train["use_gpu"],
        deepspeed=deepspeed_config(train["zero_stage"]),
        logging_steps=1,
        save_strategy="steps",
        save_steps=train["save_steps"],
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
    )


def build_dpo_trainer(model: Any, tok: Any, train: dict[str, Any], output_dir: str, seed: int,
                      dataset: Any, peft_config: Any, callbacks: list[Any]) -> Any:
    """The PMA trainer of ``hf_train_loop``: TRL DPOTrainer; the reference model is a frozen
    copy of the starting weights (TRL builds it when ``ref_model`` is None)."""
    from trl import DPOTrainer

    return DPOTrainer(model=model, ref_model=None, args=dpo_trainer_args(train, output_dir, seed),
                      train_dataset=dataset, processing_class=tok, peft_config=peft_config,
                      callbacks=callbacks)


def train_dpo(examples: list[dict[str, Any]], model_path: str, train: DPOSection,
              storage_path: str, name: str, *, seed: int = 0) -> Any:
    """Run list-wise DPO under Ray Train; returns the ``ray.train.Result``."""
    if not examples:
        raise ValueError("no preference pairs to train on (did mining find any negatives?)")
    return run_hf_training(build_dpo_trainer, examples, model_path, train, storage_path, name,
                           seed=seed)
