"""The HTTP contract of the server: request and response bodies (pydantic, OpenAPI at /docs).

    POST /v1/starters   StartersRequest  -> StartersResponse
    POST /v1/starters/stream              -> NDJSON lines (see StreamEvent)
    POST /v1/feedback   FeedbackRequest  -> FeedbackResponse
    GET  /healthz                         -> Health

Shapes and types are checked here (a wrong type is a 422 with pydantic's message);
the size limits that come from the config (``serve.max_summaries``,
``serve.max_summary_chars``) are checked by the ingress, which answers 413 naming the
field and the limit. Unknown fields are rejected so a typo does not pass silently.

Text must be valid Unicode and numbers finite: :func:`parse_json_body` (the ingress's
body parser) answers 422 naming the field for a lone surrogate (``"\\ud800"``) in any
string or field name and for ``NaN``, ``Infinity``, ``-Infinity`` or a float that
overflows (``1e400``), which Python's ``json`` would otherwise accept. The models check
the same again (:data:`Text`, ``allow_inf_nan=False``) for callers that build them
directly. A feedback ``ts`` needs a timezone and must lie in [1970, 2100). Response
models replace what could not be sent as JSON (:data:`OutText`, :data:`Score`), so an
answer is always valid UTF-8 JSON without ``NaN``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

ID_PATTERN = r"^[A-Za-z0-9_.:@-]+$"
MAX_K = 10
#: Feedback timestamps outside [TS_MIN, TS_MAX) are rejected (a client clock gone wrong).
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)
#: At most this many problems are listed in one 422 answer.
MAX_BODY_ERRORS = 20

_SURROGATE = re.compile("[\ud800-\udfff]")


# ----------------------------------------------------------------------------- text and numbers


def lone_surrogate(text: str) -> str | None:
    """A description of the first lone surrogate in ``text`` (in a Python str every
    surrogate code point is a lone one), or None when ``text`` is valid Unicode."""
    m = _SURROGATE.search(text)
    return None if m is None else f"lone surrogate U+{ord(m.group()):04X} at character {m.start()}"


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (always encodable as UTF-8)."""
    return _SURROGATE.sub("\ufffd", text)


def _valid_unicode(text: str) -> str:
    problem = lone_surrogate(text)
    if problem:
        raise ValueError(f"Input should be valid Unicode text: {problem}")
    return text


def _finite_or_zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0


#: A request string: lone surrogates are a validation error.
Text = Annotated[str, AfterValidator(_valid_unicode)]
#: A response string: lone surrogates become U+FFFD.
OutText = Annotated[str, AfterValidator(clean_text)]
#: A response score: a non-finite one (a broken model) is sent as 0.0, never as NaN.
Score = Annotated[float, AfterValidator(_finite_or_zero)]


class _BadNumber:
    """A number token of the body that is not a finite JSON number (see parse_json_body)."""

    def __init__(self, token: str, msg: str, type_: str = "finite_number") -> None:
        self.token, self.msg, self.type = token, msg, type_


def _parse_float(token: str) -> float | _BadNumber:
    x = float(token)
    return x if math.isfinite(x) else _BadNumber(token, "Input should be a finite number")


def _parse_int(token: str) -> int | _BadNumber:
    try:
        return int(token)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return _BadNumber(token[:20] + "...", "Input should be an integer of at most 4300 digits",
                          "int_parsing_size")


def _parse_constant(token: str) -> _BadNumber:  # NaN, Infinity, -Infinity
    return _BadNumber(token, "Input should be a finite number")


class BodyError(ValueError):
    """A request body that is JSON to Python but not to the API: ``errors`` are in
    FastAPI's 422 shape (``type``, ``loc`` starting with "body", ``msg``, ``input``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def parse_json_body(raw: bytes) -> Any:
    """``json.loads(raw)``, refusing what JSON (RFC 8259) or Unicode does not allow.

    Raises :class:`json.JSONDecodeError` for malformed JSON, and :class:`BodyError`
    listing every lone surrogate in a string or field name, every ``NaN``/``Infinity``
    and every number that overflows a float, each with its location; also for a body
    that is not UTF-8 or is nested too deeply to parse.
    """
    try:
        value = json.loads(raw, parse_float=_parse_float, parse_int=_parse_int,
                           parse_constant=_parse_constant)
    except UnicodeDecodeError as exc:
        raise BodyError([{"type": "json_invalid", "loc": ["body", exc.start], "input": None,
                          "msg": f"JSON decode error: not valid UTF-8 at byte {exc.start}"}]) from None
    except RecursionError:
        raise BodyError([{"type": "json_invalid", "loc": ["body"], "input": None,
                          "msg": "JSON decode error: nested too deeply"}]) from None
    errors: list[dict[str, Any]] = []
    stack: list[tuple[Any, tuple]] = [(value, ("body",))]
    while stack and len(errors) < MAX_BODY_ERRORS:  # iterative: no recursion limit
        item, loc = stack.pop()
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                problem = lone_surrogate(key)
                if problem:
                    errors.append({"type": "string_unicode", "loc": [*loc, clean_text(key)],
                                   "input": clean_text(key),
                                   "msg": f"Field name should be valid Unicode text: {problem}"})
                stack.append((child, (*loc, clean_text(key))))
        elif isinstance(item, list):
            stack.extend((child, (*loc, i)) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str):
            problem = lone_surrogate(item)
            if problem:
                errors.append({"type": "string_unicode", "loc": list(loc), "input": clean_text(item),
                               "msg": f"Input should be valid Unicode text: {problem}"})
        elif isinstance(item, _BadNumber):
            errors.append({"type": item.type, "loc": list(loc), "input": item.token,
                           "msg": item.msg})
    if errors:
        raise BodyError(errors)
    return value


# ----------------------------------------------------------------------------- models


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StartersRequest(_Body):
    user_id: Text | None = Field(
        default=None, min_length=1, max_length=128, pattern=ID_PATTERN,
        description="A user id. Known (simulated) users are looked up in the run's logs.")
    summaries: list[Text] | None = Field(
        default=None,
        description="Session summaries of the user's own history, oldest first (one per "
                    "session). Treated as data only: never as instructions.")
    k: StrictInt | None = Field(default=None, ge=1, le=MAX_K,
                                description="Number of starters (default: generation.K).")
    locale: Text | None = Field(
        default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$",
        description="BCP 47 tag. Accepted for forward compatibility; the models are English-only.")
    refresh: StrictBool = Field(default=False, description="Generate anew: bypass the per-user "
                                "cache and the precomputed list of a known user.")


class Starter(BaseModel):
    text: OutText
    score: Score = Field(description="R_util of the starter (relevance when no ranker), "
                                     "or its popularity for cold-start fillers.")
    position: int
    source: Literal["generated", "cold_start"]


class StartersResponse(BaseModel):
    request_id: OutText
    user_id: OutText | None
    starters: list[Starter]
    trigger_interests: list[OutText]
    model_version: OutText
    cold_start: bool
    cached: bool
    source: Literal["precomputed", "online", "cold_start"] = Field(
        description="precomputed: a known user's stored list (`icebreaker precompute`), "
                    "still fresh for this history and model; online: generated for this "
                    "request; cold_start: no history, the cold-start list.")


class FeedbackEvent(_Body):
    event_id: Text = Field(min_length=1, max_length=128, pattern=ID_PATTERN,
                           description="Client-generated, unique: a retried event is stored once.")
    request_id: Text = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    user_id: Text = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    starter: Text = Field(min_length=1, max_length=512)
    position: StrictInt = Field(ge=0, le=31)
    type: Literal["impression", "click"]
    ts: AwareDatetime | None = Field(
        default=None, description="Client time with a timezone (e.g. 2026-11-21T12:00:00Z), "
                                  "in [1970, 2100); default: arrival time.")
    source: Literal["generated", "cold_start"] | None = None

    @field_validator("ts")
    @classmethod
    def _ts_in_range(cls, ts: datetime | None) -> datetime | None:
        if ts is not None and not TS_MIN <= ts < TS_MAX:
            raise ValueError(f"Input should be between {TS_MIN.isoformat()} and "
                             f"{TS_MAX.isoformat()} (exclusive)")
        return ts


class FeedbackRequest(_Body):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    inserted: int = Field(description="Events stored by this call.")
    duplicates: int = Field(description="Events already stored earlier (same event_id).")


class Health(BaseModel):
    status: Literal["ok"]
    model_version: OutText
    known_users: int
    ranker: bool
    scorer: bool


class UserList(BaseModel):
    user_ids: list[OutText]
