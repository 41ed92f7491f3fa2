"""Command line: run the fake Kling gateway with uvicorn.

python -m kling.fake --port 8090 --delay 0.5 --api-key sk-test --seed-video 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import uvicorn

from kling.fake.app import Gateway, create_app, gateway_of
from kling.fake.config import VIDEO_FORMATS, FakeConfig
from kling.fake.errors import ConnectionCut
from kling.fake.faults import Faults, FaultsError
from kling.models import VIDEO_LIFETIME_SECONDS

LOG_LEVELS = ("debug", "info", "warning", "error")
log = logging.getLogger("kling.fake")

EPILOG = """\
admin API (no auth):
  POST /_fake/videos {"duration": 5.0, "video_id"?, "task_id"?}  seed a finished video
  POST /_fake/clock {"advance_seconds": N}   move the fake clock (expiry tests)
  GET|POST /_fake/faults                     read / JSON-merge the fault knobs
  POST /_fake/reset                          back to the start-up state
  GET /_fake/stats                           counters (billed creates per parent...)
fault knobs (--faults and /_fake/faults):
  callbacks {drop, duplicate, delay_seconds, reorder}, callback_envelope,
  callback_signatures: valid|rotated|none|wrong|stale (with --webhook-secret),
  fail_next_creates {count, http_status, code, message},
  drop_next_creates {count, mode: reset|hang, hang_seconds},
  fail_next_tasks {count, message}, cut_next_downloads {count, after_bytes},
  redirect_next_downloads {count, location ("": the same URL), status},
  download_bytes_per_second, ranges, require_parent_task_id, support_external_task_id,
  result_durations: whole|segment|missing (how result videos report their length),
  unit_cost, failed_unit_cost: final_unit_deduction of finished tasks ("1", "0"; null: omitted)
  task_seconds: [low, high] (each new task takes a time drawn from that spread; null: --delay)
"""


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535: {text!r}")
    return value


def _faults(text: str) -> dict[str, Any]:
    try:
        patch = json.loads(text)
        Faults().merged(patch)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    except FaultsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert isinstance(patch, dict)
    return patch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kling.fake",
        description="Run the fake Kling gateway: the Kling video API (bare and under /kling), "
        "an admin API under /_fake and video files under /files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=8090, help="port (0: any free port)")
    parser.add_argument(
        "--delay", type=_non_negative, default=3.0, help="seconds a task takes (default 3.0)"
    )
    parser.add_argument("--api-key", help="static bearer key (env KLING_API_KEY)")
    parser.add_argument("--access-key", help="access key for JWT auth (env KLING_ACCESS_KEY)")
    parser.add_argument("--secret-key", help="secret key for JWT auth (env KLING_SECRET_KEY)")
    parser.add_argument(
        "--webhook-secret",
        help="whsec_... secret to sign callbacks with, as the official API does once a secret "
        "is made in its console (env KLING_WEBHOOK_SECRET; default: unsigned)",
    )
    parser.add_argument(
        "--public-url", help="base of video URLs (default: the base URL of each request)"
    )
    parser.add_argument(
        "--video-format",
        choices=VIDEO_FORMATS,
        default="auto",
        help="video files: mp4 (a playable test pattern, needs PyAV from the demo extra), "
        "random (random bytes of --bytes-per-second) or auto (default: mp4 when PyAV is "
        "installed and --bytes-per-second is not given, else random)",
    )
    parser.add_argument(
        "--bytes-per-second",
        type=_positive_int,
        default=None,
        help="bytes per second of video of random files (default 200000; not used by mp4)",
    )
    parser.add_argument(
        "--expire-after",
        type=_positive,
        default=VIDEO_LIFETIME_SECONDS,
        help="seconds a video lives (default 30 days)",
    )
    parser.add_argument(
        "--faults", type=_faults, default={}, metavar="JSON", help="initial fault knobs"
    )
    parser.add_argument(
        "--seed-video",
        type=_positive,
        action="append",
        default=[],
        metavar="DURATION",
        help="start with a finished video of DURATION seconds (repeatable)",
    )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed the random draws of the fault knobs (task_seconds, callbacks.drop): the "
        "same seed gives the same sequence of task durations and dropped callbacks",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser


class _CutConnectionFilter(logging.Filter):
    """Logs a connection cut on purpose as one line instead of an application traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConnectionCut):
            record.msg, record.args = "fault injected: %s", (record.exc_info[1],)
            record.exc_info, record.exc_text, record.levelno = None, None, logging.INFO
            record.levelname = "INFO"
        return True


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host = self.config.host
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        gateway = self.gateway
        for video in gateway.seeded:
            summary = gateway.video_summary(video, url)
            print(
                f"seeded video {summary['video_id']} ({video.duration:.1f} s) "
                f"made by task {summary['task_id']}: {summary['url']}",
                flush=True,
            )
        print(
            f"fake Kling gateway listening on {url} (delay {gateway.config.delay} s)",
            flush=True,
        )


def _auth_summary(gateway: Gateway) -> str:
    credentials = gateway.credentials
    modes = [
        name
        for name, enabled in (
            ("static API key", bool(credentials.api_key)),
            (f"AK/SK JWT (access key {credentials.access_key})", credentials.jwt_enabled),
        )
        if enabled
    ]
    return " or ".join(modes) if modes else "none required"


def _format_summary(config: FakeConfig) -> str:
    if config.content_format() == "mp4":
        ignored = " (--bytes-per-second is not used)" if config.bytes_per_second else ""
        return f"mp4 (H.264 test pattern showing the elapsed time){ignored}"
    return f"random bytes, {config.random_bytes_per_second()} per second of video"


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> FakeConfig:
    """The ``FakeConfig`` of parsed flags; keys fall back to ``KLING_*`` variables.

    Raises ``ValueError`` when the combination is not valid.
    """
    return FakeConfig(
        delay=args.delay,
        api_key=args.api_key or environ.get("KLING_API_KEY") or None,
        access_key=args.access_key or environ.get("KLING_ACCESS_KEY") or None,
        secret_key=args.secret_key or environ.get("KLING_SECRET_KEY") or None,
        webhook_secret=args.webhook_secret or environ.get("KLING_WEBHOOK_SECRET") or None,
        public_url=args.public_url,
        bytes_per_second=args.bytes_per_second,
        video_format=args.video_format,
        expire_after=args.expire_after,
        faults=args.faults,
        seed_videos=tuple(args.seed_video),
        random_seed=args.random_seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until interrupted; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=3,
    )
    logging.getLogger("uvicorn.error").addFilter(_CutConnectionFilter())
    gateway = gateway_of(app)
    log.info("auth: %s", _auth_summary(gateway))
    log.info("video files: %s", _format_summary(config))
    server = _Server(uvicorn_config, gateway)
    try:
        server.run()
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1
