"""The Redis side: every key (``keys``), chains (``chains``) and video records (``videos``).

``optimistic`` is the one way a document changes: redis-py's ``transaction`` (WATCH, run,
MULTI/EXEC, again on a conflict) around a pure decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

T = TypeVar("T")


def text(value: object) -> str:
    """A Redis reply (bytes) or a value as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


# KEYS: a hash. ARGV: field, value seen. Deletes the field unless it changed since it was
# read: how a sweep takes away what looked stale (a slot, a budget reservation) without
# taking it from a step that took it again meanwhile.
HDEL_IF_SEEN = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
Writes = Callable[[Any], None]  # queues commands on the MULTI pipeline
Read = Callable[[str], bytes | None]  # WATCH one more key and read it


def optimistic(
    client: redis.Redis,
    key: str,
    decide: Callable[[bytes | None, Read], tuple[Writes | None, T]],
) -> T:
    """WATCH ``key``, let ``decide`` look at its value, run its writes in MULTI/EXEC.

    ``decide`` returns ``(writes, result)``; ``writes`` None means nothing to write (and no
    MULTI/EXEC round trip). It may read further documents with its second argument, which
    watches them too. When another client changes any watched key first, the whole thing runs
    again on the new values, so concurrent callers see one linear history.
    """

    def attempt(pipe: Any) -> T:
        def read(other: str) -> bytes | None:
            pipe.watch(other)
            return _raw(pipe.get(other))

        writes, result = decide(_raw(pipe.get(key)), read)
        if writes is None:
            pipe.unwatch()  # execute() then sends nothing
        else:
            pipe.multi()
            writes(pipe)
        return result

    # redis-py types the callable as returning None, though value_from_callable returns it.
    result: T = client.transaction(attempt, key, value_from_callable=True)  # type: ignore[arg-type,assignment]
    return result


def _raw(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
