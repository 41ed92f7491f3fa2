"""The Redis side: every key (``keys``), chains (``chains``) and video records (``videos``).

``optimistic`` is the one way a document changes: redis-py's ``transaction`` (WATCH, run,
MULTI/EXEC, again on a conflict) around a pure decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

T = TypeVar("T")
Writes = Callable[[Any], None]  # queues commands on the MULTI pipeline


def optimistic(
    client: redis.Redis, key: str, decide: Callable[[bytes | None], tuple[Writes | None, T]]
) -> T:
    """WATCH ``key``, let ``decide`` look at its value, run its writes in MULTI/EXEC.

    ``decide`` returns ``(writes, result)``; ``writes`` None means nothing to write (and no
    MULTI/EXEC round trip). When another client changes ``key`` first, the whole thing runs
    again on the new value, so concurrent callers see one linear history.
    """

    def attempt(pipe: Any) -> T:
        raw = pipe.get(key)
        writes, result = decide(raw.encode() if isinstance(raw, str) else raw)
        if writes is None:
            pipe.unwatch()  # execute() then sends nothing
        else:
            pipe.multi()
            writes(pipe)
        return result

    # redis-py types the callable as returning None, though value_from_callable returns it.
    result: T = client.transaction(attempt, key, value_from_callable=True)  # type: ignore[arg-type,assignment]
    return result
