"""Budgets: the pure rules (per chain and per day), the admission script on fakeredis, many
chains starting at once, and the runner holding steps back and letting them go."""

from __future__ import annotations

import random
import threading
from decimal import Decimal
from pathlib import Path

import fakeredis
import pytest

from kling.models import Task, TaskStatus, Video
from worker.core import budget
from worker.core.budget import UNKNOWN, admit, over_chain_budget
from worker.core.chain import (
    AwaitBudget,
    Chain,
    ChainStatus,
    Claim,
    EndReason,
    Spec,
    Step,
    StepStatus,
    TaskUpdate,
    apply,
    new_chain,
)
from worker.state.budget import Budget
from worker.state.keys import Keys
from worker.state.spend import utc_day

from .test_runner import NOW, Rig, ScriptedProvider, make_rig

M = 1_000_000  # micro-units per unit


# -- per chain ----------------------------------------------------------------------------------
def _paid(max_units: str | None, *costs: str | None) -> Chain:
    """A chain whose first ``len(costs)`` extensions succeeded at those costs."""
    chain = new_chain("c", Spec(video_id="v0", steps=10, max_units=max_units), NOW)
    for i, cost in enumerate(costs):
        step = chain.steps[-1]
        step.status, step.task_id, step.units = StepStatus.SUCCEED, f"t{i}", cost
        step.video_id, step.duration = f"v{i + 1}", 5.0 + 5 * (i + 1)
        chain.steps.append(Step(index=i + 1, kind="video-extend", external_task_id=f"kc-{i}"))
    return chain


@pytest.mark.parametrize(
    ("max_units", "costs", "account", "stops"),
    [
        (None, ["5", "5"], {}, False),  # no limit
        ("10", [], {}, False),  # nothing known: the first step finds the cost out
        ("10", [], {"video-extend": "11"}, True),  # the account's cost says it would cross
        ("10", [], {"video-extend": "10"}, False),  # reaching the limit exactly is allowed
        ("10", ["4"], {}, False),  # 4 + 4 <= 10
        ("10", ["4", "4"], {}, True),  # 8 + 4 > 10
        ("10", ["4", "4"], {"video-extend": "1"}, True),  # the chain's own cost comes first
        ("10", ["5", "5"], {}, True),  # spent it all
        ("10", [None, None], {}, False),  # a provider that reports no cost: no estimate
        ("10", [None], {"video-extend": "12"}, True),
    ],
)
def test_a_chain_stops_before_a_step_that_would_pass_max_units(
    max_units: str | None, costs: list[str | None], account: dict[str, str], stops: bool
) -> None:
    chain = _paid(max_units, *costs)
    assert (over_chain_budget(chain, "video-extend", account) is not None) is stops


def test_the_estimate_is_the_chains_own_cost_for_the_kind_else_the_accounts() -> None:
    chain = _paid("100", "3", "7")
    assert budget.estimate(chain, "video-extend", {"video-extend": "1"}) == Decimal(7)
    assert budget.estimate(chain, "text2video", {"text2video": "2"}) == Decimal(2)
    assert budget.estimate(chain, "text2video", {}) is None


def test_a_claim_past_the_chains_budget_ends_it_succeeded_without_sending() -> None:
    chain = new_chain("c", Spec(video_id="v0", steps=3, max_units="5"), NOW)
    out = apply(chain, Claim(0, "w", 60, account_costs={"video-extend": "6"}), NOW)
    assert out.verdict.value == "skip"
    assert out.chain.end_reason is EndReason.BUDGET_REACHED
    assert out.chain.status is ChainStatus.SUCCEEDED
    assert out.ended
    step = out.chain.step(0)
    assert step.status is StepStatus.PENDING
    assert step.first_try_at is None
    assert step.error is not None
    assert "max_units 5" in step.error
    assert out.chain.view({})["end_reason"] == "budget_reached"
    assert out.chain.view({})["max_units"] == "5"


def test_a_step_that_succeeds_ends_the_chain_when_the_next_would_pass_max_units() -> None:
    chain = new_chain("c", Spec(video_id="v0", source_duration=5, steps=5, max_units="5"), NOW)
    chain = apply(chain, Claim(0, "w", 60), NOW).chain
    step = chain.step(0)
    step.status, step.task_id = StepStatus.SUBMITTED, "t0"
    done = Task(
        "t0",
        TaskStatus.SUCCEED,
        videos=(Video("v1", "https://cdn.example/v1.mp4", 10.0),),
        units=Decimal(3),
    )
    out = apply(chain, TaskUpdate(0, done), NOW)
    assert out.chain.end_reason is EndReason.BUDGET_REACHED  # 3 + 3 > 5
    assert len(out.chain.steps) == 1  # no next step was even made


# -- per day: the admission rule ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("spent", "reserved", "cost", "budget_", "admitted"),
    [
        (0, [], None, 10 * M, True),  # the first step finds the cost out
        (0, [UNKNOWN], None, 10 * M, False),  # ... alone
        (0, [2 * M], None, 10 * M, False),
        (10 * M, [], None, 10 * M, False),  # spent
        (0, [], 2 * M, 10 * M, True),
        (6 * M, [2 * M], 2 * M, 10 * M, True),  # exactly the budget
        (6 * M, [2 * M], 3 * M, 10 * M, False),
        (0, [UNKNOWN, UNKNOWN], 4 * M, 10 * M, False),  # unknowns count as the estimate
        (0, [UNKNOWN], 4 * M, 10 * M, True),
        (11 * M, [], 1, 10 * M, False),  # past it (a dearer step than estimated)
    ],
)
def test_admission_keeps_spent_plus_reserved_within_the_budget(
    spent: int, reserved: list[int], cost: int | None, budget_: int, admitted: bool
) -> None:
    assert admit(spent, reserved, cost, budget_) is admitted


def test_the_waiting_text_names_the_budget_and_its_reset() -> None:
    at = 1_764_590_400.0  # 2025-12-01T12:00:00Z
    text = budget.waiting_text(9 * M, M // 2, 10 * M, at)
    assert text == (
        "waiting for the daily unit budget (DAILY_UNIT_BUDGET 10): 9 spent and 0.5 "
        "reserved today; it resets at 2025-12-02T00:00:00Z"
    )


# -- per day: the script ------------------------------------------------------------------------
KEYS = Keys("t:")


def _budget(server: fakeredis.FakeServer | None = None, units: str = "10") -> Budget:
    return Budget(fakeredis.FakeRedis(server=server), KEYS, Decimal(units))


def _spend(gate: Budget, units: int, *, release: str | None = None) -> None:
    """What the settling transition does: count the cost, drop the reservation, at once."""
    with gate.redis.pipeline() as pipe:
        pipe.hincrby(KEYS.spend_day(utc_day(NOW)), "units", units)
        if release is not None:
            pipe.hdel(KEYS.budget_reserved, release)
        pipe.execute()


def test_the_script_admits_one_unknown_then_by_estimate() -> None:
    gate = _budget()
    assert gate.admit("a", 0, None, now=NOW).admitted
    assert not gate.admit("b", 0, None, now=NOW).admitted  # one at a time until a cost is known
    assert gate.admit("b", 0, Decimal(2), now=NOW).admitted  # a's unknown counts as 2: 4 <= 10
    assert gate.admit("a", 0, None, now=NOW).admitted  # the holder keeps its reservation
    _spend(gate, 2 * M, release="a:0")
    let = [gate.admit(f"c{i}", 0, Decimal(2), now=NOW).admitted for i in range(5)]
    assert let == [True, True, True, False, False]  # 2 spent + 2 (b) + 3 x 2 = 10
    assert gate.status(NOW) == {
        "daily_units": "10",
        "source": "DAILY_UNIT_BUDGET",
        "spent": "2",
        "reserved": "8",
        "steps_in_flight": 4,
        "remaining": "0",
        "resets_at": budget.iso(budget.next_reset(NOW)),
    }


def test_many_chains_at_once_before_any_cost_is_known_admit_a_single_step() -> None:
    server = fakeredis.FakeServer()
    admitted: list[str] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        if _budget(server).admit(f"c{n}", 0, None, now=NOW).admitted:
            with lock:
                admitted.append(f"c{n}")

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(admitted) == 1


@pytest.mark.parametrize("seed", range(20))
def test_spend_never_passes_the_budget_by_more_than_one_step(seed: int) -> None:
    """25 chains ask, settle and ask again in random order, from nothing known. A step costs
    what the provider charges for its kind (one price per seed, found out by the first step).
    Spend plus reservations never pass the budget by more than one step's cost."""
    rnd = random.Random(seed)
    gate = _budget(units="50")
    price = rnd.choice([M // 3, M, 3 * M // 2, 7 * M, 49 * M, 60 * M])
    latest: int | None = None
    in_flight: set[str] = set()
    spent = 0
    next_step = dict.fromkeys(range(25), 0)
    for _ in range(800):
        if in_flight and rnd.random() < 0.4:  # a step settles at its price
            name = rnd.choice(sorted(in_flight))
            in_flight.remove(name)
            _spend(gate, price, release=name)
            spent, latest = spent + price, price
        else:
            chain = rnd.choice(list(next_step))
            name = f"c{chain}:{next_step[chain]}"
            estimate = None if latest is None else Decimal(latest) / M
            if gate.admit(f"c{chain}", next_step[chain], estimate, now=NOW).admitted:
                in_flight.add(name)
                next_step[chain] += 1
        # What is in flight will cost its price each: bounded as promised.
        assert spent + price * len(in_flight) <= 50 * M + price
    assert spent > 0


def test_the_limit_set_through_the_api_wins_and_clears_back() -> None:
    gate = _budget(units="1")
    _spend(gate, M)
    assert not gate.admit("a", 0, Decimal(1), now=NOW).admitted
    gate.set_limit(Decimal(5))
    assert gate.admit("a", 0, Decimal(1), now=NOW).admitted
    status = gate.status(NOW)
    assert status is not None
    assert (status["daily_units"], status["source"]) == ("5", "api")
    assert (status["spent"], status["reserved"], status["remaining"]) == ("1", "1", "3")
    gate.set_limit(None)
    assert gate.status(NOW)["source"] == "DAILY_UNIT_BUDGET"  # type: ignore[index]
    assert Budget(gate.redis, KEYS, None).status(NOW) is None  # none set anywhere


# -- the runner ---------------------------------------------------------------------------------
def budgeted(tmp_path: Path, units: str) -> Rig:
    rig = make_rig(tmp_path, ScriptedProvider(), budget_poll_seconds=7)
    rig.runner.budget = Budget(rig.store.redis, rig.store.keys, Decimal(units))
    return rig


def start(rig: Rig, chain_id: str, **spec: object) -> str:
    rig.store.create(
        new_chain(chain_id, Spec(**{"video_id": "v0", "task_id": "p0", "steps": 3, **spec}), NOW)  # type: ignore[arg-type]
    )
    return chain_id


def finish(rig: Rig, chain_id: str, index: int, units: str | None) -> None:
    task_id = rig.store.get(chain_id).step(index).task_id
    assert task_id is not None
    rig.provider.tasks[task_id] = Task(
        task_id,
        TaskStatus.SUCCEED,
        videos=(Video(f"v-{task_id}", "https://cdn.example/x", 10.0 + 5 * index),),
        units=None if units is None else Decimal(units),
    )
    rig.runner.refresh(chain_id, index)


def test_the_daily_budget_holds_steps_back_and_a_higher_one_lets_them_go(tmp_path: Path) -> None:
    rig = budgeted(tmp_path, "4")
    a, b = start(rig, "ca"), start(rig, "cb")
    assert rig.runner.submit(a, 0, owner="x") is None  # the first finds the cost out
    # Given a's step in flight with no cost known, when b asks, then b waits, saying so.
    assert rig.runner.submit(b, 0, owner="y") == 7
    held = rig.store.get(b)
    assert held.step(0).status is StepStatus.PENDING
    assert held.waiting is not None
    assert held.waiting.startswith(
        "waiting for the daily unit budget (DAILY_UNIT_BUDGET 4): 0 spent and 0 reserved"
    )
    assert "resets at" in held.waiting
    assert held.status is ChainStatus.QUEUED  # held back, not failed
    # a's step costs 2: the reservation turned into spend in the same transaction.
    finish(rig, a, 0, "2")
    assert rig.runner.budget is not None
    assert rig.runner.budget.reservations() == {}
    assert rig.runner.submit(b, 0, owner="y") is None  # 2 spent + 2 <= 4
    assert rig.runner.submit(a, 1, owner="x") == 7  # 2 spent + 2 reserved + 2 > 4
    finish(rig, b, 0, "2")
    assert rig.runner.submit(a, 1, owner="x") == 7  # 4 spent
    assert len(rig.provider.creates) == 2
    # Raising the budget lets the waiting step go at its next look, no restart.
    rig.runner.budget.set_limit(Decimal(10))
    assert rig.runner.submit(a, 1, owner="x") is None
    assert rig.store.get(a).waiting is None
    assert len(rig.provider.creates) == 3


def test_a_chains_max_units_ends_it_on_the_accounts_cost(tmp_path: Path) -> None:
    rig = budgeted(tmp_path, "1000")
    a = start(rig, "ca")
    rig.runner.submit(a, 0, owner="x")
    finish(rig, a, 0, "3")  # the account now knows an extension costs 3
    b = start(rig, "cb", max_units="2")
    assert rig.runner.submit(b, 0, owner="y") is None
    chain = rig.store.get(b)
    assert chain.end_reason is EndReason.BUDGET_REACHED
    assert chain.status is ChainStatus.SUCCEEDED
    assert len(rig.provider.creates) == 1  # a's; nothing of b's was sent


def test_a_chain_never_pays_for_a_step_past_its_max_units(tmp_path: Path) -> None:
    rig = budgeted(tmp_path, "1000")
    a = start(rig, "ca", steps=10, max_units="7")
    for i in range(10):
        if rig.runner.submit(a, i, owner=f"w{i}") is not None:
            break
        if rig.store.get(a).end_reason is not None:
            break
        finish(rig, a, i, "3")
        if rig.store.get(a).end_reason is not None:
            break
    chain = rig.store.get(a)
    assert chain.end_reason is EndReason.BUDGET_REACHED
    assert chain.units_view()["units"] == "6"  # 3 + 3; a third would make 9 > 7
    assert len(rig.provider.creates) == 2


def test_a_step_held_by_the_slots_gives_its_reservation_back(tmp_path: Path) -> None:
    from worker.state.slots import Slots

    rig = budgeted(tmp_path, "10")
    rig.runner.slots = Slots(rig.store.redis, prefix="t:", limit=1)
    a, b = start(rig, "ca"), start(rig, "cb")
    rig.runner.submit(a, 0, owner="x")
    finish(rig, a, 0, "2")
    rig.runner.submit(a, 1, owner="x")  # holds the slot and 2 units
    assert rig.runner.submit(b, 0, owner="y") == rig.runner.settings.slot_poll_seconds
    assert rig.runner.budget is not None
    assert set(rig.runner.budget.reservations()) == {"ca:1"}  # b's went back with the claim
    assert rig.store.get(b).waiting == "waiting for a provider slot, 1 of 1 in use"


def test_the_sweep_drops_reservations_of_steps_not_in_flight(tmp_path: Path) -> None:
    rig = budgeted(tmp_path, "10")
    a = start(rig, "ca")
    rig.runner.submit(a, 0, owner="x")
    rig.store.redis.hset(rig.store.keys.budget_reserved, "gone:0", 2 * M)
    assert rig.runner.sweep_budget() == 1
    assert rig.runner.budget is not None
    assert set(rig.runner.budget.reservations()) == {"ca:0"}


def test_await_budget_gives_the_claim_back_only_to_its_claimant() -> None:
    chain = new_chain("c", Spec(video_id="v0", steps=2), NOW)
    claimed = apply(chain, Claim(0, "w", 60), NOW).chain
    assert apply(claimed, AwaitBudget(0, "other", "x"), NOW).chain == claimed
    back = apply(claimed, AwaitBudget(0, "w", "waiting for the daily unit budget"), NOW).chain
    assert back.step(0).status is StepStatus.PENDING
    assert back.waiting == "waiting for the daily unit budget"
