"""URLs the service fetches or posts to: which are acceptable, and how to log them."""

from __future__ import annotations

from urllib.parse import urlsplit


def display(url: str) -> str:
    """``url`` without credentials, query string or fragment: safe to log (signed URLs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<malformed URL>"
    return f"{parts.scheme}://{host}{parts.path}"


def http_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL with a host, or None when it is one."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"malformed URL {display(url)!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"only http and https URLs are allowed, not {display(url)!r}"
    if not parts.hostname:
        return f"URL has no host: {display(url)!r}"
    return None
