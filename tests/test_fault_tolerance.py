"""Fault tolerance (DESIGN §9, issue #9), with real process kills:

- a Ray Train worker SIGKILLed in the middle of SFT: FailureConfig restarts the worker
  group, which resumes from the last checkpoint and finishes the configured steps;
- the pipeline driver SIGKILLed after its first stage: the rerun skips the finished stage
  and its final outputs equal those of an uninterrupted run;
- an actor of a Ray Data actor-pool stage SIGKILLed mid-stage: Ray Data restarts it,
  retries its tasks, and the output is complete and equal to a run without the kill.

Kills land at a known point, never after a guessed sleep: the test waits for an observable
event (a checkpoint the Train controller registered, a stage manifest, a live actor) and
checks afterwards that the kill really interrupted the work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster_support import ROOT, Sessions, actor_processes, clean_env, run, wait_until

from icebreaker_ray.config import load_config
from icebreaker_ray.data import io

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- 1. SFT worker


def pausing_build(marker_dir: str, wait_s: float = 300.0):
    """A trainer builder for ``run_hf_training``: TRL SFT as in the stage, plus a callback
    that, on the first attempt only, writes ``pid-<rank>`` into ``marker_dir`` right after
    the first checkpoint was reported and then waits (at most ``wait_s``) to be killed.

    This pins the kill between two steps after a known checkpoint, so the test does not
    depend on how fast the tiny model trains. Built as a closure so that cloudpickle ships
    it by value to the Ray Train workers (which cannot import test modules).
    """
    from icebreaker_ray.isg.sft import build_sft_trainer

    def build(model, tok, train, output_dir, seed, dataset, peft_config, callbacks):
        import time

        import ray.train
        from transformers import TrainerCallback

        class PauseAfterFirstSave(TrainerCallback):
            # Added after the report callback: on_save runs once the checkpoint is reported.
            def on_save(self, args, state, control, **kwargs):
                marker = os.path.join(marker_dir, f"pid-{ray.train.get_context().get_world_rank()}")
                if os.path.exists(marker):
                    return  # the restarted attempt (or a later save): carry on
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    time.sleep(0.2)

        return build_sft_trainer(model, tok, train, output_dir, seed, dataset, peft_config,
                                 [*callbacks, PauseAfterFirstSave()])

    return build


def _registered_checkpoints(experiment_dir: Path) -> int:
    """Checkpoints the Ray Train controller has registered (its snapshot on storage)."""
    try:
        snapshot = json.loads((experiment_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    return len(snapshot.get("checkpoint_results", []))


def test_sft_survives_a_killed_train_worker(tiny_generator, ray_local, tmp_path):
    from icebreaker_ray.isg.sft import losses, run_hf_training, sit_examples, training_log

    cfg = load_config("quick", [f"models.generator={tiny_generator}", "sft.max_length=128",
                                "sft.per_device_batch_size=2"])
    train = cfg.sft  # quick: 2 workers, DeepSpeed ZeRO-2, 6 steps, a checkpoint every 3
    assert train.max_failures >= 1 and train.save_steps < train.max_steps
    rows = [{"interests": [f"interest {i}", "anime"],
             "starters": [f"What is a good {w} for {i}?" for w in ("book", "tool", "habit", "club")]}
            for i in range(8)]
    markers, storage, name = tmp_path / "markers", tmp_path / "storage", "killed-worker"
    markers.mkdir()
    killed: dict[str, object] = {}

    def kill_one_worker() -> None:
        # all ranks paused after the first checkpoint, which the controller has registered
        pids = wait_until(lambda: len(list(markers.iterdir())) == train.num_workers
                          and _registered_checkpoints(storage / name) >= 1
                          and sorted(markers.iterdir()), 600)
        if not pids:
            return
        pid = int(pids[-1].read_text())  # the highest rank
        killed["pid"] = pid
        killed["is_train_worker"] = pid in {a["Pid"] for a in actor_processes("RayTrainWorker")}
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    result = run_hf_training(pausing_build(str(markers)), sit_examples(rows, k=4), tiny_generator,
                             train, str(storage), name)
    killer.join(timeout=5)

    assert killed.get("is_train_worker"), f"no Ray Train worker was killed: {killed}"
    assert result.error is None
    assert result.metrics["step"] == train.max_steps
    history = training_log(result)
    starts = [h["start_step"] for h in history if "start_step" in h]
    # attempt 1 began at 0; attempt 2 at the checkpoint reported before the kill, not at 0
    assert starts == [0, train.save_steps], starts
    assert [h["step"] for h in history if "loss" in h] == list(range(1, train.max_steps + 1))
    assert len(losses(history)) == train.max_steps


# ----------------------------------------------------------------------------- 2. driver


UNTIL = "label-revisits"  # simulate + label-revisits: the kill lands in the second stage
OVERRIDES = ["sim.num_users=24"]


def _pipeline(out: Path) -> list[str]:
    """The CLI driver, as a user runs it (it starts a local Ray of its own)."""
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    return [sys.executable, "-m", "icebreaker_ray.cli", "pipeline", "--config",
            str(ROOT / "configs" / "quick.yaml"), "--out", str(out), "--until", UNTIL, *sets]


def _sorted(table: pa.Table) -> pa.Table:
    """Rows in a fixed order, by every column (Ray Data does not promise one)."""
    return table.sort_by([(c, "ascending") for c in table.column_names])


def _tables(out: Path, stages: list[str]) -> dict[str, pa.Table]:
    return {f"{s}/{p.name}": _sorted(pq.read_table(p)) for s in stages for p in sorted((out / s).glob("*.parquet"))}


def test_rerun_after_killed_driver_skips_finished_stages_and_matches_clean_run(ray_local, tmp_path):
    from icebreaker_ray.pipeline import run_pipeline

    clean, broken = tmp_path / "clean", tmp_path / "broken"
    # the uninterrupted reference: the same stages, in this process (the session's Ray)
    run_pipeline(load_config("quick", OVERRIDES), str(clean), until=UNTIL)

    sessions = Sessions()
    log_path = tmp_path / "killed.log"
    try:
        with log_path.open("w") as log:
            driver = sessions.popen(_pipeline(broken), stdout=log, stderr=subprocess.STDOUT,
                                    env=clean_env(), cwd=tmp_path)
            first = wait_until(lambda: io.read_manifest(str(broken), "simulate") or driver.poll() is not None, 900)
            assert driver.poll() is None, f"the driver ended before the kill:\n{log_path.read_text()[-4000:]}"
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        assert first and not io.is_complete(str(broken), UNTIL), "the kill did not interrupt the pipeline"
        manifest_before = (broken / "simulate" / io.MANIFEST).read_bytes()

        rerun = run(_pipeline(broken), 1200, env=clean_env(), cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout[-4000:]
        assert "simulate: skipped" in rerun.stdout and f"{UNTIL}: done" in rerun.stdout, rerun.stdout[-4000:]
        assert (broken / "simulate" / io.MANIFEST).read_bytes() == manifest_before
    finally:
        sessions.close()  # the killed driver's local Ray, if anything of it is left

    stages = ["simulate", UNTIL]
    expected, got = _tables(clean, stages), _tables(broken, stages)
    assert set(got) == set(expected) and f"{UNTIL}/revisit_pairs.parquet" in got
    for key, table in expected.items():
        assert got[key].num_rows > 0 and got[key].equals(table), key


# ----------------------------------------------------------------------------- 3. Ray Data actor


def test_ray_data_stage_survives_a_killed_actor(ray_local):
    from icebreaker_ray.rid.stage import embed_rows

    cfg = load_config("quick")
    topics = ["One Piece", "sourdough", "chess openings", "marathon training", "local LLMs",
              "Rust lifetimes", "Kyoto trip", "index funds", "cat nutrition", "jazz piano"]
    texts = [f"User {i} asked about {topics[i % 10]} and {topics[(i * 7) % 10]} (#{i})" for i in range(1200)]
    # many small batches: each actor has work queued for the whole stage
    embed = dict(cfg=cfg, summaries=texts, batch_size=16, num_actors=2)

    reference = embed_rows(**embed)
    before = {a["ActorID"] for a in actor_processes("EmbedActor")}
    finished = threading.Event()
    killed: dict[str, object] = {}

    def kill_one_actor() -> None:
        alive = wait_until(lambda: [a for a in actor_processes("EmbedActor", state="ALIVE")
                                    if a["ActorID"] not in before] or finished.is_set(), 600, every_s=0.1)
        if alive is True or not alive:
            return
        os.kill(alive[0]["Pid"], signal.SIGKILL)
        killed.update(actor=alive[0]["ActorID"], before_done=not finished.is_set())

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    try:
        result = embed_rows(**embed)
    finally:
        finished.set()
        killer.join(timeout=30)

    assert killed.get("before_done"), f"no actor was killed while the stage ran: {killed}"
    [info] = [a for a in actor_processes("EmbedActor") if a["ActorID"] == killed["actor"]]
    assert info["NumRestarts"] >= 1, info  # Ray restarted the killed actor
    assert result["emb"].shape == reference["emb"].shape == (len(texts), 384)
    np.testing.assert_allclose(result["emb"], reference["emb"], atol=1e-5)
