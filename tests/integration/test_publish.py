"""The contract of the web's fast publisher (worker.publish): a real Celery worker takes
what the web writes with one LPUSH, for every task the web sends."""

from __future__ import annotations

from tests.support import FAST, Service, fresh, module_service, start_chain

svc = module_service("publish", delay=0.3, **FAST)


def test_a_real_worker_runs_what_the_web_publishes(svc: Service) -> None:
    fresh(svc)
    # POST /chains publishes the first submit; each callback publishes a refresh; cancel
    # publishes the end's announcement. All of it is consumed by the Procfile's worker.
    done = svc.wait(start_chain(svc, 2)["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert [s["status"] for s in done["steps"]] == ["succeed", "succeed"]
    cancelled = svc.create({"video_id": svc.seed(5.0)["video_id"], "steps": 3})
    svc.faults(callbacks={"delay_seconds": 0.5})
    reply = svc.http.post(f"{svc.api}/chains/{cancelled['id']}/cancel", json={}, timeout=10)
    assert reply.status_code == 202, reply.text
    assert svc.wait(cancelled["id"], timeout=60, until=("cancelled",))["status"] == "cancelled"
    web_log = svc.stack.tail("web", lines=100_000)
    assert "through Celery's send_task" not in web_log  # the fast path was the one used
    assert svc.stats()["callbacks_sent"] > 0
