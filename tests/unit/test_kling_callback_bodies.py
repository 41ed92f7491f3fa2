"""The provider's callback bodies, legacy and newer: ``parse_task`` reads both the same where
they agree, and each one's cost fields where they differ."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from kling.models import BalanceDeduction, TaskStatus, parse_task

LEGACY = {
    "task_id": "t1",
    "task_status": "succeed",
    "task_status_msg": "",
    "created_at": 1722769557708,
    "updated_at": 1722769557708,
    "final_unit_deduction": "2",
    "task_info": {
        "parent_video": {"id": "v0", "url": "https://cdn.example/v0.mp4", "duration": "5.1"},
        "external_task_id": "kc-c1-0",
    },
    "task_result": {
        "videos": [{"id": "v1", "url": "https://cdn.example/v1.mp4", "duration": "9.8"}]
    },
}


def newer(billing: Any) -> dict[str, Any]:
    body = {k: v for k, v in LEGACY.items() if k != "final_unit_deduction"}
    return {**body, "billing": billing}


PACK = {"charge_type": "deduct", "amount": "2", "package_type": "video", "list_price": "0.28"}
MONEY = {"charge_type": "deduct", "amount": "0.25", "currency": "USD", "list_price": "0.28"}


@pytest.mark.parametrize("body", [LEGACY, newer([PACK])], ids=["legacy", "newer"])
def test_both_shapes_read_the_same_task(body: dict[str, Any]) -> None:
    task = parse_task(body)
    assert (task.task_id, task.status, task.external_task_id) == (
        "t1",
        TaskStatus.SUCCEED,
        "kc-c1-0",
    )
    assert task.parent_video is not None
    assert task.parent_video.duration == 5.1
    assert task.video is not None
    assert (task.video.id, task.video.duration) == ("v1", 9.8)
    assert task.units == Decimal("2")
    assert task.balance_deduction is None


def test_both_shapes_are_read_in_the_envelope_too() -> None:
    enveloped = {"code": 0, "message": "SUCCEED", "request_id": "r", "data": newer([PACK])}
    assert parse_task(enveloped).units == Decimal("2")


@pytest.mark.parametrize(
    ("billing", "units", "balance"),
    [
        ([PACK], Decimal("2"), None),
        ([PACK, {**PACK, "amount": "0.5"}], Decimal("2.5"), None),
        ([MONEY], None, BalanceDeduction(quota=Decimal("0.25"), list_price=Decimal("0.28"))),
        (
            [PACK, MONEY],
            Decimal("2"),
            BalanceDeduction(quota=Decimal("0.25"), list_price=Decimal("0.28")),
        ),
        ([{**PACK, "amount": 3}], Decimal("3"), None),  # a number is read too
        ([{**PACK, "amount": "lots"}], None, None),  # unreadable: unknown, never guessed
        ([PACK, {**PACK, "amount": None}], None, None),  # one unknown makes the sum unknown
        ([{**PACK, "amount": "-1"}], None, None),
        ([MONEY, {**MONEY, "currency": "CNY"}], None, None),  # two currencies do not add up
        ([], None, None),
        (None, None, None),
        ("2", None, None),
        ([PACK, "2"], None, None),
    ],
)
def test_the_newer_billing_list_is_read_as_units_and_balance(
    billing: Any, units: Decimal | None, balance: BalanceDeduction | None
) -> None:
    task = parse_task(newer(billing))
    assert (task.units, task.balance_deduction) == (units, balance)


def test_a_body_with_legacy_cost_fields_is_read_by_them_alone() -> None:
    task = parse_task({**LEGACY, "billing": [{**PACK, "amount": "7"}]})
    assert task.units == Decimal("2")
    only_balance = {k: v for k, v in LEGACY.items() if k != "final_unit_deduction"}
    task = parse_task(
        {**only_balance, "final_balance_deduction": {"quota": "1"}, "billing": [PACK]}
    )
    assert (task.units, task.balance_deduction) == (None, BalanceDeduction(quota=Decimal("1")))


def test_a_body_with_neither_reports_no_cost() -> None:
    body = {k: v for k, v in LEGACY.items() if k != "final_unit_deduction"}
    task = parse_task(body)
    assert (task.units, task.balance_deduction) == (None, None)
