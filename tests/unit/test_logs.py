"""Log lines (worker.logs): the JSON fields, the redaction, text lines, the setting."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import logs
from worker.logs import JsonFormatter, json_line, redact
from worker.settings import ConfigError, Settings, get_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'POST /callbacks/58f344df/2/Zk3sEcReT HTTP/1.1" 200',
            'POST /callbacks/58f344df/2/<token> HTTP/1.1" 200',
        ),
        (
            "callback_url http://web:8000/callbacks/58f344df/0/Zk3sEcReT",
            "callback_url http://web:8000/callbacks/58f344df/0/<token>",
        ),
        (
            "POST /callbacks/archive/video-extend/Zk3sEcReT",
            "POST /callbacks/archive/video-extend/<token>",
        ),
        (
            "GET https://b.s3.amazonaws.com/v.mp4?X-Amz-Signature=ab12&X-Amz-Expires=60 failed",
            "GET https://b.s3.amazonaws.com/v.mp4?<redacted> failed",
        ),
        ("GET /files/v.mp4?expires=1700&sig=ab12 HTTP/1.1", "GET /files/v.mp4?<redacted> HTTP/1.1"),
        (
            "http://h/callbacks/archive/text2video/Zk3sEcReT?x=1",
            "http://h/callbacks/archive/text2video/<token>?<redacted>",
        ),
        ("Authorization: Bearer sk-live-123.abc", "Authorization: Bearer <redacted>"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJhayJ9.c2lnbmF0dXJl end", "jwt <redacted> end"),
        (
            "token=abc sig=def Signature=ghi Expires=1700 api_key=k",
            "token=<redacted> sig=<redacted> Signature=<redacted> Expires=<redacted> "
            "api_key=<redacted>",
        ),
        ("chain 58f344df created: 5 s -> 30 s", "chain 58f344df created: 5 s -> 30 s"),
        ("step 58f344df/3: task task_Ab-1 succeed", "step 58f344df/3: task task_Ab-1 succeed"),
        ("is 3/4 done? yes", "is 3/4 done? yes"),
    ],
)
def test_secrets_are_redacted_and_the_rest_is_kept(text: str, expected: str) -> None:
    assert redact(text) == expected


def record(msg: str, *args: Any, name: str = "worker.runner", **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, None)
    made.__dict__.update(extra)
    return made


def every_pattern(text: str) -> str:
    """``redact`` without its short cuts: every pattern on every text."""
    text = logs._QUERY.sub(rf"\1?{logs.REDACTED}", text)
    text = logs._CALLBACK_TOKEN.sub(r"\1<token>", text)
    text = logs._BEARER.sub(rf"\1{logs.REDACTED}", text)
    text = logs._JWT.sub(logs.REDACTED, text)
    return logs._SECRET_VALUE.sub(rf"\1={logs.REDACTED}", text)


PIECES = st.sampled_from(
    [
        "?",
        "=",
        "&",
        "/",
        "/callbacks/",
        "archive/",
        "c1/2/",
        "BeArEr ",
        "bearer\t",
        "eyJ",
        "eyJhbGci.eyJzdWIi.sig",
        "token",
        "Signature",
        "x-amz-credential",
        "sig",
        "expires",
        "https://",
        "h",
        " ",
        '"',
        "<",
        "#",
        "\u212a",
        "tok",
        "Zk3s",
        "0",
    ]
)


@given(st.lists(PIECES, max_size=14).map("".join))
def test_the_short_cuts_never_change_what_is_redacted(text: str) -> None:
    assert redact(text) == every_pattern(text)


def test_a_line_holds_the_common_fields_and_the_given_ones() -> None:
    made = record(
        "step %s/%s: created task %s",
        "c1",
        2,
        "task_9",
        chain_id="c1",
        step=2,
        task_id="task_9",
        event="step.created",
        color_message="ignored",
    )
    made.created = 1_700_000_000.25

    line = JsonFormatter("worker").format(made)

    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "level": "INFO",
        "logger": "worker.runner",
        "service": "worker",
        "message": "step c1/2: created task task_9",
        "chain_id": "c1",
        "step": 2,
        "task_id": "task_9",
        "event": "step.created",
    }


def test_fields_that_do_not_apply_are_left_out() -> None:
    line = json.loads(JsonFormatter("web").format(record("hello", step=None)))
    assert set(line) == {"time", "level", "logger", "service", "message"}


def test_messages_and_tracebacks_are_redacted_and_stay_on_one_line() -> None:
    try:
        raise RuntimeError("GET https://cdn/x.mp4?Signature=SECRET1 failed")
    except RuntimeError:
        made = logging.LogRecord("w", logging.ERROR, __file__, 1, "%s", None, sys.exc_info())
    made.msg, made.args = "to %s\nthen", ("http://h/callbacks/c/1/SECRET2",)

    line = JsonFormatter("worker").format(made)

    assert "\n" not in line
    assert "SECRET1" not in line
    assert "SECRET2" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "to http://h/callbacks/c/1/<token>\nthen"
    assert "RuntimeError: GET https://cdn/x.mp4?<redacted> failed" in parsed["exc"]


def test_an_access_line_becomes_fields_without_its_token() -> None:
    made = record(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "POST",
        "/callbacks/c1/0/SECRET?x=1",
        "1.1",
        200,
        name="uvicorn.access",
    )

    line = json.loads(JsonFormatter("web").format(made))

    assert line["event"] == "http.request"
    assert (line["method"], line["path"], line["status"]) == (
        "POST",
        "/callbacks/c1/0/<token>?<redacted>",
        200,
    )
    assert "SECRET" not in json.dumps(line)


def test_the_context_adds_fields_without_overriding_given_ones() -> None:
    formatter = JsonFormatter("worker", context=lambda: {"celery_task_id": "t1", "event": "x"})
    line = json.loads(formatter.format(record("m", event="step.created")))
    assert (line["celery_task_id"], line["event"]) == ("t1", "step.created")


def test_a_line_without_a_record() -> None:
    line = json.loads(json_line("worker", "worker: Warm shutdown (MainProcess)", logger="celery"))
    assert (line["service"], line["level"], line["logger"]) == ("worker", "INFO", "celery")
    assert line["message"] == "worker: Warm shutdown (MainProcess)"


def stderr_of(script: str) -> list[str]:
    """The lines a fresh interpreter running ``script`` writes to stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stderr.splitlines()


def logged_by(script: str) -> list[dict[str, Any]]:
    """What a fresh interpreter running ``script`` writes to stderr, as JSON lines."""
    return [json.loads(line) for line in stderr_of(script)]


def test_use_json_makes_the_process_log_json_lines_warnings_too() -> None:
    lines = logged_by(
        "import logging, warnings\n"
        "from worker.logs import use_json\n"
        "use_json('web')\n"
        "logging.getLogger('webhook.app').info('hi %s', 'Bearer abc', extra={'chain_id': 'c'})\n"
        "logging.getLogger('webhook.app').debug('not shown')\n"
        "warnings.warn('careful')\n"
    )
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("webhook.app", "INFO"),
        ("py.warnings", "WARNING"),
    ]
    assert lines[0]["message"] == "hi Bearer <redacted>"
    assert lines[0]["chain_id"] == "c"
    assert "careful" in lines[1]["message"]
    assert {line["service"] for line in lines} == {"web"}


def test_a_second_role_does_not_take_over_unless_told() -> None:
    lines = logged_by(
        "import logging\n"
        "from worker.logs import use_json\n"
        "use_json('web')\n"
        "use_json('worker', replace=False)\n"  # the web imports the Celery app to send tasks
        "logging.warning('one')\n"
        "use_json('worker')\n"
        "logging.warning('two')\n"
    )
    assert [(line["message"], line["service"]) for line in lines] == [
        ("one", "web"),
        ("two", "worker"),
    ]


def test_use_text_prints_info_lines_with_time_level_and_logger_redacted() -> None:
    lines = stderr_of(
        "import logging\n"
        "from worker.logs import use_text\n"
        "use_text()\n"
        "logging.getLogger('webhook.app').info('to %s', 'http://h/callbacks/c/1/SECRET')\n"
        "logging.getLogger('webhook.app').debug('not shown')\n"
        "logging.getLogger('webhook.app').warning('careful')\n"
    )
    assert len(lines) == 2, lines
    assert lines[0].startswith("[20")
    assert lines[0].endswith(": INFO/webhook.app] to http://h/callbacks/c/1/<token>")
    assert lines[1].endswith(": WARNING/webhook.app] careful")


def test_use_text_leaves_a_root_logger_that_has_a_handler() -> None:
    lines = stderr_of(
        "import logging, sys\n"
        "from worker.logs import use_text\n"
        "logging.basicConfig(stream=sys.stderr, format='mine %(message)s')\n"
        "use_text()\n"
        "logging.warning('one')\n"
    )
    assert lines == ["mine one"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_default_stays_text(env: pytest.MonkeyPatch) -> None:
    assert Settings().log_format == "text"


def test_log_format_json_is_read_from_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("LOG_FORMAT", "json")
    assert Settings().log_format == "json"


def test_an_unknown_log_format_is_refused_by_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match="LOG_FORMAT: Input should be 'text' or 'json'"):
        get_settings()


def test_a_web_process_that_cannot_start_says_why_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from webhook.app import create_app

    settings = Settings(log_format="json", callback_secret="s" * 32, api_token=None)
    with pytest.raises(SystemExit) as exited:
        create_app(settings)
    assert exited.value.code == 2
    line = json.loads(capsys.readouterr().err)
    assert (line["level"], line["service"]) == ("CRITICAL", "web")
    assert "API_TOKEN is not set" in line["message"]
