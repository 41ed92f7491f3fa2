"""The contract of the web's fast publisher (worker.publish): a real Celery worker takes
what the web writes with one LPUSH, for every task the web sends."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from tests.support import FAST, Service, fresh, module_service, start_chain
from webhook.app import EARLY_LOOK_AGAIN_SECONDS, create_app
from worker import wiring
from worker.celery import app
from worker.core import tokens
from worker.core.chain import step_name
from worker.core.metrics import CALLBACKS
from worker.publish import Template, capture
from worker.settings import Settings
from worker.state.keys import Keys
from worker.state.metrics import Metrics
from worker.tasknames import REFRESH_STEP

svc = module_service("publish", delay=0.3, **FAST)


def test_a_real_worker_runs_what_the_web_publishes(svc: Service) -> None:
    fresh(svc)
    # POST /chains publishes the first submit; each callback publishes a refresh; cancel
    # publishes the end's announcement. All of it is consumed by the Procfile's worker.
    done = svc.wait(start_chain(svc, 2)["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert [s["status"] for s in done["steps"]] == ["succeed", "succeed"]
    cancelled = svc.create({"video_id": svc.seed(5.0)["video_id"], "steps": 3})
    svc.faults(callbacks={"delay_seconds": 0.5})
    reply = svc.http.post(f"{svc.api}/chains/{cancelled['id']}/cancel", json={}, timeout=10)
    assert reply.status_code == 202, reply.text
    assert svc.wait(cancelled["id"], timeout=60, until=("cancelled",))["status"] == "cancelled"
    web_log = svc.stack.tail("web", lines=100_000)
    assert "through Celery's send_task" not in web_log  # the fast path was the one used
    assert svc.stats()["callbacks_sent"] > 0


def test_an_early_callback_is_answered_before_its_second_look(svc: Service) -> None:
    # The live web process (uvicorn) and worker. Two early callbacks name tasks their steps
    # (of chains this service does not hold) have not recorded. One step records its task
    # right after the answer: the second look finds it and queues nothing. The other's
    # second look queues its query, which the worker ignores as news of an unknown chain.
    secret = svc.env["CALLBACK_SECRET"].encode()
    keys = Keys(svc.prefix)
    chains = {"recorded": f"early-{secrets.token_hex(4)}", "not": f"early-{secrets.token_hex(4)}"}
    for which, chain_id in chains.items():
        body = {"task_id": f"{chain_id}-t", "task_status": "submitted"}
        path = f"/callbacks/{chain_id}/0/{tokens.sign(secret, chain_id, 0)}"
        reply = svc.http.post(f"{svc.api}{path}", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        if which == "recorded":
            svc.redis.set(keys.task_owner(f"{chain_id}-t"), step_name(chain_id, 0))
    deadline = time.monotonic() + 20
    while f"no chain '{chains['not']}' here" not in svc.stack.tail("worker", lines=100_000):
        assert time.monotonic() < deadline, "the second look never queued the query"
        time.sleep(0.1)
    time.sleep(EARLY_LOOK_AGAIN_SECONDS + 0.5)
    assert f"no chain '{chains['recorded']}' here" not in svc.stack.tail("worker", lines=100_000)


def test_an_early_callback_queues_nothing_once_the_step_has_its_task(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The web process with its real publisher on a real Redis, and no worker: what a
    # callback queues stays in the list to be counted.
    for name in ("KEY_PREFIX", "CELERY_QUEUE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"test-early-{secrets.token_hex(4)}:"
    secret = "s" * 32
    settings = Settings(
        redis_url=redis_url,
        key_prefix=prefix,
        callback_secret=secret,
        kling_api_key="k",
        api_token="t" * 32,
    )
    queue = capture(app, REFRESH_STEP)
    assert isinstance(queue, Template)
    client = redis.Redis.from_url(redis_url)
    store = wiring.state(settings).chains
    before = client.llen(queue.queue)

    web = TestClient(create_app(settings)).__enter__()
    took: list[float] = []

    def post(status: str, task_id: str) -> None:
        token = tokens.sign(secret.encode(), "c1", 0)
        body = {"task_id": task_id, "task_status": status, "created_at": 1, "updated_at": 2}
        started = time.monotonic()
        assert web.post(f"/callbacks/c1/0/{token}", json=body).status_code == 200
        took.append(time.monotonic() - started)

    def queued() -> list[list[Any]]:
        raws = client.lrange(queue.queue, 0, client.llen(queue.queue) - before - 1)
        return [json.loads(base64.b64decode(json.loads(r)["body"]))[0] for r in raws][::-1]

    try:
        post("processing", "t1")  # the create reply is not home: the callback names a candidate
        assert queued() == [["c1", 0, "t1", None, "processing"]]
        store.claim_task("t1", step_name("c1", 0))  # the step records t1
        post("processing", "t1")
        post("submitted", "t1")
        assert len(queued()) == 1  # nothing more: an early status asks for nothing
        post("processing", "t2")  # a task the step did not record: looked into
        post("succeed", "t1")  # the end is always confirmed by a query
        assert queued()[1:] == [
            ["c1", 0, "t2", None, "processing"],
            ["c1", 0, "t1", None, "succeed"],
        ]
        counted = Metrics(client, Keys(prefix)).read(queues=(), warn_window=3600).counters
        assert counted[CALLBACKS.name][("accepted",)] == 5
        # A first callback that beats its create reply: the step records the task while the
        # web waits to look again, and nothing is queued.
        racing = threading.Thread(target=post, args=("submitted", "t3"))
        racing.start()
        time.sleep(EARLY_LOOK_AGAIN_SECONDS / 2)
        store.claim_task("t3", step_name("c1", 0))
        racing.join()
        assert len(queued()) == 3
        assert took[-1] >= EARLY_LOOK_AGAIN_SECONDS  # looked again (TestClient waits for it)
    finally:
        web.__exit__(None, None, None)
        for _ in range(client.llen(queue.queue) - before):
            client.lpop(queue.queue)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()
