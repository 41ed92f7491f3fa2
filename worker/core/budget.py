"""Budgets: pure rules, no Redis.

Two limits bound what the service spends, both in the provider's units
(``final_unit_deduction``):

- **per chain**, ``max_units`` in ``POST /chains``: the chain ends ``succeeded`` with
  ``budget_reached`` when its next step would take its spend past the limit
  (``over_chain_budget``). The next step's cost is estimated from what this chain paid for a
  step of that kind, else from the account's latest cost for the kind. With no estimate
  (no cost seen anywhere yet) the step is sent: its cost becomes known;
- **per account and UTC day**, ``DAILY_UNIT_BUDGET``: a step is admitted when the day's
  spend plus the units reserved for steps in flight plus its own estimate stays within the
  budget (``admit``). A step reserves its estimate while it holds a claim or runs, and the
  reservation turns into spend in the transaction that settles it. Until a cost is known, a
  single step is admitted at a time. So spend passes the budget only when a step costs more
  than its estimate, by at most that one step.

Amounts are integer micro-units (``worker.state.spend``) so sums are exact. The Redis side
(``worker.state.budget``) carries ``admit`` out in one Lua script.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the chain's rules use these rules
    from worker.core.chain import Chain

MICRO = Decimal(1_000_000)
UNKNOWN = -1  # a reservation made before any cost was known


def to_micro(units: str | Decimal) -> int:
    return int((Decimal(units) * MICRO).to_integral_value())


def from_micro(micro: int) -> str:
    """Micro-units as a plain decimal string: ``2``, ``0.5``."""
    value = (Decimal(micro) / MICRO).normalize()
    return f"{value:f}"


def chain_spent(chain: Chain) -> Decimal:
    """What the provider reported the chain's steps cost, in all."""
    return sum((Decimal(s.units) for s in chain.steps if s.units is not None), Decimal(0))


def estimate(chain: Chain, kind: str, account_latest: Mapping[str, str]) -> Decimal | None:
    """The next ``kind`` step's likely cost: the newest this chain paid for one, else the
    account's latest for the kind (``account_latest``: kind -> units), else unknown."""
    for step in reversed(chain.steps):
        if step.kind == kind and step.units is not None:
            return Decimal(step.units)
    latest = account_latest.get(kind)
    return Decimal(latest) if latest is not None else None


def over_chain_budget(chain: Chain, kind: str, account_latest: Mapping[str, str]) -> str | None:
    """Why the chain's next ``kind`` step would pass its ``max_units``, or None to go on."""
    if chain.spec.max_units is None:
        return None
    limit = Decimal(chain.spec.max_units)
    spent = chain_spent(chain)
    if spent >= limit:
        return f"the chain has spent {spent:f} of max_units {limit:f}"
    cost = estimate(chain, kind, account_latest)
    if cost is not None and spent + cost > limit:
        return (
            f"the next step (about {cost:f} units) would take the chain's spend from "
            f"{spent:f} past max_units {limit:f}"
        )
    return None


def admit(spent: int, reserved: Iterable[int], cost: int | None, budget: int) -> bool:
    """Whether a step estimated at ``cost`` micro-units (None: unknown) fits today's
    ``budget``, given the day's ``spent`` and the other steps' ``reserved`` amounts
    (``UNKNOWN`` for one reserved before any cost was known)."""
    held = list(reserved)
    if spent >= budget:
        return False
    if cost is None:
        return not held  # nothing known yet: one step at a time finds the cost out
    committed = spent + sum(cost if r == UNKNOWN else r for r in held)
    return committed + cost <= budget


def next_reset(now: float) -> float:
    """When the UTC day of ``now`` ends: the daily budget starts afresh then."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting_text(spent: int, reserved: int, budget: int, now: float) -> str:
    """The chain's ``waiting`` while the daily budget holds its step back (a contract:
    clients read it): it names the budget and when it resets."""
    return (
        f"waiting for the daily unit budget (DAILY_UNIT_BUDGET {from_micro(budget)}): "
        f"{from_micro(spent)} spent and {from_micro(reserved)} reserved today; "
        f"it resets at {iso(next_reset(now))}"
    )
