"""Helpers shared by the test_isg_* files (not a test module).

Until the distill-interests stage exists, tests build its ``interests`` table from the
simulated sessions: every summary of a user, the 3 most recent selected.
"""

from __future__ import annotations

import pyarrow as pa

from icebreaker_ray.data import io


def write_interests(out: str, recent: int = 3, users: set[str] | None = None) -> dict[str, list[str]]:
    """Write ``OUT/distill-interests/interests.parquet`` from ``OUT/simulate/sessions``."""
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions").to_pandas()
    sessions = sessions.sort_values(["user_id", "ts", "session_id"])
    if users is not None:
        sessions = sessions[sessions["user_id"].isin(users)]
    rows, chosen = [], {}
    for uid, g in sessions.groupby("user_id", sort=True):
        n = len(g)
        for i, (sid, summary) in enumerate(zip(g["session_id"], g["summary"], strict=True)):
            sel = i >= n - recent
            rows.append({"user_id": uid, "session_id": sid, "summary": summary,
                         "score": float(i) / max(n, 1), "selected": sel})
            if sel:
                chosen.setdefault(uid, []).append(summary)
    writer = io.StageWriter(out, "distill-interests")
    writer.write_table("interests", pa.Table.from_pylist(rows))
    writer.commit(pinned=True)
    return chosen


DIM = 256


def fake_embed(texts, dim: int = DIM):
    """Deterministic hashed bag-of-words, L2-normalized (no model, same on every run)."""
    import hashlib
    import re

    import numpy as np

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for tok in re.findall(r"[a-z0-9']+", text.lower()):
            out[i, int(hashlib.md5(tok.encode()).hexdigest(), 16) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
