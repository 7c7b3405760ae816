"""The stages of DESIGN §4, in order, and the runner that skips what is already done.

    run_pipeline(cfg, "runs/demo")      # every built stage, in order, skipping finished ones
    run_stage("simulate", cfg, "runs/demo")

A stage is a function ``fn(cfg, out) -> manifest`` that writes its outputs through
:class:`icebreaker_ray.data.io.StageWriter`. The registry names it by import path so the
CLI stays fast and each stage's heavy imports happen only when it runs. The CLI, the
job scripts and the tests all call :func:`run_stage`; nothing is implemented twice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
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


class StaleInputs(RuntimeError):
    """A stage was asked to run on upstream outputs that are missing or out of date."""


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    # "module:function", or None while the stage is not built.
    target: str | None
    # Config sections (or dotted settings, "eval.negative_ablation") whose change
    # invalidates this stage's outputs.
    sections: tuple[str, ...]
    # Every stage whose outputs this one reads (not only the nearest): their fingerprints
    # are part of this one's, so a change upstream reruns everything below it.
    needs: tuple[str, ...] = ()
    issue: int = 0

    def settings_fingerprint(self, cfg: Config) -> str:
        """A hash of this stage's own settings (and, for ingest, of the input files)."""
        own = cfg.fingerprint("run", "data", *self.sections)
        if self.name == "simulate" and cfg.data.source != "sim":
            # Bring-your-own logs: a replaced file at the same path is a change too, and
            # ingest cuts summaries to judge.max_summary_chars.
            own = _hash({"settings": own, "files": io.listing(cfg.data.source),
                         "max_summary_chars": cfg.judge.max_summary_chars})
        return own

    def fingerprint(self, cfg: Config, out: str) -> str:
        """This stage's settings chained with the recorded fingerprints of every stage it
        reads (from their manifests in ``out``; ``None`` for one not run yet)."""
        upstream = {}
        for dep in self.needs:
            manifest = io.read_manifest(out, dep)
            upstream[dep] = manifest.get("fingerprint") if manifest else None
        return _hash({"settings": self.settings_fingerprint(cfg), "upstream": upstream})

    def function(self) -> Callable[[Config, str], dict[str, Any]]:
        if self.target is None:
            raise StageNotBuilt(
                f"stage '{self.name}' is not built yet (tracked in issue #{self.issue})"
            )
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


_RID = ("simulate", "label-revisits", "train-scorer", "distill-interests")

STAGES: tuple[Stage, ...] = (
    Stage("simulate", "Simulated world: users, session summaries, logged impressions "
          "(or ingest your own logs when data.source is a path).",
          "icebreaker_ray.sim.stage:simulate", ("sim", "models", "generation", "gating"), issue=3),
    Stage("label-revisits", "Interest-revisit judge over (earlier, later) summary pairs (Table 5).",
          "icebreaker_ray.rid.stage:label_revisits", ("judge", "models"), ("simulate",), issue=4),
    Stage("train-scorer", "Two-tower resonance scorer, contrastive loss (eq. 2-3), Ray Train.",
          "icebreaker_ray.rid.stage:train_scorer", ("scorer", "models", "judge.max_summary_chars"),
          ("simulate", "label-revisits"), issue=4),
    Stage("distill-interests", "Score summaries, activity-aware thresholds (eq. 4): trigger interests.",
          "icebreaker_ray.rid.stage:distill_interests",
          ("gating", "scorer", "models", "judge.max_summary_chars"),
          _RID[:3], issue=4),
    Stage("distill-corpus", "Teacher-distilled interest-starter corpus (Table 4 prompt).",
          "icebreaker_ray.isg.stage:distill_corpus", ("teacher", "filter", "generation", "models"),
          ("distill-interests",), issue=5),
    Stage("sft", "Supervised interest-expanded instruction tuning (SIT, eq. 5), Ray Train + DeepSpeed.",
          "icebreaker_ray.isg.stage:sft", ("sft", "models", "generation", "filter.max_chars"),
          ("distill-corpus",), issue=5),
    Stage("train-ranker", "Utility rankers R_util (eq. 7): MLP on Ray Train and a LightGBM feature ranker.",
          "icebreaker_ray.reward.stage:train_ranker", ("ranker", "models"), ("simulate",), issue=6),
    Stage("mine", "Candidate sampling + hybrid reward list search (Algorithm 1): preference pairs.",
          "icebreaker_ray.search.stage:mine",
          ("search", "generation", "filter", "models", "dpo.negatives", "eval.holdout_fraction"),
          ("simulate", "distill-interests", "distill-corpus", "sft", "train-ranker"), issue=6),
    Stage("dpo", "List-wise DPO on mined pairs (PMA, eq. 6), Ray Train + DeepSpeed.",
          "icebreaker_ray.isg.stage:dpo", ("dpo",), ("sft", "mine"), issue=6),
    Stage("iterate", "Self-reinforced rounds: mine -> DPO over fresh time slices (App. C.2).",
          "icebreaker_ray.search.iterate:iterate",
          ("iterate", "search", "dpo", "ranker", "generation", "filter", "models", "sim",
           "eval.holdout_fraction"),
          ("simulate", "distill-interests", "distill-corpus", "train-ranker", "mine", "dpo"), issue=6),
    Stage("ablate-negatives", "Table 9: DPO from SFT on one negative type of the round-0 pairs "
          "(when eval.negative_ablation is on).",
          "icebreaker_ray.eval.stage:ablate_negatives", ("dpo", "eval.negative_ablation"),
          ("sft", "mine"), issue=16),
    Stage("evaluate", "Offline metrics, simulated A/B test and the report (paper §3).",
          "icebreaker_ray.eval.stage:evaluate", ("eval", "generation", "filter", "models", "sim", "gating", "judge.threshold"),
          (*_RID, "distill-corpus", "sft", "train-ranker", "mine", "dpo", "iterate",
           "ablate-negatives"), issue=7),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def default_out(cfg: Config) -> str:
    return io.join(cfg.run.storage_path, cfg.run.name)


def get_stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}") from None


def stale_upstream(name: str, cfg: Config, out: str) -> list[str]:
    """The stages ``name`` reads (directly or further up) whose outputs in ``out`` are missing
    or were made under other settings or from other inputs than ``cfg`` gives now."""
    stale: list[str] = []
    seen: set[str] = set()

    def visit(stage: Stage) -> None:
        for dep in stage.needs:
            if dep in seen:
                continue
            seen.add(dep)
            if is_pinned(out, dep):
                continue  # put in place by hand: taken as it is, and what it came from unknown
            upstream = get_stage(dep)
            visit(upstream)
            if not io.is_complete(out, dep, upstream.fingerprint(cfg, out)):
                stale.append(dep)

    visit(get_stage(name))
    return [s.name for s in STAGES if s.name in stale]


def is_pinned(out: str, name: str) -> bool:
    """Whether ``name``'s outputs were committed by hand with ``pinned=True`` and are whole."""
    manifest = io.read_manifest(out, name)
    return bool(manifest and manifest.get("pinned")) and io.is_complete(out, name)


def plan(cfg: Config, out: str, until: str | None = None) -> list[str]:
    """The stages :func:`run_pipeline` would run (not skip) for ``cfg`` in ``out``: those
    whose outputs are missing or stale, and everything downstream of them."""
    todo: list[str] = []
    for stage in STAGES:
        if is_pinned(out, stage.name):
            pass
        elif set(stage.needs) & set(todo) or not io.is_complete(out, stage.name,
                                                                  stage.fingerprint(cfg, out)):
            todo.append(stage.name)
        if stage.name == until:
            break
    return todo


def not_run_reason(manifest: dict[str, Any] | None) -> str | None:
    """Why a complete stage did not do its work (``metrics.not_run``, written by
    :func:`icebreaker_ray.layout.not_run`: e.g. train-ranker on logs without clicks)."""
    return ((manifest or {}).get("metrics") or {}).get("not_run")


def run_stage(name: str, cfg: Config, out: str, *, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its outputs are complete for this config and these inputs;
    return its manifest.

    The manifest is written here, after the stage function returns: it records the
    stage's chained fingerprint (:meth:`Stage.fingerprint`) and the fingerprints of the
    stages it read, so a later change anywhere upstream makes it stale.
    """
    stage = get_stage(name)
    fn = stage.function()
    if not force and is_pinned(out, name):
        return {**(io.read_manifest(out, name) or {}), "skipped": True}
    stale = stale_upstream(name, cfg, out)
    if stale:
        raise StaleInputs(
            f"stage '{name}' reads the outputs of {', '.join(stale)} in {out}, which are missing "
            f"or were made with other settings; run them first (or run the whole pipeline: "
            f"`icebreaker pipeline --until {name}`)"
        )
    fingerprint = stage.fingerprint(cfg, out)
    if not force and io.is_complete(out, name, fingerprint):
        manifest = io.read_manifest(out, name) or {}
        return {**manifest, "skipped": True}
    if io.begin_attempt(out, name, fingerprint, fresh=force):
        log.warning("%s: cleared %s, which an earlier run with another config (or --force) "
                    "left behind", name, io.stage_dir(out, name))
    started = time.time()
    manifest = fn(cfg, out)
    manifest["fingerprint"] = fingerprint
    manifest["upstream"] = {dep: (io.read_manifest(out, dep) or {}).get("fingerprint")
                            for dep in stage.needs}
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

    ``on_stage(stage, status, manifest)`` is called with status "running", "done",
    "skipped" (complete already) or "not run" (the stage recorded why it could not run,
    :func:`not_run_reason`) so a caller can show progress. Stops with :class:`StageNotBuilt` at the
    first stage that has no implementation yet, after running all before it.
    """
    results = []
    for stage in STAGES:
        if on_stage:
            on_stage(stage, "running", None)
        manifest = run_stage(stage.name, cfg, out)
        if on_stage:
            status = "skipped" if manifest.get("skipped") else "done"
            on_stage(stage, "not run" if not_run_reason(manifest) else status, manifest)
        results.append((stage.name, manifest))
        if stage.name == until:
            break
    return results
