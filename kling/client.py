"""A thin HTTP client for the Kling task API.

The decisions live in pure functions: ``reply_payload`` (HTTP status + body -> payload or
error) and ``classify_transport_error`` (a failed request -> retryable, permanent or
ambiguous). ``KlingClient`` only sends requests and applies them.

The client retries nothing except one re-authentication after a 1000-1004 reply (an auth
failure creates nothing). Retrying is the caller's business, guided by the error types.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from collections.abc import Iterator
from http.client import HTTPException
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import requests
import requests.utils
import urllib3
import urllib3.exceptions

from kling.auth import Auth
from kling.errors import (
    AmbiguousCreate,
    AuthError,
    InvalidRequest,
    KlingError,
    MalformedReply,
    NotFound,
    PermanentError,
    RetryableError,
    provider_error,
)
from kling.models import (
    ExtendRequest,
    Task,
    TaskKind,
    Text2VideoRequest,
    envelope_code,
    parse_task,
    parse_task_list,
)

__all__ = [
    "USER_AGENT",
    "KlingClient",
    "classify_create_error",
    "classify_transport_error",
    "reply_payload",
]

logger = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return version("kling-chain")
    except PackageNotFoundError:
        return "0"


USER_AGENT: Final = f"kling-chain/{_package_version()}"

_SNIPPET_CHARS = 200

_REQUEST_TYPES: dict[TaskKind, type[ExtendRequest | Text2VideoRequest]] = {
    TaskKind.VIDEO_EXTEND: ExtendRequest,
    TaskKind.TEXT2VIDEO: Text2VideoRequest,
}

# Raised before any byte of the request left this machine.
_NOT_SENT_CAUSES: tuple[type[BaseException], ...] = (
    urllib3.exceptions.NewConnectionError,  # refused, unreachable, DNS (NameResolutionError)
    urllib3.exceptions.ConnectTimeoutError,
    ssl.SSLCertVerificationError,
    ssl.CertificateError,
)

# Problems with the request itself, found before sending (requests' names for them, and
# urllib3's, which the client sends with).
_BAD_REQUEST_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
    urllib3.exceptions.LocationValueError,
)
_READ_TIMEOUTS = (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)

_TRANSPORT_ERRORS = (OSError, HTTPException, urllib3.exceptions.HTTPError)


# --- pure decisions --------------------------------------------------------------------


def classify_transport_error(exc: BaseException, *, create: bool) -> KlingError:
    """Map a request that got no HTTP reply to the error to raise.

    A query (``create=False``) can always be retried. A create request can be retried only
    when it provably never left: a refused or timed-out connection, an unknown host, a
    rejected certificate. Anything later (read timeout, reset or aborted connection, a
    truncated reply) may have created a billed task: ``AmbiguousCreate``.
    """
    if isinstance(exc, _BAD_REQUEST_ERRORS):
        return PermanentError(f"the request could not be sent: {exc}")
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _caused_by(exc, _NOT_SENT_CAUSES):
        return RetryableError(f"could not connect to the provider: {exc}")
    if not create:
        return RetryableError(f"the query got no reply: {exc}")
    if isinstance(exc, _READ_TIMEOUTS):
        detail = "no reply came before the read timeout"
    else:
        detail = f"the connection failed after the request was sent ({exc})"
    return AmbiguousCreate(
        f"the create request may have reached the provider but {detail}; "
        "the task may exist and be billed: look it up before submitting again"
    )


AMBIGUOUS_CREATE_STATUSES: Final = frozenset({502, 504})
"""A gateway or proxy answered in the provider's place: the request may have gone on."""
AMBIGUOUS_CREATE_CODES: Final = frozenset({5002})
"""The provider timed out: the task may have been made all the same."""


def classify_create_error(exc: KlingError) -> KlingError:
    """What a failed create reply means for money.

    A retryable reply that a proxy or gateway gave after the request went on (HTTP 502/504),
    or the provider's own server timeout (code 5002), does not prove that nothing was
    created: such a create becomes ``AmbiguousCreate``. Everything else stays as it is.
    """
    if not isinstance(exc, RetryableError):
        return exc
    if exc.code in AMBIGUOUS_CREATE_CODES or (
        exc.code is None and exc.http_status in AMBIGUOUS_CREATE_STATUSES
    ):
        return AmbiguousCreate(
            f"the provider answered {exc} after the create request was sent; the task may "
            "exist and be billed: look it up before submitting again",
            code=exc.code,
            http_status=exc.http_status,
            request_id=exc.request_id,
        )
    return exc


def reply_payload(status: int, content: bytes, *, location: str | None = None) -> dict[str, Any]:
    """Check an HTTP reply and return its JSON object, or raise the mapped ``KlingError``.

    The envelope's ``code`` decides when present; the HTTP status only when it is missing
    or the body is not JSON (5xx/408/429 retryable, 404 not found, other 4xx permanent,
    2xx malformed). Redirects are refused: a POST must not silently turn into a GET.
    """
    if 300 <= status < 400:
        target = f" to {location}" if location else ""
        raise PermanentError(
            f"the provider redirected{target}; set the base URL to the final address",
            http_status=status,
        )
    try:
        data = json.loads(content)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        data = None
    if not isinstance(data, dict):
        snippet = _snippet(content)
        if 200 <= status < 300:
            raise MalformedReply(f"the reply is not a JSON object: {snippet}", http_status=status)
        raise provider_error(None, status, f"HTTP {status} with a non-JSON reply: {snippet}")

    raw_message = data.get("message")
    message = raw_message if isinstance(raw_message, str) else ""
    raw_request_id = data.get("request_id")
    request_id = None if raw_request_id is None else str(raw_request_id)
    try:
        code = envelope_code(data.get("code"))
    except MalformedReply as exc:
        if status >= 400:
            raise provider_error(None, status, message, request_id) from None
        raise MalformedReply(exc.message, http_status=status, request_id=request_id) from None
    if code:
        raise provider_error(code, status, message, request_id)
    if status >= 400:
        raise provider_error(None, status, message, request_id)
    return data


def _snippet(content: bytes) -> str:
    text = " ".join(content.decode("utf-8", errors="replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "..."


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or anything it wraps (args, ``reason``, ``__cause__``...) is one of
    ``kinds``. urllib3's errors wrap the socket's (and requests' wrap urllib3's)."""
    return any(isinstance(item, kinds) for item in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        nested: list[object] = [*item.args, item.__cause__, item.__context__]
        nested.append(getattr(item, "reason", None))
        nested.append(getattr(item, "original_error", None))
        stack.extend(x for x in nested if isinstance(x, BaseException))


# --- the I/O shell ---------------------------------------------------------------------


class KlingClient:
    """Create and query Kling tasks.

    ``base_url`` includes any gateway prefix (``https://gw.example/kling``); requests go to
    ``{base_url}/v1/{kind.path}``. ``send_parent_task_id=False`` leaves ``task_id`` out of
    extension requests, for the official API, which has no such field.
    """

    def __init__(
        self,
        base_url: str,
        auth: Auth,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        send_parent_task_id: bool = True,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        self._base_url = _normalise_base_url(base_url)
        if len(timeout) != 2 or not all(
            isinstance(t, int | float) and not isinstance(t, bool) and t > 0 for t in timeout
        ):
            raise InvalidRequest(
                f"timeout must be (connect seconds, read seconds), both > 0, got {timeout!r}"
            )
        self._auth = auth
        self._timeout = urllib3.Timeout(connect=float(timeout[0]), read=float(timeout[1]))
        self._send_parent_task_id = send_parent_task_id
        self._owns_http = http is None
        self._http = http if http is not None else pool_for(self._base_url)

    @property
    def base_url(self) -> str:
        return self._base_url

    def create(self, kind: TaskKind, request: ExtendRequest | Text2VideoRequest) -> Task:
        """Validate and submit a task. Nothing is sent when validation fails.

        A reply that was received but cannot be read raises ``AmbiguousCreate``: the task
        probably exists.
        """
        expected = _REQUEST_TYPES.get(kind)
        if expected is None:
            raise InvalidRequest(f"creating {kind.value} tasks is not supported")
        if not isinstance(request, expected):
            raise InvalidRequest(
                f"a {kind.value} task needs a {expected.__name__}, got {type(request).__name__}"
            )
        request.validate()
        if isinstance(request, ExtendRequest):
            body = request.to_json(send_parent_task_id=self._send_parent_task_id)
        else:
            body = request.to_json()
        try:
            return parse_task(self._call("POST", self._url(kind), body))
        except RetryableError as exc:
            mapped = classify_create_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        except MalformedReply as exc:
            raise AmbiguousCreate(
                "the create request was answered but the reply could not be read "
                f"({exc.message}); the task probably exists: look it up before submitting again",
                http_status=exc.http_status,
                request_id=exc.request_id,
            ) from exc

    def get(self, kind: TaskKind, task_id: str) -> Task:
        """Query a task by its id (or, on the official API, its external id)."""
        return parse_task(self._call("GET", self._url(kind, _path_id("task_id", task_id))))

    def find_by_external_id(self, kind: TaskKind, external_task_id: str) -> Task | None:
        """The task created with this ``external_task_id``, or None if there is none."""
        url = self._url(kind, _path_id("external_task_id", external_task_id))
        try:
            return parse_task(self._call("GET", url))
        except NotFound:
            return None

    def list_tasks(self, kind: TaskKind, *, page: int = 1, page_size: int = 100) -> list[Task]:
        """One page of the account's tasks of ``kind``, newest first (``pageNum``/``pageSize``)."""
        if not 1 <= page <= 1000 or not 1 <= page_size <= 500:
            raise InvalidRequest(
                f"page must be 1-1000 and page_size 1-500, got {page}, {page_size}"
            )
        url = f"{self._url(kind)}?pageNum={page}&pageSize={page_size}"
        return parse_task_list(self._call("GET", url))

    def close(self) -> None:
        """Close the connections if this client made its pool."""
        if self._owns_http:
            self._http.clear()

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KlingClient({self._base_url!r}, {self._auth!r})"

    # --- internals ---

    def _url(self, kind: TaskKind, task_id: str | None = None) -> str:
        url = f"{self._base_url}/v1/{kind.path}"
        return url if task_id is None else f"{url}/{quote(task_id, safe='')}"

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self._send(method, url, body)
        except AuthError as exc:
            logger.debug(
                "kling %s %s: credentials rejected (%s); re-authenticating", method, url, exc
            )
            self._auth.refresh()
        return self._send(method, url, body)

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {
            "Authorization": self._auth.header(),
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        data: bytes | None = None
        if body is not None:
            try:
                data = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise PermanentError(f"the request could not be sent: {exc}") from exc
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            response = self._http.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=self._timeout,
                redirect=False,
                retries=False,  # the caller retries, guided by the error types
            )
        except _TRANSPORT_ERRORS as exc:
            error = classify_transport_error(exc, create=method == "POST")
            logger.debug(
                "kling %s %s failed after %.0f ms: %s",
                method,
                url,
                _elapsed_ms(started),
                type(error).__name__,
            )
            raise error from exc
        status = response.status
        content = response.data
        location = response.headers.get("Location")
        try:
            payload = reply_payload(status, content, location=location)
        except KlingError as exc:
            logger.debug(
                "kling %s %s -> HTTP %s code %s request_id %s in %.0f ms: %s",
                method,
                url,
                status,
                exc.code,
                exc.request_id,
                _elapsed_ms(started),
                type(exc).__name__,
            )
            raise
        logger.debug(
            "kling %s %s -> HTTP %s request_id %s in %.0f ms",
            method,
            url,
            status,
            payload.get("request_id"),
            _elapsed_ms(started),
        )
        return payload


def pool_for(base_url: str) -> urllib3.PoolManager:
    """The connections to ``base_url``, with the settings requests would take from the
    environment for it, read once: ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY``, and the CA bundle (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else
    certifi's). urllib3 rather than requests: it costs about half the CPU per request, and
    every step sends two."""
    found = requests.Session().merge_environment_settings(base_url, {}, None, None, None)
    verify = found["verify"]
    bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify is not False else "CERT_NONE"}
    if isinstance(bundle, str):
        tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
    proxies = found["proxies"]
    scheme = urlsplit(base_url).scheme
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy:  # NO_PROXY is applied already: no proxy is found for a bypassed host
        if proxy.startswith("socks"):
            from urllib3.contrib.socks import SOCKSProxyManager

            return SOCKSProxyManager(proxy, num_pools=2, maxsize=4, **tls)
        return urllib3.ProxyManager(proxy, num_pools=2, maxsize=4, **tls)
    return urllib3.PoolManager(num_pools=2, maxsize=4, **tls)


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _normalise_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/") if isinstance(base_url, str) else ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidRequest(
            f"base_url must be an http:// or https:// URL without query, got {base_url!r}"
        )
    return url


def _path_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()
