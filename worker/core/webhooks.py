"""Events and where they go: the event vocabulary, a caller's webhook options, the fan-out.

Every event goes to ``NOTIFY_URL`` (the operator's endpoint) when that is set. An event
*about a chain* (`CHAIN_EVENTS`) also goes to the chain's own ``webhook_url``, when the
caller gave one, unless the chain's ``webhook_events`` leaves its type out. Each
destination is a delivery of its own, retried on its own (`destinations`).

The checks of what a caller may ask for (`events_problem`, `metadata_problem`,
`webhook_url_problem`) are syntax only: whether a URL's host is an internal address is the
address guard's question (``worker.outbound.netguard``), asked at the edge and again when
delivering.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CHAIN_EVENTS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_WEBHOOK_URL_CHARS",
    "Destination",
    "EventType",
    "destinations",
    "events_problem",
    "metadata_bytes",
    "metadata_problem",
    "webhook_url_problem",
]


class EventType(StrEnum):
    """Every event the service sends (README, "Notifications")."""

    CHAIN_STEP_SUCCEEDED = "chain.step_succeeded"
    CHAIN_SUCCEEDED = "chain.succeeded"
    CHAIN_FAILED = "chain.failed"
    CHAIN_CANCELLED = "chain.cancelled"
    VIDEO_ARCHIVED = "video.archived"
    VIDEO_AT_RISK = "video.at_risk"
    VIDEO_LOST = "video.lost"


CHAIN_EVENTS: tuple[EventType, ...] = (
    EventType.CHAIN_STEP_SUCCEEDED,
    EventType.CHAIN_SUCCEEDED,
    EventType.CHAIN_FAILED,
    EventType.CHAIN_CANCELLED,
    EventType.VIDEO_ARCHIVED,
)
"""The events about a chain that its own ``webhook_url`` receives (and may filter)."""

_KNOWN = ", ".join(CHAIN_EVENTS)

MAX_METADATA_BYTES = 4096
"""The most a chain's ``metadata`` may take, as compact UTF-8 JSON (`metadata_bytes`)."""
MAX_METADATA_DEPTH = 16
"""How deeply ``metadata`` may nest objects and arrays: it is copied into every event."""
MAX_WEBHOOK_URL_CHARS = 2048


@dataclass(frozen=True)
class Destination:
    """One delivery of an event.

    ``url`` None: ``NOTIFY_URL``, read when delivering (as events were always sent). Else
    the chain's own ``webhook_url``: a URL a caller supplied, so it is delivered through the
    address guard.
    """

    url: str | None = None

    @property
    def own(self) -> bool:
        return self.url is not None


NOTIFY = Destination()


def destinations(
    kind: EventType,
    *,
    notify_url: str | None,
    webhook_url: str | None = None,
    webhook_events: Sequence[str] | None = None,
) -> tuple[Destination, ...]:
    """Where an event of type `kind` goes: ``NOTIFY_URL`` (every event, when it is set), and
    the chain's `webhook_url` for an event about the chain that `webhook_events` (None: every
    one of `CHAIN_EVENTS`) lets through. A `webhook_url` that is ``NOTIFY_URL`` itself gets
    the event once."""
    out: list[Destination] = []
    if notify_url is not None:
        out.append(NOTIFY)
    wanted = CHAIN_EVENTS if webhook_events is None else webhook_events
    if (
        webhook_url is not None
        and kind in CHAIN_EVENTS
        and kind in wanted
        and webhook_url != notify_url
    ):
        out.append(Destination(webhook_url))
    return tuple(out)


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a chain's ``webhook_url``, or None: http or https, with a host."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return f"must be at most {MAX_WEBHOOK_URL_CHARS} characters, not {len(url)}"
    if url != url.strip() or any(c.isspace() or ord(c) < 0x20 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"{parts.scheme}:" if parts.scheme else "no scheme"
        return f"must be an http:// or https:// URL, not {scheme}"
    if not parts.hostname:
        return "must name a host (http://host/path)"
    return None


def events_problem(events: Sequence[str]) -> str | None:
    """Why `events` cannot be a chain's ``webhook_events``, or None."""
    if not events:
        return f"must name at least one event type; leave it out to receive all of {_KNOWN}"
    unknown = [e for e in events if e not in CHAIN_EVENTS]
    if unknown:
        return f"unknown event type {unknown[0]!r}; a chain's webhook can receive {_KNOWN}"
    return None


def metadata_bytes(metadata: dict[str, Any]) -> int:
    """The size of `metadata` as compact UTF-8 JSON; ValueError for NaN or infinities."""
    text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode())


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why `metadata` cannot be a chain's ``metadata``, or None: a JSON object of at most
    `MAX_METADATA_BYTES` (compact UTF-8 JSON), nested at most `MAX_METADATA_DEPTH` deep."""
    if _depth(metadata) > MAX_METADATA_DEPTH:
        return f"nests objects and arrays more than {MAX_METADATA_DEPTH} levels deep"
    try:
        size = metadata_bytes(metadata)
    except ValueError:
        return "must be plain JSON: NaN and Infinity are not JSON numbers"
    except TypeError as exc:
        return f"must be plain JSON: {exc}"
    if size > MAX_METADATA_BYTES:
        return f"is {size} bytes as compact JSON; at most {MAX_METADATA_BYTES} bytes are allowed"
    return None


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in `value` (an object of scalars: 1), counted up
    to one past `MAX_METADATA_DEPTH`."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_METADATA_DEPTH:
            break  # too deep already: no need to walk the rest
        todo.extend((child, level + 1) for child in children)
    return deepest
