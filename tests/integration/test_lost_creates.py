"""A create whose reply was lost, against providers that can and cannot confirm it.

Real Redis, worker, web, beat and the fake gateway as a server. The promise: whatever the
provider can or cannot answer, no step is ever paid for twice; a step the service cannot
settle fails loudly, saying it may have been billed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import FAST, Service, fresh, module_service, start_chain

svc = module_service("lost-creates", delay=0.5, **FAST)


@pytest.fixture(autouse=True)
def _fresh(svc: Service) -> None:
    fresh(svc, unlearn=True)


def start(svc: Service, steps: int) -> dict[str, Any]:
    return start_chain(svc, steps)


def paid_once_each(svc: Service, chain: dict[str, Any]) -> None:
    per_parent = svc.stats()["creates_by_parent"]
    parents = [s["parent_video_id"] for s in chain["steps"]]
    assert [per_parent.get(p) for p in parents] == [1] * len(parents), per_parent


def test_a_relay_that_drops_external_ids_and_loses_a_reply_is_paid_once(svc: Service) -> None:
    # Given a relay that takes external_task_id and drops it (lookups by it answer 404),
    # sends no callbacks, and loses the first create's reply after the task was billed
    svc.faults(
        support_external_task_id=False,
        callbacks={"drop": 1},
        drop_next_creates={"count": 1, "mode": "reset"},
    )
    # When a chain of two steps runs
    chain = svc.wait(start(svc, 2)["id"], timeout=60)
    # Then the task list found the lost task: each step paid for once
    assert chain["status"] == "succeeded", chain
    paid_once_each(svc, chain)
    assert svc.stats()["creates_total"] == 2


def test_a_callback_naming_the_lost_task_settles_it_when_nothing_else_can(svc: Service) -> None:
    # No lookups, no list: only the provider's callback on the step's own URL names the task
    svc.faults(
        support_external_task_id=False,
        support_task_list=False,
        drop_next_creates={"count": 1, "mode": "reset"},
    )
    chain = svc.wait(start(svc, 2)["id"], timeout=60)
    assert chain["status"] == "succeeded", chain
    paid_once_each(svc, chain)


def test_without_lookups_a_list_or_callbacks_a_lost_reply_is_never_resent(svc: Service) -> None:
    svc.faults(
        support_external_task_id=False,
        support_task_list=False,
        callbacks={"drop": 1},
        drop_next_creates={"count": 1, "mode": "reset"},
    )
    chain = svc.wait(start(svc, 2)["id"], timeout=60)
    assert chain["status"] == "failed"
    assert chain["steps"][0]["status"] == "attention"
    assert "billed" in chain["error"]
    assert "not sent again" in chain["error"]
    time.sleep(3)  # several sweeps and leases later: still one create
    assert svc.stats()["creates_total"] == 1


def test_a_bad_gateway_answer_to_a_create_is_looked_up_not_resent(svc: Service) -> None:
    svc.faults(callbacks={"drop": 1}, drop_next_creates={"count": 1, "mode": "bad_gateway"})
    chain = svc.wait(start(svc, 2)["id"], timeout=60)
    assert chain["status"] == "succeeded", chain
    paid_once_each(svc, chain)


def test_a_gateway_timeout_that_made_nothing_is_sent_again_once_proven(svc: Service) -> None:
    # Given a provider the service has learnt to trust (step 0 came home normally)
    chain = start(svc, 2)
    deadline = time.monotonic() + 30
    while not svc.chain(chain["id"])["steps"][0]["task_id"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # When the next create gets a 504 with code 5002, and nothing was made
    svc.faults(
        fail_next_creates={"count": 1, "http_status": 504, "code": 5002, "message": "timeout"}
    )
    final = svc.wait(chain["id"], timeout=60)
    # Then lookups proved nothing was made, and the step was sent again: paid once
    assert final["status"] == "succeeded", final
    paid_once_each(svc, final)
    assert svc.stats()["rejected_creates"] == 1
