"""Reply parsing, request validation and request bodies: no network."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kling.errors import (
    AccountError,
    InvalidRequest,
    KlingError,
    MalformedReply,
    NotFound,
    RetryableError,
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


def task_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": "task-2",
        "task_status": "succeed",
        "task_status_msg": "",
        "task_info": {
            "parent_video": {"id": "vid-1", "url": "https://cdn.example/1.mp4", "duration": "5.1"},
            "external_task_id": "chain-7-step-2",
        },
        "task_result": {
            "videos": [{"id": "vid-2", "url": "https://cdn.example/2.mp4", "duration": "10.1"}]
        },
        "created_at": 1722769557708,
        "updated_at": 1722769860123,
    }
    data.update(overrides)
    return data


def envelope(data: Any, **overrides: Any) -> dict[str, Any]:
    body = {"code": 0, "message": "SUCCEED", "request_id": "req-1", "data": data}
    body.update(overrides)
    return body


# --- statuses and kinds ---


def test_status_terminal_and_rank() -> None:
    assert [s.terminal for s in TaskStatus] == [False, False, True, True]
    assert [s.rank for s in TaskStatus] == [0, 1, 2, 2]
    assert TaskStatus.PROCESSING.rank < TaskStatus.SUCCEED.rank
    assert TaskStatus("succeed") is TaskStatus.SUCCEED


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (TaskKind.VIDEO_EXTEND, "videos/video-extend"),
        (TaskKind.TEXT2VIDEO, "videos/text2video"),
        (TaskKind.IMAGE2VIDEO, "videos/image2video"),
    ],
)
def test_kind_paths(kind: TaskKind, path: str) -> None:
    assert kind.path == path


# --- parsing ---


def test_parse_enveloped_reply() -> None:
    task = parse_task(envelope(task_data()))

    assert task == Task(
        task_id="task-2",
        status=TaskStatus.SUCCEED,
        status_msg=None,
        created_at_ms=1722769557708,
        updated_at_ms=1722769860123,
        videos=(Video("vid-2", "https://cdn.example/2.mp4", 10.1),),
        parent_video=Video("vid-1", "https://cdn.example/1.mp4", 5.1),
        external_task_id="chain-7-step-2",
    )
    assert task.video == Video("vid-2", "https://cdn.example/2.mp4", 10.1)


def test_parse_bare_callback_body() -> None:
    assert parse_task(task_data()) == parse_task(envelope(task_data()))


def test_parse_create_reply_with_only_the_basics() -> None:
    task = parse_task(envelope({"task_id": "t1", "task_status": "submitted", "created_at": 1}))

    assert task == Task("t1", TaskStatus.SUBMITTED, created_at_ms=1, updated_at_ms=None)
    assert task.video is None
    assert task.parent_video is None


@pytest.mark.parametrize(("raw", "seconds"), [("10.1", 10.1), (10.1, 10.1), (5, 5.0), (" 4 ", 4.0)])
def test_durations_as_strings_or_numbers(raw: Any, seconds: float) -> None:
    videos = {"videos": [{"id": "v", "url": "https://x/v.mp4", "duration": raw}]}

    task = parse_task(task_data(task_result=videos))

    assert task.video is not None
    assert task.video.duration == seconds


@pytest.mark.parametrize("video", [{}, {"duration": None}, {"duration": ""}, {"duration": " "}])
def test_a_duration_left_out_reads_as_unknown(video: dict[str, Any]) -> None:
    # Some relays omit it; whoever uses the video decides what an unknown length means.
    videos = {"videos": [{"id": "v", "url": "https://x/v.mp4", **video}]}
    parent = {"parent_video": {"id": "p", "url": "https://x/p.mp4", **video}}

    task = parse_task(task_data(task_result=videos, task_info=parent))

    assert task.video == Video("v", "https://x/v.mp4", None)
    assert task.parent_video == Video("p", "https://x/p.mp4", None)


def test_failed_task_reason_comes_from_task_status_msg() -> None:
    data = task_data(
        task_status="failed", task_status_msg="content safety check failed", task_result={}
    )

    task = parse_task(envelope(data, message="SUCCEED"))

    assert task.status is TaskStatus.FAILED
    assert task.status_msg == "content safety check failed"
    assert task.videos == ()


def test_lenient_details() -> None:
    data = task_data(
        task_id=123456,
        task_status=" Processing ",
        created_at="1722769557708",
        task_info={"parent_video": {}},
        task_result=None,
        external_task_id="beside-task-id",
    )

    task = parse_task(envelope(data, request_id=None))

    assert task.task_id == "123456"
    assert task.status is TaskStatus.PROCESSING
    assert task.created_at_ms == 1722769557708
    assert task.parent_video is None
    assert task.external_task_id == "beside-task-id"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (envelope(task_data(task_id=None)), "data.task_id is missing"),
        (task_data(task_id=None), "task.task_id is missing"),
        (envelope(task_data(task_id="  ")), "data.task_id must be a non-empty string"),
        (envelope(task_data(task_status="done")), "'done' is not a known status"),
        (envelope(task_data(task_status=None)), "data.task_status must be a string, got null"),
        (envelope(None), "envelope data must be an object, got null"),
        (envelope([1]), "envelope data must be an object, got list"),
        (envelope(task_data(), code="zero"), "envelope code must be an integer"),
        (envelope(task_data(task_result={"videos": {}})), "videos must be a list"),
        (
            envelope(task_data(task_result={"videos": [{"id": "v", "url": "", "duration": 1}]})),
            "videos[0].url must be a non-empty string",
        ),
        (
            envelope(task_data(task_result={"videos": [{"url": "u", "duration": 1}]})),
            "videos[0].id is missing",
        ),
        (
            envelope(task_data(task_result={"videos": [{"id": "v", "url": "u", "duration": "x"}]})),
            "duration must be a number of seconds, got 'x'",
        ),
        (
            envelope(
                task_data(task_result={"videos": [{"id": "v", "url": "u", "duration": True}]})
            ),
            "duration must be a number of seconds",
        ),
        (
            envelope(
                task_data(task_result={"videos": [{"id": "v", "url": "u", "duration": "nan"}]})
            ),
            "duration must be a number of seconds",
        ),
        (envelope(task_data(created_at="yesterday")), "data.created_at must be Unix milliseconds"),
        (envelope(task_data(task_info="x")), "data.task_info must be an object, got str"),
        (
            envelope(task_data(task_info={"parent_video": "v"})),
            "data.task_info.parent_video must be an object",
        ),
        (envelope(task_data(task_status_msg=7)), "data.task_status_msg must be a string"),
    ],
)
def test_malformed_replies(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedReply) as caught:
        parse_task(body)

    assert fragment in caught.value.message


def test_not_an_object() -> None:
    with pytest.raises(MalformedReply, match="expected a JSON object, got list"):
        parse_task([])  # type: ignore[arg-type]


def test_malformed_envelope_keeps_request_id() -> None:
    with pytest.raises(MalformedReply) as caught:
        parse_task(envelope(None, request_id="req-9"))

    assert caught.value.request_id == "req-9"


@pytest.mark.parametrize(
    ("code", "expected"),
    [(1102, AccountError), (1203, NotFound), (1303, RetryableError), ("5001", RetryableError)],
)
def test_non_zero_code_in_envelope_raises_the_mapped_error(
    code: Any, expected: type[KlingError]
) -> None:
    with pytest.raises(expected) as caught:
        parse_task(envelope(None, code=code, message="nope", request_id="req-3"))

    assert caught.value.message == "nope"
    assert caught.value.code == int(code)
    assert caught.value.request_id == "req-3"


# --- extend requests ---


def test_extend_body_omits_none_fields() -> None:
    request = ExtendRequest(video_id="vid-1", task_id="task-1")

    assert request.to_json() == {"video_id": "vid-1", "task_id": "task-1"}


def test_extend_body_with_every_field() -> None:
    request = ExtendRequest(
        video_id=" vid-1 ",
        task_id="task-1",
        prompt="the camera pulls back",
        negative_prompt="blur",
        cfg_scale=0.0,
        callback_url="https://hooks.example/kling/abc",
        external_task_id="chain-7-step-2",
    )

    request.validate()
    assert request.to_json() == {
        "video_id": "vid-1",
        "task_id": "task-1",
        "prompt": "the camera pulls back",
        "negative_prompt": "blur",
        "cfg_scale": 0.0,
        "callback_url": "https://hooks.example/kling/abc",
        "external_task_id": "chain-7-step-2",
    }


def test_extend_body_without_parent_task_id() -> None:
    request = ExtendRequest(video_id="vid-1", task_id="task-1", prompt="more")

    assert request.to_json(send_parent_task_id=False) == {"video_id": "vid-1", "prompt": "more"}


def test_prompt_at_the_limit_is_accepted() -> None:
    ExtendRequest(video_id="v", prompt="x" * MAX_PROMPT_CHARS).validate()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ExtendRequest(video_id=""), "video_id must not be empty"),
        (ExtendRequest(video_id="   "), "video_id must not be empty"),
        (ExtendRequest(video_id=None), "video_id is required"),  # type: ignore[arg-type]
        (ExtendRequest(video_id=5), "video_id must be a string, got int"),  # type: ignore[arg-type]
        (ExtendRequest(video_id="v", task_id=" "), "task_id must not be empty"),
        (
            ExtendRequest(video_id="v", prompt="x" * 2501),
            "prompt is 2501 characters; the limit is 2500",
        ),
        (
            ExtendRequest(video_id="v", negative_prompt="x" * 2612),
            "negative_prompt is 2612 characters; the limit is 2500",
        ),
        (ExtendRequest(video_id="v", cfg_scale=1.5), "cfg_scale must be between 0 and 1, got 1.5"),
        (
            ExtendRequest(video_id="v", cfg_scale=-0.1),
            "cfg_scale must be between 0 and 1, got -0.1",
        ),
        (
            ExtendRequest(video_id="v", cfg_scale=math.nan),
            "cfg_scale must be between 0 and 1, got nan",
        ),
        (
            ExtendRequest(video_id="v", cfg_scale=math.inf),
            "cfg_scale must be between 0 and 1, got inf",
        ),
        (
            ExtendRequest(video_id="v", cfg_scale="0.5"),  # type: ignore[arg-type]
            "cfg_scale must be a number, got str",
        ),
        (
            ExtendRequest(video_id="v", cfg_scale=True),
            "cfg_scale must be a number, got bool",
        ),
        (
            ExtendRequest(video_id="v", callback_url="ftp://hooks.example/x"),
            "callback_url must be an absolute http:// or https:// URL",
        ),
        (
            ExtendRequest(video_id="v", callback_url="/relative/path"),
            "callback_url must be an absolute http:// or https:// URL",
        ),
        (
            ExtendRequest(video_id="v", callback_url="https://hooks.example/a b"),
            "callback_url must not contain whitespace",
        ),
        (ExtendRequest(video_id="v", external_task_id=""), "external_task_id must not be empty"),
    ],
)
def test_extend_validation_messages(request_: ExtendRequest, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_.validate()

    assert caught.value.message == message


def test_callback_url_secret_is_not_echoed() -> None:
    request = ExtendRequest(video_id="v", callback_url="gopher://h/secret-token")

    with pytest.raises(InvalidRequest) as caught:
        request.validate()

    assert "secret-token" not in str(caught.value)


# --- text2video requests ---


def test_text2video_body_sends_duration_as_string() -> None:
    request = Text2VideoRequest(prompt="a fox in the snow", duration=10, mode="pro")

    request.validate()
    assert request.to_json() == {"prompt": "a fox in the snow", "duration": "10", "mode": "pro"}


def test_text2video_body_with_every_field() -> None:
    request = Text2VideoRequest(
        prompt="a fox",
        negative_prompt="people",
        cfg_scale=0.5,
        aspect_ratio="16:9",
        model_name="kling-v1-6",
        mode="std",
        callback_url="http://127.0.0.1:8000/cb/t",
        external_task_id="chain-7-step-1",
    )

    request.validate()
    assert request.to_json() == {
        "prompt": "a fox",
        "negative_prompt": "people",
        "cfg_scale": 0.5,
        "duration": "5",
        "aspect_ratio": "16:9",
        "model_name": "kling-v1-6",
        "mode": "std",
        "callback_url": "http://127.0.0.1:8000/cb/t",
        "external_task_id": "chain-7-step-1",
    }


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Text2VideoRequest(prompt=""), "prompt must not be empty"),
        (Text2VideoRequest(prompt="x" * 2501), "prompt is 2501 characters; the limit is 2500"),
        (Text2VideoRequest(prompt="p", duration=7), "duration must be 5 or 10 seconds, got 7"),
        (
            Text2VideoRequest(prompt="p", duration="5"),  # type: ignore[arg-type]
            "duration must be 5 or 10 seconds, got '5'",
        ),
        (
            Text2VideoRequest(prompt="p", cfg_scale=1.5),
            "cfg_scale must be between 0 and 1, got 1.5",
        ),
        (Text2VideoRequest(prompt="p", mode=" "), "mode must not be empty"),
        (
            Text2VideoRequest(prompt="p", callback_url="hooks.example/x"),
            "callback_url must be an absolute http:// or https:// URL",
        ),
    ],
)
def test_text2video_validation_messages(request_: Text2VideoRequest, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_.validate()

    assert caught.value.message == message
