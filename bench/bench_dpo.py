"""List-wise DPO on a demo run's mined pairs: the local-cpu setting vs fp32 at DPO's usual rate.

    make demo    # or any run whose `mine` stage finished
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_dpo.py --run runs/demo --steps 8

Trains DPO twice from the run's SFT generator on its ``mine/preference_pairs`` (shuffled
as the ``dpo`` stage shuffles them), through :func:`icebreaker_ray.isg.dpo.train_dpo`
(Ray Train + DeepSpeed, the config's workers and ZeRO stage):

* **project**: the config's ``dpo`` section as it is (local-cpu: bf16, lr 5e-5);
* **baseline**: the same with fp32 and lr 5e-6 (local-cpu until 2026-11-22).

Reports the median step time and the DPO loss per step. Each step's batch is new while
``steps x batch`` does not exceed the pairs, and the logged loss is computed before the
model trains on it, so the loss of the later steps measures pairs the model has not seen.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.isg.dpo import dpo_examples, train_dpo
from icebreaker_ray.isg.sft import losses, training_log


def run(name: str, examples, model: str, section, storage: str) -> dict:
    t = time.perf_counter()
    history = training_log(train_dpo(examples, model, section, storage, name))
    wall = time.perf_counter() - t
    loss = losses(history)
    step = [h["step_time_s"] for h in history if "step_time_s" in h]
    half = loss[len(loss) // 2:]
    return {"wall": wall, "step_s": step[-1] if step else float("nan"), "losses": loss,
            "late_loss": statistics.mean(half) if half else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description="DPO: local-cpu's bf16 at 5e-5 vs fp32 at 5e-6")
    ap.add_argument("--run", default="runs/demo", help="a run directory with sft/ and mine/")
    ap.add_argument("--config", default="configs/local-cpu.yaml")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    cfg = load_config(args.config)
    rows = io.read_table(io.join(args.run, "mine", "preference_pairs.parquet"),
                         "preference_pairs").to_pylist()
    random.Random(cfg.run.seed).shuffle(rows)
    examples = dpo_examples(rows)
    model = os.path.abspath(os.path.join(args.run, "sft", "model"))
    project = cfg.dpo.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    baseline = project.model_copy(update={"bf16": False, "learning_rate": 5e-6})
    batch = project.per_device_batch_size * project.num_workers
    if args.steps * batch > len(examples):
        print(f"note: {args.steps} steps x {batch} pairs > {len(examples)} pairs: "
              "later steps repeat pairs, so their loss is no longer on unseen pairs")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = {label: run(label, examples, model, section, tmp)
               for label, section in (("project", project), ("baseline", baseline))}
    print(f"{len(examples)} pairs from {args.run}, {args.steps} steps x {batch} pairs, "
          f"{project.num_workers} worker(s) x {project.cpus_per_worker} CPUs, ZeRO-{project.zero_stage}")
    for label, section in (("project", project), ("baseline", baseline)):
        r = out[label]
        print(f"{label}: {'bf16' if section.bf16 else 'fp32'} lr {section.learning_rate:g}: "
              f"{r['step_s']:.1f} s/step (wall {r['wall']:.0f} s); loss per step "
              f"{' '.join(f'{x:.3f}' for x in r['losses'])}; mean loss of the later half "
              f"{r['late_loss']:.3f}")
    print(f"ratio (baseline / project step time): {out['baseline']['step_s'] / out['project']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
