"""Publishing a Celery task from the web process with one Redis command.

``celery.send_task`` costs about 0.4 ms of CPU per message (routing, signals, building and
encoding the message, a pooled kombu producer): most of what a provider callback costs the
web process. The message itself is simple, so ``Publisher`` builds it from a template and
sends it with one ``LPUSH`` on an asyncio Redis client, inside the event loop.

The template is not written by hand: on first use of a task name, Celery itself publishes two
messages with different arguments into kombu's in-memory transport (the same virtual
transport code the Redis transport uses). The fields that differ between the two are the
ones filled per message; when they are not exactly the ones this module knows how to fill
(ids, the argument repr and body, the delivery tag), or the message does not have the shape
the Redis transport stores, the publisher falls back to ``send_task`` for that task name and
says why. A Celery or kombu upgrade that changes the message therefore changes the template
with it, or turns the fast path off; it cannot make it send something a worker would not
take. ``tests/integration`` runs real workers on what it sends.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from kombu.connection import Connection
from kombu.utils.json import loads

log = logging.getLogger(__name__)

# Where each per-message value goes: (section, key) in the message kombu's virtual transport
# stores; "body" is the whole base64 body.
_IDS = (("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"))
_FILLED = frozenset({*_IDS, ("headers", "argsrepr"), ("properties", "delivery_tag"), ("body",)})
_PROBES: tuple[tuple[Any, ...], tuple[Any, ...]] = (("a", 0, None), ("bb", 1, "x"))


class Template:
    """One task name's message, captured from Celery, with the fields to fill per message.

    The message is serialised once, with a marker in each field to fill; ``render`` joins
    the text between the markers with the fields' own JSON, which is what serialising the
    filled message gives, for a sixth less CPU. ``capture`` checks that against Celery."""

    def __init__(self, queue: str, message: dict[str, Any], argsrepr_max: int) -> None:
        self.queue = queue
        self.message = message
        self.argsrepr_max = argsrepr_max
        _, kwargs, embed = loads(base64.b64decode(message["body"]))
        self.rest = (kwargs, embed)
        marked = copy.deepcopy(message)
        for section, key in _IDS:
            marked[section][key] = _mark("id")
        if "parent_id" in marked["headers"]:  # a new root, even when captured inside a task
            marked["headers"]["parent_id"] = None
        marked["headers"]["argsrepr"] = _mark("argsrepr")
        marked["properties"]["delivery_tag"] = _mark("delivery_tag")
        marked["body"] = _mark("body")
        pieces = _MARK.split(json.dumps(marked))
        self._text, self._fields = pieces[::2], pieces[1::2]

    def render(self, args: Sequence[Any]) -> str:
        """The message for ``args``, as the Redis transport stores it (JSON)."""
        shown = repr(tuple(args))  # what saferepr gives for short arguments, for less
        if len(shown) > self.argsrepr_max:
            shown = saferepr(tuple(args), self.argsrepr_max)
        body = json.dumps([list(args), *self.rest])
        values = {
            "id": str(uuid.uuid4()),
            "argsrepr": shown,
            "delivery_tag": str(uuid.uuid4()),
            "body": base64.b64encode(body.encode()).decode(),
        }
        out = [self._text[0]]
        for field, text in zip(self._fields, self._text[1:], strict=True):
            out.append(json.dumps(values[field]))
            out.append(text)
        return "".join(out)


def _mark(field: str) -> str:
    return f"\x00{field}\x00"


# A marker as json.dumps writes it (NUL escaped), quotes included; group 1: the field.
_MARK = re.compile(r'"\\u0000(\w+)\\u0000"')


def capture(app: Celery, name: str) -> Template | str:
    """The template of task ``name``, or why the fast path cannot be used for it."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with Connection("memory://") as conn:
        channel: Any = conn.default_channel

        def put(queue: str, message: dict[str, Any], **_: Any) -> None:
            seen.append((queue, message))

        channel._put = put  # record what the virtual transport would store
        with app.producer_or_acquire(conn.Producer()) as producer:
            for args in _PROBES:
                # Each probe its own root, as a published task is: inside a running task
                # (the worker's publisher captures there), Celery would otherwise make both
                # children of it, sharing its root_id.
                probe = str(uuid.uuid4())
                app.send_task(
                    name,
                    args=args,
                    producer=producer,
                    task_id=probe,
                    root_id=probe,
                    add_to_parent=False,
                )
    if len(seen) != 2 or seen[0][0] != seen[1][0]:
        return "Celery did not publish the probes to one queue"
    (queue, first), (_, second) = seen
    varying = set(_differences(first, second))
    if varying != _FILLED:
        return f"the message varies in {sorted(varying)}, not only in {sorted(_FILLED)}"
    props = first.get("properties", {})
    if props.get("priority", 0) not in (0, None) or props.get("body_encoding") != "base64":
        return "the message has a priority or a body encoding the fast path does not write"
    maxsize = app.amqp.argsrepr_maxsize
    template = Template(queue, first, maxsize)
    again = loads(template.render(_PROBES[1]))
    if _strip(again) != _strip(second):  # renders what Celery sent, ids aside
        return "a rendered message differs from Celery's"
    return template


def _differences(a: Any, b: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, ...]] = []
        for key in set(a) | set(b):
            if key not in a or key not in b:
                out.append((*path, key))
            else:
                out += _differences(a[key], b[key], (*path, key))
        return out
    return [] if a == b else [path]


def _strip(message: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(message)
    for section, key in (*_IDS, ("headers", "parent_id"), ("properties", "delivery_tag")):
        out[section].pop(key, None)
    return out


class Publisher:
    """``publish(name, args)`` as one LPUSH when the task's template could be captured, else
    Celery's ``send_task`` (``fallback``). ``redis`` is an asyncio client for ``publish`` (the
    web process, with an awaitable fallback) or a plain one for ``publish_now`` (the worker)."""

    def __init__(
        self, app: Celery, redis: Any, fallback: Callable[[str, Sequence[Any]], Any]
    ) -> None:
        self.app = app
        self.redis = redis
        self.fallback = fallback
        self.templates: dict[str, Template | None] = {}
        self.prefix = str(app.conf.broker_transport_options.get("global_keyprefix") or "")

    def template(self, name: str) -> Template | None:
        if name not in self.templates:
            found = capture(self.app, name)
            if isinstance(found, str):
                log.warning("publishing %s through Celery's send_task: %s", name, found)
                self.templates[name] = None
            else:
                self.templates[name] = found
        return self.templates[name]

    async def publish(self, name: str, args: Sequence[Any]) -> None:
        template = self.template(name)
        if template is None:
            await self.fallback(name, args)
            return
        await self.redis.lpush(self.prefix + template.queue, template.render(args))

    def queue_on(self, pipe: Any, name: str, args: Sequence[Any]) -> bool:
        """Queue the task's LPUSH on ``pipe`` (with other commands: one round trip); False
        when the task has no template and must go through ``publish``."""
        template = self.template(name)
        if template is None:
            return False
        pipe.lpush(self.prefix + template.queue, template.render(args))
        return True

    def publish_now(self, name: str, args: Sequence[Any]) -> None:
        template = self.template(name)
        if template is None:
            self.fallback(name, args)
            return
        self.redis.lpush(self.prefix + template.queue, template.render(args))
