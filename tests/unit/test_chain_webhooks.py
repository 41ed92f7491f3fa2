"""Per-chain webhooks, metadata and the status filter, without a broker.

The pure rules (``worker.core.webhooks``: what goes where, what a caller may ask for), the
address check at the edge (``worker.outbound.netguard.url_refusal``), the fan-out the
archiver enqueues, the web edge's 422s, and ``Store.page``. The same paths run against a
real worker, web process and receivers in tests/integration/test_chain_webhooks.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from kling.models import Task, TaskStatus, Video
from tests.unit.test_runner import NOW, ScriptedProvider, fake_download, make_rig, succeed_step
from worker.core.chain import (
    Cancel,
    Chain,
    ChainStatus,
    Spec,
    TaskUpdate,
    apply,
    new_chain,
)
from worker.core.webhooks import (
    CHAIN_EVENTS,
    MAX_METADATA_BYTES,
    Destination,
    EventType,
    destinations,
    events_problem,
    metadata_bytes,
    metadata_problem,
    webhook_url_problem,
)
from worker.outbound.netguard import AllowList, url_refusal
from worker.outbound.notify import event_id
from worker.state.chains import Store, Timing
from worker.tasknames import NOTIFY, SUBMIT_STEP

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OPS = "https://ops.example/kc"
HOOK = "https://caller.example/hooks?token=abc"


# -- where each event goes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "notify_url", "webhook_url", "events", "expected"),
    [
        # NOTIFY_URL gets every event, about a chain or not, whatever the chain filters
        (EventType.VIDEO_LOST, OPS, None, None, [None]),
        (EventType.VIDEO_AT_RISK, OPS, HOOK, None, [None]),
        (EventType.CHAIN_FAILED, OPS, HOOK, ["chain.succeeded"], [None]),
        # a chain's webhook gets the events about the chain, all of them by default
        *((kind, None, HOOK, None, [HOOK]) for kind in CHAIN_EVENTS),
        *((kind, OPS, HOOK, None, [None, HOOK]) for kind in CHAIN_EVENTS),
        # but never the archive's warnings, which are the operator's business
        (EventType.VIDEO_AT_RISK, None, HOOK, None, []),
        (EventType.VIDEO_LOST, None, HOOK, None, []),
        # and only what its filter names
        (EventType.CHAIN_SUCCEEDED, None, HOOK, ["chain.succeeded", "chain.failed"], [HOOK]),
        (EventType.CHAIN_STEP_SUCCEEDED, None, HOOK, ["chain.succeeded"], []),
        (EventType.VIDEO_ARCHIVED, OPS, HOOK, ["chain.failed"], [None]),
        # a webhook that is NOTIFY_URL itself gets each event once
        (EventType.CHAIN_SUCCEEDED, OPS, OPS, None, [None]),
        # nothing set: nowhere
        (EventType.CHAIN_SUCCEEDED, None, None, None, []),
    ],
)
def test_destinations(
    kind: EventType,
    notify_url: str | None,
    webhook_url: str | None,
    events: list[str] | None,
    expected: list[str | None],
) -> None:
    got = destinations(kind, notify_url=notify_url, webhook_url=webhook_url, webhook_events=events)
    assert got == tuple(Destination(url) for url in expected)
    assert [d.own for d in got] == [url is not None for url in expected]


def test_the_events_about_a_chain_are_the_documented_five() -> None:
    assert [e.value for e in CHAIN_EVENTS] == [
        "chain.step_succeeded",
        "chain.succeeded",
        "chain.failed",
        "chain.cancelled",
        "video.archived",
    ]


# -- what a caller may ask for -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://hooks.example/x", "https://hooks.example:8443/a?b=c", "HTTPS://H.EXAMPLE"]
)
def test_http_and_https_webhook_urls_are_taken(url: str) -> None:
    assert webhook_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example/x", "http:// or https://"),
        ("hooks.example/x", "no scheme"),
        ("javascript:alert(1)", "http:// or https://"),
        ("http:///path", "must name a host"),
        ("http://hooks.example:99999/", "not a valid URL"),
        (" http://hooks.example/", "spaces"),
        ("http://hooks.example/a b", "spaces"),
        ("http://hooks.example/\r\nx", "control characters"),
        ("https://hooks.example/" + "a" * 2048, "at most 2048 characters"),
    ],
)
def test_other_webhook_urls_are_refused_saying_why(url: str, why: str) -> None:
    problem = webhook_url_problem(url)
    assert problem is not None
    assert why in problem


def test_webhook_events_must_be_known_and_the_unknown_one_is_named() -> None:
    assert events_problem(["chain.succeeded", "video.archived"]) is None
    problem = events_problem(["chain.succeeded", "chain.exploded"])
    assert problem is not None
    assert "'chain.exploded'" in problem
    assert "chain.step_succeeded" in problem  # and what it could have been
    assert events_problem(["video.lost"]) is not None  # the operator's, not the chain's
    assert "at least one" in (events_problem([]) or "")


def test_metadata_is_measured_as_compact_utf8_json() -> None:
    assert metadata_bytes({"a": 1}) == len('{"a":1}')
    assert metadata_bytes({"é": "☕"}) == len('{"é":"☕"}'.encode())  # bytes, not characters


def test_metadata_of_exactly_the_limit_is_taken_and_one_byte_more_is_not() -> None:
    pad = MAX_METADATA_BYTES - len('{"k":""}')
    assert metadata_problem({"k": "x" * pad}) is None
    problem = metadata_problem({"k": "x" * (pad + 1)})
    assert problem == "is 4097 bytes as compact JSON; at most 4096 bytes are allowed"
    # multi-byte characters count as the bytes they take
    assert metadata_problem({"k": "é" * (pad // 2 + 1)}) is not None


def test_metadata_must_be_plain_json_and_not_too_deep() -> None:
    assert "NaN" in (metadata_problem({"x": float("nan")}) or "")
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(20):
        inner["d"] = {}
        inner = inner["d"]
    assert "levels deep" in (metadata_problem(deep) or "")
    assert metadata_problem({"order": {"id": 7, "tags": ["a", {"b": [1, 2]}]}}) is None


# -- the address check at the edge -------------------------------------------------------------


def resolver(*addresses: str) -> Callable[..., Sequence[tuple[Any, ...]]]:
    """A ``getaddrinfo`` that answers ``addresses`` for any name."""

    def resolve(host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


def unresolvable(host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.1/", "10.0.0.1, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://[::1]:8080/", "::1, a loopback address"),
        ("http://127.0.0.1/", "a loopback address"),
    ],
)
def test_an_internal_ip_literal_is_refused_without_a_lookup(url: str, kind: str) -> None:
    problem = url_refusal(url, AllowList(), resolve=unresolvable)
    assert problem is not None
    assert kind in problem
    assert "ALLOW_PRIVATE_HOSTS" in problem


def test_a_name_with_any_internal_address_is_refused() -> None:
    resolve = resolver("93.184.215.14", "10.1.2.3")
    problem = url_refusal("https://hooks.example/x", AllowList(), resolve=resolve)
    assert problem is not None
    assert "hooks.example (10.1.2.3), a private address" in problem
    assert url_refusal("https://h.example/", AllowList(), resolve=resolver("93.184.215.14")) is None


def test_localhost_is_refused_unless_allowed() -> None:
    # The real resolver: "localhost" is in every hosts file, no network needed
    problem = url_refusal("http://localhost:9/hook", AllowList())
    assert problem is not None
    assert "loopback address" in problem
    assert url_refusal("http://localhost:9/hook", AllowList.parse("localhost")) is None


def test_allow_private_hosts_lets_a_named_range_or_host_through() -> None:
    allow = AllowList.parse("127.0.0.1,10.0.0.0/8,hooks.internal")
    assert url_refusal("http://127.0.0.1:8001/h", allow) is None
    assert url_refusal("http://10.0.0.1/", allow) is None
    assert url_refusal("http://hooks.internal/", allow, resolve=resolver("192.168.0.9")) is None
    assert url_refusal("http://192.168.0.9/", allow) is not None


def test_a_host_that_does_not_resolve_is_refused() -> None:
    problem = url_refusal("https://no-such.example/", AllowList(), resolve=unresolvable)
    assert problem == "the host no-such.example could not be resolved (Name or service not known)"


# -- the chain: metadata in the view, a step's success told once -------------------------------


def video_chain(**spec: Any) -> Chain:
    return new_chain("c1", Spec(video_id="v0", task_id="p0", steps=2, **spec), NOW)


def finished(task_id: str, video_id: str, duration: float) -> Task:
    video = Video(video_id, f"https://cdn.example/{video_id}.mp4", duration)
    return Task(task_id, TaskStatus.SUCCEED, created_at_ms=int(NOW * 1000), videos=(video,))


def test_the_view_echoes_the_metadata() -> None:
    chain = video_chain(metadata={"order": 7})
    assert chain.view({})["metadata"] == {"order": 7}
    assert video_chain().view({})["metadata"] is None


def test_a_chain_stored_before_webhooks_loads_without_them() -> None:
    data = json.loads(video_chain().to_json())
    for name in ("webhook_url", "webhook_events", "metadata"):
        del data["spec"][name]
    chain = Chain.from_json(json.dumps(data))
    assert (chain.spec.webhook_url, chain.spec.webhook_events, chain.spec.metadata) == (
        None,
        None,
        None,
    )
    assert chain.view({})["metadata"] is None


def test_the_webhook_options_survive_storage() -> None:
    chain = video_chain(webhook_url=HOOK, webhook_events=["chain.failed"], metadata={"a": [1]})
    again = Chain.from_json(chain.to_json())
    assert again.spec == chain.spec


def test_the_transition_that_makes_a_step_succeed_says_so_once() -> None:
    chain = video_chain()
    chain.steps[0].task_id = "t0"
    out = apply(chain, TaskUpdate(0, finished("t0", "v1", 10.0)), NOW)
    assert out.succeeded == [0]
    assert apply(out.chain, TaskUpdate(0, finished("t0", "v1", 10.0)), NOW).succeeded == []


def test_a_step_whose_duration_is_doubted_did_not_succeed() -> None:
    chain = video_chain(source_duration=5.0)
    chain.steps[0].task_id = "t0"
    out = apply(chain, TaskUpdate(0, finished("t0", "v1", 5.5)), NOW)  # only 0.5 s longer
    assert out.chain.steps[0].status.value == "failed"
    assert out.succeeded == []


# -- the fan-out the worker enqueues -----------------------------------------------------------


def sent_events(queued: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, str | None]]:
    """(event type, destination) of each NOTIFY task: None is NOTIFY_URL."""
    return [
        (args[0]["type"], args[1] if len(args) > 1 else None)
        for name, args in queued
        if name == NOTIFY
    ]


def test_a_chains_events_go_to_its_webhook_and_to_notify_url_with_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given NOTIFY_URL and a chain with its own webhook, filtered, and metadata
    rig = make_rig(tmp_path, ScriptedProvider(), notify_url=OPS, notify_secret=WHSEC)
    monkeypatch.setattr("worker.archiver.download_into", fake_download(b"mp4 bytes"))
    rig.runner.archiver.clock = lambda: NOW
    spec = Spec(
        video_id="v0",
        task_id="p0",
        steps=1,
        webhook_url=HOOK,
        webhook_events=["chain.step_succeeded", "chain.succeeded"],
        metadata={"order": "A-7"},
    )
    rig.store.create(new_chain("c1", spec, NOW))
    # When its step succeeds, and its video is archived (twice: a redelivered task)
    succeed_step(rig, "c1", "v1", "https://cdn.example/v1.mp4", created=NOW)
    rig.runner.refresh("c1", 0)  # a repeated callback, confirmed again
    rig.runner.archiver.archive_video("v1", owner="x")
    rig.runner.archiver.archive_video("v1", owner="y")
    # Then each event went out once per destination: all to NOTIFY_URL, the filtered to the hook
    assert sent_events(rig.queued) == [
        ("chain.step_succeeded", None),
        ("chain.step_succeeded", HOOK),
        ("video.archived", None),
        ("chain.succeeded", None),
        ("chain.succeeded", HOOK),
    ]
    events = [args[0] for name, args in rig.queued if name == NOTIFY]
    # each carrying the metadata, the same id at both destinations
    assert all(e["data"]["metadata"] == {"order": "A-7"} for e in events)
    ids = {(e["type"], e["id"]) for e in events}
    assert ids == {
        ("chain.step_succeeded", "evt_c1_step_0_succeeded"),
        ("video.archived", event_id("v1", "video.archived")),  # as ever
        ("chain.succeeded", "evt_c1_end"),
    }
    step = next(e for e in events if e["type"] == "chain.step_succeeded")
    assert step["data"]["step_index"] == 0
    assert step["data"]["steps"][0]["status"] == "succeed"


def test_without_notify_url_only_the_chains_webhook_hears_of_it(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), notify_secret=WHSEC)
    spec = Spec(video_id="v0", task_id="p0", steps=2, webhook_url=HOOK, metadata={"n": 1})
    rig.store.create(new_chain("c1", spec, NOW))
    succeed_step(rig, "c1", "v1", "https://cdn.example/v1.mp4", created=NOW)
    assert sent_events(rig.queued) == [("chain.step_succeeded", HOOK)]
    assert (SUBMIT_STEP, ("c1", 1)) in rig.queued  # the next step as ever


def test_a_chain_without_a_webhook_notifies_as_before(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider())  # no NOTIFY_URL either
    rig.chain()
    succeed_step(rig, "c1", "v1", "https://cdn.example/v1.mp4", created=NOW)
    assert sent_events(rig.queued) == []


# -- the web edge ------------------------------------------------------------------------------


@pytest.fixture
def web_settings() -> dict[str, Any]:
    return {"notify_secret": WHSEC}  # and no ALLOW_PRIVATE_HOSTS


BODY = {"video_id": "v1", "task_id": "t1", "steps": 2}


def detail(reply: Any) -> dict[str, Any]:
    assert reply.status_code == 422, reply.text
    [found] = reply.json()["details"]
    return found  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "web_settings", [{"notify_secret": WHSEC, "allow_private_hosts": "127.0.0.1"}]
)
def test_a_chain_takes_a_webhook_its_filter_and_metadata_and_shows_the_metadata(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    body = {
        **BODY,
        "webhook_url": "http://127.0.0.1:9/hooks",  # allowed by ALLOW_PRIVATE_HOSTS
        "webhook_events": ["chain.succeeded", "chain.failed", "chain.succeeded"],
        "metadata": {"order": "A-7", "tags": ["x"]},
    }
    reply = client.post("/chains", json=body)
    assert reply.status_code == 202, reply.text
    chain = reply.json()
    assert chain["metadata"] == {"order": "A-7", "tags": ["x"]}
    assert client.get(f"/chains/{chain['id']}").json()["metadata"] == body["metadata"]
    assert sent == [(SUBMIT_STEP, (chain["id"], 0))]


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"webhook_url": "http://10.0.0.1/"}, "webhook_url", "10.0.0.1, a private address"),
        ({"webhook_url": "http://localhost/"}, "webhook_url", "a loopback address"),
        ({"webhook_url": "http://[::1]/"}, "webhook_url", "a loopback address"),
        ({"webhook_url": "http://169.254.169.254/"}, "webhook_url", "link-local"),
        ({"webhook_url": "ftp://hooks.example/"}, "webhook_url", "http:// or https://"),
        ({"webhook_url": 7}, "webhook_url", "string"),
        (
            {"webhook_url": "https://h.example/", "webhook_events": ["chain.exploded"]},
            "webhook_events",
            "unknown event type 'chain.exploded'",
        ),
        ({"webhook_events": ["chain.failed"]}, None, "give both"),
        ({"metadata": {"k": "x" * 5000}}, "metadata", "is 5008 bytes as compact JSON"),
        ({"metadata": ["not", "an", "object"]}, "metadata", "dictionary"),
    ],
)
def test_bad_webhook_options_are_422_naming_the_field_and_nothing_is_stored(
    client: TestClient,
    sent: list[tuple[str, tuple[Any, ...]]],
    extra: dict[str, Any],
    field: str | None,
    words: str,
) -> None:
    found = detail(client.post("/chains", json={**BODY, **extra}))
    assert found["field"] == field
    assert words in found["message"]
    assert sent == []
    assert client.get("/chains").json()["chains"] == []


@pytest.mark.parametrize("web_settings", [{}])
def test_a_webhook_url_without_notify_secret_is_422_saying_so(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    found = detail(client.post("/chains", json={**BODY, "webhook_url": "https://h.example/x"}))
    assert found["field"] == "webhook_url"
    assert "no NOTIFY_SECRET configured" in found["message"]
    assert sent == []
    # metadata alone needs no secret
    assert client.post("/chains", json={**BODY, "metadata": {"a": 1}}).status_code == 202


def test_the_list_filters_by_status(client: TestClient) -> None:
    ids = [client.post("/chains", json=BODY).json()["id"] for _ in range(5)]
    for chain_id in ids[1::2]:
        assert client.post(f"/chains/{chain_id}/cancel", json={}).status_code == 202
    cancelled = client.get("/chains?status=cancelled").json()
    assert [c["id"] for c in cancelled["chains"]] == [ids[3], ids[1]]
    assert cancelled["next_before"] is None
    queued = client.get("/chains?status=queued&limit=2").json()
    assert [c["id"] for c in queued["chains"]] == [ids[4], ids[2]]
    rest = client.get(f"/chains?status=queued&limit=2&before={queued['next_before']}").json()
    assert [c["id"] for c in rest["chains"]] == [ids[0]]
    assert client.get("/chains?status=failed").json() == {"chains": [], "next_before": None}
    assert len(client.get("/chains").json()["chains"]) == 5


def test_an_unknown_status_is_422_listing_the_allowed_ones(client: TestClient) -> None:
    reply = client.get("/chains?status=done")
    found = detail(reply)
    assert found["field"] == "status"
    assert "queued, running, succeeded, failed, cancelled" in found["message"]


# -- Store.page: a filtered page never skips a chain -------------------------------------------


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(), prefix="t:", timing=Timing(120, 60), clock=lambda: NOW)


def fill(store: Store, count: int, *, cancel_every: int) -> list[str]:
    """``count`` chains, one a second; every ``cancel_every``-th cancelled. Newest first."""
    ids = []
    for n in range(count):
        chain = new_chain(f"c{n:02d}", Spec(video_id="v0", steps=1), NOW + n)
        store.create(chain)
        if n % cancel_every == 0:
            store.transition(chain.id, Cancel())
        ids.append(chain.id)
    return ids[::-1]


def walk(store: Store, **options: Any) -> tuple[list[str], int]:
    """Every page from the newest: the ids in order, and how many pages it took."""
    seen: list[str] = []
    before, pages = None, 0
    while True:
        page = store.page(before=before, **options)
        pages += 1
        seen += [c.id for c in page.chains]
        if page.next_before is None:
            return seen, pages
        before = page.next_before


def test_a_filtered_page_reads_on_until_it_is_full(store: Store) -> None:
    newest_first = fill(store, 30, cancel_every=7)  # c00, c07, c14, c21, c28 cancelled
    page = store.page(limit=3, status=ChainStatus.CANCELLED)
    assert [c.id for c in page.chains] == ["c28", "c21", "c14"]
    assert page.next_before == NOW + 14
    seen, _ = walk(store, limit=3, status=ChainStatus.CANCELLED)
    assert seen == ["c28", "c21", "c14", "c07", "c00"]
    queued, _ = walk(store, limit=4, status=ChainStatus.QUEUED)
    assert queued == [c for c in newest_first if c not in seen]


def test_a_page_that_reads_its_most_stops_short_with_a_cursor_and_skips_nothing(
    store: Store,
) -> None:
    fill(store, 30, cancel_every=7)
    page = store.page(limit=3, status=ChainStatus.CANCELLED, max_scanned=5)
    assert [c.id for c in page.chains] == ["c28"]  # c29..c25 read: short, not the end
    assert page.next_before == NOW + 25
    seen, pages = walk(store, limit=3, status=ChainStatus.CANCELLED, max_scanned=5)
    assert seen == ["c28", "c21", "c14", "c07", "c00"]
    assert pages == 7  # the last one empty: the sixth read its most


def test_unfiltered_pages_are_as_before(store: Store) -> None:
    newest_first = fill(store, 7, cancel_every=100)
    page = store.page(limit=3)
    assert [c.id for c in page.chains] == newest_first[:3]
    assert page.next_before == NOW + 4
    assert walk(store, limit=3)[0] == newest_first
