"""The default LOG_FORMAT=text: the web process prints its own lines (not only uvicorn's),
as ``[time: LEVEL/logger] message``, secrets left out. The Procfile's processes, real sockets."""

from __future__ import annotations

import re
import time

from tests.support import Service, module_service, start_chain

svc = module_service("text-logs", delay=0.3)

LEAK = "LEAKME-callback"
TEXT_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (INFO|WARNING)/webhook\.app\] ")


def web_lines(service: Service, containing: str) -> list[str]:
    deadline = time.monotonic() + 20
    while True:
        text = (service.stack.log_dir / "web.log").read_text(errors="replace")
        found = [line for line in text.splitlines() if containing in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_web_process_prints_its_own_info_lines_as_text(svc: Service) -> None:
    # Given a chain of one extension that ran to its end, and a callback with a wrong token
    chain = start_chain(svc, steps=1)
    final = svc.wait(chain["id"])
    assert final["status"] == "succeeded", final
    wrong = svc.http.post(f"{svc.api}/callbacks/{chain['id']}/0/{LEAK}", json={}, timeout=10)
    assert wrong.status_code == 403

    # Then the web's log holds its own INFO lines, each with time, level and logger
    created = web_lines(svc, f"chain {chain['id']} created")
    callbacks = web_lines(svc, f"callback {chain['id']}/0: task {final['steps'][0]['task_id']}")
    assert created, "the web printed no 'chain ... created' line"
    assert callbacks, "the web printed no line for the step's callbacks"
    for line in created + callbacks:
        assert TEXT_LINE.match(line), line
    # and no callback token, in its lines or uvicorn's access lines
    text = (svc.stack.log_dir / "web.log").read_text(errors="replace")
    assert LEAK not in text
    assert final["steps"][0]["task_id"] in text
