"""Which queue each task waits in, and which queues the Procfile's worker takes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chainctl.devstack import read_procfile
from worker import tasknames
from worker.queues import Queues

QUEUES = Queues.named("kling-chain")
PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


@pytest.mark.parametrize(
    ("name", "queue"),
    [
        (tasknames.SUBMIT_STEP, "kling-chain"),
        (tasknames.REFRESH_STEP, "kling-chain"),
        (tasknames.SWEEP, "kling-chain"),
        (tasknames.ARCHIVE_VIDEO, "kling-chain.archive"),
        (tasknames.IMPORT_TASK, "kling-chain.import"),
        (tasknames.NOTIFY, "kling-chain.notify"),
        (tasknames.ANNOUNCE_END, "kling-chain.notify"),
    ],
)
def test_each_task_waits_in_the_queue_of_its_kind(name: str, queue: str) -> None:
    assert QUEUES.routes()[name] == {"queue": queue}


def test_every_task_is_routed_and_only_paid_work_shares_the_steps_queue() -> None:
    names = {value for key, value in vars(tasknames).items() if key.isupper()}
    routes = QUEUES.routes()
    assert names <= routes.keys()  # none falls back to the default queue unnoticed
    on_steps = {name for name, route in routes.items() if route["queue"] == QUEUES.steps}
    assert on_steps == {tasknames.SUBMIT_STEP, tasknames.REFRESH_STEP, tasknames.SWEEP}


def test_queue_names_derive_from_celery_queue() -> None:
    assert Queues.named("acme") == Queues("acme", "acme.archive", "acme.import", "acme.notify")
    assert len(set(QUEUES.all())) == 4
    assert QUEUES.all()[0] == QUEUES.steps


def test_the_celery_app_routes_by_name_and_declares_every_queue() -> None:
    from worker.celery import app

    queues = Queues.named(app.conf.task_default_queue)
    for name, route in queues.routes().items():
        # send_task (the web process, the runner) routes by name, without the task's code
        assert app.amqp.router.route({}, name)["queue"].name == route["queue"]
    # what a worker started without --queues consumes
    assert list(app.amqp.queues.consume_from) == list(queues.all())


def procfile_worker_words(**env: str) -> list[str]:
    line = read_procfile(PROCFILE)["worker"]
    done = subprocess.run(
        ["sh", "-c", f"printf '%s\\n' {line}"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_the_procfile_worker_takes_every_queue_unless_worker_queues_names_some() -> None:
    everything = procfile_worker_words()
    assert not [word for word in everything if word.startswith(("--queues", "-Q"))]
    some = procfile_worker_words(WORKER_QUEUES="kling-chain.archive", WORKER_CONCURRENCY="16")
    assert "--queues=kling-chain.archive" in some
    assert "--concurrency=16" in some
    for flag in ("--without-gossip", "--without-mingle", "--without-heartbeat"):
        assert flag in everything
        assert flag in some
