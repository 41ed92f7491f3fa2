"""Budgets over real Redis, two Celery workers, the web process and the fake gateway.

A daily unit budget holds chains back (they wait, saying which budget and when it resets)
across both workers, even when they all start before any cost is known; raising it through
the API lets them go on with no restart. A chain's ``max_units`` ends it ``succeeded`` with
``budget_reached`` before it pays for a step that would pass the limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from chainctl.devstack import find_procfile
from tests.support import FAST, Service, fresh, run_cli, start_chain, start_service, stop_service

BUDGET_WAIT = "waiting for the daily unit budget (DAILY_UNIT_BUDGET "


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("budgets"),
        redis_url,
        delay=1.0,
        daily_unit_budget="5",
        budget_poll_seconds="0.5",
        **FAST,
    )
    service.stack.start("worker2", find_procfile()["worker"], {**service.env})
    yield service
    stop_service(service)


def spend(svc: Service) -> dict[str, Any]:
    reply = svc.http.get(f"{svc.api}/spend", timeout=10)
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def set_budget(svc: Service, units: Any) -> dict[str, Any]:
    reply = svc.http.put(f"{svc.api}/spend/budget", json={"daily_units": units}, timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def creates(svc: Service) -> int:
    return int(svc.stats()["creates_total"])


def test_the_daily_budget_holds_chains_back_and_raising_it_lets_them_go(svc: Service) -> None:
    # Given a daily budget of 5 units, an extension costing 2, and no cost known yet
    fresh(svc)
    svc.faults(unit_cost="2")
    set_budget(svc, None)  # the environment's 5
    # When six chains of two steps start at once, on two workers
    ids = [start_chain(svc, 2)["id"] for _ in range(6)]
    # Then one step goes first (it finds the cost out), then one more fits (2 + 2 <= 5),
    # and the rest wait: never more spent than the budget allows.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, spend(svc)
        chains = [svc.chain(i) for i in ids]
        report = spend(svc)
        budget = report["budget"]
        waiting = [c for c in chains if (c["waiting"] or "").startswith(BUDGET_WAIT)]
        unfinished = [c for c in chains if c["status"] != "succeeded"]
        settled = budget["spent"] == "4" and budget["steps_in_flight"] == 0
        if settled and len(unfinished) >= 4 and len(waiting) == len(unfinished):
            break
        time.sleep(0.2)
    time.sleep(2)  # several polls of the held-back steps: still nothing sent
    assert creates(svc) == 2
    report = spend(svc)
    assert report["today"]["units"] == "4"
    assert report["budget"]["daily_units"] == "5"
    assert report["budget"]["source"] == "DAILY_UNIT_BUDGET"
    assert report["budget"]["remaining"] == "1"
    account = svc.http.get(f"{svc.api}/account", timeout=10).json()
    assert account["budget"] == report["budget"]  # the dashboard's account panel
    chains = [svc.chain(i) for i in ids]
    assert all(c["status"] in ("queued", "running", "succeeded") for c in chains)  # not failed
    text = next(c["waiting"] for c in chains if (c["waiting"] or "").startswith(BUDGET_WAIT))
    assert text.startswith(f"{BUDGET_WAIT}5): 4 spent and 0 reserved today; it resets at ")
    assert text.endswith("T00:00:00Z")
    # The CLI shows the budget.
    done = run_cli(svc, "spend", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "budget: 5 units a day" in done.stdout
    # When the budget is raised (the CLI, through the API), they all go on: no restart.
    done = run_cli(svc, "budget", "100", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("budget: 100 units a day, set through the API: 4 spent")
    assert spend(svc)["budget"]["source"] == "api"
    finals = [svc.wait(i, timeout=90) for i in ids]
    assert [c["status"] for c in finals] == ["succeeded"] * 6
    assert all(c["waiting"] is None for c in finals)
    assert creates(svc) == 12
    assert spend(svc)["today"]["units"] == "24"


def test_many_chains_at_once_with_no_cost_known_send_a_single_step(svc: Service) -> None:
    # Given a budget already spent down to less than one step, and a new day's prices unknown
    fresh(svc)
    svc.faults(unit_cost="3")
    spent = Decimal(spend(svc)["today"]["units"])
    set_budget(svc, f"{spent + 1}")
    svc.redis.delete(f"{svc.prefix}spend:latest")  # as if no cost had ever been seen
    ids = [start_chain(svc, 1)["id"] for _ in range(8)]
    time.sleep(4)
    # Then exactly one create went out: it alone may pass the budget, by one step at most.
    assert creates(svc) == 1
    report = spend(svc)
    assert Decimal(report["today"]["units"]) <= spent + 1 + 3
    held = [svc.chain(i) for i in ids]
    assert sum(1 for c in held if (c["waiting"] or "").startswith(BUDGET_WAIT)) == 7
    set_budget(svc, "1000")
    for chain_id in ids:
        assert svc.wait(chain_id, timeout=60)["status"] == "succeeded"


def test_a_chains_max_units_ends_it_before_a_step_that_would_pass_it(svc: Service) -> None:
    fresh(svc)
    set_budget(svc, "1000")
    svc.faults(unit_cost="2")
    # Given a chain allowed 5 units for 10 steps of 2 units each
    chain = start_chain(svc, 10, max_units=5)
    assert chain["max_units"] == "5"
    final = svc.wait(chain["id"], timeout=60)
    # Then it pays for two (4 units), not a third (6 > 5), and ends succeeded.
    assert final["status"] == "succeeded"
    assert final["end_reason"] == "budget_reached"
    assert final["units"] == "4"
    assert [s["status"] for s in final["steps"]] == ["succeed", "succeed"]
    assert all(a["status"] == "done" for a in final["archive"]), final["archive"]
    # A chain whose first step the account's known cost already rules out sends nothing.
    small = svc.wait(start_chain(svc, 3, max_units="1.5")["id"], timeout=30)
    assert small["end_reason"] == "budget_reached"
    assert small["steps"][0]["task_id"] is None
    assert "max_units 1.5" in small["steps"][0]["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_units": 0}, "max_units"),
        ({"max_units": "-1"}, "max_units"),
        ({"max_units": "lots"}, "max_units"),
        ({"max_units": "1e400"}, "max_units"),
    ],
)
def test_a_bad_max_units_is_refused_at_the_edge(
    svc: Service, body: dict[str, Any], field: str
) -> None:
    reply = svc.post_chain({"video_id": "v1", "steps": 1, **body})
    assert reply.status_code == 422, reply.text
    assert [d["field"] for d in reply.json()["details"]] == [field]


@pytest.mark.parametrize("units", [0, "-2", "x", [], {"a": 1}])
def test_a_bad_budget_is_refused_and_changes_nothing(svc: Service, units: Any) -> None:
    before = spend(svc)["budget"]
    reply = svc.http.put(f"{svc.api}/spend/budget", json={"daily_units": units}, timeout=10)
    assert reply.status_code == 422, reply.text
    assert reply.json()["details"][0]["field"] == "daily_units"
    assert spend(svc)["budget"] == before
