"""The Python client against the live service: real web process, worker, beat, Redis and the
fake gateway. What it promises: every route answers it as typed views, errors come back as
exceptions with field and message, and a create whose reply was lost is paid for once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chainctl.client import (
    AsyncClient,
    Chain,
    Client,
    Conflict,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from tests.support import FAST, Service, fresh, module_service, sha256_file

# Tasks take 1 s at the gateway: long enough to cancel a chain while its first step runs.
svc = module_service("client", delay=1.0, **FAST)


@pytest.fixture(autouse=True)
def _fresh(svc: Service) -> None:
    fresh(svc, unlearn=True)


@pytest.fixture
def kc(svc: Service) -> Iterator[Client]:
    with Client(svc.api, token=svc.env["API_TOKEN"]) as client:
        yield client


def until_paid(kc: Client, chain_id: str, index: int) -> Chain:
    """Until the provider has accepted step ``index`` (it has a task id)."""
    deadline = time.monotonic() + 30
    while True:
        chain = kc.get(chain_id)
        if len(chain.steps) > index and chain.steps[index].task_id:
            return chain
        assert time.monotonic() < deadline, chain
        time.sleep(0.05)


def test_create_get_list_and_wait_with_progress(svc: Service, kc: Client) -> None:
    # Given a 5 s video at the gateway
    seed = svc.seed(5.0)
    # When a chain of two extensions is started and waited for
    chain = kc.create(
        video_id=seed["video_id"], task_id=seed["task_id"], source_duration=5.0, steps=2
    )
    assert chain.status == "queued"
    assert kc.get(chain.id).id == chain.id
    assert chain.id in [c.id for c in kc.list(limit=100).chains]
    views: list[Chain] = []
    final = kc.wait(chain.id, on_progress=views.append, poll_seconds=0.1, timeout=90)
    # Then it was told each change, and ends with both steps done and archived
    assert final.status == "succeeded", final
    assert final.end_reason == "steps_done"
    assert views[-1] == final
    assert all(a.raw != b.raw for a, b in itertools.pairwise(views))
    assert "running" in [v.status for v in views]
    assert [s.status for s in final.steps] == ["succeed", "succeed"]
    assert final.duration is not None
    assert final.duration > 5.0
    assert [e.status for e in final.archive] == ["done", "done"]
    for entry in final.archive:
        assert entry.path is not None
        assert sha256_file(svc.archive / f"{entry.video_id}.mp4") == entry.sha256
    assert svc.stats()["creates_total"] == 2
    # And the day's spend counts it
    today = kc.spend(days=1).today
    assert final.id in [c.id for c in today.chains]
    assert kc.health()


def test_the_same_idempotency_key_gets_the_same_chain(svc: Service, kc: Client) -> None:
    seed = svc.seed(5.0)
    first = kc.create(video_id=seed["video_id"], steps=1, idempotency_key="order-1")
    again = kc.create(video_id=seed["video_id"], steps=1, idempotency_key="order-1")
    assert again.id == first.id
    with pytest.raises(ValidationFailed, match="different request"):
        kc.create(video_id=seed["video_id"], steps=2, idempotency_key="order-1")
    assert kc.wait(first.id, poll_seconds=0.1, timeout=60).status == "succeeded"
    assert svc.stats()["creates_total"] == 1


class LoseFirstReply(httpx.BaseTransport):
    """Delivers every request, but the reply to the first POST never comes home."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("the reply was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_create_whose_reply_was_lost_starts_and_pays_for_one_chain(
    svc: Service, kc: Client
) -> None:
    # Given a service whose reply to the first create is lost after the chain was started
    seed = svc.seed(5.0)
    transport = LoseFirstReply()
    told: list[str] = []
    with Client(
        svc.api,
        token=svc.env["API_TOKEN"],
        transport=transport,
        retry_pause=0,
        on_retry=lambda exc, key: told.append(key),
    ) as lossy:
        # When the client creates a chain
        chain = lossy.create(video_id=seed["video_id"], task_id=seed["task_id"], steps=1)
    # Then it asked again with the same key and got the chain the first request started
    assert transport.posts == 2
    assert len(told) == 1
    mine = [c for c in kc.list(limit=100).chains if c["source"]["video_id"] == seed["video_id"]]
    assert [c.id for c in mine] == [chain.id]
    assert kc.wait(chain.id, poll_seconds=0.1, timeout=60).status == "succeeded"
    assert svc.stats()["creates_by_parent"][seed["video_id"]] == 1


def test_errors_carry_the_field_and_the_message(svc: Service, kc: Client) -> None:
    with pytest.raises(ValidationFailed) as raised:
        kc.create(video_id="vid1", target_seconds=500)
    assert raised.value.status == 422
    [problem] = raised.value.details
    assert problem.field == "target_seconds"
    assert "180" in problem.message
    with pytest.raises(ValidationFailed) as raised:
        kc.create({"video_id": "vid1", "steps": 1, "colour": "red"})
    assert raised.value.fields == {"colour": "unknown field"}
    with pytest.raises(ValidationFailed) as raised:
        kc.create(video_id="vid1")
    assert raised.value.details[0].field is None
    assert "target_seconds" in raised.value.details[0].message
    with pytest.raises(NotFound, match="no chain with this id"):
        kc.get("no-such-chain")
    with (
        Client(svc.api, token="not-the-token") as stranger,
        pytest.raises(Unauthorized, match="API token"),
    ):
        stranger.create(video_id="vid1", steps=1)
    assert svc.stats()["creates_total"] == 0


def test_cancel_and_resume(svc: Service, kc: Client) -> None:
    # Given a chain of two steps whose first is running at the provider
    seed = svc.seed(5.0)
    chain = kc.create(video_id=seed["video_id"], task_id=seed["task_id"], steps=2)
    until_paid(kc, chain.id, 0)
    # When it is cancelled, it follows the paid step to its end and stops
    cancelling = kc.cancel(chain.id)
    assert cancelling.waiting == "cancelling: following step 0 to its end (paid for)"
    cancelled = kc.wait(chain.id, poll_seconds=0.1, timeout=60)
    assert cancelled.status == "cancelled", cancelled
    # And a resume takes it on to its two steps, each paid once
    resumed = kc.resume(chain.id)
    assert not resumed.terminal
    final = kc.wait(chain.id, poll_seconds=0.1, timeout=60)
    assert final.status == "succeeded", final
    assert [s.status for s in final.steps] == ["succeed", "succeed"]
    assert svc.stats()["creates_total"] == 2
    # And a succeeded chain refuses both, saying its status
    for refused in (kc.resume, kc.cancel):
        with pytest.raises(Conflict) as raised:
            refused(chain.id)
        assert raised.value.chain_status == "succeeded"


def test_archive_requests_and_the_manifest(svc: Service, kc: Client) -> None:
    seed = svc.seed(5.0)
    queued = kc.archive(seed["task_id"], kind="text2video")
    assert [(t.task_id, t.kind) for t in queued.queued] == [(seed["task_id"], "text2video")]
    again = kc.archive([seed["task_id"]], kind="text2video")
    assert [t.task_id for t in again.already_queued] == [seed["task_id"]]
    deadline = time.monotonic() + 30
    while True:
        page = kc.archived(state="archived", limit=500)
        found = [v for v in page.videos if v.video_id == seed["video_id"]]
        if found:
            break
        assert time.monotonic() < deadline, page
        time.sleep(0.2)
    assert found[0].sha256 == svc.gateway_sha256(seed["video_id"])
    assert found[0].kind == "text2video"
    assert page.counts["archived"] >= 1
    with pytest.raises(ValidationFailed) as raised:
        kc.archive("x", kind="song")
    assert raised.value.details[0].field == "tasks.0.kind"


def test_the_async_client(svc: Service) -> None:
    seed = svc.seed(5.0)
    seen: list[str] = []

    async def scenario() -> Chain:
        async with AsyncClient(svc.api, token=svc.env["API_TOKEN"]) as client:
            chain = await client.create(video_id=seed["video_id"], steps=1)
            with pytest.raises(NotFound):
                await client.get("no-such-chain")
            return await client.wait(
                chain.id, on_progress=lambda c: seen.append(c.status), poll_seconds=0.1
            )

    final = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert final.status == "succeeded", final
    assert seen[-1] == "succeeded"
    assert svc.stats()["creates_total"] == 1


def test_the_readme_example_runs(
    svc: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Python client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.splitlines()) <= 12
    seed = svc.seed(5.0)
    code = (
        example.replace("http://127.0.0.1:8000", svc.api)
        .replace("8f1c2b", seed["video_id"])
        .replace("CjhDaWgU7G", seed["task_id"])
        .replace("target_seconds=30", "target_seconds=9")
    )
    monkeypatch.setenv("API_TOKEN", svc.env["API_TOKEN"])
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out.splitlines()
    ended = max(i for i, line in enumerate(printed) if line.startswith("succeeded "))
    videos = [line.split() for line in printed[ended + 1 :]]
    assert videos
    assert all(v[1] == "done" for v in videos), printed
