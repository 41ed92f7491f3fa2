"""The web process's figures: callbacks counted by outcome, ``GET /metrics``, ``GET /account``."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.unit.conftest import SECRET
from worker.core import tokens
from worker.core.metrics import CreateOutcome
from worker.state.keys import Keys
from worker.state.metrics import Metrics


def callback_path(chain_id: str = "c1", index: int = 0) -> str:
    return f"/callbacks/{chain_id}/{index}/{tokens.sign(SECRET.encode(), chain_id, index)}"


def scrape(client: TestClient) -> dict[str, float]:
    """Every sample of ``/metrics``: ``name{labels}`` -> value."""
    reply = client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = float(s.value)
    return out


def figures(client: TestClient) -> Metrics:
    """The app's own metric store (the same fakeredis server)."""
    web: Any = client.app
    for route in web.routes:
        if getattr(route, "path", None) == "/account":
            found: Metrics = route.endpoint.__self__.figures
            return found
    raise AssertionError("no /account route")


def test_callbacks_are_counted_by_outcome(client: TestClient) -> None:
    task = {"task_id": "t1", "task_status": "processing"}
    assert client.post(callback_path(), json=task).status_code == 200
    assert client.post(callback_path(), json=task).status_code == 200
    assert client.post("/callbacks/c1/0/forged", json=task).status_code == 403
    assert client.post(callback_path(), content=b"{not json").status_code == 400
    assert client.post(callback_path(), content=b"x" * (65 * 1024)).status_code == 413
    archive = f"/callbacks/archive/text2video/{tokens.sign_archive(SECRET.encode(), 'text2video')}"
    assert (
        client.post(archive, json={"task_id": "../x", "task_status": "succeed"}).status_code == 400
    )
    assert client.post("/callbacks/archive/text2video/forged", json=task).status_code == 403
    found = scrape(client)
    assert found["kc_callbacks_total{outcome=accepted}"] == 2
    assert found["kc_callbacks_total{outcome=forbidden}"] == 2
    assert found["kc_callbacks_total{outcome=malformed}"] == 2
    assert found["kc_callbacks_total{outcome=too_large}"] == 1


def test_a_success_callback_starts_the_next_steps_turnaround(client: TestClient) -> None:
    done = {"task_id": "t1", "task_status": "succeed"}
    assert client.post(callback_path("c1", 0), json=done).status_code == 200
    figures(client).created("video-extend", CreateOutcome.ACCEPTED, chain_id="c1", index=1)
    found = scrape(client)
    assert found["kc_step_turnaround_seconds_count{}"] == 1
    assert found["kc_creates_total{kind=video-extend,outcome=accepted}"] == 1


def test_metrics_keep_the_signed_callback_refusals_beside_the_families(client: TestClient) -> None:
    reply = client.get("/metrics")
    assert "# TYPE kc_creates_total counter" in reply.text
    assert "kc_callbacks_refused_total" in reply.text
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_account_shows_slots_units_and_refused_creates(client: TestClient) -> None:
    store = figures(client)
    store.redis.hset(Keys(store.keys.prefix).slot_holders, mapping={"c1:0": "1"})
    store.created("video-extend", CreateOutcome.REFUSED, chain_id="c1", index=0)
    store.created("video-extend", CreateOutcome.REFUSED, chain_id="c1", index=0)
    store.created("video-extend", CreateOutcome.ACCEPTED, chain_id="c1", index=0)
    reply = client.get("/account")
    assert reply.status_code == 200
    assert reply.json() == {
        "slots": {"in_use": 1, "limit": None},
        "units_today": "0",
        "budget": None,
        "refused_creates": {"last_hour": 2, "total": 2},
    }
    assert client.get("/account", headers={"Authorization": "Bearer wrong"}).status_code == 401
