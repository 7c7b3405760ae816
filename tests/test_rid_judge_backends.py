"""The LLM judge backends: openai against a local stub of the chat completions protocol
(timeouts, 500s, retries with backoff), hf with a tiny random model (unparseable output)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from icebreaker_ray.rid import judge


class _Stub(BaseHTTPRequestHandler):
    """Replies from ``server.script`` in order: ("500",), ("sleep", s), ("ok", content), ("400",)."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        step = self.server.script.pop(0) if self.server.script else ("ok", "<label> MATCH </label>")
        if step[0] == "sleep":
            time.sleep(step[1])
            step = ("ok", "<label> MATCH </label>")
        if step[0] in ("500", "400"):
            self.send_response(int(step[0]))
            self.end_headers()
            return
        payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": step[1]}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.script, server.requests = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_openai_judge_retries_timeout_and_500_then_succeeds(stub):
    stub.script = [("500",), ("sleep", 1.0), ("ok", "<label> MATCH </label><rationale>same</rationale>")]
    j = judge.OpenAIJudge(_url(stub), "judge-model", timeout_s=0.3, max_retries=3, backoff_s=0.01)
    started = time.time()
    v = j(["Asked about One Piece"], ["One Piece theories"])
    assert v.labels == ["MATCH"] and v.parsed_ok == [True] and v.failed == [False]
    assert j.retries == 2 and len(stub.requests) == 3
    path, body = stub.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "judge-model"
    assert "[Later session summary]: One Piece theories" in body["messages"][0]["content"]
    assert time.time() - started < 5


def test_openai_judge_gives_up_without_crashing(stub):
    stub.script = [("500",)] * 3 + [("ok", "no idea"), ("400",)]
    j = judge.OpenAIJudge(_url(stub), "m", timeout_s=1, max_retries=2, backoff_s=0.01)
    v = j(["a", "b", "c"], ["a", "b", "c"])
    # pair 1: three 500s -> failed; pair 2: unparseable; pair 3: 400 is not retried
    assert v.labels == ["NO_MATCH"] * 3
    assert v.failed == [True, False, True] and v.parsed_ok == [False, False, False]
    assert len(stub.requests) == 5


def test_openai_backend_needs_a_url():
    from icebreaker_ray.config import JudgeSection

    with pytest.raises(ValueError, match="openai_url"):
        judge.make_judge(JudgeSection(backend="openai"))


@pytest.mark.integration
def test_hf_judge_counts_unparseable_output(tiny_generator):
    j = judge.HFJudge(tiny_generator, max_new_tokens=8, batch_size=4)
    v = j(["Asked about One Piece", "Fixed grammar", ""], ["One Piece theories", "Sourdough", "x"])
    assert len(v.labels) == 3 and set(v.labels) <= {"MATCH", "NO_MATCH"}
    assert v.labels[2] == "NO_MATCH"
    # a random model does not write the label format: counted, not raised
    assert v.parsed_ok[:2].count(False) >= 1
