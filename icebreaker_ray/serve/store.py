"""The feedback event store: impressions and clicks, appended durably, exported for training.

    store = EventStore("runs/demo/serve/events.sqlite")
    store.append([FeedbackEvent(event_id="e1", request_id="r1", user_id="u1",
                                starter="Best ramen in Osaka?", position=0, type="click")])
    # -> AppendResult(inserted=1, duplicates=0)
    export_impressions("runs/demo/serve/events.sqlite", "runs/demo/serve/impressions.parquet")

SQLite in WAL mode with ``synchronous=FULL``: a batch of events is inserted in one
transaction and :meth:`EventStore.append` returns only after the commit is on disk, so
the API answers 2xx only for events that survive a crash of the server. ``event_id`` is
the primary key and inserts are ``INSERT OR IGNORE``: a client that retries a batch
(after a timeout, a dropped connection, a replica restart) never duplicates an event.
Several processes may append to one file (SQLite serializes writers; ``busy_timeout``
makes them wait instead of failing).

:func:`export_impressions` turns the events into the ``impressions`` table of
:mod:`icebreaker_ray.data.schemas`, the input of the next training round: one row per
shown starter (request_id, position), ``clicked`` when a click event exists for it.
The server never sees what happens after a click, so ``depth`` is 1 for a clicked
starter (the conversation it opened) and 0 otherwise; ``propensity`` is null.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    starter     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('impression', 'click')),
    source      TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id, position);
"""
COLUMNS = ("event_id", "request_id", "user_id", "starter", "position", "type", "source", "ts_ms")
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class StoredEvent:
    """One event as stored (``ts_ms``: client time, or arrival time when not given)."""

    event_id: str
    request_id: str
    user_id: str
    starter: str
    position: int
    type: str
    source: str
    ts_ms: int


@dataclass(frozen=True)
class AppendResult:
    inserted: int
    duplicates: int


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _check_storable(e: StoredEvent) -> None:
    for name in COLUMNS:
        value = getattr(e, name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"event {e.event_id!r}: {name} is not valid Unicode "
                                 f"({exc.reason} at character {exc.start})") from None
        elif not isinstance(value, int) or isinstance(value, bool) or value not in _INT64:
            raise ValueError(f"event {e.event_id!r}: {name} is not a 64-bit integer: {value!r}")


class EventStore:
    """Append-only, idempotent event log in one SQLite file (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = _connect(self.path)
        self._conn.executescript(SCHEMA_SQL)

    def append(self, events: Sequence[StoredEvent]) -> AppendResult:
        """Insert ``events`` in one transaction; returns after the commit is durable.
        Raises ValueError, storing nothing, when an event cannot be stored as given (text
        that is not valid Unicode, an integer beyond 64 bits): the API rejects those first."""
        for e in events:
            _check_storable(e)
        now = int(time.time() * 1000)
        rows = [(*(getattr(e, c) for c in COLUMNS), now) for e in events]
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                before = self._conn.total_changes
                cur.executemany(
                    f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}, received_ms) "
                    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})", rows)
                inserted = self._conn.total_changes - before
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        return AppendResult(inserted=inserted, duplicates=len(rows) - inserted)

    def count(self, type_: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM events", ()
        if type_ is not None:
            sql, args = sql + " WHERE type = ?", (type_,)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    def event_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT event_id FROM events")}

    def events(self) -> list[StoredEvent]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY ts_ms, event_id").fetchall()
        return [StoredEvent(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def impressions_table(events: Iterable[StoredEvent]) -> pa.Table:
    """Events -> the ``impressions`` table: one row per (request_id, position), first
    shown time, ``clicked`` if any click event names that slot (see module docstring)."""
    slots: dict[tuple[str, int], dict] = {}
    for e in events:
        key = (e.request_id, e.position)
        row = slots.get(key)
        if row is None:
            row = slots[key] = {"user_id": e.user_id, "ts": e.ts_ms, "request_id": e.request_id,
                                "starter": e.starter, "position": e.position, "source": e.source,
                                "clicked": False}
        row["ts"] = min(row["ts"], e.ts_ms)
        row["clicked"] = row["clicked"] or e.type == "click"
    rows = sorted(slots.values(), key=lambda r: (r["ts"], r["request_id"], r["position"]))
    target = schema("impressions")
    return pa.table({
        "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
        "ts": pa.array([r["ts"] for r in rows], pa.int64()).cast(target.field("ts").type),
        "request_id": pa.array([r["request_id"] for r in rows], pa.string()),
        "starter": pa.array([r["starter"] for r in rows], pa.string()),
        "position": pa.array([r["position"] for r in rows], pa.int32()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "clicked": pa.array([r["clicked"] for r in rows], pa.bool_()),
        "depth": pa.array([int(r["clicked"]) for r in rows], pa.int32()),
        "propensity": pa.nulls(len(rows), pa.float64()),
    }, schema=target)


def export_impressions(store_path: str | Path, out_parquet: str) -> int:
    """Write the store's events as an ``impressions`` Parquet file (validated against the
    schema, written atomically). Returns the number of rows."""
    if not Path(store_path).is_file():
        raise io.DataError(f"{store_path}: no event store there")
    store = EventStore(store_path)
    try:
        table = impressions_table(store.events())
    finally:
        store.close()
    io.write_table(table, out_parquet, "impressions")
    return table.num_rows
