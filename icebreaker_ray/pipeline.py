"""The stages of DESIGN §4, in order, and the runner that skips what is already done.

    run_pipeline(cfg, "runs/demo")      # every built stage, in order, skipping finished ones
    run_stage("simulate", cfg, "runs/demo")

A stage is a function ``fn(cfg, out) -> manifest`` that writes its outputs through
:class:`icebreaker_ray.data.io.StageWriter`. The registry names it by import path so the
CLI stays fast and each stage's heavy imports happen only when it runs. The CLI, the
job scripts and the tests all call :func:`run_stage`; nothing is implemented twice.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icebreaker_ray.config import Config
from icebreaker_ray.data import io

log = logging.getLogger(__name__)


class StageNotBuilt(RuntimeError):
    """The stage exists in the design but has no implementation yet."""


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    # "module:function", or None while the stage is not built.
    target: str | None
    # Config sections whose change invalidates this stage's outputs.
    sections: tuple[str, ...]
    # Stages whose outputs this one reads.
    needs: tuple[str, ...] = ()
    issue: int = 0

    def fingerprint(self, cfg: Config) -> str:
        return cfg.fingerprint("run", "data", *self.sections)

    def function(self) -> Callable[[Config, str], dict[str, Any]]:
        if self.target is None:
            raise StageNotBuilt(
                f"stage '{self.name}' is not built yet (tracked in issue #{self.issue})"
            )
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


STAGES: tuple[Stage, ...] = (
    Stage("simulate", "Simulated world: users, session summaries, logged impressions "
          "(or ingest your own logs when data.source is a path).",
          "icebreaker_ray.sim.stage:simulate", ("sim", "models", "generation", "gating"), issue=3),
    Stage("label-revisits", "Interest-revisit judge over (earlier, later) summary pairs (Table 5).",
          "icebreaker_ray.rid.stage:label_revisits", ("judge", "models"), ("simulate",), issue=4),
    Stage("train-scorer", "Two-tower resonance scorer, contrastive loss (eq. 2-3), Ray Train.",
          "icebreaker_ray.rid.stage:train_scorer", ("scorer", "models"), ("label-revisits",), issue=4),
    Stage("distill-interests", "Score summaries, activity-aware thresholds (eq. 4): trigger interests.",
          "icebreaker_ray.rid.stage:distill_interests", ("gating", "scorer", "models"), ("train-scorer",), issue=4),
    Stage("distill-corpus", "Teacher-distilled interest-starter corpus (Table 4 prompt).",
          "icebreaker_ray.isg.stage:distill_corpus", ("teacher", "filter", "generation"),
          ("distill-interests",), issue=5),
    Stage("sft", "Supervised interest-expanded instruction tuning (SIT, eq. 5), Ray Train + DeepSpeed.",
          "icebreaker_ray.isg.stage:sft", ("sft", "models", "generation"), ("distill-corpus",),
          issue=5),
    Stage("train-ranker", "Utility ranker R_util with click and depth heads (eq. 7), Ray Train.",
          "icebreaker_ray.reward.stage:train_ranker", ("ranker", "models"), ("simulate",), issue=6),
    Stage("mine", "Candidate sampling + hybrid reward list search (Algorithm 1): preference pairs.",
          "icebreaker_ray.search.stage:mine", ("search", "generation", "filter", "dpo", "eval"),
          ("sft", "train-ranker", "distill-interests", "distill-corpus"), issue=6),
    Stage("dpo", "List-wise DPO on mined pairs (PMA, eq. 6), Ray Train + DeepSpeed.",
          "icebreaker_ray.isg.stage:dpo", ("dpo",), ("mine",), issue=6),
    Stage("iterate", "Self-reinforced rounds: mine -> DPO over fresh time slices (App. C.2).",
          "icebreaker_ray.search.iterate:iterate", ("iterate", "search", "dpo", "ranker", "generation", "filter", "eval"),
          ("dpo",), issue=6),
    Stage("evaluate", "Offline metrics, simulated A/B test and the report (paper §3).",
          "icebreaker_ray.eval.stage:evaluate", ("eval", "generation", "filter", "models"),
          ("iterate",), issue=7),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def default_out(cfg: Config) -> str:
    return io.join(cfg.run.storage_path, cfg.run.name)


def get_stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}") from None


def run_stage(name: str, cfg: Config, out: str, *, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its outputs are complete for this config; return its manifest."""
    stage = get_stage(name)
    fingerprint = stage.fingerprint(cfg)
    if not force and io.is_complete(out, name, fingerprint):
        manifest = io.read_manifest(out, name) or {}
        return {**manifest, "skipped": True}
    fn = stage.function()
    missing = [dep for dep in stage.needs if not io.is_complete(out, dep)]
    if missing:
        raise RuntimeError(
            f"stage '{name}' needs the outputs of {', '.join(missing)} in {out}; "
            f"run them first (or run the whole pipeline)"
        )
    if io.begin_attempt(out, name, fingerprint, fresh=force):
        log.warning("%s: cleared %s, which an earlier run with another config (or --force) "
                    "left behind", name, io.stage_dir(out, name))
    started = time.time()
    manifest = fn(cfg, out)
    # The wall time of the whole stage (the stage's own writer only sees its last part).
    manifest["duration_s"] = time.time() - started
    io.write_json(io.join(out, name, io.MANIFEST), manifest)
    return manifest


def run_pipeline(
    cfg: Config,
    out: str,
    *,
    until: str | None = None,
    on_stage: Callable[[Stage, str, dict[str, Any] | None], None] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Run every stage in order (through ``until``), skipping finished ones.

    ``on_stage(stage, status, manifest)`` is called with status "running", "done" or
    "skipped" so a caller can show progress. Stops with :class:`StageNotBuilt` at the
    first stage that has no implementation yet, after running all before it.
    """
    results = []
    for stage in STAGES:
        if on_stage:
            on_stage(stage, "running", None)
        manifest = run_stage(stage.name, cfg, out)
        if on_stage:
            on_stage(stage, "skipped" if manifest.get("skipped") else "done", manifest)
        results.append((stage.name, manifest))
        if stage.name == until:
            break
    return results
