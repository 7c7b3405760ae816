"""SFT step time: TRL SFTTrainer under Ray Train + DeepSpeed vs plain TRL in one process.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sft.py --steps 10 --batch 4
    # local-cpu's setup: one worker with both cores, bf16
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sft.py --batch 8 --workers 1 --cpus-per-worker 2 --bf16

Same model (SmolLM2-135M-Instruct by default), same SIT examples, same global batch, same
precision (fp32, or bf16 mixed precision on both sides with ``--bf16``):
the baseline is one process with ``per_device_train_batch_size=batch`` and all threads;
the project runs what the ``sft`` stage runs (:func:`icebreaker_ray.isg.sft.train_sft`):
``workers`` Ray Train workers with ``batch // workers`` sequences each and DeepSpeed
ZeRO-``zero``. Step time is the median wall time per optimizer step after ``warmup``
steps (:func:`icebreaker_ray.isg.sft.step_timer`, used by both). Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from icebreaker_ray.config import TrainSection
from icebreaker_ray.isg.sft import sit_examples, step_timer, train_sft, training_log
from icebreaker_ray.models import resolve_generator
from icebreaker_ray.sim.catalog import all_starters, load_catalog


def corpus(n: int = 64) -> list[dict]:
    """SIT rows from the public catalog: one interest, K=4 starters each."""
    subjects = load_catalog().regular_subjects()
    return [{"interests": [f"{s.name}: {s.facets[0]}"], "starters": all_starters(s)[:4]}
            for s in subjects[:n]]


def plain_trl(model_path: str, examples, batch: int, steps: int, max_length: int, out: str,
              bf16: bool = False) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from icebreaker_ray.models import load_tokenizer

    tok = load_tokenizer(model_path)
    tok.padding_side = "right"
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        args=SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                       learning_rate=5e-5, max_length=max_length, use_cpu=True,
                       # explicit: SFTConfig turns bf16 on by default where the CPU has it
                       bf16=bf16,
                       completion_only_loss=True, save_strategy="steps", save_steps=steps,
                       save_only_model=True, report_to="none", disable_tqdm=True,
                       logging_steps=1000),
        train_dataset=Dataset.from_list(examples), processing_class=tok,
        callbacks=[step_timer()])
    trainer.train()
    return [h["step_time_s"] for h in trainer.state.log_history if "step_time_s" in h][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description="SFT step time: Ray Train + DeepSpeed vs plain TRL")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="global batch (sequences per step)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1,
                    help="CPUs (torch threads) per Ray Train worker")
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides")
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = resolve_generator(args.model)
    examples = sit_examples(corpus(), k=4)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        plain = plain_trl(model_path, examples, args.batch, args.steps, args.max_length,
                          os.path.join(tmp, "plain"), bf16=args.bf16)
        plain_wall = time.time() - t
        from icebreaker_ray.raykit import init_ray

        init_ray(num_cpus=args.workers * args.cpus_per_worker)
        train = TrainSection(num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             zero_stage=args.zero, max_steps=args.steps,
                             save_steps=args.steps, per_device_batch_size=args.batch // args.workers,
                             max_length=args.max_length, bf16=args.bf16)
        t = time.time()
        result = train_sft(examples, model_path, train, os.path.join(tmp, "rt"), "bench-sft")
        ray_wall = time.time() - t
        ray_s = [h["step_time_s"] for h in training_log(result) if "step_time_s" in h][-1]
    print(f"model {args.model}, {'bf16' if args.bf16 else 'fp32'}, global batch {args.batch}, "
          f"max_length {args.max_length}, "
          f"{args.steps} steps (median step time after 2 warm-up steps)")
    print(f"plain TRL, 1 process, batch {args.batch}: {plain:.2f} s/step (wall {plain_wall:.0f} s)")
    print(f"Ray Train {args.workers} workers x {args.batch // args.workers} sequences "
          f"x {args.cpus_per_worker} CPUs + DeepSpeed ZeRO-{args.zero}: "
          f"{ray_s:.2f} s/step (wall {ray_wall:.0f} s incl. Ray/DeepSpeed start)")
    print(f"ratio (Ray Train + DeepSpeed / plain TRL): {ray_s / plain:.2f}x")


if __name__ == "__main__":
    main()
