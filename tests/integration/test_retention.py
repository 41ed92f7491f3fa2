"""Retention over the real service: Redis, Celery worker and beat, web, the fake gateway.

With ``CHAIN_RETENTION_DAYS`` of a few seconds, a finished chain's keys carry TTLs and are
gone once they pass, its listing entry with them, while its video records stay. A resumed
chain is kept while it runs. With ``ARCHIVE_KEEP=final`` a succeeded chain leaves the final
video's file alone in the archive and its other videos' records ``superseded``; a prune run
again (the sweep hands out one still owed) changes nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import pytest
import requests

from tests.support import FAST, Service, fresh, module_service, sha256_file, start_chain
from worker.state.keys import RETENTION, Kept, Keys

RETENTION_SECONDS = 10.0
svc = module_service(
    "retention",
    delay=1.0,
    chain_retention_days=repr(RETENTION_SECONDS / 86400),
    archive_keep="final",
    **FAST,
)

ENDS = ("succeeded", "failed", "cancelled")


@pytest.fixture(autouse=True)
def _fresh(svc: Service) -> None:
    fresh(svc)


def keys_of(svc: Service) -> Keys:
    return Keys(svc.prefix)


def until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.2)


def archive_records(svc: Service, chain_id: str) -> dict[str, dict[str, Any]]:
    reply = svc.http.get(f"{svc.api}/archive", params={"limit": "500"}, timeout=10)
    reply.raise_for_status()
    return {v["video_id"]: v for v in reply.json()["videos"] if v["chain_id"] == chain_id}


def command(svc: Service, chain_id: str, name: str) -> requests.Response:
    return svc.http.post(f"{svc.api}/chains/{chain_id}/{name}", json={}, timeout=10)


def test_a_finished_chain_expires_and_its_video_records_stay(svc: Service) -> None:
    k, r = keys_of(svc), svc.redis
    # Given a chain started with an Idempotency-Key, run to its end
    seed = svc.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 1}
    reply = svc.http.post(
        f"{svc.api}/chains",
        json=body,
        headers={"Idempotency-Key": secrets.token_hex(8)},
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    chain = svc.wait(reply.json()["id"], until=ENDS)
    assert chain["status"] == "succeeded", chain
    cid = chain["id"]
    [video] = [a["video_id"] for a in chain["archive"]]
    # Then its document and every key naming it expire within the retention ...
    assert 0 < r.pttl(k.chain(cid)) <= RETENTION_SECONDS * 1000
    assert r.zscore(k.chains_expiring, cid) is not None
    [idem] = [key for key in r.scan_iter(f"{k.prefix}idem:*") if cid.encode() in r.get(key)]  # type: ignore[operator]
    assert 0 < r.pttl(idem) <= RETENTION_SECONDS * 1000  # never outliving the chain
    task_id = chain["steps"][0]["task_id"]
    assert r.pttl(k.task_owner(task_id)) > 0
    # ... while its video's record is kept for good
    assert r.pttl(k.video(video)) == -1
    # And every key of the service without a TTL is one RETENTION says is bounded
    for raw in r.scan_iter(f"{k.prefix}*", count=1000):
        key = raw.decode()
        name = key.removeprefix(k.prefix)
        if name.startswith("queue"):  # Celery's queues (CELERY_QUEUE is under the prefix here)
            continue
        if r.pttl(key) != -1:
            continue
        lives = [life for life in RETENTION.values() if fnmatchcase(name, life.pattern)]
        assert any(life.kept is not Kept.EXPIRES for life in lives), f"{key} never expires"
        if fnmatchcase(name, "chain:*"):
            status = svc.chain(name.removeprefix("chain:"))["status"]
            assert status not in ENDS, f"{key} is {status} and never expires"

    # When the retention passes
    until("the chain document to expire", lambda: r.exists(k.chain(cid)) == 0)
    # Then the chain is gone from the API and, after a sweep, from the listing
    assert svc.http.get(f"{svc.api}/chains/{cid}", timeout=10).status_code == 404
    until("the sweep to trim the listing", lambda: r.zscore(k.chains, cid) is None, 10)
    assert r.zscore(k.chains_expiring, cid) is None
    listed = svc.http.get(f"{svc.api}/chains", params={"limit": "100"}, timeout=10).json()
    assert cid not in [c["id"] for c in listed["chains"]]
    # But its video's record and file stay: the archive's proof
    record = archive_records(svc, cid)[video]
    assert record["state"] == "archived"
    assert sha256_file(svc.archive / f"{video}.mp4") == record["sha256"]


def test_a_resumed_chain_is_kept_while_it_runs_and_expires_after_its_new_end(
    svc: Service,
) -> None:
    k, r = keys_of(svc), svc.redis
    # Given a chain cancelled while its first step runs
    chain = start_chain(svc, 2)
    cid = chain["id"]
    until("step 0 to be paid for", lambda: svc.chain(cid)["steps"][0]["task_id"])
    assert command(svc, cid, "cancel").status_code == 202
    cancelled = svc.wait(cid, until=ENDS)
    assert cancelled["status"] == "cancelled", cancelled
    # Then it expires like any finished chain
    assert 0 < r.pttl(k.chain(cid)) <= RETENTION_SECONDS * 1000
    # When it is resumed, it is kept (no TTL) for as long as it runs
    reply = command(svc, cid, "resume")
    assert reply.status_code == 202, reply.text
    assert r.pttl(k.chain(cid)) == -1
    assert r.zscore(k.chains_expiring, cid) is None
    # And once it ends again, it expires again
    done = svc.wait(cid, until=ENDS, timeout=60)
    assert done["status"] == "succeeded", done
    assert 0 < r.pttl(k.chain(cid)) <= RETENTION_SECONDS * 1000


def test_keep_final_leaves_exactly_the_final_file_and_supersedes_the_rest(svc: Service) -> None:
    k, r = keys_of(svc), svc.redis
    # Given ARCHIVE_KEEP=final, when a 3-step chain succeeds
    chain = svc.wait(start_chain(svc, 3)["id"], until=ENDS, timeout=90)
    assert chain["status"] == "succeeded", chain
    cid = chain["id"]
    made = [s["video_id"] for s in chain["steps"]]
    final, earlier = made[-1], made[:-1]
    # Then the videos the final one contains are marked superseded, their files deleted
    records = until(
        "the superseded records",
        lambda: (
            (got := archive_records(svc, cid))
            and all(got[v]["state"] == "superseded" for v in earlier)
            and got
        ),
    )
    mine = sorted(p.name for p in svc.archive.iterdir() if p.stem in made)
    assert mine == [f"{final}.json", f"{final}.mp4"]
    assert not [p.name for p in svc.archive.iterdir() if p.name.startswith(".")]  # no temp
    # ... the final stays archived, whole
    assert records[final]["state"] == "archived"
    assert sha256_file(svc.archive / f"{final}.mp4") == records[final]["sha256"]
    assert records[final]["sha256"] == svc.gateway_sha256(final)
    # ... and each superseded record keeps its proof: what it was, what holds it, when
    for video in earlier:
        record = records[video]
        assert record["sha256"] == svc.gateway_sha256(video)
        assert (record["location"], record["superseded_by"]) == (None, final)
        assert record["superseded_at"] >= record["archived_at"]
    # The archive API lists and counts them
    page = svc.http.get(f"{svc.api}/archive", params={"state": "superseded"}, timeout=10).json()
    assert set(earlier) <= {v["video_id"] for v in page["videos"]}
    assert page["counts"]["superseded"] >= len(earlier)
    assert page["counts"]["superseding"] == 0
    view = svc.chain(cid)
    assert [a["status"] for a in view["archive"]] == ["superseded", "superseded", "done"]
    # When the prune is owed again (as after a crash), the sweep hands it out and it changes
    # nothing: nothing more is deleted, no record changes
    assert r.zscore(k.prune, cid) is None  # done: no longer owed
    r.zadd(k.prune, {cid: 0})
    until("the sweep to run the prune again", lambda: r.zscore(k.prune, cid) is None, 15)
    log = (svc.stack.log_dir / "worker.log").read_text()
    assert f"prune {cid}: kept {final}, deleted 0 video(s)" in log
    assert archive_records(svc, cid) == records
    assert sorted(p.name for p in svc.archive.iterdir() if p.stem in made) == mine
