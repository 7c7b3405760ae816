"""Hostile HTTP input (issue 16), against the Ingress's real ASGI app in-process (routes,
body parsing, limits, the SQLite event store) with the deployments replaced by instant
fakes (tests/serve_support.py). Raw request bytes go through Starlette's TestClient;
tests/test_serve.py sends the same cases to the real Ray Serve HTTP server.

Every case must get its 4xx naming the offending field, never a 5xx; every answer is
strict JSON (no NaN, no lone surrogate); the app keeps serving; and the feedback events
it acknowledged are all in the store.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from serve_support import HOSTILE, in_process_app

GOOD_EVENT = {"event_id": "ok-1", "request_id": "r-1", "user_id": "u0000001",
              "starter": "Which One Piece arc should I read next?", "position": 0, "type": "click"}


def strict_json(content: bytes):
    """The body parsed as RFC 8259 JSON in valid UTF-8 (no NaN/Infinity, no lone surrogate)."""
    def refuse(token):
        raise AssertionError(f"non-finite number {token} in a response")

    text = content.decode("utf-8")  # strict: fails on an encoded surrogate
    value = json.loads(text, parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # a "\\ud800" escape fails here
    return value


def assert_names_field(resp, status: int, loc: list) -> None:
    assert resp.status_code == status, resp.text
    detail = strict_json(resp.content)["detail"]
    assert isinstance(detail, list) and any(e["loc"] == loc for e in detail), (loc, detail)


@pytest.fixture()
def app(tmp_path):
    asgi, store = in_process_app(str(tmp_path / "events.sqlite"))
    with TestClient(asgi, raise_server_exceptions=False) as tc:
        yield tc, store
    store.close()


def assert_serving(tc: TestClient, store, event_id: str) -> None:
    resp = tc.post("/v1/starters", json={"user_id": "u0000001", "k": 3, "refresh": True})
    assert resp.status_code == 200, resp.text
    assert len(strict_json(resp.content)["starters"]) == 3
    fb = tc.post("/v1/feedback", json={"events": [{**GOOD_EVENT, "event_id": event_id}]})
    assert fb.status_code == 200 and fb.json() == {"inserted": 1, "duplicates": 0}, fb.text
    assert event_id in store.event_ids()


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_body_gets_422_naming_the_field(app, case):
    tc, store = app
    path, body, status, loc = HOSTILE[case]
    before = store.count()
    resp = tc.post(path, content=body, headers={"content-type": "application/json"})
    assert_names_field(resp, status, loc)
    assert store.count() == before  # nothing stored from a rejected batch
    assert_serving(tc, store, f"after-{case}")


def test_all_hostile_cases_in_a_row_then_everything_acknowledged_is_stored(app):
    tc, store = app
    acked = set()
    for i, (path, body, status, _) in enumerate(HOSTILE.values()):
        assert tc.post(path, content=body, headers={"content-type": "application/json"}
                       ).status_code == status
        event = {**GOOD_EVENT, "event_id": f"row-{i}", "position": i % 32}
        resp = tc.post("/v1/feedback", json={"events": [event]})
        assert resp.status_code == 200, resp.text
        acked.add(event["event_id"])
    assert acked <= store.event_ids()


def test_a_batch_with_one_bad_event_is_rejected_whole_and_a_fixed_retry_is_stored(app):
    tc, store = app
    good = {**GOOD_EVENT, "event_id": "batch-good"}
    body = (b'{"events": [' + json.dumps(good).encode() + b', '
            + json.dumps({**GOOD_EVENT, "event_id": "batch-bad"}).encode()[:-1]
            + b', "ts": "0001-01-01T00:00:00"}]}')
    assert_names_field(tc.post("/v1/feedback", content=body,
                               headers={"content-type": "application/json"}),
                       422, ["body", "events", 1, "ts"])
    assert not {"batch-good", "batch-bad"} & store.event_ids()
    fixed = [good, {**GOOD_EVENT, "event_id": "batch-bad", "ts": "2026-11-21T12:00:00+01:00"}]
    resp = tc.post("/v1/feedback", json={"events": fixed})
    assert resp.json() == {"inserted": 2, "duplicates": 0}
    stored = {e.event_id: e.ts_ms for e in store.events()}
    assert stored["batch-bad"] == 1_795_258_800_000  # 11:00 UTC


def test_timestamps_with_a_timezone_are_accepted(app):
    tc, store = app
    for i, ts in enumerate(["1970-01-01T00:00:00Z", "2026-11-21T12:00:00.123456+05:30",
                            "2099-12-31T23:59:59Z", 1_795_258_800]):
        resp = tc.post("/v1/feedback", json={"events": [{**GOOD_EVENT, "event_id": f"ts-{i}", "ts": ts}]})
        assert resp.status_code == 200, resp.text
    assert {f"ts-{i}" for i in range(4)} <= store.event_ids()


@pytest.mark.parametrize("path", ["/v1/starters/", "/v1/feedback/", "/healthz/", "/v1/users/"])
def test_trailing_slash_with_forged_host_is_404_not_a_redirect(app, path):
    tc, store = app
    get = path in ("/healthz/", "/v1/users/")
    resp = tc.request("GET" if get else "POST", path, headers={"host": "evil.example.com"},
                      follow_redirects=False, **({} if get else {"json": {"k": 2}}))
    assert resp.status_code == 404, resp.text
    assert "location" not in resp.headers
    assert "evil" not in resp.text
    assert_serving(tc, store, f"after-slash-{path.strip('/').replace('/', '-')}")


def test_surrogate_pairs_and_non_ascii_text_are_fine(app):
    tc, store = app
    body = b'{"summaries": ["Ramen in \\u5927\\u962a \\ud83c\\udf5c"], "k": 2}'
    resp = tc.post("/v1/starters", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert strict_json(resp.content)["trigger_interests"] == ["Ramen in 大阪 🍜"]


def test_a_body_that_is_not_utf8_or_not_json_typed_gets_4xx(app):
    tc, store = app
    resp = tc.post("/v1/starters", content=b'{"summaries": ["\xff\xfe"]}',
                   headers={"content-type": "application/json"})
    assert resp.status_code == 422 and strict_json(resp.content)["detail"][0]["loc"][0] == "body"
    resp = tc.post("/v1/starters", content=b"\xff\xed\xa0\x80", headers={"content-type": "text/plain"})
    assert resp.status_code == 422, resp.text
    strict_json(resp.content)
    resp = tc.post("/v1/starters", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert_serving(tc, store, "after-not-utf8")


# ----------------------------------------------------------------------------- units


def test_models_reject_lone_surrogates_and_non_finite_numbers_when_built_directly():
    from pydantic import ValidationError

    from icebreaker_ray.serve.api import FeedbackEvent, StartersRequest

    for field, value in [("user_id", "u\ud800"), ("locale", "en\udc00"), ("summaries", ["\ud800"]),
                         ("k", float("nan"))]:
        with pytest.raises(ValidationError) as err:
            StartersRequest.model_validate({field: value})
        assert err.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValidationError) as err:
        FeedbackEvent.model_validate({**GOOD_EVENT, "starter": "a\ud800"})
    assert err.value.errors()[0]["loc"] == ("starter",)


def test_responses_never_carry_nan_or_lone_surrogates():
    from icebreaker_ray.serve.api import Starter, StartersResponse
    from icebreaker_ray.serve.web import SafeJSONResponse, dumps

    starter = Starter(text="bad \ud800", score=float("nan"), position=0, source="generated")
    resp = StartersResponse(request_id="r", user_id=None, starters=[starter],
                            trigger_interests=["x\udfff"], model_version="m", cold_start=False,
                            cached=False, source="online")
    body = strict_json(resp.model_dump_json().encode())
    assert body["starters"][0] == {"text": "bad \ufffd", "score": 0.0, "position": 0,
                                   "source": "generated"}
    assert body["trigger_interests"] == ["x\ufffd"]
    hostile = {"a\ud800": [float("inf"), "\udc00", b"\xff", (1, float("nan"))]}
    assert strict_json(dumps(hostile)) == {"a\ufffd": ["inf", "\ufffd", "\ufffd", [1, "nan"]]}
    assert strict_json(SafeJSONResponse(hostile).body) == strict_json(dumps(hostile))
    assert strict_json(dumps({"only": "a surrogate \ud800"})) == {"only": "a surrogate \ufffd"}
    assert strict_json(dumps({"only": float("nan")})) == {"only": "nan"}
    assert dumps({"fine": ["大阪 🍜", 1.5]}) == '{"fine":["大阪 🍜",1.5]}'.encode()


def test_store_refuses_unstorable_events_without_storing_any(tmp_path):
    from icebreaker_ray.serve.store import EventStore, StoredEvent

    store = EventStore(tmp_path / "e.sqlite")
    ok = StoredEvent("e1", "r1", "u1", "Hi?", 0, "click", "serve", 0)
    bad = StoredEvent("e2", "r1", "u1", "Hi \ud800?", 0, "click", "serve", 0)
    with pytest.raises(ValueError, match="starter is not valid Unicode"):
        store.append([ok, bad])
    with pytest.raises(ValueError, match="ts_ms is not a 64-bit integer"):
        store.append([StoredEvent("e3", "r1", "u1", "Hi?", 0, "click", "serve", 2**70)])
    assert store.count() == 0
    assert store.append([ok]).inserted == 1
    store.close()


def test_stream_lines_are_strict_json(app):
    tc, store = app
    body = b'{"summaries": ["Ramen in \\u5927\\u962a"], "k": 2}'
    with tc.stream("POST", "/v1/starters/stream", content=body,
                   headers={"content-type": "application/json"}) as resp:
        assert resp.status_code == 200
        lines = [strict_json(line) for line in b"".join(resp.iter_bytes()).splitlines() if line]
    assert [e["event"] for e in lines][0] == "meta" and lines[-1]["event"] == "done"
    assert lines[0]["trigger_interests"] == ["Ramen in 大阪"]


def test_stream_that_fails_midway_ends_with_an_error_line(tmp_path):
    """Once the stream has started (status 200), a failure inside generation is an
    ``error`` line that closes it, never a stream that just stops; the server goes on."""
    from serve_support import _FakeDeployment, fake_handles

    from icebreaker_ray.config import load_config
    from icebreaker_ray.serve.components import GenUpdate
    from icebreaker_ray.serve.store import EventStore
    from icebreaker_ray.serve.web import StarterService, make_http_app

    handles = fake_handles()

    async def broken(job):
        yield GenUpdate(first_token=True)
        raise RuntimeError("the engine crashed")

    handles.generator = _FakeDeployment(sample=handles.generator.sample.fn, stream=broken)
    cfg = load_config("local-cpu")
    store = EventStore(str(tmp_path / "events.sqlite"))
    service = StarterService(cfg, handles, store, "fake-model", has_scorer=False, has_ranker=False)
    with TestClient(make_http_app(service, None, cfg.serve.max_body_bytes),
                    raise_server_exceptions=False) as tc:
        with tc.stream("POST", "/v1/starters/stream", json={"user_id": "u0000001"}) as resp:
            assert resp.status_code == 200
            lines = [strict_json(line) for line in b"".join(resp.iter_bytes()).splitlines() if line]
        assert [e["event"] for e in lines] == ["meta", "first_token", "error"]
        assert lines[-1]["status"] == 500 and "retry" in lines[-1]["detail"]
        ok = tc.post("/v1/starters", json={"user_id": "u0000001", "k": 2})
        assert ok.status_code == 200 and ok.json()["source"] == "online"
    store.close()
