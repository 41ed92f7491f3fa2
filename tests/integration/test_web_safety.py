"""The web process as an outsider meets it: closed unless told otherwise, tokens kept out of
the logs. The Procfile's web line, started as written, over real sockets."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from chainctl.devstack import Stack, find_procfile, free_port, wait_http
from tests.support import Service
from worker.core import tokens


def web_env(redis_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "CALLBACK_SECRET": "x" * 32,
        "KLING_API_KEY": "k",
        "PORT": str(port),
        "API_TOKEN": "",
        **extra,
    }


@pytest.mark.parametrize("token", ["", "too-short"])
def test_without_a_proper_api_token_the_web_process_will_not_start(
    tmp_path: Path, redis_url: str, token: str
) -> None:
    stack = Stack(tmp_path)
    proc = stack.start(
        "web", find_procfile()["web"], web_env(redis_url, free_port(), API_TOKEN=token)
    )
    try:
        code = proc.wait(timeout=30)
    finally:
        stack.stop()
    log = (tmp_path / "web.log").read_text()
    assert code != 0
    assert "API_TOKEN" in log
    assert "openssl rand -hex 32" in log
    assert "Traceback" not in log


def test_api_auth_off_starts_open_and_says_so(tmp_path: Path, redis_url: str) -> None:
    stack = Stack(tmp_path)
    port = free_port()
    proc = stack.start("web", find_procfile()["web"], web_env(redis_url, port, API_AUTH="off"))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        assert requests.get(f"http://127.0.0.1:{port}/chains", timeout=5).status_code == 200
        form = requests.post(
            f"http://127.0.0.1:{port}/chains", data={"video_id": "v", "steps": "1"}, timeout=5
        )
        assert form.status_code == 415
    finally:
        stack.stop()
    assert "API_AUTH=off" in (tmp_path / "web.log").read_text()


def test_the_api_is_closed_to_anyone_without_the_token(service: Service) -> None:
    for path in ("/chains", "/archive", "/archive.jsonl", "/archive/callback-urls", "/metrics"):
        assert requests.get(f"{service.api}{path}", timeout=5).status_code == 401, path
    before = service.stats()["creates_total"]
    seed = service.seed(5.0)
    refused = requests.post(
        f"{service.api}/chains", json={"video_id": seed["video_id"], "steps": 1}, timeout=5
    )
    assert refused.status_code == 401
    plain = service.http.post(
        f"{service.api}/chains",
        data=b'{"video_id": "v", "steps": 1}',
        headers={"Content-Type": "text/plain"},
        timeout=5,
    )
    assert plain.status_code == 415
    assert requests.get(f"{service.api}/healthz", timeout=5).status_code == 200
    assert service.stats()["creates_total"] == before


def test_callback_tokens_never_reach_the_web_log(service: Service) -> None:
    seed = service.seed(5.0)
    chain = service.wait(
        service.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 2})["id"]
    )
    assert chain["status"] == "succeeded"
    secret = service.env["CALLBACK_SECRET"].encode()
    archive_token = tokens.sign_archive(secret, "text2video")
    requests.post(f"{service.api}/callbacks/archive/text2video/{archive_token}", json={}, timeout=5)
    refused = f"{service.api}/callbacks/{chain['id']}/0/{tokens.sign(secret, chain['id'], 0)}"
    assert requests.post(refused, data=b"not json", timeout=5).status_code == 400
    time.sleep(0.5)  # the access log line is written after the reply
    log = service.stack.tail("web", lines=100_000)
    # the access log is on, redacted, for callbacks refused; one accepted has the web's line
    assert f'"POST /callbacks/{chain["id"]}/0/<token> HTTP/1.1" 400' in log
    assert "/callbacks/archive/text2video/<token>" in log
    assert f"callback {chain['id']}/0: task {chain['steps'][0]['task_id']}" in log
    for index in range(len(chain["steps"])):
        assert tokens.sign(secret, chain["id"], index) not in log
    assert archive_token not in log


def test_cli_without_token_gets_a_clear_refusal(service: Service) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chainctl.cli", "--api", service.api, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "API_TOKEN": ""},
    )
    assert done.returncode == 2
    assert "missing or wrong API token" in done.stderr
    assert "Traceback" not in done.stderr
