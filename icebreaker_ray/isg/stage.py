"""Stages ``distill-corpus`` and ``sft``: the SIT warm start of the generator (§2.3.1).

    icebreaker distill-corpus --out runs/demo     # interests -> sit_corpus (teacher, Table 4)
    icebreaker sft --out runs/demo                # sit_corpus -> runs/demo/sft/model

``distill-corpus`` reads the trigger interests (:func:`icebreaker_ray.layout.trigger_interests`),
sends each user's set to the configured
teacher in a Ray Data ``map_batches`` over an actor pool (one teacher + embedder per
actor), and writes ``sit_corpus`` (user_id, interests, starters, teacher).

``sft`` turns the corpus into prompt/completion examples (eq. 5), trains with TRL's
SFTTrainer inside Ray Train (DeepSpeed, optional LoRA; see :mod:`icebreaker_ray.isg.sft`)
and exports a plain Hugging Face model to ``sft/model``. Ray Train's run lives in
``sft/ray-train/<run.name>-sft``: a killed stage rerun with the same run name resumes
from its latest checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.layout import MODEL_DIR, VANILLA_DIR, trigger_interests
from icebreaker_ray.raykit import init_ray, map_actor_pool, node_id

SIT_TABLE = "sit_corpus"


# ----------------------------------------------------------------------------- inputs


def raw_summaries(out: str, max_items: int) -> dict[str, list[str]]:
    """Each user's ``max_items`` most recent raw session summaries (the PE baseline's input)."""
    table = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")
    df = table.to_pandas().sort_values(["user_id", "ts", "session_id"])
    return {uid: list(g["summary"])[-max_items:] for uid, g in df.groupby("user_id", sort=True)}


def user_interests(out: str, mode: str = "rid", max_items: int = 5) -> dict[str, list[str]]:
    """Prompt inputs per user: ``rid`` = trigger interests, ``raw`` = recent summaries (PE)."""
    if mode == "rid":
        return trigger_interests(out)
    if mode == "raw":
        return raw_summaries(out, max_items)
    raise ValueError(f"mode must be 'rid' or 'raw', got {mode!r}")


# ----------------------------------------------------------------------------- distill-corpus


class TeacherActor:
    """A Ray Data actor: one teacher (and its embedder) serving many batches."""

    def __init__(self, cfg_data: dict[str, Any]) -> None:
        from icebreaker_ray.isg.teacher import make_teacher
        from icebreaker_ray.models import TextEncoder, set_offline

        cfg = Config.model_validate(cfg_data)
        set_offline(cfg.models.offline)
        self.teacher = make_teacher(cfg, TextEncoder(cfg.models.embedder))
        self.node = node_id()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        interests = [list(x) for x in batch["interests"]]
        starters = self.teacher.distill(interests)
        return pd.DataFrame({
            "user_id": list(batch["user_id"]),
            "interests": interests,
            "starters": starters,
            "teacher": [self.teacher.name] * len(interests),
            "node_id": [self.node] * len(interests),
        })


def distill_corpus(cfg: Config, out: str) -> dict[str, Any]:
    """The coverage-oriented corpus D_cov: the teacher's filtered starters per interest set."""
    by_user = trigger_interests(out)
    items = [{"user_id": u, "interests": xs} for u, xs in by_user.items() if xs]
    if not items:
        raise RuntimeError(f"{out}: no user has selected trigger interests; nothing to distil")
    init_ray(cfg)
    t = cfg.teacher
    df = map_actor_pool(pa.Table.from_pylist(items), TeacherActor, {"cfg_data": cfg.model_dump(mode="json")},
                        min(t.num_actors, len(items)), t.batch_size, batch_format="pandas").to_pandas()
    k = cfg.generation.K
    keep = df["starters"].map(len) >= k  # fewer than K starters cannot make one SFT example
    table = pa.table({
        "user_id": list(df.loc[keep, "user_id"]),
        "interests": [list(x) for x in df.loc[keep, "interests"]],
        "starters": [list(x) for x in df.loc[keep, "starters"]],
        "teacher": list(df.loc[keep, "teacher"]),
    }).sort_by("user_id")
    writer = io.StageWriter(out, "distill-corpus")
    writer.write_table(SIT_TABLE, table)
    counts = df["starters"].map(len)
    return writer.commit(
        metrics={
            "users": len(items),
            "rows": table.num_rows,
            "dropped_fewer_than_k": int((~keep).sum()),
            "starters": int(counts[keep].sum()),
            "mean_starters": float(counts[keep].mean()) if keep.any() else 0.0,
            "teacher": str(df["teacher"].iloc[0]),
        },
        node_ids=[*df["node_id"].unique().tolist(), node_id()],
    )


# ----------------------------------------------------------------------------- sft


def export_to_stage(writer: io.StageWriter, result: Any, base: str, relative: str) -> None:
    """Write the final checkpoint as a plain HF model directory into the stage output (exported
    locally, then uploaded when the output is a storage URI) and record it."""
    from icebreaker_ray.isg.sft import export_model

    if result.checkpoint is None:
        raise RuntimeError(f"{writer.stage} finished without a checkpoint")
    with io.output_dir(writer.path(relative)) as local:
        export_model(result.checkpoint, local, base)
    writer.add_file(relative)


def sft(cfg: Config, out: str) -> dict[str, Any]:
    """SIT (eq. 5) on ``sit_corpus``; the tuned generator goes to ``OUT/sft/model``."""
    from icebreaker_ray.isg.sft import losses, sit_examples, train_sft, training_log
    from icebreaker_ray.models import resolve_generator

    corpus = io.read_table(io.table_uri(out, "distill-corpus", SIT_TABLE), SIT_TABLE).to_pylist()
    examples = sit_examples(corpus, k=cfg.generation.K, max_chars=cfg.filter.max_chars)
    random.Random(cfg.run.seed).shuffle(examples)
    base = resolve_generator(cfg.models.generator, cfg.models.cache_dir)
    init_ray(cfg)
    writer = io.StageWriter(out, "sft")
    storage = writer.path("ray-train")
    result = train_sft(examples, base, cfg.sft, storage, f"{cfg.run.name}-sft", seed=cfg.run.seed)
    export_to_stage(writer, result, base, MODEL_DIR)
    history = training_log(result)
    loss = losses(history)
    starts = [h["start_step"] for h in history if "start_step" in h]
    step_times = [h["step_time_s"] for h in history if "step_time_s" in h]
    return writer.commit(
        metrics={
            "examples": len(examples),
            "steps": int(result.metrics.get("step", 0)),
            "start_step": int(starts[-1]) if starts else 0,
            "first_loss": loss[0] if loss else None,
            "last_loss": loss[-1] if loss else None,
            "step_time_s": step_times[-1] if step_times else None,
            "base_model": base,
            "zero_stage": cfg.sft.zero_stage,
            "lora": cfg.sft.lora is not None,
            "num_workers": cfg.sft.num_workers,
            "checkpoint": result.checkpoint.path,
        },
        node_ids=[node_id()],
    )



# ----------------------------------------------------------------------------- dpo


def dpo_round(cfg: Config, writer: io.StageWriter, rows: list[dict[str, Any]], start: str,
              relative: str, run: str) -> dict[str, Any]:
    """DPO (eq. 6) from the model in ``start`` (also the reference) on ``rows`` of
    ``preference_pairs``; the result is exported to ``relative`` inside the stage."""
    from icebreaker_ray.isg.dpo import dpo_examples, train_dpo
    from icebreaker_ray.isg.sft import losses, training_log

    rows = list(rows)
    random.Random(cfg.run.seed).shuffle(rows)
    result = train_dpo(dpo_examples(rows), start, cfg.dpo,
                       writer.path(f"ray-train-{run}"),
                       f"{cfg.run.name}-{run}", seed=cfg.run.seed)
    export_to_stage(writer, result, start, relative)
    loss = losses(training_log(result))
    return {"pairs": len(rows), "steps": int(result.metrics.get("step", 0)),
            "first_loss": loss[0] if loss else None, "last_loss": loss[-1] if loss else None}


def dpo(cfg: Config, out: str) -> dict[str, Any]:
    """PMA (eq. 6) from the SFT generator on the mined hierarchical pairs -> ``OUT/dpo/model``;
    the vanilla SFT+DPO baseline on logged-feedback pairs -> ``OUT/dpo/vanilla-model``."""
    init_ray(cfg)
    writer = io.StageWriter(out, "dpo")
    metrics: dict[str, Any] = {}
    # Every Train worker loads the start model from storage (io.local_dir, once per node).
    start = io.absolute(layout.sft_generator(out))
    for relative, table, run in ((MODEL_DIR, "preference_pairs.parquet", "dpo"),
                                 (VANILLA_DIR, "feedback_pairs.parquet", "dpo-vanilla")):
        rows = io.read_table(io.join(out, "mine", table), "preference_pairs",
                             allow_empty=True).to_pylist()
        if not rows and relative == VANILLA_DIR:
            # Too few users with both a clicked and an ignored list: no baseline to train.
            metrics[run] = {"pairs": 0, "skipped": "no logged-feedback pairs"}
            continue
        metrics[run] = dpo_round(cfg, writer, rows, start, relative, run)
    return writer.commit(metrics=metrics,
                         node_ids=[node_id()])
