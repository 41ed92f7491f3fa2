"""The cost ledger end to end: real Redis, worker, web, the fake gateway and the CLI.

Every step shows what the provider reported it cost, the chain its total, and the account's
UTC day the sum over its steps, counted once however often a callback repeats.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from tests.support import FAST, Service, fresh, module_service, run_cli

svc = module_service("costs", delay=0.5, **FAST)


@pytest.fixture(autouse=True)
def _fresh_gateway(svc: Service) -> None:
    fresh(svc)


def run_chain(svc: Service, steps: int = 3) -> dict[str, Any]:
    seed = svc.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": steps}
    return svc.wait(svc.create(body)["id"], timeout=60)


def spend(svc: Service) -> dict[str, Any]:
    reply = svc.http.get(f"{svc.api}/spend", timeout=10)
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def metric(svc: Service, name: str) -> Decimal:
    reply = svc.http.get(f"{svc.api}/metrics", timeout=10)
    reply.raise_for_status()
    assert f"# TYPE {name} " in reply.text
    found = re.search(rf"^{name} (\S+)$", reply.text, re.MULTILINE)
    assert found is not None, reply.text
    return Decimal(found.group(1))


def chain_units(report: dict[str, Any], chain_id: str) -> str | None:
    return next((c["units"] for c in report["today"]["chains"] if c["id"] == chain_id), None)


def cli_output(svc: Service, *args: str) -> str:
    done = run_cli(svc, *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_each_step_the_chain_and_the_day_show_the_reported_cost(svc: Service) -> None:
    # Given a gateway that reports 1.5 units per finished extension
    svc.faults(unit_cost="1.5")
    before, total_before = spend(svc), metric(svc, "kc_units_spent_total")
    # When a 3-step chain runs
    chain = run_chain(svc)
    # Then each step, the chain and the day show it
    assert chain["status"] == "succeeded", chain
    assert [s["units"] for s in chain["steps"]] == ["1.5", "1.5", "1.5"]
    assert (chain["units"], chain["units_complete"]) == ("4.5", True)
    after = spend(svc)
    grew = Decimal(after["today"]["units"]) - Decimal(before["today"]["units"])
    assert grew == Decimal("4.5")
    assert chain_units(after, chain["id"]) == "4.5"
    assert after["today"]["latest"]["video-extend"] == "1.5"
    assert after["budget"] is None
    assert after["days"][0]["date"] == after["today"]["date"]
    # ... and /metrics: the all-time counter and today's gauge
    assert metric(svc, "kc_units_spent_total") - total_before == Decimal("4.5")
    assert metric(svc, "kc_units_spent_today") == Decimal(after["today"]["units"])
    # ... and the CLI's status and spend commands
    status = cli_output(svc, "status", chain["id"])
    assert "units: 4.5\n" in status
    assert status.count(": 1.5\n") == 3
    shown = cli_output(svc, "spend")
    assert f"{after['today']['units']} units, no budget set" in shown
    assert f"chain {chain['id']}: 4.5" in shown


def test_a_gateway_that_reports_no_cost_leaves_units_null_not_zero(svc: Service) -> None:
    # Given a gateway that leaves final_unit_deduction out, as relays do
    svc.faults(unit_cost=None)
    before = spend(svc)
    # When a 3-step chain runs
    chain = run_chain(svc)
    # Then no step, nor the chain, claims a cost of 0, and the day's units do not move
    assert chain["status"] == "succeeded", chain
    assert [s["units"] for s in chain["steps"]] == [None, None, None]
    assert (chain["units"], chain["units_complete"]) == (None, False)
    after = spend(svc)
    assert after["today"]["units"] == before["today"]["units"]
    assert after["total"] == before["total"]
    assert after["today"]["unpriced_steps"] - before["today"]["unpriced_steps"] == 3
    assert chain_units(after, chain["id"]) is None
    assert "units: unknown" in cli_output(svc, "status", chain["id"])


def test_duplicated_callbacks_do_not_count_a_step_twice(svc: Service) -> None:
    # Given callbacks delivered five times each, out of order, and 2 units a task
    svc.faults(unit_cost="2", callbacks={"duplicate": 4, "reorder": True})
    before, total_before = spend(svc), metric(svc, "kc_units_spent_total")
    # When a 3-step chain runs
    chain = run_chain(svc)
    # Then each step is counted once: in the chain, the day and the counter
    assert chain["status"] == "succeeded", chain
    assert svc.stats()["callbacks_sent"] > 3 * 2
    assert chain["units"] == "6"
    after = spend(svc)
    assert Decimal(after["today"]["units"]) - Decimal(before["today"]["units"]) == 6
    assert chain_units(after, chain["id"]) == "6"
    assert metric(svc, "kc_units_spent_total") - total_before == 6


def test_a_failed_task_the_provider_billed_is_counted(svc: Service) -> None:
    # Given a gateway that fails the next task and bills half a unit for it
    svc.faults(fail_next_tasks={"count": 1}, failed_unit_cost="0.5")
    before = spend(svc)
    # When a chain runs into it
    chain = run_chain(svc)
    # Then the failed step shows its cost and the day counts it
    assert chain["status"] == "failed", chain
    assert [s["units"] for s in chain["steps"]] == ["0.5"]
    assert chain["units"] == "0.5"
    after = spend(svc)
    assert Decimal(after["today"]["units"]) - Decimal(before["today"]["units"]) == Decimal("0.5")


def test_spend_needs_the_token_and_checks_its_days(svc: Service) -> None:
    assert svc.http.get(f"{svc.api}/spend", headers={"Authorization": ""}).status_code == 401
    assert svc.http.get(f"{svc.api}/spend?days=0", timeout=10).status_code == 422
    assert svc.http.get(f"{svc.api}/spend?days=x", timeout=10).status_code == 422
    report = svc.http.get(f"{svc.api}/spend?days=3", timeout=10).json()
    assert report["days"][0]["date"] == report["today"]["date"]
    assert len(report["days"]) == 3
