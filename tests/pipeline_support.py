"""Checks of a finished pipeline run, shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import SCHEMAS
from icebreaker_ray.eval.report import FIGURES, REQUIRED_SECTIONS
from icebreaker_ray.pipeline import STAGES


def check_run(out: str | Path) -> dict[str, dict]:
    """Every stage complete, every table valid against its schema, the report whole.

    ``out`` is a local folder or a storage URI (``s3://``).

    Returns the manifests by stage name.
    """
    out = str(out)
    manifests = {}
    for stage in STAGES:
        assert io.is_complete(out, stage.name), f"stage {stage.name} did not finish in {out}"
        manifest = io.read_manifest(out, stage.name)
        for name in manifest["files"]:
            table = Path(name).name.removesuffix(".parquet")
            kind = {"feedback_pairs": "preference_pairs"}.get(table, table)
            if name.endswith(".parquet") and kind in SCHEMAS:
                io.read_table(io.join(out, stage.name, name), kind, allow_empty=True)
        manifests[stage.name] = manifest
    report = io.read_bytes(io.join(out, "evaluate", "report.md")).decode()
    for section in REQUIRED_SECTIONS:
        assert f"{section}" in report, f"report.md lacks {section}"
    for figure in FIGURES:
        assert io.read_bytes(io.join(out, "evaluate", figure))[:4] == b"\x89PNG"
    results = io.read_json(io.join(out, "evaluate", "metrics.json"))
    assert {"R_u (retrieval)", "PE", "PE+RID", "SFT", "ICEBREAKER"} <= set(results["table1"])
    assert set(results["table2"]) >= {"baseline", "ICEBREAKER"}
    return manifests
