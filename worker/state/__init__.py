"""The Redis side: every key (``keys``), chains (``chains``) and video records (``videos``).

``optimistic`` is the one way a document changes: read, decide (pure), and commit the
decision's writes only if nothing it read has changed meanwhile, else decide again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.commands.core import Script

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
Writes = Callable[[Any], None]  # queues commands on a pipeline (sent by _COMMIT)
Read = Callable[[str], bytes | None]  # read one more document, checked again at the commit
Also = Callable[[Read], Writes]  # more writes for a commit, decided with what they read


def also_both(first: Also, then: Also | None) -> Also:
    """Both ``Also``, in order, as one."""
    if then is None:
        return first
    return lambda read: joined(first(read), then(read)) or (lambda pipe: None)


def joined(first: Writes | None, then: Writes | None) -> Writes | None:
    """Both writes, in order, as one."""
    if first is None or then is None:
        return first or then

    def both(pipe: Any) -> None:
        first(pipe)
        then(pipe)

    return both


# KEYS: the documents a decision read. ARGV: for each, '' when it was missing, else '='
# followed by its value; then the decision's writes, each as its argument count followed by
# its arguments. Runs the writes only if every document still is what was read (else 0),
# atomically: a compare-and-set of several keys, in one round trip.
_COMMIT = """
for i, key in ipairs(KEYS) do
  local now = redis.call('GET', key)
  local seen = ARGV[i]
  if seen == '' then
    if now then return 0 end
  elseif not now or '=' .. now ~= seen then
    return 0
  end
end
local at = #KEYS + 1
while at <= #ARGV do
  local argc = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + argc))
  at = at + argc + 1
end
return 1
"""
_commits: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


def optimistic(
    client: redis.Redis,
    key: str,
    decide: Callable[[bytes | None, Read], tuple[Writes | None, T]],
    *,
    hint: bytes | None = None,
) -> T:
    """Read ``key``, let ``decide`` look at its value, and commit its writes unless ``key``
    (or another document it read) changed meanwhile.

    ``decide`` returns ``(writes, result)``; ``writes`` None means nothing to write (and no
    further round trip). It may read further documents with its second argument. When
    another client changes any of them first, the whole thing runs again on the new values,
    so concurrent callers see one linear history. The writes are queued on a pipeline that
    is never sent: its commands go to Redis inside one script (``_COMMIT``), which checks
    the documents and applies them atomically, in one round trip where WATCH, GET and
    MULTI/EXEC took three.

    ``hint``: what the caller believes ``key`` holds (it just read or wrote it), taken as
    the first read instead of a GET. The commit checks it like any read: a wrong one costs a
    failed commit and a decision again on what is really there. A decision to write nothing
    has no commit to check it, and an error may come from the hint itself: either is made
    again on a real read before it is returned or raised.
    """
    commit = _commits.get(client)
    if commit is None:
        commit = _commits[client] = client.register_script(_COMMIT)
    while True:
        seen: dict[str, bytes | None] = {}
        hinted = hint is not None
        if hint is not None:
            seen[key], hint = hint, None  # the first round only
        read = _reader(client, seen)
        try:
            writes, result = decide(read(key), read)
        except Exception:
            if hinted:
                continue  # it may be the hint that is wrong: decide again on a real read
            raise
        if writes is None:
            if hinted:
                continue  # nothing to commit checks the hint: decide again on a real read
            return result
        pipe = client.pipeline(transaction=False)
        writes(pipe)
        argv: list[Any] = [b"" if v is None else b"=" + v for v in seen.values()]
        for args, _options in pipe.command_stack:
            argv.append(len(args))
            argv.extend(args)
        pipe.reset()
        if commit(keys=list(seen), args=argv):
            return result


def _reader(client: redis.Redis, seen: dict[str, bytes | None]) -> Read:
    """Reads documents once each, keeping what it saw for the commit's check."""

    def read(name: str) -> bytes | None:
        if name not in seen:
            seen[name] = _raw(client.get(name))
        return seen[name]

    return read


def _raw(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
