"""The HTTP side of the Ingress: FastAPI routes, request limits, API key, per-user cache.

:func:`make_http_app` builds the ASGI app of one Ingress replica around a
:class:`StarterService`, which calls the other deployments through their handles:

    InterestDistiller.distill -> StarterGenerator.sample (or .stream) -> ListSelector.select

Bad input never reaches the models: malformed JSON and wrong types are answered 422
with pydantic's message (FastAPI's validation); too many or too long summaries 413
naming the field and the limit; a body over ``serve.max_body_bytes`` 413 before it is
read (:class:`BodyLimit`, outermost, so even a chunked body is cut off); a lone
surrogate in a string or field name, or ``NaN``/``Infinity`` anywhere in a body 422
naming the field (:class:`StrictJSONRoute`, with :func:`api.parse_json_body`). Every
answer, errors included, is valid UTF-8 JSON without ``NaN`` (:class:`SafeJSONResponse`),
and a trailing slash is a 404, never a redirect (which would name the client-supplied
``Host``). A downstream
replica that dies mid-request is retried once through Serve's router (which sends the
call to a live or replacement replica) before the client gets a 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from icebreaker_ray.config import Config
from icebreaker_ray.serve.api import (
    BodyError,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    Starter,
    StartersRequest,
    StartersResponse,
    UserList,
    clean_text,
    parse_json_body,
)
from icebreaker_ray.serve.components import Distilled, GenJob, GenUpdate, Pick
from icebreaker_ray.serve.store import EventStore, StoredEvent

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
#: Users listed for the demo page's picker.
MAX_LISTED_USERS = 200


def key_digest(key: str) -> str:
    """What the Ingress is given instead of the key itself (never in configs or logs)."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1, "localhost" (and Starlette's TestClient)."""
    if not host:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_guard(key_sha256: str | None) -> Callable[..., Awaitable[None]]:
    """FastAPI dependency: with a key configured, ``X-API-Key`` must match it; without
    one, only loopback clients are served (the HTTP server binds to 127.0.0.1 then, and
    this also holds when a deployment config binds it elsewhere)."""

    async def check(request: Request,
                    x_api_key: str | None = Header(default=None, alias=API_KEY_HEADER)) -> None:
        if key_sha256 is None:
            client = request.client.host if request.client else None
            if not is_loopback(client):
                raise HTTPException(403, f"no API key is configured, so only local clients are "
                                         f"served (client {client})")
            return
        if x_api_key is None or not hmac.compare_digest(key_digest(x_api_key), key_sha256):
            raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header")

    return check


# ----------------------------------------------------------------------------- strict JSON


def json_safe(value: Any) -> Any:
    """``value`` made sendable as strict JSON: lone surrogates -> U+FFFD (in keys too),
    non-finite floats -> their name as a string ("nan", "inf"), bytes decoded as UTF-8
    (invalid bytes -> U+FFFD), tuples -> lists. Iterative, so any depth is fine."""

    def leaf(v: Any) -> Any:
        if isinstance(v, str):
            return clean_text(v)
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return v

    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]  # (container, slot, value)
    while stack:
        container, slot, v = stack.pop()
        if isinstance(v, dict):
            out: dict = {}
            container[slot] = out
            for k, child in v.items():
                key = clean_text(k) if isinstance(k, str) else k
                out[key] = None
                stack.append((out, key, child))
        elif isinstance(v, list | tuple):
            items: list = [None] * len(v)
            container[slot] = items
            stack.extend((items, i, child) for i, child in enumerate(v))
        else:
            container[slot] = leaf(v)
    return root[0]


def dumps(value: Any) -> bytes:
    """Strict JSON of ``value`` in UTF-8 (see :func:`json_safe`); one line, non-ASCII kept."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except ValueError:  # NaN/Infinity, or a lone surrogate (UnicodeEncodeError)
        return json.dumps(json_safe(value), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that can always be sent: strict JSON, valid UTF-8 (:func:`dumps`)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class StrictJSONRequest(Request):
    """A request whose JSON body is parsed by :func:`parse_json_body`: a lone surrogate or
    a non-finite number is a 422 naming the field, in FastAPI's validation-error shape."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json_body(await self.body())
            except BodyError as exc:  # FastAPI passes an HTTPException through unchanged
                raise HTTPException(422, exc.errors) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """The app's route class: its handler sees a :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return SafeJSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, with the echoed inputs made sendable (a body that is not UTF-8, ...)."""
    errors = jsonable_encoder(exc.errors(), custom_encoder={
        bytes: lambda b: b.decode("utf-8", "replace")})
    return SafeJSONResponse({"detail": errors}, 422)


# ----------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI wrapper: 413 for request bodies over ``max_bytes`` (by Content-Length, or while
    reading a body sent without one). Everything else passes through unchanged."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def __getattr__(self, name: str) -> Any:  # add_exception_handler, routes, ... of FastAPI
        return getattr(self.app, name)

    async def _refuse(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = f"request body is larger than the limit of {self.max_bytes} bytes (serve.max_body_bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, "invalid Content-Length header")
            if int(length) > self.max_bytes:
                return await self._refuse(send, 413, limit)
        received, refused = 0, False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self._refuse(send, 413, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


# ----------------------------------------------------------------------------- cache


class TTLCache:
    """Per-replica answer cache: key -> (expiry, response)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._data: dict[Any, tuple[float, StartersResponse]] = {}

    def get(self, key: Any) -> StartersResponse | None:
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            self._data.pop(key, None)
            return None
        return hit[1]

    def put(self, key: Any, value: StartersResponse) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._data) >= self.max_entries:
            now = time.monotonic()
            self._data = {k: v for k, v in self._data.items() if v[0] >= now}
            while len(self._data) >= self.max_entries:
                self._data.pop(next(iter(self._data)))
        self._data[key] = (time.monotonic() + self.ttl_s, value)


# ----------------------------------------------------------------------------- service


def _retryable() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)


async def call(method: Any, *args: Any, attempts: int = 3) -> Any:
    """``await handle.method.remote(*args)``, retried when the replica died under it."""
    for attempt in range(attempts):
        try:
            return await method.remote(*args)
        except _retryable() as exc:
            if attempt == attempts - 1:
                log.warning("downstream call failed %d times: %r", attempts, exc)
                raise HTTPException(503, "a serving replica failed; please retry") from exc
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class Handles:
    distiller: Any
    generator: Any
    selector: Any


class StarterService:
    """One Ingress replica's request logic (routes are thin wrappers around it)."""

    def __init__(self, cfg: Config, handles: Handles, store: EventStore, model_version: str,
                 has_scorer: bool, has_ranker: bool) -> None:
        self.cfg, self.h, self.store = cfg, handles, store
        self.model_version = model_version
        self.has_scorer, self.has_ranker = has_scorer, has_ranker
        self.cache = TTLCache(cfg.serve.cache_ttl_s)
        self._users: list[str] | None = None

    # -- helpers ------------------------------------------------------------------------

    def check_limits(self, body: StartersRequest) -> None:
        s = self.cfg.serve
        summaries = body.summaries or []
        if len(summaries) > s.max_summaries:
            raise HTTPException(413, f"summaries: {len(summaries)} items, more than the limit of "
                                     f"{s.max_summaries} (serve.max_summaries)")
        for i, text in enumerate(summaries):
            if len(text) > s.max_summary_chars:
                raise HTTPException(413, f"summaries[{i}]: {len(text)} characters, more than the "
                                         f"limit of {s.max_summary_chars} (serve.max_summary_chars)")

    def cache_key(self, body: StartersRequest, k: int) -> tuple:
        digest = hashlib.sha256("\x1f".join(body.summaries or []).encode()).hexdigest()
        return (body.user_id, k, digest)

    def response(self, body: StartersRequest, picks: list[Pick], d: Distilled,
                 request_id: str) -> StartersResponse:
        source = ("precomputed" if d.precomputed is not None
                  else "cold_start" if d.cold_start else "online")
        return StartersResponse(
            request_id=request_id, user_id=body.user_id,
            starters=[Starter(text=p.text, score=round(p.score, 6), position=i, source=p.source)
                      for i, p in enumerate(picks)],
            trigger_interests=d.interests, model_version=self.model_version,
            cold_start=d.cold_start, cached=False, source=source)

    async def distill(self, body: StartersRequest, k: int) -> Distilled:
        """I*, or a known user's fresh precomputed answer unless the request says refresh."""
        return await call(self.h.distiller.distill, body.user_id, body.summaries,
                          None if body.refresh else k)

    async def known_users(self) -> list[str]:
        if self._users is None:
            self._users = await call(self.h.distiller.known_users)
        return self._users

    # -- endpoints ----------------------------------------------------------------------

    async def starters(self, body: StartersRequest) -> StartersResponse:
        self.check_limits(body)
        k = body.k or self.cfg.generation.K
        key = self.cache_key(body, k)
        hit = None if body.refresh else self.cache.get(key)
        if hit is not None:
            return hit.model_copy(update={"request_id": uuid.uuid4().hex, "cached": True})
        d = await self.distill(body, k)
        if d.precomputed is not None:
            picks = d.precomputed
        elif d.cold_start:
            picks = await call(self.h.selector.cold_start, k)
        else:
            texts = await call(self.h.generator.sample, GenJob(d.interests, k))
            picks = await call(self.h.selector.select, body.user_id, d.history, d.interests,
                               texts, k, d.profile)
        resp = self.response(body, picks, d, uuid.uuid4().hex)
        self.cache.put(key, resp)
        return resp

    async def stream(self, body: StartersRequest) -> AsyncIterator[bytes]:
        """NDJSON events: ``meta``; ``first_token`` when the model produced its first token;
        ``starter`` for each generated starter that passed the filter, as soon as the model
        finished writing it (a preview; a precomputed answer sends its starters at once);
        ``done`` with the final response; ``error`` (status, detail) if it fails midway."""
        self.check_limits(body)
        k = body.k or self.cfg.generation.K
        request_id = uuid.uuid4().hex
        d = await self.distill(body, k)

        def line(event: str, **data: Any) -> bytes:
            return dumps({"event": event, **data}) + b"\n"

        async def events() -> AsyncIterator[bytes]:
            yield line("meta", request_id=request_id, user_id=body.user_id,
                       trigger_interests=d.interests, cold_start=d.cold_start,
                       model_version=self.model_version)
            try:
                if d.precomputed is not None:
                    picks = d.precomputed
                    for i, p in enumerate(picks):
                        yield line("starter", text=p.text, position=i)
                elif d.cold_start:
                    picks = await call(self.h.selector.cold_start, k)
                else:
                    texts, shown = [], []
                    gen = self.h.generator.options(stream=True).stream.remote(GenJob(d.interests, k, stream=True))
                    async for upd in gen:
                        upd: GenUpdate
                        if upd.first_token:
                            yield line("first_token")
                        if upd.new_starters and len(shown) < k:
                            for text in await call(self.h.selector.screen, shown, upd.new_starters,
                                                        d.interests):
                                if len(shown) < k:
                                    yield line("starter", text=text, position=len(shown))
                                    shown.append(text)
                        if upd.texts is not None:
                            texts = upd.texts
                    picks = await call(self.h.selector.select, body.user_id, d.history,
                                       d.interests, texts, k, d.profile)
                resp = self.response(body, picks, d, request_id)
                yield line("done", response=resp.model_dump())
            except HTTPException as exc:
                yield line("error", status=exc.status_code, detail=exc.detail)
            except _retryable() as exc:
                log.warning("stream %s failed downstream: %r", request_id, exc)
                yield line("error", status=503, detail="a serving replica failed; please retry")
            except Exception:  # the stream has started (200): end it with an error line, not silence
                log.exception("stream %s failed", request_id)
                yield line("error", status=500, detail="generation failed; please retry")

        return events()

    def feedback(self, body: FeedbackRequest) -> FeedbackResponse:
        now_ms = int(time.time() * 1000)
        events = [StoredEvent(
            event_id=e.event_id, request_id=e.request_id, user_id=e.user_id, starter=e.starter,
            position=e.position, type=e.type, source=e.source or "serve",
            ts_ms=int(e.ts.timestamp() * 1000) if e.ts else now_ms) for e in body.events]
        result = self.store.append(events)
        return FeedbackResponse(inserted=result.inserted, duplicates=result.duplicates)

    async def health(self) -> Health:
        return Health(status="ok", model_version=self.model_version,
                      known_users=len(await self.known_users()),
                      ranker=self.has_ranker, scorer=self.has_scorer)


# ----------------------------------------------------------------------------- routes


def make_http_app(service: StarterService, key_sha256: str | None, max_body_bytes: int) -> BodyLimit:
    """The FastAPI app (OpenAPI at /docs) wrapped in :class:`BodyLimit`."""
    # redirect_slashes=False: Starlette would answer "/v1/starters/" with a 307 to an
    # absolute URL built from the request's Host header (an open redirect).
    app = FastAPI(title="ICEBREAKER starters", version="1", redirect_slashes=False,
                  default_response_class=SafeJSONResponse,
                  exception_handlers={StarletteHTTPException: http_error,
                                      RequestValidationError: validation_error},
                  description="Personalized conversation starters (ICEBREAKER) on Ray Serve.")
    app.router.route_class = StrictJSONRoute
    guard = [Depends(access_guard(key_sha256))]
    index_html = (STATIC_DIR / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return index_html

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return await service.health()

    @app.get("/v1/users", response_model=UserList, dependencies=guard)
    async def users() -> UserList:
        return UserList(user_ids=(await service.known_users())[:MAX_LISTED_USERS])

    @app.post("/v1/starters", response_model=StartersResponse, dependencies=guard)
    async def starters(body: StartersRequest) -> StartersResponse:
        return await service.starters(body)

    @app.post("/v1/starters/stream", dependencies=guard,
              responses={200: {"content": {"application/x-ndjson": {}}}})
    async def starters_stream(body: StartersRequest) -> StreamingResponse:
        return StreamingResponse(await service.stream(body), media_type="application/x-ndjson")

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=guard)
    def feedback(body: FeedbackRequest) -> FeedbackResponse:
        # A plain def: FastAPI runs it in its thread pool, so the fsync does not block
        # the event loop; the answer is sent only after the commit.
        return service.feedback(body)

    return BodyLimit(app, max_body_bytes)
