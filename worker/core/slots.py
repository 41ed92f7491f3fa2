"""The account's concurrency slots (``KLING_CONCURRENCY``): pure rules, no Redis.

The provider lets an account run a limited number of video tasks at once; a task holds a
slot from its accepted create until it ends. The service keeps its own count so that a
create past the limit is never sent (the provider would refuse it with 1303):

- a step *holds* a slot from just before its create is sent until its task ends, its create
  is refused, or its outcome is settled by reconciliation (``holds``);
- steps that find no slot free wait in line by the time they first asked; the ``free``
  first in line may take one (``may_take``). A chain has one step waiting at a time, so
  arrival order is fair across chains;
- a holder whose step no longer holds, or a waiter whose step no longer waits, is stale and
  the sweep takes it away (``holder_stale``, ``waiter_stale``): a dead worker or a lost
  release cannot leak slots for long.

The Redis side (``worker.state.slots``) carries these rules out in Lua scripts.
"""

from __future__ import annotations

from worker.core.chain import Chain, StepStatus

# The statuses in which a step holds a slot: its create is on its way, or its task runs.
HOLDING = frozenset({StepStatus.SUBMITTING, StepStatus.SUBMITTED, StepStatus.PROCESSING})


def member(chain_id: str, index: int) -> str:
    """How a step is named among holders and waiters."""
    return f"{chain_id}:{index}"


def parse(name: str) -> tuple[str, int]:
    chain_id, _, index = name.rpartition(":")
    return chain_id, int(index)


def may_take(rank: int, in_use: int, limit: int) -> bool:
    """Whether the waiter at ``rank`` (0: first in line) may take a slot now."""
    return rank < limit - in_use


def holds(status: StepStatus) -> bool:
    return status in HOLDING


def holder_stale(chain: Chain | None, index: int) -> bool:
    """A holder is stale when its chain or step is gone, or the step no longer holds."""
    if chain is None or index >= len(chain.steps):
        return True
    return not holds(chain.step(index).status)


def waiter_stale(chain: Chain | None, index: int) -> bool:
    """A waiter is stale when its step will never be sent: gone, past pending, or its chain
    ended or cancelled."""
    if chain is None or index >= len(chain.steps):
        return True
    if chain.error is not None or chain.end_reason is not None or chain.cancelled_at is not None:
        return True
    return chain.step(index).status not in (StepStatus.PENDING, StepStatus.SUBMITTING)


def waiting_text(in_use: int, limit: int) -> str:
    """The chain's ``waiting`` while its step waits in line (a contract: clients read it)."""
    return f"waiting for a provider slot, {in_use} of {limit} in use"
