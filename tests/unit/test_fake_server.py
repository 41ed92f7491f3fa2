"""The fake gateway's command line: flags, environment fallbacks, refusals."""

from __future__ import annotations

import logging

import pytest

from kling.fake.errors import ConnectionCut
from kling.fake.server import _CutConnectionFilter, build_parser, config_from_args

ENV = {"KLING_API_KEY": "env-key", "KLING_ACCESS_KEY": "env-ak", "KLING_SECRET_KEY": "env-sk"}


def config(argv: list[str], environ: dict[str, str] | None = None) -> object:
    return config_from_args(build_parser().parse_args(argv), environ or {})


def test_defaults() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.delay, args.log_level) == ("127.0.0.1", 8090, 3.0, "info")
    made = config_from_args(args, {})
    assert (made.api_key, made.access_key, made.secret_key) == (None, None, None)
    assert made.seed_videos == ()
    assert made.expire_after == 30 * 24 * 3600


def test_keys_fall_back_to_the_environment_and_flags_win() -> None:
    made = config_from_args(build_parser().parse_args([]), ENV)
    assert (made.api_key, made.access_key, made.secret_key) == ("env-key", "env-ak", "env-sk")
    made = config_from_args(build_parser().parse_args(["--api-key", "flag-key"]), ENV)
    assert made.api_key == "flag-key"
    assert "env-sk" not in repr(made)
    assert "flag-key" not in repr(made)


def test_faults_and_seeds_from_flags() -> None:
    argv = ["--faults", '{"callbacks": {"drop": 0.5}}', "--seed-video", "5", "--seed-video", "9.5"]
    made = config_from_args(build_parser().parse_args(argv), {})
    assert made.initial_faults().callbacks.drop == 0.5
    assert made.seed_videos == (5.0, 9.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--delay", "-1"],
        ["--delay", "nan"],
        ["--port", "x"],
        ["--bytes-per-second", "0"],
        ["--expire-after", "0"],
        ["--seed-video", "0"],
        ["--faults", "{"],
        ["--faults", '{"ranges": "no"}'],
        ["--log-level", "loud"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--access-key", "a"], ["--secret-key", "s"], ["--public-url", "ftp://x"]],
)
def test_bad_combinations_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"."):
        config(argv)


def test_a_cut_connection_is_logged_as_one_line() -> None:
    cut = ConnectionCut("cut on purpose")
    message = "Exception in ASGI application\n"
    exc_info = (ConnectionCut, cut, None)
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, (), exc_info)
    assert _CutConnectionFilter().filter(record)
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert record.getMessage() == "fault injected: cut on purpose"
