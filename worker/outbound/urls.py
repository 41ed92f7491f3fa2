"""URLs the service fetches or posts to: which are acceptable, and how to log them
(and the errors about them: requests and urllib3 put whole URLs in their messages)."""

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


def describe_error(exc: BaseException) -> str:
    """A network error as its types and the system's words ("Connection refused").

    Never the error's own text: requests and urllib3 put the URL, query string included,
    into theirs, and a signed URL's query string is a credential.
    """
    names: list[str] = []
    detail = ""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < 8:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        name = type(current).__name__
        if name not in names:
            names.append(name)
        if isinstance(current, OSError) and current.strerror and not detail:
            detail = current.strerror
        queue += [arg for arg in current.args if isinstance(arg, BaseException)]
        for linked in (getattr(current, "reason", None), current.__cause__):
            if isinstance(linked, BaseException):
                queue.append(linked)
    text = names[0] if len(names) == 1 else f"{names[0]} ({', '.join(names[1:])})"
    return f"{text}: {detail}" if detail else text
