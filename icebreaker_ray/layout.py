"""One run's layout: where each stage's outputs live, which generator is the promoted
one, and the trigger interests I* every consumer reads.

    layout.table_uri("runs/demo", "sessions")   # runs/demo/simulate/sessions.parquet
    layout.scorer_dir("runs/demo")              # runs/demo/train-scorer/scorer
    layout.promoted_generator("runs/demo")      # what evaluate grades as ICEBREAKER and serve serves
    layout.trigger_interests("runs/demo")       # {"u0001": ["Asked about One Piece ...", ...]}
    layout.precomputed_lists("runs/demo")       # runs/demo/serve/precomputed.parquet
    layout.missing_clicks("runs/byo")           # "the logs have no impressions" (or None)
    layout.util_ranker("runs/byo")              # None: no ranker, list search uses the proxy

Stages, the evaluation and the server name stage outputs through these functions, so a
path is spelled once. Paths may be local or storage URIs (see :mod:`icebreaker_ray.data.io`).
"""

from __future__ import annotations

import logging
from typing import Any

from icebreaker_ray.data import io
from icebreaker_ray.rid import gating

log = logging.getLogger(__name__)

#: The stage that writes each table (``OUT/<stage>/<table>.parquet``).
TABLE_STAGE = {
    "users": "simulate", "sessions": "simulate", "impressions": "simulate",
    "revisit_pairs": "label-revisits", "interests": "distill-interests",
    "sit_corpus": "distill-corpus", "candidates": "mine", "preference_pairs": "mine",
}
MODEL_DIR = "model"            # a generator inside its stage: sft/model, dpo/model
VANILLA_DIR = "vanilla-model"  # dpo/vanilla-model: SFT+DPO on logged feedback
SCORER_DIR = "scorer"
THRESHOLDS_JSON = "thresholds.json"


def table_uri(out: str, name: str) -> str:
    return io.table_uri(out, TABLE_STAGE[name], name)


def scorer_dir(out: str) -> str:
    return io.join(out, "train-scorer", SCORER_DIR)


def thresholds_json(out: str) -> str:
    return io.join(out, "distill-interests", THRESHOLDS_JSON)


def ranker_dir(out: str, slice_name: str = "util") -> str:
    """``util`` guides mining; ``eval`` (a disjoint slice of the logs) only grades."""
    return io.join(out, "train-ranker", slice_name)


def sft_generator(out: str) -> str:
    return io.join(out, "sft", MODEL_DIR)


def dpo_generator(out: str) -> str:
    return io.join(out, "dpo", MODEL_DIR)


def vanilla_generator(out: str) -> str:
    return io.join(out, "dpo", VANILLA_DIR)


def promoted_generator(out: str) -> str:
    """The generator the run ships: the self-reinforced round the round gate promoted last
    (the iterate manifest's ``final_model``), else round 0's DPO model (no round passed
    the gate, or no rounds ran), else the SFT model (the newest complete stage that has one)."""
    manifest = io.read_manifest(out, "iterate")
    if manifest and io.is_complete(out, "iterate") and manifest.get("metrics", {}).get("final_model"):
        return io.join(out, "iterate", manifest["metrics"]["final_model"])
    if io.is_complete(out, "dpo"):
        return dpo_generator(out)
    return sft_generator(out)


def precomputed_lists(out: str) -> str:
    """The server's ready answers for known users (``icebreaker precompute``)."""
    return io.join(out, "serve", "precomputed.parquet")


def generator_stage(out: str, uri: str) -> str:
    """The stage whose output ``uri`` is (for naming a model version)."""
    return uri[len(out.rstrip("/")) + 1:].split("/", 1)[0]


def round_models(out: str) -> list[tuple[str, str]]:
    """(label, model dir) of every generator along the way: SFT, DPO round 0, each round."""
    models = [("SFT", sft_generator(out)), ("round 0", dpo_generator(out))]
    manifest = io.read_manifest(out, "iterate") or {}
    for row in manifest.get("metrics", {}).get("rounds", []):
        models.append((f"round {row['round']}", io.join(out, "iterate", row["model"])))
    return models


def trigger_interests(out: str) -> dict[str, list[str]]:
    """I* per user from ``distill-interests`` (:func:`icebreaker_ray.rid.gating.trigger_interests`)."""
    table = io.read_table(table_uri(out, "interests"), "interests")
    return gating.trigger_interests(table.column("user_id").to_numpy(zero_copy_only=False),
                                    table.column("summary").to_pylist(),
                                    table.column("score").to_numpy(),
                                    table.column("selected").to_numpy(zero_copy_only=False),
                                    eligible_mask(table))


def eligible_mask(table) -> list | None:
    """The ``interests`` table's noise mask; None where it was not recorded (older runs)."""
    mask = table.column("eligible").to_pylist()
    return None if all(m is None for m in mask) else [m is not False for m in mask]


# ----------------------------------------------------------------------------- before clicks

#: What to do about a run without clicks: the end of every "not run" message.
NO_CLICKS_TODO = (
    "serve this run (`icebreaker serve --out RUN`), let users see and click starters, export "
    "them (`icebreaker export-impressions --out RUN --to DATA/impressions.parquet`, DATA being "
    "data.source) and rerun the pipeline")


def missing_clicks(out: str) -> str | None:
    """Why the run's logs cannot train a utility ranker (no impressions, or none clicked),
    or None when they can. Your own logs may have no impressions yet (README: "Your logs,
    before you have clicks"); the simulated world always has some."""
    table = io.read_table(table_uri(out, "impressions"), "impressions", allow_empty=True)
    if table.num_rows == 0:
        return "the logs have no impressions"
    if not any(table.column("clicked").to_pylist()):
        return f"none of the {table.num_rows} logged impressions was clicked"
    return None


def not_run(out: str, stage: str, why: str) -> dict[str, Any]:
    """Record that ``stage`` did not run, and why, as a complete stage without outputs.

    The manifest is written like any other (``run_stage`` adds the chained fingerprint),
    so the stages below it are not stale and ``plan`` stays right: once the reason goes
    away upstream (the logs gain clicks, so ``simulate`` reruns), the fingerprint changes
    and the stage runs for real. ``metrics.not_run`` holds the one-line message.
    """
    log.info("%s: not run: %s", stage, why)  # the CLI prints it; the manifest keeps it
    return io.StageWriter(out, stage).commit(metrics={"not_run": why})


def stage_not_run(out: str, stage: str) -> str | None:
    """The reason ``stage`` recorded with :func:`not_run`, else None."""
    manifest = io.read_manifest(out, stage) or {}
    return manifest.get("metrics", {}).get("not_run")


def util_ranker(out: str) -> str | None:
    """The ``util`` ranker's directory, or None when train-ranker did not run (no clicks):
    then the list search ranks by the click-free proxy (:mod:`icebreaker_ray.reward.proxy`)."""
    return None if stage_not_run(out, "train-ranker") else ranker_dir(out, "util")


def click_free_message(stage: str, why: str, what: str) -> str:
    """The one-line "not run" message of a stage that needs clicks."""
    return f"{stage} needs {what}, and {why}; to get them, {NO_CLICKS_TODO}"
