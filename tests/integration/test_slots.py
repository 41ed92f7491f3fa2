"""KLING_CONCURRENCY over real Redis, two Celery workers and a gateway limited to 3 tasks.

With the gate, steps wait for a provider slot (saying so) and no create is refused; without
it, the same workload is refused with 1303 and still finishes, since 1303 is retryable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any, TypedDict, Unpack, cast

import pytest

from chainctl.devstack import find_procfile
from tests.support import FAST, Service, fresh, start_chain, start_service, stop_service

LIMIT = 3
WAITING = re.compile(r"^waiting for a provider slot, (\d+) of 3 in use$")


class SlotSettings(TypedDict, total=False):
    kling_concurrency: str


def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    name: str,
    **env: Unpack[SlotSettings],
) -> Service:
    service = start_service(tmp_path_factory.mktemp(name), redis_url, delay=1.5, **FAST, **env)
    service.stack.start("worker2", find_procfile()["worker"], {**service.env})
    return service


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    service = two_workers(tmp_path_factory, redis_url, "slots", kling_concurrency=str(LIMIT))
    yield service
    stop_service(service)


@pytest.fixture(scope="module")
def ungated(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    service = two_workers(tmp_path_factory, redis_url, "no-slots")
    yield service
    stop_service(service)


def run_workload(
    service: Service, chains: int = 6, steps: int = 2
) -> tuple[list[dict[str, Any]], set[str]]:
    """Start ``chains`` chains at once, follow them to their end; return them and every
    ``waiting`` text seen meanwhile."""
    fresh(service)
    service.faults(account_concurrency=LIMIT)
    ids = [start_chain(service, steps)["id"] for _ in range(chains)]
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    finals: dict[str, dict[str, Any]] = {}
    while len(finals) < len(ids):
        assert time.monotonic() < deadline, f"not done: {set(ids) - set(finals)}"
        for chain_id in ids:
            if chain_id in finals:
                continue
            chain = service.chain(chain_id)
            if chain["waiting"]:
                seen.add(chain["waiting"])
            if chain["status"] in ("succeeded", "failed"):
                finals[chain_id] = chain
        time.sleep(0.1)
    return [finals[i] for i in ids], seen


def test_with_slots_no_create_is_refused_and_waiting_chains_say_so(gated: Service) -> None:
    # Given 6 chains x 2 steps, two worker processes, a gateway that runs 3 tasks at once
    # When they all start together with KLING_CONCURRENCY=3
    finals, seen = run_workload(gated)
    # Then every chain succeeds, the gateway never refused a create nor ran more than 3
    assert [c["status"] for c in finals] == ["succeeded"] * 6, finals
    stats = gated.stats()
    assert stats["rejected_creates"] == 0, stats
    assert stats["creates_total"] == 12
    assert stats["peak_in_flight"] <= LIMIT
    # And a waiting chain said why, in the contract's words
    slot_texts = [t for t in seen if WAITING.match(t)]
    assert "waiting for a provider slot, 3 of 3 in use" in slot_texts, seen
    # And no slot or place in line is left over
    holders = gated.redis.hgetall(f"{gated.prefix}slots:holders")
    waiters = gated.redis.zrange(f"{gated.prefix}slots:waiters", 0, -1)
    assert (holders, waiters) == ({}, [])


def test_without_slots_creates_are_refused_and_retried_to_the_end(ungated: Service) -> None:
    # Given the same workload and gateway, no KLING_CONCURRENCY
    finals, _ = run_workload(ungated)
    # Then the provider refuses creates with 1303, and the retries still finish every chain
    stats = ungated.stats()
    assert stats["concurrency_refusals"] > 0, stats
    assert [c["status"] for c in finals] == ["succeeded"] * 6, finals
    assert stats["creates_total"] == 12


def test_a_leaked_slot_is_reclaimed_by_the_sweep(gated: Service) -> None:
    # Given a slot held by a step that no longer exists (its worker died, its chain is gone)
    fresh(gated)
    gated.faults(account_concurrency=LIMIT)
    holders = f"{gated.prefix}slots:holders"
    gated.redis.hset(holders, mapping={f"gone{i}:0": "1" for i in range(LIMIT)})
    # When a chain starts, then the sweep takes the leaked slots back and the chain finishes
    chain = start_chain(gated, 1)
    final = gated.wait(chain["id"], timeout=60)
    assert final["status"] == "succeeded", final
    keys = cast("list[bytes]", gated.redis.hkeys(holders))  # a client without decode_responses
    assert not any(k.startswith(b"gone") for k in keys)
