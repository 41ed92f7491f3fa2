"""The CLI as a client of the API: the token, and a create retried after a lost reply."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chainctl.cli import Api, CliError


class Recorder(ThreadingHTTPServer):
    """Answers POST /chains; the first ``stall`` requests come back too late."""

    def __init__(self, stall: int) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.stall = stall
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(dict(self.headers))
        if len(self.server.seen) <= self.server.stall:
            time.sleep(1.0)  # past the client's timeout: the reply is lost to it
        body = json.dumps({"id": "c1", "status": "queued"}).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    srv = Recorder(getattr(request, "param", 0))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("server", [1], indirect=True)
def test_a_create_that_timed_out_is_retried_with_the_same_idempotency_key(
    server: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chainctl.cli.RETRY_PAUSE", 0.0)
    chain = Api(server.url, timeout=0.3, token="t" * 32).create({"video_id": "v", "steps": 1})
    assert chain["id"] == "c1"
    keys = [h["Idempotency-Key"] for h in server.seen]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0].startswith("cli-")
    assert all(h["Authorization"] == "Bearer " + "t" * 32 for h in server.seen)


def test_each_command_gets_a_fresh_key_unless_one_is_given(server: Recorder) -> None:
    api = Api(server.url, token="t" * 32)
    api.create({"video_id": "v", "steps": 1})
    api.create({"video_id": "v", "steps": 1})
    api.create({"video_id": "v", "steps": 1}, key="order-17")
    keys = [h["Idempotency-Key"] for h in server.seen]
    assert keys[0] != keys[1]
    assert keys[2] == "order-17"


@pytest.mark.parametrize("server", [5], indirect=True)
def test_a_create_that_never_answers_gives_up_with_a_message(
    server: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chainctl.cli.RETRY_PAUSE", 0.0)
    with pytest.raises(CliError, match="cannot reach the service"):
        Api(server.url, timeout=0.2).create({"video_id": "v", "steps": 1})
    assert len({h["Idempotency-Key"] for h in server.seen}) == 1
