"""Real chat text to run on: the Chit-Chat Challenge data set as bring-your-own logs.

    icebreaker import-chitchat --out data/chitchat --max-users 40
    tables = convert(load_conversations(), max_users=40)
    tables.sessions.num_rows                    # one session per (conversation, user in it)
    write(tables, "data/chitchat")              # users.parquet, sessions.parquet, chitchat.json

The data set (PyPI ``chitchat-dataset``, MIT, BYU PCC lab) holds 7,168 open-domain
conversations between 1,315 real senders, April to November 2018, as typed: typos, slang,
many "hi / anyone here?" openings. It has no starter system, hence no ``impressions``:
:func:`write` writes ``users`` and ``sessions`` only, the case "your logs, before you
have clicks" (README).

What a row is:

* ``sessions``: one per (conversation, sender). The summary is the sender's own
  utterances in that conversation, real text, never paraphrased: whitespace collapsed,
  then the longest utterances are kept (shown in the order they were said, joined by
  " / ") until ``max_chars`` would be passed, so a session of "hi", "hows it going" and
  one long story keeps the story; a single utterance longer than ``max_chars`` is cut at
  a word boundary and ends in "…". The default 200 is the generator prompt's own cut
  (``isg.prompts.MAX_INTEREST_CHARS``). Senders who said nothing but blanks in a
  conversation get no session there (counted in ``stats``).
* ``ts``: the sender's first utterance. The data set stamps utterances with a "Z"
  (UTC) suffix, but they look like US Mountain wall-clock time: each conversation's
  ``start`` field is 6 hours later than its first utterance up to 2018-11-04 and 7 hours
  later after it (6,491 and 220 of the 7,168 conversations), which is the MDT -> MST switch
  of America/Denver (the lab is in Utah). The utterance stamps are therefore read as
  America/Denver local time and converted to UTC, so ``ts`` is timezone-aware and right.
* ``users``: every sender with at least ``min_sessions`` sessions; ``activity_bucket``
  by session count (:func:`icebreaker_ray.data.splits.activity_buckets`), no profile.
  ``max_users`` keeps that many of them, in a stable hash order of their ids (a sample
  that does not depend on the file's order), ``max_sessions_per_user`` each one's most
  recent sessions. Everything left out is counted in ``stats`` (``chitchat.json``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.data.splits import activity_buckets, hash_fraction

#: The file inside the ``chitchat_dataset`` package (and its wheel).
DATASET_FILE = "chitchat_dataset/dataset.json"
#: What the data set's "Z" timestamps really are (see the module docstring).
SOURCE_TZ = ZoneInfo("America/Denver")
ELLIPSIS = "…"
UTTERANCE_SEP = " / "
_SPACE = re.compile(r"\s+")


@dataclass
class ChitchatTables:
    users: pa.Table
    sessions: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)


def find_dataset() -> Path:
    """``dataset.json`` of the installed ``chitchat-dataset`` package (found without
    importing it)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise io.DataError(
            "the chitchat data set is not installed: `pip install chitchat-dataset` (MIT, "
            "8 MB, no dependencies), or pass --source with its dataset.json or its wheel "
            "(`pip download --no-deps chitchat-dataset`)")
    return Path(next(iter(spec.submodule_search_locations)), "dataset.json")


def load_conversations(source: str | Path | None = None) -> dict[str, Any]:
    """The data set's conversations by id, from ``source`` (``dataset.json``, or the
    ``chitchat_dataset-*.whl`` it ships in), default the installed package."""
    path = Path(source) if source else find_dataset()
    if not path.is_file():
        raise io.DataError(f"{path}: no such file (expected the chitchat dataset.json or its wheel)")
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                data = json.loads(wheel.read(DATASET_FILE))
        else:
            data = json.loads(path.read_text())
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise io.DataError(f"{path}: not the chitchat data set ({exc})") from None
    if not isinstance(data, dict):
        raise io.DataError(f"{path}: expected a mapping of conversation id -> conversation")
    return data


def to_utc_ms(stamp: str) -> int:
    """A data-set timestamp ("2018-05-02T19:38:15Z", really Denver wall-clock) -> UTC ms.

    >>> to_utc_ms("2018-05-02T19:38:15Z") == to_utc_ms("2018-05-03T01:38:15+00:00")
    True
    """
    if stamp.endswith("Z"):
        local = datetime.fromisoformat(stamp[:-1]).replace(tzinfo=SOURCE_TZ)
    else:  # an explicit offset is taken at its word
        local = datetime.fromisoformat(stamp)
        if local.tzinfo is None:
            local = local.replace(tzinfo=SOURCE_TZ)
    return int(local.timestamp() * 1000)


def cut(text: str, max_chars: int) -> str:
    """``text`` shortened to at most ``max_chars`` at a word boundary, ending in "…".

    >>> cut("one two three four", 12)
    'one two…'
    """
    if len(text) <= max_chars:
        return text
    room = text[: max_chars - len(ELLIPSIS)]
    whole = text[len(room)] == " "  # the room ends at a word's end
    head = room if whole or " " not in room.strip() else room.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:/-") + ELLIPSIS


def summarize(utterances: list[str], max_chars: int) -> tuple[str, bool]:
    """(summary, truncated): the longest utterances that fit, in the order said (module
    docstring); ``truncated`` when anything was left out or cut."""
    texts = [t for t in (_SPACE.sub(" ", u).strip() for u in utterances) if t]
    if not texts:
        return "", False
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    kept: list[int] = []
    used = 0
    for i in order:
        extra = len(texts[i]) + (len(UTTERANCE_SEP) if kept else 0)
        if used + extra <= max_chars:
            kept.append(i)
            used += extra
    if not kept:  # even the shortest is too long: cut the longest
        return cut(texts[order[0]], max_chars), True
    return UTTERANCE_SEP.join(texts[i] for i in sorted(kept)), len(kept) < len(texts)


def convert(conversations: Mapping[str, Any], *, max_chars: int = 200, min_sessions: int = 2,
            max_users: int | None = None, max_sessions_per_user: int | None = None,
            num_buckets: int = 4) -> ChitchatTables:
    """The ``users`` and ``sessions`` tables of the data set (see the module docstring)."""
    if max_chars < 16:
        raise ValueError(f"max_chars must be >= 16, got {max_chars}")
    per_user: dict[str, list[tuple[int, str, str, bool]]] = defaultdict(list)
    blank = 0
    truncated = 0
    for conv_id in sorted(conversations):
        conv = conversations[conv_id]
        said: dict[str, list[str]] = defaultdict(list)
        first: dict[str, int] = {}
        try:
            for message in conv["messages"]:
                for utt in message:
                    sender = str(utt["sender"])
                    said[sender].append(str(utt.get("text") or ""))
                    ts = to_utc_ms(str(utt["timestamp"]))
                    first[sender] = min(first.get(sender, ts), ts)
        except (KeyError, TypeError, ValueError) as exc:
            raise io.DataError(f"conversation {conv_id}: not in the chitchat format ({exc!r})") from None
        for sender, utterances in said.items():
            summary, cut_ = summarize(utterances, max_chars)
            if not summary:
                blank += 1
                continue
            truncated += cut_
            per_user[sender].append((first[sender], f"{conv_id}:{sender}", summary, cut_))
    eligible = sorted((u for u, rows in per_user.items() if len(rows) >= min_sessions),
                      key=lambda u: (hash_fraction(u, "chitchat"), u))
    chosen = sorted(eligible[:max_users] if max_users is not None else eligible)
    rows = []
    older = 0
    for uid in chosen:
        history = sorted(per_user[uid])
        if max_sessions_per_user is not None and len(history) > max_sessions_per_user:
            older += len(history) - max_sessions_per_user
            history = history[-max_sessions_per_user:]
        rows += [(uid, *r) for r in history]
    counts = defaultdict(int)
    for r in rows:
        counts[r[0]] += 1
    users = pa.table({
        "user_id": chosen,
        "activity_bucket": pa.array(activity_buckets(np.array([counts[u] for u in chosen]),
                                                     num_buckets), pa.int32()),
        "profile": pa.nulls(len(chosen), pa.string()),
    }, schema=schema("users"))
    sessions = pa.table({
        "user_id": [r[0] for r in rows],
        "session_id": [r[2] for r in rows],
        "ts": pa.array([r[1] for r in rows], pa.int64()).cast(schema("sessions").field("ts").type),
        "summary": [r[3] for r in rows],
    }, schema=schema("sessions"))
    stats = {
        "conversations": len(conversations),
        "senders_with_text": len(per_user),
        "sessions_in_data_set": sum(len(v) for v in per_user.values()),
        "users": len(chosen), "sessions": sessions.num_rows,
        "blank_sender_sessions_skipped": blank,
        "summaries_shortened": int(sum(r[4] for r in rows)),
        "summaries_shortened_in_data_set": truncated,
        "users_below_min_sessions": len(per_user) - len(eligible),
        "users_left_out_by_max_users": len(eligible) - len(chosen),
        "older_sessions_left_out": older,
        "settings": {"max_chars": max_chars, "min_sessions": min_sessions, "max_users": max_users,
                     "max_sessions_per_user": max_sessions_per_user, "num_buckets": num_buckets},
        "timestamps": "utterance stamps read as America/Denver wall-clock time, stored in UTC",
    }
    return ChitchatTables(users, sessions, stats)


def write(tables: ChitchatTables, out: str) -> dict[str, str]:
    """Write ``users.parquet``, ``sessions.parquet`` and ``chitchat.json`` (the stats) into
    ``out``, a directory to point ``data.source`` at. No ``impressions``: there are none."""
    paths = {name: io.join(out, f"{name}.parquet") for name in ("users", "sessions")}
    io.write_table(tables.users, paths["users"], "users")
    io.write_table(tables.sessions, paths["sessions"], "sessions")
    paths["stats"] = io.join(out, "chitchat.json")
    io.write_json(paths["stats"], tables.stats)
    return paths
