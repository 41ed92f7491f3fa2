"""LOG_FORMAT=json: web, worker and beat print one JSON object a line, secrets left out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support import Service, module_service, start_chain, start_service, stop_service
from worker.core import tokens

svc = module_service("json-logs", delay=0.3, log_format="json")

PROCESSES = ("web", "worker", "beat")
LEAKS = ("LEAKME-token", "LEAKME-signature", "LEAKME-callback")


def lines_of(service: Service, name: str) -> list[str]:
    text = (service.stack.log_dir / f"{name}.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def records(service: Service, name: str) -> list[dict[str, Any]]:
    parsed = []
    for line in lines_of(service, name):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{name} printed a line that is not JSON: {line!r}") from None
        assert isinstance(record, dict), f"{name}: {line!r}"
        parsed.append(record)
    return parsed


def wait_for(service: Service, name: str, found: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        got = records(service, name)
        if any(found(record) for record in got):
            return got
        assert time.monotonic() < deadline, (
            f"{name} never logged {what}:\n{lines_of(service, name)}"
        )
        time.sleep(0.2)


def test_every_line_is_a_json_object_with_the_chain_fields_and_no_secrets(svc: Service) -> None:
    # Given a chain of two extensions that ran to its end
    chain = start_chain(svc, steps=2)
    final = svc.wait(chain["id"])
    assert final["status"] == "succeeded", final
    chain_id = final["id"]
    # and requests whose URLs carry secrets: a signed query string and a wrong callback token
    reply = svc.http.get(
        f"{svc.api}/chains", params={"token": LEAKS[0], "X-Amz-Signature": LEAKS[1]}, timeout=10
    )
    assert reply.status_code < 500
    wrong = svc.http.post(f"{svc.api}/callbacks/{chain_id}/1/{LEAKS[2]}", json={}, timeout=10)
    assert wrong.status_code == 403

    # Then every line each process printed is a JSON object with the common fields
    web = wait_for(svc, "web", lambda r: r.get("status") == 403, "the refused callback")
    worker = wait_for(svc, "worker", lambda r: r.get("event") == "video.archived", "an archive")
    beat = wait_for(svc, "beat", lambda r: r["message"].startswith("Scheduler:"), "a sweep")
    for name, got in (("web", web), ("worker", worker), ("beat", beat)):
        assert got, f"{name} printed nothing"
        for record in got:
            assert {"time", "level", "logger", "service", "message"} <= record.keys(), record
            assert record["service"] == name, record

    # with chain_id, step, task_id and event where they apply
    created = [r for r in worker if r.get("event") == "step.created"]
    assert {r["chain_id"] for r in created} == {chain_id}
    assert sorted(r["step"] for r in created) == [s["index"] for s in final["steps"]]
    assert {r["task_id"] for r in created} == {s["task_id"] for s in final["steps"]}
    assert any(r.get("event") == "chain.created" and r["chain_id"] == chain_id for r in web)
    callbacks = [r for r in web if r.get("event") == "callback.received"]
    assert {r["chain_id"] for r in callbacks} == {chain_id}
    assert any("celery_task_id" in r for r in worker)
    assert any(r["logger"] == "celery.beat" for r in beat)
    access = [r for r in web if r.get("event") == "http.request"]
    assert any(r["path"] == f"/chains/{chain_id}" for r in access)
    # a callback answered 2xx has the web's own line (above) in place of an access line
    assert not any(r["path"].startswith("/callbacks/") and r["status"] < 300 for r in access)

    # and no token nor signed query string appears in any of them
    secret = svc.env["CALLBACK_SECRET"].encode()
    callback_tokens = [tokens.sign(secret, chain_id, s["index"]) for s in final["steps"]]
    everything = "\n".join("\n".join(lines_of(svc, name)) for name in PROCESSES)
    for leak in (*LEAKS, *callback_tokens, svc.env["API_TOKEN"], svc.env["KLING_API_KEY"]):
        assert leak not in everything
    assert f"/callbacks/{chain_id}/1/<token>" in everything
    assert "/chains?<redacted>" in everything


def test_worker_and_beat_stay_json_from_start_to_shutdown(tmp_path: Path, redis_url: str) -> None:
    # Given a worker and a beat started with LOG_FORMAT=json, and ready
    service = start_service(tmp_path, redis_url, processes=("worker", "beat"), log_format="json")
    try:
        wait_for(service, "worker", lambda r: r["message"].endswith("ready."), "that it is ready")
        wait_for(service, "beat", lambda r: r["message"].startswith("Scheduler:"), "a sweep")
    finally:
        # When they are stopped (SIGTERM, as a process manager does)
        stop_service(service)
    # Then what they printed on the way out is JSON too, and no banner was printed
    worker = records(service, "worker")
    assert any("Warm shutdown" in r["message"] for r in worker), worker
    assert all(r["service"] == "worker" for r in worker)
    assert all(r["service"] == "beat" for r in records(service, "beat"))
