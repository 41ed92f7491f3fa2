"""Signed provider callbacks end to end: the fake gateway signs as the official API does, and the
web process (``KLING_WEBHOOK_SECRET``) takes the good ones and refuses the rest with 401.

Real Redis, Celery worker, beat, uvicorn and the fake gateway as servers. A refused callback
is never enqueued: the chain then finishes on the safety-net poll (``POLL_AFTER_SECONDS``,
short here), still paying once per step.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.support import FAST, Service, fresh, module_service, start_chain

KEY = "whsec_" + base64.b64encode(b"integration-signing-key-32bytes!").decode()

svc = module_service(
    "signed",
    delay=0.5,
    gateway_args=("--webhook-secret", KEY),
    kling_webhook_secret=KEY,
    **FAST,
)


@pytest.fixture(autouse=True)
def _fresh_gateway(svc: Service) -> None:
    fresh(svc)


def taken_ids(svc: Service) -> int:
    """``webhook-id`` dedupe keys the web process wrote."""
    return sum(1 for _ in svc.redis.scan_iter(f"{svc.prefix}webhook-id:*"))


def assert_paid_once_and_archived(svc: Service, chain: dict[str, Any], steps: int) -> None:
    assert chain["status"] == "succeeded", chain
    assert len(chain["steps"]) == steps
    per_parent = svc.stats()["creates_by_parent"]
    assert [per_parent.get(s["parent_video_id"]) for s in chain["steps"]] == [1] * steps
    assert [a["status"] for a in chain["archive"]] == ["done"] * steps


@pytest.mark.parametrize("signatures", ["valid", "rotated"])
def test_signed_callbacks_are_accepted_and_the_chain_completes(
    svc: Service, signatures: str
) -> None:
    # Given a gateway signing every callback (during a rotation: an old signature first)
    svc.faults(callback_signatures=signatures)
    before = taken_ids(svc)
    # When a chain runs
    chain = svc.wait(start_chain(svc, steps=3)["id"], timeout=60)
    # Then every callback was signed and accepted, each message taken once
    stats = svc.stats()
    assert stats["callbacks_sent"] > 0
    assert stats["callbacks_signed"] == stats["callbacks_sent"]
    assert stats["callbacks_refused"] == 0
    assert taken_ids(svc) - before == stats["callbacks_sent"]
    assert_paid_once_and_archived(svc, chain, steps=3)


def test_redelivered_messages_are_taken_once(svc: Service) -> None:
    # Given a gateway that delivers every signed message four times (same webhook-id)
    svc.faults(callbacks={"duplicate": 3})
    before = taken_ids(svc)
    chain = svc.wait(start_chain(svc, steps=2)["id"], timeout=60)
    stats = svc.stats()
    # Then each message left one dedupe key, none was refused, and each step was paid once
    assert stats["callbacks_sent"] > 0
    assert stats["callbacks_sent"] % 4 == 0
    assert stats["callbacks_refused"] == 0
    assert taken_ids(svc) - before == stats["callbacks_sent"] // 4
    assert_paid_once_and_archived(svc, chain, steps=2)


@pytest.mark.parametrize("signatures", ["none", "wrong", "stale"])
def test_unsigned_wrongly_signed_or_stale_callbacks_are_401_and_the_poll_finishes_the_chain(
    svc: Service, signatures: str
) -> None:
    # Given a gateway whose callbacks are unsigned, signed with another secret, or 10 min old
    svc.faults(callback_signatures=signatures)
    before = taken_ids(svc)
    # When a chain runs
    chain = svc.wait(start_chain(svc, steps=2)["id"], timeout=90)
    # Then every callback was refused, none reached Redis, and the poll finished the chain
    stats = svc.stats()
    assert stats["callbacks_sent"] > 0
    assert stats["callbacks_refused"] == stats["callbacks_sent"]
    assert stats["callbacks_signed"] == (0 if signatures == "none" else stats["callbacks_sent"])
    assert taken_ids(svc) == before
    assert_paid_once_and_archived(svc, chain, steps=2)
    log = svc.stack.tail("web", lines=400)
    reason = {"none": "missing", "wrong": "mismatch", "stale": "stale"}[signatures]
    assert f"provider callback(s) ({reason})" in log
    assert "/callbacks/" in log
    assert all("<token>" in line for line in log.splitlines() if "/callbacks/" in line)
