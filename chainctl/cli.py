"""``kling-chain``: start and watch chains through the web API, run the fake gateway, the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from chainctl.client import (
    CREATE_ATTEMPTS,
    RETRY_PAUSE,
    ApiError,
    ArchivePage,
    ArchiveQueued,
    Budget,
    Chain,
    ChainPage,
    Client,
    ClientError,
    Spend,
    TransportError,
)
from kling.models import TaskKind

DEFAULT_API = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


class Api:
    """The service as the commands see it: the client, with the CLI's create retries (told
    on stderr) and its errors as ``CliError`` messages."""

    def __init__(self, base: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.client = Client(
            self.base,
            token=token,
            timeout=timeout,
            create_attempts=CREATE_ATTEMPTS,  # a lost reply: asked again with the same key
            retry_pause=RETRY_PAUSE,
            on_retry=_asking_again,
            key_prefix="cli-",
        )

    @contextlib.contextmanager
    def _told(self) -> Iterator[None]:
        """The client's errors as messages a user can act on."""
        try:
            yield
        except TransportError as exc:
            raise CliError(
                f"{exc}; is the web process running? (--api or KLING_CHAIN_API)"
            ) from exc
        except ApiError as exc:
            raise CliError(str(exc)) from exc
        except ClientError as exc:
            raise CliError(f"unexpected reply from the service at {self.base}: {exc}") from exc

    def create(self, body: Mapping[str, Any], *, key: str | None = None) -> Chain:
        """Start a chain. The Idempotency-Key makes a retry after a lost reply return the
        chain the first attempt started, never a second paid one."""
        with self._told():
            return self.client.create(body, idempotency_key=key)

    def get(self, chain_id: str) -> Chain:
        with self._told():
            return self.client.get(chain_id)

    def command(self, chain_id: str, name: str) -> Chain:
        """``cancel`` or ``resume`` a chain."""
        with self._told():
            if name == "cancel":
                return self.client.cancel(chain_id)
            return self.client.resume(chain_id)

    def wait(self, chain_id: str, out: TextIO, *, interval: float) -> Chain:
        with self._told():
            return self.client.wait(chain_id, on_progress=Progress(out), poll_seconds=interval)

    def archive(self, task_ids: list[str], kind: str) -> ArchiveQueued:
        with self._told():
            return self.client.archive(task_ids, kind=kind)

    def archived(self, state: str | None, limit: int) -> ArchivePage:
        with self._told():
            return self.client.archived(state=state, limit=limit)

    def spend(self, days: int) -> Spend:
        with self._told():
            return self.client.spend(days)

    def set_budget(self, units: str | None) -> Budget | None:
        with self._told():
            return self.client.set_budget(units)

    def recent(self, limit: int) -> ChainPage:
        with self._told():
            return self.client.list(limit=limit)


def _asking_again(exc: ClientError, key: str) -> None:
    why = exc.reason if isinstance(exc, TransportError) else f"HTTP {getattr(exc, 'status', '?')}"
    print(
        f"kling-chain: no reply ({why}); asking again with the same Idempotency-Key {key}",
        file=sys.stderr,
    )


def progress_line(chain: Chain, width: int = 30) -> str:
    """``[#####-----] 15.3 / 30 s  step 3 processing`` for a chain view."""
    duration = chain.duration or 0.0
    target = chain.target_seconds or 180.0
    filled = min(width, int(width * duration / target)) if target else 0
    bar = "#" * filled + "-" * (width - filled)
    last = chain.steps[-1] if chain.steps else None
    where = f"step {last.index} {last.status}" if last else chain.status
    note = f"  ({chain.waiting})" if chain.waiting else ""
    return f"[{bar}] {duration:5.1f} / {target:g} s  {where}{note}"


class Progress:
    """Shows a chain's progress line each time it changes: redrawn in place on a terminal,
    one line per change otherwise. The client's ``wait`` calls it with each new view."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = ""

    def __call__(self, chain: Chain) -> None:
        line = progress_line(chain)
        if line != self.shown:
            self.out.write(("\r\033[K" + line) if self.tty else line + "\n")
            self.shown = line
        if self.tty and chain.terminal:
            self.out.write("\n")
        self.out.flush()


def watch(api: Api, chain_id: str, out: TextIO, *, interval: float = 1.0) -> Chain:
    """Show progress until the chain ends; returns the final chain view."""
    return api.wait(chain_id, out, interval=interval)


def _seconds(value: float | None) -> str:
    return "length unknown" if value is None else f"{value:g} s"


def summary(chain: Chain) -> str:
    lines = [f"chain {chain.id}: {chain.status}"]
    if chain.end_reason:
        lines[0] += f" ({chain.end_reason})"
    if chain.error:
        lines.append(f"  error: {chain.error}")
    if chain.duration is not None:
        lines.append(f"  duration: {chain.duration:g} s")
    lines += units_lines(chain)
    for entry in chain.archive:
        if entry.status == "done":
            lines.append(
                f"  archived {entry.video_id} ({_seconds(entry.duration)}, "
                f"{entry.bytes} bytes) -> {entry.path}"
            )
        else:
            lines.append(f"  {entry.status} {entry.video_id}: {entry.error or ''}")
    done = [e for e in chain.archive if e.status == "done"]
    if done:
        newest = done[-1]
        lines.append(f"final video: {newest.path} ({_seconds(newest.duration)})")
    return "\n".join(lines)


def units_lines(chain: Chain) -> list[str]:
    """The chain's reported cost, in all and per step (``unknown`` when not reported)."""
    if chain.units is None:
        billed = any(s.task_id for s in chain.steps)
        return ["  units: unknown (the provider reported no cost)"] if billed else []
    note = "" if chain.units_complete else " (not every step reported its cost)"
    lines = [f"  units: {chain.units}{note}"]
    for step in chain.steps:
        if step.task_id:
            cost = "unknown" if step.units is None else step.units
            lines.append(f"    step {step.index} {step.kind} {step.status}: {cost}")
    return lines


def _budget_line(budget: Budget | None) -> str:
    if budget is None:
        return "no budget set"
    source = "" if budget.source == "DAILY_UNIT_BUDGET" else ", set through the API"
    return (
        f"budget: {budget.daily_units} units a day{source}: {budget.spent} spent, "
        f"{budget.reserved} reserved, {budget.remaining} left; resets at {budget.resets_at}"
    )


def _budget(args: argparse.Namespace) -> int:
    api = Api(args.api)
    if args.units is None:
        budget = api.spend(1).budget
    else:
        budget = api.set_budget(None if args.units in ("off", "none") else args.units)
    print(_budget_line(budget))
    return 0


def _spend(args: argparse.Namespace) -> int:
    report = Api(args.api).spend(args.days)
    if args.json:
        print(json.dumps(report.raw, indent=2))
        return 0
    today = report.today
    budget = report.budget
    print(f"today ({today.date} UTC): {today.units} units, {_budget_line(budget)}")
    if today.unpriced_steps:
        print(f"  {today.unpriced_steps} step(s) ended with no reported cost")
    for chain in today.chains:
        print(f"  chain {chain.id}: {chain.units}")
    for day in report.days[1:]:
        print(f"{day.date}: {day.units} units")
    print(f"in all: {report.total} units")
    return 0


def _extend(args: argparse.Namespace) -> int:
    if (args.video_id is None) == (args.text is None):
        raise CliError("give a VIDEO_ID to extend, or --text PROMPT to start from text")
    body: dict[str, Any] = {}
    if args.video_id:
        body["video_id"] = args.video_id
    if args.text:
        body["text_prompt"] = args.text
    for key in ("task_id", "negative_prompt", "cfg_scale", "source_duration", "steps", "max_units"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.to is not None:
        body["target_seconds"] = args.to
    if args.prompt:
        if len(args.prompt) == 1:
            body["prompt"] = args.prompt[0]
        else:
            body["prompts"] = args.prompt
    api = Api(args.api)
    chain = api.create(body, key=args.idempotency_key)
    print(f"chain {chain.id} queued")
    if not args.wait:
        print(f"follow it with: kling-chain status {chain.id}")
        return 0
    final = watch(api, chain.id, sys.stdout)
    print(summary(final))
    return 0 if final.status == "succeeded" else 1


def _status(args: argparse.Namespace) -> int:
    chain = Api(args.api).get(args.chain_id)
    print(json.dumps(chain.raw, indent=2) if args.json else summary(chain))
    return 0


def _command(args: argparse.Namespace) -> int:
    api = Api(args.api)
    chain = api.command(args.chain_id, args.command)
    print(f"chain {chain.id}: {args.command} accepted, now {chain.status}")
    if chain.waiting:
        print(f"  {chain.waiting}")
    if not args.wait:
        return 0
    final = watch(api, chain.id, sys.stdout)
    print(summary(final))
    return 0 if final.status == ("cancelled" if args.command == "cancel" else "succeeded") else 1


def _list(args: argparse.Namespace) -> int:
    for chain in Api(args.api).recent(args.limit).chains:
        print(f"{chain.id}  {chain.status:<9}  {progress_line(chain, width=10)}")
    return 0


def _archive(args: argparse.Namespace) -> int:
    queued = Api(args.api).archive(args.task_ids, args.kind)
    for task in queued.queued:
        print(f"queued {task.kind} task {task.task_id} for archiving")
    return 0


def _archived(args: argparse.Namespace) -> int:
    page = Api(args.api).archived(args.state, args.limit)
    if args.json:
        for video in page.videos:
            print(json.dumps(video.raw))
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in page.counts.items())
    print(f"videos: {counts}")
    for v in page.videos:
        risk = "  AT RISK" if v.at_risk else ""
        where = v.location or v.error or ""
        print(f"{v.video_id}  {v.state:<8}  {v.kind:<12} {where}{risk}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kling-chain", description=__doc__)
    parser.add_argument(
        "--api",
        default=os.environ.get("KLING_CHAIN_API", DEFAULT_API),
        help="base URL of the web process (default: %(default)s, or KLING_CHAIN_API)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ext = sub.add_parser("extend", help="extend a video step by step (or start from text)")
    ext.add_argument("video_id", nargs="?", help="id of the Kling video to extend")
    ext.add_argument("--text", metavar="PROMPT", help="start with text-to-video instead")
    ext.add_argument("--task-id", help="the task that produced VIDEO_ID (some gateways need it)")
    goal = ext.add_mutually_exclusive_group(required=True)
    goal.add_argument("--to", type=float, metavar="SECONDS", help="extend until at least this long")
    goal.add_argument("--steps", type=int, metavar="N", help="extend exactly N times")
    ext.add_argument(
        "--prompt", action="append", help="prompt for the steps; repeat it for one per step"
    )
    ext.add_argument("--negative-prompt")
    ext.add_argument("--cfg-scale", type=float)
    ext.add_argument("--source-duration", type=float, help="length of VIDEO_ID, if known")
    ext.add_argument(
        "--max-units", metavar="UNITS", help="the most the chain may spend (provider units)"
    )
    ext.add_argument("--wait", action="store_true", help="show progress until the chain ends")
    ext.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same KEY always gets the same chain (default: a fresh one per command; "
        "retries after a timeout reuse it)",
    )
    ext.set_defaults(run=_extend)

    st = sub.add_parser("status", help="show a chain")
    st.add_argument("chain_id")
    st.add_argument("--json", action="store_true", help="print the full chain object")
    st.set_defaults(run=_status)

    for name, about in (
        ("cancel", "stop a chain's spending (a step already paid for is finished and archived)"),
        ("resume", "take a failed or cancelled chain on with the work that remains"),
    ):
        cmd = sub.add_parser(name, help=about)
        cmd.add_argument("chain_id")
        cmd.add_argument("--wait", action="store_true", help="show progress until it ends")
        cmd.set_defaults(run=_command)

    ls = sub.add_parser("list", help="recent chains, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(run=_list)

    ar = sub.add_parser("archive", help="archive the videos of tasks this service did not run")
    ar.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    ar.add_argument(
        "--kind", default=TaskKind.VIDEO_EXTEND.value, choices=[k.value for k in TaskKind]
    )
    ar.set_defaults(run=_archive)

    av = sub.add_parser("archived", help="the archive's manifest, newest first")
    av.add_argument("--state", choices=["pending", "archived", "lost", "superseding", "superseded"])
    av.add_argument("--limit", type=int, default=50)
    av.add_argument("--json", action="store_true", help="one JSON object per line")
    av.set_defaults(run=_archived)

    sp = sub.add_parser("spend", help="units the provider reported: today's, per chain, and budget")
    sp.add_argument("--days", type=int, default=1, help="also show the days before today")
    sp.add_argument("--json", action="store_true", help="print the full report")
    sp.set_defaults(run=_spend)

    bp = sub.add_parser(
        "budget", help="show the daily unit budget, or set it for every process at once"
    )
    bp.add_argument(
        "units", nargs="?", help="units per UTC day; off: back to DAILY_UNIT_BUDGET (or none)"
    )
    bp.set_defaults(run=_budget)

    sub.add_parser(
        "fake-gateway", help="run the fake Kling gateway (see --help after it)", add_help=False
    )
    demo = sub.add_parser("demo", help="run everything locally and extend a 5 s video to 30 s")
    demo.add_argument("--target", type=float, default=30.0)
    demo.add_argument("--delay", type=float, default=1.5, help="fake gateway seconds per task")
    demo.add_argument("--archive-dir", default="demo-archive")
    demo.add_argument(
        "--stay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the service (and its dashboard) up after the chain until Ctrl-C "
        "(default: when run in a terminal)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-gateway"]:
        from kling.fake.server import main as fake_main

        return fake_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from chainctl.demo import run_demo

            try:
                interactive = sys.stdin.isatty() and sys.stdout.isatty()
                stay = interactive if args.stay is None else args.stay
                return run_demo(
                    target=args.target,
                    delay=args.delay,
                    archive_dir=args.archive_dir,
                    stay=stay,
                )
            except RuntimeError as exc:  # e.g. the demo extra is not installed
                raise CliError(str(exc)) from exc
        code: int = args.run(args)
        return code
    except CliError as exc:
        print(f"kling-chain: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
