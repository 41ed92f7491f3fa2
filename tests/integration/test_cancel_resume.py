"""Cancel and resume over real Redis, Celery worker, web, beat and the fake gateway.

The promises: after a cancel is accepted no create is sent; the step already paid for is
followed to its end and archived; a resume goes on from the newest good video, keeps failed
steps, pays for no succeeded step again and looks a step in ``attention`` up, never resends it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.support import FAST, Service, fresh, module_service, run_cli, sha256_file, start_chain

# Tasks take 1.5 s at the gateway: long enough to cancel one while it runs.
svc = module_service("cancel", delay=1.5, **FAST)


@pytest.fixture(autouse=True)
def _fresh(svc: Service) -> None:
    fresh(svc, unlearn=True)


def start(svc: Service, steps: int) -> dict[str, Any]:
    return start_chain(svc, steps)


def command(svc: Service, chain_id: str, name: str) -> requests.Response:
    return svc.http.post(f"{svc.api}/chains/{chain_id}/{name}", json={}, timeout=10)


def wait_until_paid(svc: Service, chain_id: str, index: int) -> dict[str, Any]:
    """Until the provider has accepted step ``index`` (it has a task id)."""
    deadline = time.monotonic() + 30
    while True:
        chain = svc.chain(chain_id)
        if len(chain["steps"]) > index and chain["steps"][index]["task_id"]:
            return chain
        assert time.monotonic() < deadline, chain
        time.sleep(0.05)


ENDS = ("succeeded", "failed", "cancelled")


def test_cancel_follows_the_paid_step_archives_it_and_sends_no_more(svc: Service) -> None:
    # Given a chain of three steps whose first is running at the provider
    chain = start(svc, 3)
    running = wait_until_paid(svc, chain["id"], 0)
    assert running["steps"][0]["status"] in ("submitted", "processing")
    # When it is cancelled
    reply = command(svc, chain["id"], "cancel")
    # Then the cancel is accepted, the paid step runs to its end and is archived
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] == "running"
    assert reply.json()["waiting"] == "cancelling: following step 0 to its end (paid for)"
    final = svc.wait(chain["id"], until=ENDS)
    assert final["status"] == "cancelled", final
    assert [s["status"] for s in final["steps"]] == ["succeed"]
    [entry] = final["archive"]
    assert entry["status"] == "done"
    assert sha256_file(svc.archive / f"{entry['video_id']}.mp4") == entry["sha256"]
    # And no create is sent for it again, however many sweeps and leases pass
    time.sleep(4)
    assert svc.stats()["creates_total"] == 1
    assert len(svc.chain(chain["id"])["steps"]) == 1


def test_cancelling_a_cancelled_chain_changes_nothing(svc: Service) -> None:
    chain = start(svc, 2)
    wait_until_paid(svc, chain["id"], 0)
    assert command(svc, chain["id"], "cancel").status_code == 202
    final = svc.wait(chain["id"], until=ENDS)
    assert final["status"] == "cancelled", final
    again = command(svc, chain["id"], "cancel")
    assert again.status_code == 202
    assert again.json() == final
    assert svc.stats()["creates_total"] == 1


def test_a_succeeded_or_failed_chain_cannot_be_cancelled(svc: Service) -> None:
    done = svc.wait(start(svc, 1)["id"])
    assert done["status"] == "succeeded", done
    refused = command(svc, done["id"], "cancel")
    assert refused.status_code == 409
    assert "succeeded already" in refused.json()["error"]
    svc.faults(fail_next_tasks={"count": 1})
    failed = svc.wait(start(svc, 1)["id"])
    assert failed["status"] == "failed", failed
    assert command(svc, failed["id"], "cancel").status_code == 409
    assert command(svc, "no-such-chain", "cancel").status_code == 404


def test_resume_of_a_cancelled_chain_reaches_its_target_paying_each_step_once(
    svc: Service,
) -> None:
    # Given a chain of three steps cancelled during its first
    chain = start(svc, 3)
    wait_until_paid(svc, chain["id"], 0)
    assert command(svc, chain["id"], "cancel").status_code == 202
    assert svc.wait(chain["id"], until=ENDS)["status"] == "cancelled"
    # When it is resumed
    reply = command(svc, chain["id"], "resume")
    assert reply.status_code == 202, reply.text
    # Then it goes on from the video it has, to three extensions in all, each paid once
    final = svc.wait(chain["id"], until=ENDS)
    assert final["status"] == "succeeded", final
    assert final["end_reason"] == "steps_done"
    assert [s["status"] for s in final["steps"]] == ["succeed"] * 3
    per_parent = svc.stats()["creates_by_parent"]
    assert [per_parent.get(s["parent_video_id"]) for s in final["steps"]] == [1, 1, 1]
    assert svc.stats()["creates_total"] == 3
    assert [a["status"] for a in final["archive"]] == ["done"] * 3
    # And a succeeded chain has nothing to resume
    assert command(svc, chain["id"], "resume").status_code == 409


def test_resume_of_a_failed_chain_goes_on_from_the_newest_good_video(svc: Service) -> None:
    # Given a chain whose second step fails at the provider
    chain = start(svc, 2)
    wait_until_paid(svc, chain["id"], 0)
    svc.faults(fail_next_tasks={"count": 1})
    failed = svc.wait(chain["id"], until=ENDS)
    assert failed["status"] == "failed", failed
    assert [s["status"] for s in failed["steps"]] == ["succeed", "failed"]
    # When it is resumed
    assert command(svc, chain["id"], "resume").status_code == 202
    # Then the failed step stays in its history, and the next extends step 0's video
    final = svc.wait(chain["id"], until=ENDS)
    assert final["status"] == "succeeded", final
    steps = final["steps"]
    assert [s["status"] for s in steps] == ["succeed", "failed", "succeed"]
    assert steps[1]["error"]
    assert steps[2]["parent_video_id"] == steps[0]["video_id"]
    per_parent = svc.stats()["creates_by_parent"]
    assert per_parent[steps[0]["parent_video_id"]] == 1  # the succeeded step, never re-paid
    assert final["error"] is None


def test_resume_of_an_attention_step_reconciles_it_never_resends(svc: Service) -> None:
    # Given a step whose create reply was lost where nothing could tell whether it was made
    svc.faults(
        support_external_task_id=False,
        support_task_list=False,
        callbacks={"drop": 1},
        drop_next_creates={"count": 1, "mode": "reset"},
    )
    chain = start(svc, 2)
    failed = svc.wait(chain["id"], until=ENDS, timeout=60)
    assert failed["status"] == "failed", failed
    assert failed["steps"][0]["status"] == "attention"
    assert svc.stats()["creates_total"] == 1
    # When the provider lists its tasks again and the chain is resumed
    svc.faults(support_task_list=True)
    assert command(svc, chain["id"], "resume").status_code == 202
    # Then the lost task is found in the list and followed: never created a second time
    final = svc.wait(chain["id"], until=ENDS, timeout=60)
    assert final["status"] == "succeeded", final
    assert [s["status"] for s in final["steps"]] == ["succeed", "succeed"]
    assert svc.stats()["creates_total"] == 2
    per_parent = svc.stats()["creates_by_parent"]
    assert [per_parent.get(s["parent_video_id"]) for s in final["steps"]] == [1, 1]


def test_the_cli_cancels_and_resumes(svc: Service) -> None:
    chain = start(svc, 2)
    wait_until_paid(svc, chain["id"], 0)
    cancelled = run_cli(svc, "cancel", chain["id"], "--wait")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"chain {chain['id']}: cancel accepted" in cancelled.stdout
    assert f"chain {chain['id']}: cancelled" in cancelled.stdout
    resumed = run_cli(svc, "resume", chain["id"], "--wait")
    assert resumed.returncode == 0, resumed.stderr
    assert f"chain {chain['id']}: succeeded (steps_done)" in resumed.stdout
    again = run_cli(svc, "cancel", chain["id"])
    assert again.returncode == 2
    assert "HTTP 409" in again.stderr
    assert svc.stats()["creates_total"] == 2
