"""The cost ledger's pure parts: reading costs, a chain's units, and the fake's reported costs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from kling.fake.faults import Faults, FaultsError
from kling.fake.tasks import Task as FakeTask
from kling.fake.tasks import render_task
from kling.models import BalanceDeduction, Task, TaskStatus, Video, parse_task
from worker.core.budget import from_micro, to_micro
from worker.core.chain import Chain, Claim, Spec, Submitted, TaskUpdate, apply, new_chain
from worker.state.spend import newly_settled, utc_day


def reply(**extra: Any) -> dict[str, Any]:
    data = {"task_id": "t1", "task_status": "succeed", **extra}
    return {"code": 0, "message": "SUCCEED", "request_id": "r", "data": data}


@pytest.mark.parametrize(
    ("raw", "units"),
    [
        ("2", Decimal("2")),
        ("0.5", Decimal("0.5")),
        (" 3 ", Decimal("3")),
        (2, Decimal("2")),
        (1.5, Decimal("1.5")),
        ("0", Decimal("0")),
        (None, None),
        ("", None),
        ("  ", None),
        ("two", None),
        ("-1", None),
        ("NaN", None),
        ("Infinity", None),
        (True, None),
        ([], None),
        ({"units": 2}, None),
    ],
)
def test_final_unit_deduction_is_read_as_a_decimal_or_unknown(raw: object, units: object) -> None:
    task = parse_task(reply(final_unit_deduction=raw))
    assert task.units == units
    assert task.units is None or isinstance(task.units, Decimal)


def test_a_reply_without_a_cost_is_unknown_not_zero() -> None:
    task = parse_task(reply())
    assert (task.units, task.balance_deduction) == (None, None)


def test_a_bare_callback_body_carries_its_cost_too() -> None:
    task = parse_task({"task_id": "t1", "task_status": "failed", "final_unit_deduction": "1"})
    assert task.units == Decimal("1")


@pytest.mark.parametrize(
    ("raw", "deduction"),
    [
        (
            {"quota": "0.7", "list_price": "1.4"},
            BalanceDeduction(Decimal("0.7"), Decimal("1.4")),
        ),
        ({"quota": 2}, BalanceDeduction(quota=Decimal("2"))),
        ({"list_price": "x"}, None),
        ({}, None),
        (None, None),
        ("0.7", None),
    ],
)
def test_final_balance_deduction_is_read_where_present(
    raw: object, deduction: BalanceDeduction | None
) -> None:
    task = parse_task(reply(final_balance_deduction=raw, final_unit_deduction="2"))
    assert task.balance_deduction == deduction
    assert task.units == Decimal("2")


# -- the chain's units ---------------------------------------------------------------------


def video(n: int, seconds: float) -> Video:
    return Video(f"v{n}", f"https://x/v{n}.mp4", seconds)


def run_step(chain: Chain, index: int, task: Task) -> Chain:
    chain = apply(chain, Claim(index, "w", 60), 1.0).chain
    chain = apply(chain, Submitted(index, Task(task.task_id, TaskStatus.SUBMITTED)), 2.0).chain
    return apply(chain, TaskUpdate(index, task), 3.0).chain


def done(n: int, units: str | None, seconds: float) -> Task:
    cost = None if units is None else Decimal(units)
    return Task(f"t{n}", TaskStatus.SUCCEED, videos=(video(n, seconds),), units=cost)


def test_each_step_and_the_chain_show_their_units() -> None:
    chain = new_chain("c", Spec(video_id="v", source_duration=5.0, steps=3), 0.0)
    for i, cost in enumerate(["2", "0.5", "1"]):
        chain = run_step(chain, i, done(i, cost, 5.0 + 4.5 * (i + 1)))
    view = chain.view({})
    assert [s["units"] for s in view["steps"]] == ["2", "0.5", "1"]
    assert (view["units"], view["units_complete"]) == ("3.5", True)
    assert Chain.from_json(chain.to_json()) == chain


def test_a_provider_that_reports_no_cost_leaves_units_null_not_zero() -> None:
    chain = new_chain("c", Spec(video_id="v", source_duration=5.0, steps=2), 0.0)
    chain = run_step(chain, 0, done(0, None, 9.5))
    view = chain.view({})
    assert view["steps"][0]["units"] is None
    assert (view["units"], view["units_complete"]) == (None, False)


def test_partly_reported_costs_sum_the_known_and_say_so() -> None:
    chain = new_chain("c", Spec(video_id="v", source_duration=5.0, steps=2), 0.0)
    chain = run_step(chain, 0, done(0, "2", 9.5))
    chain = run_step(chain, 1, done(1, None, 14.0))
    view = chain.view({})
    assert (view["units"], view["units_complete"]) == ("2", False)


def test_a_failed_task_that_was_billed_records_its_cost() -> None:
    chain = new_chain("c", Spec(video_id="v", steps=2), 0.0)
    failed = Task("t0", TaskStatus.FAILED, status_msg="content safety", units=Decimal("1"))
    chain = run_step(chain, 0, failed)
    assert chain.steps[0].units == "1"
    assert chain.view({})["units"] == "1"


def test_a_repeated_terminal_update_settles_the_step_once() -> None:
    chain = new_chain("c", Spec(video_id="v", source_duration=5.0, steps=1), 0.0)
    chain = apply(chain, Claim(0, "w", 60), 1.0).chain
    chain = apply(chain, Submitted(0, Task("t0", TaskStatus.SUBMITTED)), 2.0).chain
    first = apply(chain, TaskUpdate(0, done(0, "2", 9.5)), 3.0).chain
    again = apply(first, TaskUpdate(0, done(0, "7", 9.5)), 4.0).chain
    assert [s.index for s in newly_settled(chain, first)] == [0]
    assert newly_settled(first, again) == []
    assert again.steps[0].units == "2"


def test_old_documents_without_units_still_read() -> None:
    chain = new_chain("c", Spec(video_id="v", steps=1), 0.0)
    raw = chain.to_json().replace(',"units":null', "")
    assert '"units"' not in raw
    assert Chain.from_json(raw).steps[0].units is None


@pytest.mark.parametrize("units", ["2", "0.5", "0.000001", "1234.75"])
def test_micro_units_round_trip_exactly(units: str) -> None:
    assert from_micro(to_micro(units)) == units


def test_days_are_utc() -> None:
    assert utc_day(0.0) == "1970-01-01"
    assert utc_day(86_399.9) == "1970-01-01"


# -- the fake gateway's reported cost ------------------------------------------------------


def fake_task(status: str, units: str | None) -> FakeTask:
    return FakeTask("t", "video-extend", 0.0, 1.0, 1.0, 9.0, status=status, units=units)


@pytest.mark.parametrize(
    ("status", "units", "shown"),
    [
        ("succeed", "1", "1"),
        ("failed", "0", "0"),
        ("processing", "1", None),
        ("succeed", None, None),
    ],
)
def test_the_fake_reports_a_cost_on_finished_tasks_only(
    status: str, units: str | None, shown: str | None
) -> None:
    body = render_task(fake_task(status, units), "http://gw")
    assert body.get("final_unit_deduction") == shown


def test_the_fake_reports_one_unit_by_default_and_can_omit_it() -> None:
    assert (Faults().unit_cost, Faults().failed_unit_cost) == ("1", "0")
    off = Faults().merged({"unit_cost": None, "failed_unit_cost": "0.5"})
    assert (off.unit_cost, off.failed_unit_cost) == (None, "0.5")


@pytest.mark.parametrize("value", [1, "one", "-1", "", " 1", True, {"units": "1"}])
def test_the_fake_refuses_costs_that_are_not_strings_of_units(value: object) -> None:
    with pytest.raises(FaultsError):
        Faults().merged({"unit_cost": value})


def test_costs_are_shown_as_plain_decimals() -> None:
    chain = new_chain("c", Spec(video_id="v", source_duration=5.0, steps=2), 0.0)
    chain = run_step(chain, 0, done(0, "1E+1", 9.5))
    chain = run_step(chain, 1, done(1, "0.50", 14.0))
    view = chain.view({})
    assert [s["units"] for s in view["steps"]] == ["10", "0.50"]
    assert view["units"] == "10.50"
