"""Where the server finds its models and logs: one place that reads a run directory.

    art = locate(cfg, run_dir="runs/demo", model=None)
    art.generator        # the run's promoted generator (what evaluate graded as ICEBREAKER),
                         # else cfg.models.generator
    art.scorer_dir       # RUN/train-scorer/scorer when that stage is complete, else None
    art.ranker_dir       # RUN/train-ranker/util when complete, else None
    art.model_version    # "iterate:<fingerprint>" / "dpo:<fingerprint>" / "<alias or dir name>"

A stage's outputs are used only when its manifest says the stage is complete
(:func:`icebreaker_ray.data.io.is_complete`), so a half-written run never feeds the
server. Everything is optional except the generator: without a run directory the server
still answers, with the raw-summary fallback and the catalog cold-start list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Artifacts:
    """Paths the deployments load; ``None`` where the run does not have the output."""

    generator: str
    model_version: str
    run_dir: str | None = None
    scorer_dir: str | None = None
    thresholds_json: str | None = None
    ranker_dir: str | None = None
    users_parquet: str | None = None
    sessions_parquet: str | None = None
    impressions_parquet: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {"generator": self.generator, "model_version": self.model_version,
                "run_dir": self.run_dir, "scorer": self.scorer_dir, "ranker": self.ranker_dir,
                "sessions": self.sessions_parquet}


def _complete(run: str, stage: str, relative: str) -> str | None:
    """``RUN/stage/relative`` (a path or URI) when the stage is complete and it exists."""
    if not io.is_complete(run, stage):
        return None
    path = io.join(run, stage, relative)
    return path if io.exists(path) else None


def _fingerprint(run: str, stage: str) -> str:
    manifest = io.read_manifest(run, stage) or {}
    return str(manifest.get("fingerprint") or "unknown")


def _generator(cfg: Config, run: str | None, model: str | None) -> tuple[str, str]:
    """(generator, model_version): an explicit model wins, then the run's best stage."""
    if model:
        return model, model.rstrip("/").rsplit("/", 1)[-1] if io.exists(model) else model
    if run:
        path = layout.promoted_generator(run)
        stage = layout.generator_stage(run, path)
        if io.is_complete(run, stage) and io.exists(path):
            return path, f"{stage}:{_fingerprint(run, stage)}"
    return cfg.models.generator, cfg.models.generator


def locate(cfg: Config, run_dir: str | None = None, model: str | None = None) -> Artifacts:
    """Find every artifact the server can use in ``run_dir`` (a directory or a storage URI;
    model folders are copied to each replica's node by ``io.local_dir``)."""
    run = io.absolute(run_dir) if run_dir and io.exists(run_dir) else None
    if run_dir and run is None:
        raise io.DataError(f"run directory {run_dir} does not exist")
    generator, version = _generator(cfg, run, model)
    if run is None:
        return Artifacts(generator=generator, model_version=version)
    art = Artifacts(
        generator=generator,
        model_version=version,
        run_dir=run,
        scorer_dir=_complete(run, "train-scorer", layout.SCORER_DIR),
        thresholds_json=_complete(run, "distill-interests", layout.THRESHOLDS_JSON),
        ranker_dir=_complete(run, "train-ranker", "util"),
        users_parquet=_complete(run, "simulate", "users.parquet"),
        sessions_parquet=_complete(run, "simulate", "sessions.parquet"),
        impressions_parquet=_complete(run, "simulate", "impressions.parquet"),
    )
    log.info("serving artifacts: %s", art.describe())
    return art


def event_store_path(cfg: Config, run_dir: str | None) -> str:
    """``serve.event_store`` as an absolute path: relative paths live in ``RUN/serve/``
    (or ``./serve/`` without a run), so feedback sits next to the logs it extends. The
    store is a SQLite file, so a run in object storage keeps it in the local cache dir
    (``<cache>/serve/<bucket>/<run>/``); ``store.export_impressions`` writes its events
    to the run as a table."""
    path = Path(cfg.serve.event_store).expanduser()
    if not path.is_absolute():
        if run_dir and not io.is_local(run_dir):
            from icebreaker_ray.models import cache_dir

            bucket_path = run_dir.split("://", 1)[1].strip("/")
            path = cache_dir(cfg.models.cache_dir) / "serve" / bucket_path / path
        else:
            path = Path(io.resolve(run_dir)[1] if run_dir else ".", "serve", path)
    return str(path.resolve())
