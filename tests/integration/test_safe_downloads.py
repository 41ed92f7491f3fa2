"""Downloads that reach only where they may: real Redis, worker, web and the fake gateway.

The gateway is told to redirect its file responses (``redirect_next_downloads``). The service
runs as configured by ``chainctl.devstack.local_env``: ``ALLOW_PRIVATE_HOSTS=127.0.0.1``, the
gateway's host. A file server on 127.0.0.2 stands for an internal address such as the cloud
metadata service: loopback too, but not listed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import Service, sha256_file, start_service, stop_service

INTERNAL = "127.0.0.2"


class Internal(ThreadingHTTPServer):
    """A file server on the internal address that counts every connection it accepts."""

    daemon_threads = True

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = b"internal credentials"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((INTERNAL, 0), Handler)
        self.connections = self.requests = 0
        self.url = f"http://{INTERNAL}:{self.server_address[1]}/latest/meta-data/credentials"

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)


@pytest.fixture(scope="module")
def internal() -> Iterator[Internal]:
    server = Internal()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("safe-downloads"),
        redis_url,
        poll_after_seconds="2",
        recheck_after_seconds="1",
    )
    yield service
    stop_service(service)


@pytest.fixture(autouse=True)
def _fresh_gateway(svc: Service) -> None:
    svc.fake("POST", "/_fake/reset")


def test_the_service_is_configured_to_reach_its_gateway_only(svc: Service) -> None:
    assert svc.env["ALLOW_PRIVATE_HOSTS"] == "127.0.0.1"


def test_a_file_host_redirecting_to_an_internal_address_is_refused(
    svc: Service, internal: Internal
) -> None:
    # Given a file host that sends every download to the internal server, with a signed URL
    signed = f"{internal.url}?X-Amz-Security-Token=secret123"
    svc.faults(redirect_next_downloads={"count": 100, "location": signed})

    # When a one-step chain makes a video
    chain = svc.create({"text_prompt": "a lighthouse at dusk", "steps": 1})
    final = svc.wait(chain["id"])

    # Then its archive fails for good, and the chain says why
    assert final["status"] == "failed", final
    error = final["error"]
    assert f"refusing to connect to {INTERNAL}, a loopback address" in error, error
    assert "ALLOW_PRIVATE_HOSTS" in error
    assert "secret123" not in error
    assert "secret123" not in svc.stack.tail("worker", 1000)
    [entry, *_] = final["archive"]
    assert entry["status"] == "failed"
    assert f"redirected to http://{INTERNAL}:" in entry["error"]
    # And the internal server was never even connected to; nothing was stored
    assert (internal.connections, internal.requests) == (0, 0)
    assert not (svc.archive / f"{entry['video_id']}.mp4").exists()
    assert not list(svc.archive.glob("*.part"))
    stats = svc.stats()
    assert stats["downloads_redirected"] >= 1
    assert stats["downloads_started"] == 0


def test_a_redirect_loop_is_cut_after_five_redirects(svc: Service, internal: Internal) -> None:
    # Given a file host that sends each request back to itself, more often than we follow
    svc.faults(redirect_next_downloads={"count": 6})

    final = svc.wait(svc.create({"text_prompt": "a spiral staircase", "steps": 1})["id"])

    assert final["status"] == "failed", final
    assert "more than 5 redirects" in final["error"]
    assert svc.stats()["downloads_redirected"] == 6
    assert internal.connections == 0


def test_redirects_to_the_allowed_host_are_followed(svc: Service) -> None:
    # Given a file host that redirects twice (to itself, an allowed host) before serving
    svc.faults(redirect_next_downloads={"count": 2, "status": 307})

    final = svc.wait(svc.create({"text_prompt": "a paper boat", "steps": 1})["id"])

    # Then the videos arrive whole
    assert final["status"] == "succeeded", final
    assert svc.stats()["downloads_redirected"] == 2
    for entry in final["archive"]:
        assert entry["status"] == "done"
        path = svc.archive / f"{entry['video_id']}.mp4"
        assert sha256_file(path) == entry["sha256"] == svc.gateway_sha256(entry["video_id"])
