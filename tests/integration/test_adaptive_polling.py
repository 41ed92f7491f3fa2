"""Adaptive polling with every callback lost: real Redis, worker, beat, web and gateway.

The provider cannot reach the service (the gateway drops every callback), ``PUBLIC_URL`` is
a loopback address, and ``POLL_AFTER_SECONDS`` is 30: the sweep alone would take over 30 s
a step. Chains finish in seconds, learnt of by the planned polls alone, with a bounded
number of queries per task; ``/healthz`` says callbacks are not arriving and why.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from celery import Celery

from kling.auth import auth_from
from kling.client import KlingClient
from kling.models import TaskKind
from tests.support import Service, fresh, module_service, start_chain
from worker.queues import Queues
from worker.state.keys import Keys
from worker.state.polling import TaskDurations
from worker.tasknames import REFRESH_STEP

LOST = json.dumps({"callbacks": {"drop": 1}})
svc = module_service(
    "adaptive",
    delay=1.0,
    gateway_args=("--faults", LOST),
    poll_after_seconds="30",
    sweep_seconds="1",
)


@pytest.fixture(autouse=True)
def _fresh_gateway(svc: Service) -> None:
    fresh(svc)  # back to the start-up knobs: every callback dropped


def ended_late(svc: Service, chains: list[dict[str, Any]]) -> list[float]:
    """Per step: seconds from the task's end (the gateway's clock, this machine's) to the
    service recording it (the step's ``ended_at``)."""
    client = KlingClient(
        svc.gateway, auth_from(api_key=svc.env["KLING_API_KEY"], access_key=None, secret_key=None)
    )
    late = []
    for chain in chains:
        for step in chain["steps"]:
            task = client.get(TaskKind.VIDEO_EXTEND, step["task_id"])
            assert task.updated_at_ms is not None
            late.append(step["ended_at"] - task.updated_at_ms / 1000)
    return late


def run(svc: Service, chains: int, steps: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(chains) as pool:
        started = list(pool.map(lambda _: start_chain(svc, steps=steps), range(chains)))
    return [svc.wait(c["id"], timeout=60) for c in started]


def test_healthz_says_callbacks_do_not_arrive_on_a_loopback_public_url(svc: Service) -> None:
    reply = svc.http.get(f"{svc.api}/healthz", timeout=5)
    assert reply.status_code == 200
    body = reply.json()
    assert body["redis"] is True
    callbacks = body["callbacks"]
    assert callbacks["reachable"] is False
    assert callbacks["last_seen_at"] is None
    assert f"PUBLIC_URL {svc.env['PUBLIC_URL']}" in callbacks["reason"]
    assert "loopback" in callbacks["reason"]
    assert "relies on polling" in callbacks["reason"]
    # said at start-up too, by the web process and by the worker once it is ready
    deadline = time.monotonic() + 30
    while not all("callbacks: PUBLIC_URL" in svc.stack.tail(p, 400) for p in ("web", "worker")):
        assert time.monotonic() < deadline, [svc.stack.tail(p, 40) for p in ("web", "worker")]
        time.sleep(0.1)


def test_chains_finish_promptly_by_polling_alone_with_few_queries(svc: Service) -> None:
    # Given tasks of 1-1.5 s, and every callback lost
    svc.faults(task_seconds=[1.0, 1.5])
    # When 3 chains of 3 steps run, twice: first with no durations known, then with them
    durations = TaskDurations(svc.redis, Keys(svc.prefix))
    cold_started = time.monotonic()
    cold = run(svc, 3, 3)
    cold_seconds = time.monotonic() - cold_started
    cold_queries = svc.stats()["queries"]
    learnt = durations.of("video-extend").seconds
    warm = run(svc, 3, 3)
    warm_queries = svc.stats()["queries"] - cold_queries
    stats = svc.stats()

    # Then every chain succeeded, in far less than one POLL_AFTER_SECONDS a step
    assert [c["status"] for c in cold + warm] == ["succeeded"] * 6
    assert cold_seconds < 20, cold_seconds
    assert stats["callbacks_sent"] == 0
    assert stats["callbacks_dropped"] > 0
    # each step was learnt of within a couple of seconds of its end
    late = ended_late(svc, cold + warm)
    assert all(0 <= s < 3.0 for s in late), late
    # the durations were learnt from the gateway's own times
    assert len(learnt) >= 9
    assert all(0.9 <= s <= 1.7 for s in learnt), learnt
    # and the queries per task stayed bounded: a 1 s poller would spend 1-2 a task; the
    # first tasks of a kind also answer the service's two capability probes
    assert cold_queries <= 9 * 3 + 2, cold_queries
    assert warm_queries <= 9 * 2, warm_queries


def test_one_line_of_polls_per_step_however_many_refreshes_are_sent(svc: Service) -> None:
    # Given a long task, and every callback lost
    svc.faults(task_seconds=[6.0, 6.0])
    chain = start_chain(svc, steps=1)
    deadline = time.monotonic() + 10
    while svc.chain(chain["id"])["steps"][0]["task_id"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # When ten extra refreshes of the step are queued at once (as a storm of callbacks does)
    broker = Celery("test", broker=svc.env["REDIS_URL"])
    queue = Queues.named(svc.env["CELERY_QUEUE"]).steps
    for _ in range(10):
        broker.send_task(REFRESH_STEP, args=(chain["id"], 0), queue=queue)
    broker.close()
    time.sleep(1.5)  # they run, each queries once and plans a poll: only the newest lives
    before = svc.stats()["queries"]
    time.sleep(3.0)
    # Then the polls that follow come from one line: about one query a second, not ten
    assert svc.stats()["queries"] - before <= 5
    done = svc.wait(chain["id"], timeout=30)
    assert done["status"] == "succeeded"
