"""The Parquet data contracts (DESIGN §3): one pyarrow schema per table.

Bring-your-own-data means writing ``users`` and ``sessions`` (and ``impressions``, once
the product logs starter impressions; missing or empty is supported) in these schemas;
every other table is produced by a pipeline stage. Columns listed in
``OPTIONAL`` may be absent from a file (they are filled with nulls on read).
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")
STR_LIST = pa.list_(pa.string())

SCHEMAS: dict[str, pa.Schema] = {
    "users": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("activity_bucket", pa.int32(), nullable=False),
            # Optional crowd portrait fitted by the platform (paper §2.2).
            pa.field("profile", pa.string()),
        ]
    ),
    "sessions": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("session_id", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("summary", pa.string(), nullable=False),
        ]
    ),
    "impressions": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("starter", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("clicked", pa.bool_(), nullable=False),
            # Sessions/turns that followed a click (0 when not clicked).
            pa.field("depth", pa.int32(), nullable=False),
            # Logging-policy probability of showing this starter at this position (for
            # position-debiased ranker training); optional for foreign logs.
            pa.field("propensity", pa.float64()),
        ]
    ),
    "revisit_pairs": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("earlier_session_id", pa.string(), nullable=False),
            pa.field("later_session_id", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("judge", pa.string(), nullable=False),
        ]
    ),
    "interests": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("session_id", pa.string(), nullable=False),
            pa.field("summary", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("selected", pa.bool_(), nullable=False),
            # rid/noise.py's mask (False: greeting, functional or one-off); null: not recorded
            pa.field("eligible", pa.bool_(), nullable=True),
        ]
    ),
    "sit_corpus": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("interests", STR_LIST, nullable=False),
            pa.field("starters", STR_LIST, nullable=False),
            pa.field("teacher", pa.string(), nullable=False),
        ]
    ),
    "candidates": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("starters", STR_LIST, nullable=False),
        ]
    ),
    "preference_pairs": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("chosen", STR_LIST, nullable=False),
            pa.field("rejected", STR_LIST, nullable=False),
            pa.field("negative_type", pa.string(), nullable=False),
            pa.field("chosen_v_util", pa.float64(), nullable=False),
            pa.field("chosen_v_div", pa.float64(), nullable=False),
            pa.field("rejected_v_util", pa.float64(), nullable=False),
            pa.field("rejected_v_div", pa.float64(), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
        ]
    ),
    # The server's store of ready answers for known users (serve/precompute.py).
    "precomputed_lists": pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("k", pa.int32(), nullable=False),
            pa.field("history_sha256", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("interests", STR_LIST, nullable=False),
            pa.field("starters", STR_LIST, nullable=False),
            pa.field("scores", pa.list_(pa.float64()), nullable=False),
            pa.field("sources", STR_LIST, nullable=False),
            pa.field("created_at", TS, nullable=False),
        ]
    ),
}

OPTIONAL: dict[str, frozenset[str]] = {
    "users": frozenset({"profile"}),
    "impressions": frozenset({"propensity"}),
    "interests": frozenset({"eligible"}),
}

# Closed vocabularies checked on read and write.
ALLOWED_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("revisit_pairs", "label"): frozenset({"MATCH", "NO_MATCH"}),
    ("preference_pairs", "negative_type"): frozenset({"utility", "diversity", "joint", "feedback"}),
}

# Tables a user brings for their own data (everything else is derived).
INPUT_TABLES = ("users", "sessions", "impressions")


def schema(name: str) -> pa.Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(SCHEMAS)}") from None


def describe(name: str) -> str:
    """One line per column, for error messages and the README."""
    opt = OPTIONAL.get(name, frozenset())
    return ", ".join(
        f"{f.name}: {f.type}{' (optional)' if f.name in opt else ''}" for f in schema(name)
    )
