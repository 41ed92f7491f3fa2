"""Client for the Kling task API: create and query video tasks, map failures to types.

::

    from kling import ExtendRequest, KlingClient, TaskKind, auth_from

    client = KlingClient("https://api-singapore.klingai.com", auth_from(
        api_key=None, access_key="AK...", secret_key="SK..."), send_parent_task_id=False)
    task = client.create(
        TaskKind.VIDEO_EXTEND, ExtendRequest(video_id="...", external_task_id="chain-1-step-2")
    )
"""

from kling.auth import Auth, BearerKey, JwtAuth, auth_from
from kling.client import USER_AGENT, KlingClient, classify_transport_error, reply_payload
from kling.errors import (
    PERMANENT_CODES,
    RETRYABLE_CODES,
    AccountError,
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
    MAX_PROMPT_CHARS,
    ExtendRequest,
    Task,
    TaskKind,
    TaskStatus,
    Text2VideoRequest,
    Video,
    parse_task,
)

__all__ = [
    "MAX_PROMPT_CHARS",
    "PERMANENT_CODES",
    "RETRYABLE_CODES",
    "USER_AGENT",
    "AccountError",
    "AmbiguousCreate",
    "Auth",
    "AuthError",
    "BearerKey",
    "ExtendRequest",
    "InvalidRequest",
    "JwtAuth",
    "KlingClient",
    "KlingError",
    "MalformedReply",
    "NotFound",
    "PermanentError",
    "RetryableError",
    "Task",
    "TaskKind",
    "TaskStatus",
    "Text2VideoRequest",
    "Video",
    "auth_from",
    "classify_transport_error",
    "parse_task",
    "provider_error",
    "reply_payload",
]
