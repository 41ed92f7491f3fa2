"""``GET /openapi.json``: the API as an OpenAPI 3.1 document.

Request bodies come from the very models that validate them (``webhook.api``), so a field
added there is documented at once. Replies are described by the models below; they allow
extra fields, so a reply that gains a field still conforms. The paths table names every
route of ``webhook.app.create_app``; ``tests/unit/test_openapi.py`` fails when one is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from kling.models import TaskKind
from webhook.api import ArchiveRequest, BudgetRequest, ChainRequest
from worker.core.chain import ChainStatus, EndReason, StepStatus
from worker.core.videos import ArchiveStatus, VideoState

REF = "#/components/schemas/{model}"
BEARER = "bearer"


# -- replies -----------------------------------------------------------------------------------
class Reply(BaseModel):
    """A reply object: the fields listed are always there; more may come."""

    model_config = ConfigDict(extra="allow")


class Problem(Reply):
    """One thing wrong with a request: ``field`` is its dotted path (null: the whole body)."""

    field: str | None
    message: str


class Error(Reply):
    """Any refusal: ``error`` says what to change; a refused body lists its ``details``."""

    error: str
    details: list[Problem] = Field(default_factory=list)


class Refused(Reply):
    """A cancel or resume the chain's status does not allow, with that status."""

    error: str
    chain_status: ChainStatus


class Source(Reply):
    video_id: str | None
    task_id: str | None
    text_prompt: str | None


class StepView(Reply):
    index: int = Field(ge=0)
    kind: TaskKind
    task_id: str | None
    status: StepStatus
    parent_video_id: str | None
    video_id: str | None
    duration: float | None
    error: str | None
    units: str | None = Field(description="the provider's reported cost; null: not (yet) known")
    first_try_at: float | None
    submitted_at: float | None = Field(description="when the provider accepted it")
    processing_at: float | None
    ended_at: float | None


class ArchiveEntry(Reply):
    """One of the chain's videos, as its archive record says."""

    video_id: str
    status: ArchiveStatus
    path: str | None
    bytes: int | None
    sha256: str | None
    duration: float | None
    error: str | None


class ChainView(Reply):
    """A chain: its status, its steps and its videos' archive entries."""

    id: str
    status: ChainStatus
    end_reason: EndReason | None
    error: str | None
    waiting: str | None
    cancelled_at: float | None
    duration: float | None
    target_seconds: float | None
    steps_requested: int | None
    metadata: dict[str, Any] | None = Field(description="the caller's, as given")
    max_units: str | None = Field(description="the most the chain may spend")
    source: Source
    created_at: float
    updated_at: float
    steps: list[StepView]
    units: str | None = Field(description="the sum of the steps' reported costs")
    units_complete: bool
    archive: list[ArchiveEntry]


class ChainPage(Reply):
    """Chains, newest first; ``next_before`` is the ``before`` of the next page."""

    chains: list[ChainView]
    next_before: float | None


class CallbackHealth(Reply):
    """Whether provider callbacks reach the service; when not, it relies on polling."""

    reachable: bool
    reason: str
    last_seen_at: float | None = Field(description="when a provider callback last arrived")


class Health(Reply):
    redis: bool
    callbacks: CallbackHealth | None = Field(
        None, description="left out when Redis does not answer"
    )


class CallbackAck(Reply):
    ok: bool


class ArchiveCallbackAck(Reply):
    ok: bool
    queued: bool = Field(description="false: queued earlier, or the task has not ended yet")


class QueuedTask(Reply):
    task_id: str
    kind: TaskKind


class ArchiveQueued(Reply):
    """``queued``: tasks to be queried now; ``already_queued``: asked for within a day."""

    queued: list[QueuedTask]
    already_queued: list[QueuedTask]


class VideoView(Reply):
    """A video's archive record."""

    video_id: str
    task_id: str
    kind: str
    state: VideoState
    parent_video_id: str | None
    prompt: str | None
    duration: float | None
    bytes: int | None
    sha256: str | None
    location: str | None
    source_host: str | None
    chain_id: str | None
    origin: str
    created_at: float
    expires_at: float = Field(description="when the provider deletes the video")
    archived_at: float | None
    at_risk: bool
    error: str | None
    superseded_by: str | None = Field(
        description="ARCHIVE_KEEP=final: the chain's final video, which contains this one"
    )
    superseded_at: float | None = Field(description="when this video's file was deleted")


class ArchivePage(Reply):
    """Archive records, newest first, and the number of records in each state."""

    videos: list[VideoView]
    next_before: float | None
    counts: dict[str, int]


class ChainUnits(Reply):
    id: str
    units: str


class SpendDay(Reply):
    """One UTC day's reported units; ``unpriced_steps``: steps that reported no cost."""

    date: str
    units: str
    unpriced_steps: int
    latest: dict[str, str] = Field(description="the latest cost reported per task kind")


class SpendToday(SpendDay):
    chains: list[ChainUnits] = Field(description="today's units per chain, most first")


class BudgetView(Reply):
    """The account's daily budget of units and where today stands against it."""

    daily_units: str
    source: str = Field(description="`api` (set by PUT /spend/budget) or `DAILY_UNIT_BUDGET`")
    spent: str
    reserved: str = Field(description="units held for steps in flight")
    steps_in_flight: int
    remaining: str
    resets_at: str


class SpendReport(Reply):
    today: SpendToday
    days: list[SpendDay] = Field(description="today and the days before it, newest first")
    total: str
    budget: BudgetView | None = Field(description="null: no daily budget is set")


class BudgetReply(Reply):
    budget: BudgetView | None


class Slots(Reply):
    in_use: int = Field(description="provider tasks this service holds a slot for")
    limit: int | None = Field(description="KLING_CONCURRENCY; null: no limit set")


class RefusedCreates(Reply):
    last_hour: int
    total: int


class AccountView(Reply):
    """The account panel: provider slots, today's units, creates the provider refused."""

    slots: Slots
    units_today: str
    budget: BudgetView | None
    refused_creates: RefusedCreates


class VideoLink(Reply):
    """A short-lived link to an archived file that a ``<video>`` element can load."""

    url: str
    expires_at: int


MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (ChainRequest, "validation"),
    (ArchiveRequest, "validation"),
    (BudgetRequest, "validation"),
    *(
        (m, "serialization")
        for m in (
            Error,
            Refused,
            ChainView,
            ChainPage,
            Health,
            CallbackAck,
            ArchiveCallbackAck,
            ArchiveQueued,
            VideoView,
            ArchivePage,
            SpendReport,
            BudgetReply,
            VideoLink,
            AccountView,
        )
    ),
)


# -- building blocks -----------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _reply(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return _json(description, _ref(model.__name__))


def _error(description: str) -> dict[str, Any]:
    return _reply(description, Error)


UNAVAILABLE = _error("the state store (Redis) or the task broker is unavailable; try again")
MALFORMED_QUERY = _error("a query parameter is not valid; `error` names the rule")
BAD_SIGNATURE = _error("the body's signature is not valid (with KLING_WEBHOOK_SECRET set)")
NO_ROUTE = _error("no such route: a path parameter is not of its type")


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


LIMIT_CHAINS = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "page size"
)
LIMIT_VIDEOS = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"
)
BEFORE = _query(
    "before",
    {"type": "number"},
    "only entries made before this Unix time (a finite number): the previous page's `next_before`",
)
STATE = _query(
    "state", {"type": "string", "enum": [s.value for s in VideoState]}, "only records in this state"
)
STATUS = _query(
    "status", {"type": "string", "enum": [s.value for s in ChainStatus]}, "only chains in it"
)
DAYS = _query(
    "days",
    {"type": "integer", "minimum": 1, "maximum": 400, "default": 7},
    "how many UTC days to report, today included",
)
CHAIN_ID = _path("chain_id", {"type": "string", "minLength": 1}, "the chain's `id`")
VIDEO_ID = _path("video_id", {"type": "string", "minLength": 1}, "the video's id")
TOKEN = _path(
    "token", {"type": "string", "minLength": 1}, "the secret token this service put in the URL"
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": (
        "a key of the client's choosing: the same key with the same body within 24 h answers "
        "the chain the first request made (200) instead of starting another"
    ),
}


def _body(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": _ref(model.__name__)}},
    }


def _callback_body() -> dict[str, Any]:
    return {
        "required": True,
        "description": "the provider's task object, bare or in its `{code, message, data}` "
        "envelope; only a hint: the worker queries the task before acting on it",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def _callback_urls_schema() -> dict[str, Any]:
    kinds = [k.value for k in TaskKind]
    return {
        "type": "object",
        "properties": {k: {"type": "string"} for k in kinds},
        "required": kinds,
        "additionalProperties": {"type": "string"},
    }


# -- the document ------------------------------------------------------------------------------
def _operations() -> dict[str, dict[str, dict[str, Any]]]:
    """Every route's operation, by path and method, before security is applied."""
    chain_reply = _reply("the chain", ChainView)
    return {
        "/chains": {
            "post": {
                "operationId": "createChain",
                "summary": "Start a chain of extensions (or text-to-video, then extensions)",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body(ChainRequest, "the chain to run"),
                "responses": {
                    "202": _reply("the chain, stored and queued", ChainView),
                    "200": _reply(
                        "the chain an earlier request with this Idempotency-Key made", ChainView
                    ),
                    "400": _error("the body is not JSON"),
                    "409": _error(
                        "an earlier request with this Idempotency-Key is still being stored"
                    ),
                    "413": _error("the body is larger than 256 KiB"),
                    "422": _error("the request breaks a rule; `details` names each field and rule"),
                    "503": UNAVAILABLE,
                },
            },
            "get": {
                "operationId": "listChains",
                "summary": "Recent chains, newest first",
                "parameters": [LIMIT_CHAINS, BEFORE, STATUS],
                "responses": {
                    "200": _reply("a page of chains", ChainPage),
                    "422": MALFORMED_QUERY,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/chains/{chain_id}": {
            "get": {
                "operationId": "getChain",
                "summary": "One chain",
                "parameters": [CHAIN_ID],
                "responses": {
                    "200": chain_reply,
                    "404": _error("no chain with this id"),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/chains/{chain_id}/cancel": {
            "post": {
                "operationId": "cancelChain",
                "summary": "Stop the chain's spending; a step paid for is followed to its end",
                "parameters": [CHAIN_ID],
                "responses": {
                    "202": _reply(
                        "accepted (also when the chain was cancelled already)", ChainView
                    ),
                    "404": _error("no chain with this id"),
                    "409": _reply("the chain has succeeded, failed or is ending", Refused),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/chains/{chain_id}/resume": {
            "post": {
                "operationId": "resumeChain",
                "summary": "Take a failed or cancelled chain on with the work that remains",
                "parameters": [CHAIN_ID],
                "responses": {
                    "202": _reply("accepted: the chain runs again", ChainView),
                    "404": _error("no chain with this id"),
                    "409": _reply(
                        "the chain is not failed or cancelled, or nothing remains", Refused
                    ),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Whether Redis answers (open: for load balancers)",
                "responses": {
                    "200": _reply("Redis answers", Health),
                    "503": _reply("Redis does not answer", Health),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (open: it holds no data and no secret)",
                "responses": {
                    "200": _json("the OpenAPI 3.1 document", {"type": "object"}),
                },
            },
        },
        "/callbacks/{chain_id}/{index}/{token}": {
            "post": {
                "operationId": "stepCallback",
                "summary": "The provider's callback for one step (the step's `callback_url`)",
                "parameters": [
                    _path("chain_id", {"type": "string", "minLength": 1}, "the chain"),
                    _path("index", {"type": "integer", "minimum": 0}, "the step's index"),
                    TOKEN,
                ],
                "requestBody": _callback_body(),
                "responses": {
                    "200": _reply("noted: the worker queries the task", CallbackAck),
                    "400": _error("the body is not a Kling task object"),
                    "401": BAD_SIGNATURE,
                    "403": _error("the token is not this step's"),
                    "404": NO_ROUTE,
                    "413": _error("the body is larger than 64 KiB"),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/callbacks/archive/{kind}/{token}": {
            "post": {
                "operationId": "archiveCallback",
                "summary": "Callbacks of the account's tasks this service did not submit",
                "parameters": [
                    _path("kind", _ref("TaskKind"), "the task kind the URL was made for"),
                    TOKEN,
                ],
                "requestBody": _callback_body(),
                "responses": {
                    "200": _reply(
                        "noted; an ended task is queued for archiving", ArchiveCallbackAck
                    ),
                    "400": _error("the body is not a Kling task object, or its task_id is unsafe"),
                    "401": BAD_SIGNATURE,
                    "403": _error("the token is not this kind's"),
                    "404": NO_ROUTE,
                    "413": _error("the body is larger than 64 KiB"),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/archive": {
            "post": {
                "operationId": "requestArchive",
                "summary": "Archive the videos of any tasks of the account",
                "requestBody": _body(ArchiveRequest, "the tasks whose videos to keep"),
                "responses": {
                    "202": _reply("queued", ArchiveQueued),
                    "413": _error("the body is larger than 256 KiB"),
                    "422": _error("the request breaks a rule; `details` names each field and rule"),
                    "503": UNAVAILABLE,
                },
            },
            "get": {
                "operationId": "listArchive",
                "summary": "The archive's records, newest first, with counts per state",
                "parameters": [STATE, LIMIT_VIDEOS, BEFORE],
                "responses": {
                    "200": _reply("a page of records", ArchivePage),
                    "422": MALFORMED_QUERY,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/archive.jsonl": {
            "get": {
                "operationId": "exportArchive",
                "summary": "The whole archive, one record (a VideoView) per line",
                "parameters": [STATE],
                "responses": {
                    "200": {
                        "description": "JSON lines, each a VideoView",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    "422": MALFORMED_QUERY,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/archive/callback-urls": {
            "get": {
                "operationId": "archiveCallbackUrls",
                "summary": "The account-wide archive callback URL of each task kind",
                "responses": {
                    "200": _json("a URL per task kind", _callback_urls_schema()),
                },
            },
        },
        "/spend": {
            "get": {
                "operationId": "spend",
                "summary": "Units the provider reported: today's per chain, the last days, in all",
                "parameters": [DAYS],
                "responses": {
                    "200": _reply("the figures", SpendReport),
                    "422": MALFORMED_QUERY,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/account": {
            "get": {
                "operationId": "account",
                "summary": "The account panel: provider slots, today's units, refused creates",
                "responses": {
                    "200": _reply("the panel", AccountView),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/spend/budget": {
            "put": {
                "operationId": "setBudget",
                "summary": "Set the account's daily units for every process at once",
                "requestBody": _body(BudgetRequest, "the daily units (null: DAILY_UNIT_BUDGET)"),
                "responses": {
                    "200": _reply("the budget now in force", BudgetReply),
                    "413": _error("the body is larger than 256 KiB"),
                    "422": _error("the request breaks a rule; `details` names each field and rule"),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The operator's dashboard page (open: it holds no data)",
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            },
        },
        "/static/{name}": {
            "get": {
                "operationId": "dashboardAsset",
                "summary": "The dashboard's script and styles (open)",
                "parameters": [_path("name", {"type": "string", "minLength": 1}, "the file")],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("no such file"),
                },
            },
        },
        "/archive/{video_id}/url": {
            "get": {
                "operationId": "videoLink",
                "summary": "A short-lived link to an archived video, for the dashboard's player",
                "parameters": [VIDEO_ID],
                "responses": {
                    "200": _reply("the link", VideoLink),
                    "404": _error("no such video, or it is not archived"),
                    "503": UNAVAILABLE,
                },
            },
        },
        "/files/{video_id}": {
            "get": {
                "operationId": "videoFile",
                "summary": "An archived file, for a signed link from /archive/{video_id}/url",
                "parameters": [
                    VIDEO_ID,
                    _query("expires", {"type": "integer"}, "the link's expiry (Unix time)"),
                    _query("sig", {"type": "string"}, "the link's signature"),
                ],
                "responses": {
                    "200": {
                        "description": "the video",
                        "content": {
                            "video/mp4": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "206": {
                        "description": "the byte range asked for",
                        "content": {
                            "video/mp4": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "403": _error("the link is not valid or has expired"),
                    "404": _error("no archived file for this video here"),
                    "416": {"description": "the byte range asked for is not in the file"},
                    "503": UNAVAILABLE,
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Archive and spend gauges in the Prometheus text format",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": UNAVAILABLE,
                },
            },
        },
    }


WITH_BODY = frozenset({"post", "put", "patch"})


def _secure(path: str, method: str, operation: dict[str, Any], bearer: bool) -> dict[str, Any]:
    """The operation with its security: bearer (401) and JSON bodies (415)."""
    responses = dict(operation["responses"])
    if bearer:
        responses["401"] = _error("missing or wrong API token (Authorization: Bearer $API_TOKEN)")
    if method in WITH_BODY:
        responses["415"] = _error("the body was not sent as JSON (Content-Type: application/json)")
    secured = {**operation, "responses": responses}
    if bearer:
        secured["security"] = [{BEARER: []}]
    return secured


def _version() -> str:
    try:
        return metadata.version("kling-chain")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def document(*, bearer: bool, is_open: Callable[[str], bool]) -> dict[str, Any]:
    """The OpenAPI 3.1 document. ``bearer``: whether the API asks for its token (``API_AUTH``);
    ``is_open``: whether a path is let through without it (``RequireToken.is_open``)."""
    _, schemas = models_json_schema(MODELS, ref_template=REF)
    paths = {
        path: {
            method: {**op, "security": []} if is_open(path) else _secure(path, method, op, bearer)
            for method, op in ops.items()
        }
        for path, ops in _operations().items()
    }
    components: dict[str, Any] = {"schemas": schemas["$defs"]}
    if bearer:
        components["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "the service's API_TOKEN",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kling-chain",
            "version": _version(),
            "description": "Chains of Kling video extensions, paid for once per step, and an "
            "archive of every video before the provider deletes it.",
        },
        "paths": paths,
        "components": components,
    }
