"""One optimistic transaction on one Redis key: read, decide, write only if nobody wrote."""

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

    ``decide`` returns ``(writes, result)``; ``writes`` None means nothing to write. When
    another client changes ``key`` first, the whole thing runs again on the new value, so
    concurrent callers see one linear history (no read-then-write race).
    """
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw = pipe.get(key)
                writes, result = decide(raw.encode() if isinstance(raw, str) else raw)
                if writes is None:
                    pipe.unwatch()
                    return result
                pipe.multi()
                writes(pipe)
                pipe.execute()
                return result
            except redis.WatchError:
                continue
