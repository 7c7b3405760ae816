"""Chained stage fingerprints: a changed setting reruns exactly the stages downstream of it.

These run the real runner (:func:`run_stage`, :func:`run_pipeline`, :func:`plan`) over a
small registry of stand-in stages, so every case runs in milliseconds; the quick pipeline
test (tests/test_pipeline_e2e.py) checks the same on the real stages.
"""

from __future__ import annotations

import pytest

from icebreaker_ray import pipeline
from icebreaker_ray.config import load_config
from icebreaker_ray.data import io
from icebreaker_ray.pipeline import Stage, plan, run_pipeline, run_stage, stale_upstream

#   simulate --> label-revisits --> evaluate
#            \-> train-ranker ----/
FAKE = (
    Stage("simulate", "", "x:y", ("sim",)),
    Stage("label-revisits", "", "x:y", ("judge",), ("simulate",)),
    Stage("train-ranker", "", "x:y", ("ranker",), ("simulate",)),
    Stage("evaluate", "", "x:y", ("eval.n_boot",), ("simulate", "label-revisits", "train-ranker")),
)


@pytest.fixture
def registry(monkeypatch):
    """The stand-in registry; returns the list of stages that actually ran, in order."""
    ran: list[str] = []

    def function(self):
        def fn(cfg, out):
            ran.append(self.name)
            writer = io.StageWriter(out, self.name)
            writer.write_json("out.json", {"stage": self.name})
            return writer.commit(metrics={})
        return fn

    monkeypatch.setattr(pipeline, "STAGES", FAKE)
    monkeypatch.setattr(pipeline, "STAGE_BY_NAME", {s.name: s for s in FAKE})
    monkeypatch.setattr(Stage, "function", function)
    return ran


def cfg(*overrides: str):
    return load_config("quick", list(overrides))


def test_a_changed_setting_reruns_exactly_what_lies_downstream(tmp_path, registry):
    out = str(tmp_path)
    run_pipeline(cfg(), out)
    assert registry == ["simulate", "label-revisits", "train-ranker", "evaluate"]
    assert plan(cfg(), out) == []

    registry.clear()
    run_pipeline(cfg(), out)
    assert registry == []  # nothing changed: everything skipped

    # ranker.* is read by train-ranker only; evaluate reads train-ranker.
    assert plan(cfg("ranker.epochs=3"), out) == ["train-ranker", "evaluate"]
    run_pipeline(cfg("ranker.epochs=3"), out)
    assert registry == ["train-ranker", "evaluate"]

    # A dotted setting: eval.n_boot is evaluate's, eval.examples is nobody's.
    registry.clear()
    run_pipeline(cfg("ranker.epochs=3", "eval.examples=2"), out)
    assert registry == []
    run_pipeline(cfg("ranker.epochs=3", "eval.n_boot=123"), out)
    assert registry == ["evaluate"]

    # The root changes: everything reruns.
    registry.clear()
    run_pipeline(cfg("ranker.epochs=3", "eval.n_boot=123", "sim.num_users=31"), out)
    assert registry == ["simulate", "label-revisits", "train-ranker", "evaluate"]


def test_a_manifest_records_the_fingerprints_it_was_made_from(tmp_path, registry):
    out = str(tmp_path)
    run_pipeline(cfg(), out)
    manifest = io.read_manifest(out, "evaluate")
    assert manifest["upstream"] == {name: io.read_manifest(out, name)["fingerprint"]
                                    for name in ("simulate", "label-revisits", "train-ranker")}
    assert manifest["fingerprint"] == pipeline.get_stage("evaluate").fingerprint(cfg(), out)


def test_a_stage_refuses_stale_inputs_naming_them(tmp_path, registry):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="simulate, label-revisits, train-ranker"):
        run_stage("evaluate", cfg(), out)  # nothing upstream has run
    run_pipeline(cfg(), out)
    changed = cfg("judge.candidates_per_session=2")
    assert stale_upstream("evaluate", changed, out) == ["label-revisits"]
    with pytest.raises(RuntimeError, match=r"label-revisits in .* other settings"):
        run_stage("evaluate", changed, out)
    # A change further up is found through the chain, not only one level up.
    assert stale_upstream("evaluate", cfg("sim.num_users=31"), out) == ["simulate"]
    registry.clear()
    run_stage("label-revisits", changed, out)
    run_stage("evaluate", changed, out)
    assert registry == ["label-revisits", "evaluate"]


def test_replaced_bring_your_own_logs_rerun_ingest(tmp_path, registry):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "sessions.parquet").write_bytes(b"first version")
    out, byo = str(tmp_path / "run"), cfg(f"data.source={logs}")
    run_pipeline(byo, out)
    assert plan(byo, out) == []
    (logs / "sessions.parquet").write_bytes(b"a longer second version")
    assert plan(byo, out) == ["simulate", "label-revisits", "train-ranker", "evaluate"]


def test_pinned_outputs_are_taken_as_they_are(tmp_path, registry):
    out = str(tmp_path)
    writer = io.StageWriter(out, "label-revisits")  # a stand-in made by hand, no simulate
    writer.write_json("out.json", {"by": "hand"})
    writer.commit(pinned=True)
    assert run_stage("label-revisits", cfg(), out).get("skipped")
    assert stale_upstream("evaluate", cfg(), out) == ["simulate", "train-ranker"]
    assert plan(cfg(), out) == ["simulate", "train-ranker", "evaluate"]
    run_pipeline(cfg(), out)
    assert registry == ["simulate", "train-ranker", "evaluate"]
    assert io.read_json(io.join(out, "label-revisits", "out.json")) == {"by": "hand"}
