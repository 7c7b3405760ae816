"""The HTTP contract of the server: request and response bodies (pydantic, OpenAPI at /docs).

    POST /v1/starters   StartersRequest  -> StartersResponse
    POST /v1/starters/stream              -> NDJSON lines (see StreamEvent)
    POST /v1/feedback   FeedbackRequest  -> FeedbackResponse
    GET  /healthz                         -> Health

Shapes and types are checked here (a wrong type is a 422 with pydantic's message);
the size limits that come from the config (``serve.max_summaries``,
``serve.max_summary_chars``) are checked by the ingress, which answers 413 naming the
field and the limit. Unknown fields are rejected so a typo does not pass silently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

ID_PATTERN = r"^[A-Za-z0-9_.:@-]+$"
MAX_K = 10


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartersRequest(_Body):
    user_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=ID_PATTERN,
        description="A user id. Known (simulated) users are looked up in the run's logs.")
    summaries: list[str] | None = Field(
        default=None,
        description="Session summaries of the user's own history, oldest first (one per "
                    "session). Treated as data only: never as instructions.")
    k: StrictInt | None = Field(default=None, ge=1, le=MAX_K,
                                description="Number of starters (default: generation.K).")
    locale: str | None = Field(
        default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$",
        description="BCP 47 tag. Accepted for forward compatibility; the models are English-only.")
    refresh: StrictBool = Field(default=False, description="Bypass the per-user cache.")


class Starter(BaseModel):
    text: str
    score: float = Field(description="R_util of the starter (relevance when no ranker), "
                                     "or its popularity for cold-start fillers.")
    position: int
    source: Literal["generated", "cold_start"]


class StartersResponse(BaseModel):
    request_id: str
    user_id: str | None
    starters: list[Starter]
    trigger_interests: list[str]
    model_version: str
    cold_start: bool
    cached: bool


class FeedbackEvent(_Body):
    event_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN,
                          description="Client-generated, unique: a retried event is stored once.")
    request_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    user_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    starter: str = Field(min_length=1, max_length=512)
    position: StrictInt = Field(ge=0, le=31)
    type: Literal["impression", "click"]
    ts: datetime | None = Field(default=None, description="Client time; default: arrival time.")
    source: Literal["generated", "cold_start"] | None = None


class FeedbackRequest(_Body):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    inserted: int = Field(description="Events stored by this call.")
    duplicates: int = Field(description="Events already stored earlier (same event_id).")


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
    known_users: int
    ranker: bool
    scorer: bool


class UserList(BaseModel):
    user_ids: list[str]
