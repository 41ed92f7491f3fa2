"""Retention: every Redis key has a TTL or a bound; finished chains expire, resumed ones do
not; ARCHIVE_KEEP=final deletes only what a succeeded chain's archived final video contains,
marking before deleting, so a run cut short converges when run again.

The rules are pure (``worker.core.retention``); the store and the archiver run here on
fakeredis and a local directory. tests/integration/test_retention.py runs the real service.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from kling.models import Task, TaskStatus, Video
from worker.archiver import Archiver
from worker.core.chain import (
    Cancel,
    Chain,
    Claim,
    Resume,
    Spec,
    StepStatus,
    Submitted,
    TaskUpdate,
    VideoSettled,
    apply,
    new_chain,
)
from worker.core.retention import (
    Keep,
    Prune,
    Retention,
    expires,
    final_video,
    prune_plan,
    supersedes,
    unfinished_plan,
)
from worker.core.videos import (
    VideoRecord,
    VideoState,
    archive_entry,
    archived,
    lost,
    superseded,
    superseding,
)
from worker.outbound.notify import EventType
from worker.settings import Settings
from worker.state.chains import Store, Timing
from worker.state.keys import RETENTION, Keys
from worker.state.videos import Videos
from worker.storage.local import LocalStorage
from worker.tasknames import SUPERSEDE

NOW = 2_000_000_000.0
DAY = 24 * 3600


# -- every key: a TTL or a bound -----------------------------------------------------------------
def members() -> list[str]:
    return [
        name
        for name, value in vars(Keys).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    ]


def sample(name: str) -> str:
    """The key ``name`` names, with a sample argument for each parameter."""
    keys = Keys("kc:")
    attr = getattr(keys, name)
    if not callable(attr):
        return str(attr)
    params = inspect.signature(attr).parameters.values()
    samples = {"int": 7, "index": 3, "minute": 7, "day": "2026-12-01"}
    args = [samples.get(p.name, samples.get(str(p.annotation), "x1")) for p in params]
    return str(attr(*args))


@pytest.mark.parametrize("name", members())
def test_every_key_says_how_long_it_lives(name: str) -> None:
    assert name in RETENTION, (
        f"Keys.{name} has no entry in worker.state.keys.RETENTION: say whether it expires "
        "(its TTL) or what bounds it"
    )
    life = RETENTION[name]
    assert life.why
    assert fnmatchcase(sample(name).removeprefix("kc:"), life.pattern), (name, life.pattern)


def test_the_retention_table_names_only_keys_that_exist() -> None:
    assert set(RETENTION) <= set(members())


# -- which chains expire -------------------------------------------------------------------------
def task(index: int, status: TaskStatus, video: Video | None = None) -> Task:
    return Task(
        f"t{index}",
        status,
        created_at_ms=int(NOW * 1000),
        videos=(video,) if video is not None else (),
    )


def run(chain: Chain, index: int, *, duration: float | None = None) -> Chain:
    """Step ``index`` sent, accepted and succeeded with video ``v{index + 1}``."""
    chain = apply(chain, Claim(index, "w", 60.0), NOW).chain
    chain = apply(chain, Submitted(index, task(index, TaskStatus.SUBMITTED)), NOW).chain
    length = duration if duration is not None else 5.0 + 4.5 * (index + 1)
    video = Video(f"v{index + 1}", f"https://cdn.example/v{index + 1}.mp4", length)
    return apply(chain, TaskUpdate(index, task(index, TaskStatus.SUCCEED, video)), NOW).chain


def settle(chain: Chain, *, archived_ok: bool = True) -> Chain:
    for video_id in chain.video_ids:
        chain = apply(chain, VideoSettled(video_id, archived_ok, None), NOW).chain
    return chain


def succeeded(steps: int = 3, chain_id: str = "c1") -> Chain:
    spec = Spec(video_id="v0", task_id="p0", steps=steps, source_duration=5.0)
    chain = new_chain(chain_id, spec, NOW)
    for index in range(steps):
        chain = run(chain, index)
    chain = settle(chain)
    assert chain.status.value == "succeeded"
    return chain


def test_a_finished_chain_expires_and_a_live_one_does_not() -> None:
    spec = Spec(video_id="v0", task_id="p0", steps=2, source_duration=5.0)
    queued = new_chain("c1", spec, NOW)
    assert not expires(queued)
    running = run(queued, 0)
    assert running.status.value == "running"
    assert not expires(running)
    assert expires(succeeded())
    cancelled = apply(queued, Cancel(), NOW).chain
    assert cancelled.status.value == "cancelled"
    assert expires(cancelled)
    resumed = apply(cancelled, Resume(), NOW).chain
    assert resumed.status.value == "queued"  # its pending step is sent again
    assert not expires(resumed)


def test_a_chain_that_failed_while_a_paid_step_runs_is_kept_until_that_step_ends() -> None:
    # Given a chain whose newest video was lost while the next step was processing
    spec = Spec(video_id="v0", task_id="p0", steps=3, source_duration=5.0)
    chain = run(new_chain("c1", spec, NOW), 0)
    chain = apply(chain, Claim(1, "w", 60.0), NOW).chain
    chain = apply(chain, Submitted(1, task(1, TaskStatus.SUBMITTED)), NOW).chain
    chain = apply(chain, VideoSettled("v1", False, "HTTP 404"), NOW).chain
    # Then it reads failed, but it still polls step 1: its document must stay
    assert chain.status.value == "failed"
    assert chain.steps[1].status is StepStatus.SUBMITTED
    assert not expires(chain)


def test_retention_days_become_redis_milliseconds() -> None:
    assert Retention.of(30, "all").chain_ms == 30 * DAY * 1000
    assert Retention.of(0.0001, "final") == Retention(8.64, Keep.FINAL)
    assert Retention.of(1e-12, "all").chain_ms == 1  # never 0: PX 0 is an error
    assert Retention().chain_ms is None


@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf", "36501", "a month"])
def test_chain_retention_days_must_be_a_positive_number(
    days: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAIN_RETENTION_DAYS", days)
    with pytest.raises(ValidationError, match="chain_retention_days"):
        Settings()


def test_retention_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().chain_retention_days, Settings().archive_keep) == (30.0, "all")
    monkeypatch.setenv("CHAIN_RETENTION_DAYS", "0.5")
    monkeypatch.setenv("ARCHIVE_KEEP", "final")
    assert (Settings().chain_retention_days, Settings().archive_keep) == (0.5, "final")
    monkeypatch.setenv("ARCHIVE_KEEP", "latest")
    with pytest.raises(ValidationError, match="archive_keep"):
        Settings()


# -- what the final video supersedes -------------------------------------------------------------
def test_the_final_video_supersedes_its_ancestors_made_by_the_chain() -> None:
    chain = succeeded(3)
    assert final_video(chain) == "v3"
    assert supersedes(chain) == ["v2", "v1"]  # never v0, the source, nor v3 itself


def test_a_doubted_branch_is_not_superseded() -> None:
    # Given step 1's reported length doubted (its video archived, the chain failed) ...
    spec = Spec(video_id="v0", task_id="p0", steps=2, source_duration=5.0)
    chain = run(new_chain("c1", spec, NOW), 0)  # v1: 9.5 s
    chain = run(chain, 1, duration=9.6)  # v2: "grew" 0.1 s
    assert chain.steps[1].status is StepStatus.FAILED
    chain = settle(chain)
    # ... and resumed from v1, which the next step extends
    chain = apply(chain, Resume(), NOW).chain
    chain = run(chain, 2, duration=14.0)
    chain = settle(chain)
    assert chain.status.value == "succeeded"
    assert chain.steps[2].parent_video_id == "v1"
    # Then the final (v3) holds v1, but not v2, a branch it does not descend from
    assert (final_video(chain), supersedes(chain)) == ("v3", ["v1"])


def record(video_id: str, chain_id: str | None = "c1", **fields: Any) -> VideoRecord:
    base = VideoRecord(
        video_id=video_id,
        task_id=f"t-{video_id}",
        kind="video-extend",
        url=f"https://cdn.example/{video_id}.mp4",
        created_at=NOW,
        known_at=NOW,
        chain_id=chain_id,
        origin="chain" if chain_id else "request",
    )
    done = archived(
        base, location=f"/a/{video_id}.mp4", size=9, sha256=f"sha-{video_id}", host=None, now=NOW
    )
    return replace(done, **fields)


def test_prune_plan_takes_the_chains_own_archived_ancestors() -> None:
    chain = succeeded(3)
    records = {v: record(v) for v in ("v1", "v2", "v3")}
    assert prune_plan(chain, records) == Prune("v3", ["v2", "v1"])


def test_prune_plan_finishes_a_deletion_cut_short_and_skips_the_rest() -> None:
    chain = succeeded(3)
    records = {
        "v1": superseding(record("v1"), "v3"),  # marked, then the run stopped
        "v2": record("v2", state=VideoState.LOST, location=None),  # never stored
        "v3": record("v3"),
    }
    assert prune_plan(chain, records) == Prune("v3", ["v1"])
    done = {**records, "v1": superseded(records["v1"], NOW)}
    assert prune_plan(chain, done) == Prune("v3", [])  # a repeat deletes nothing more


def test_prune_plan_never_takes_another_chains_video() -> None:
    chain = succeeded(3)
    records = {"v1": record("v1", chain_id="other"), "v2": record("v2"), "v3": record("v3")}
    assert prune_plan(chain, records) == Prune("v3", ["v2"])


@pytest.mark.parametrize(
    ("final", "why"),
    [
        (None, "v3 is not archived (unknown)"),
        ("pending", "v3 is not archived (pending)"),
        ("lost", "v3 is not archived (lost)"),
    ],
)
def test_nothing_is_pruned_before_the_final_video_is_archived(final: str | None, why: str) -> None:
    chain = succeeded(3)
    records = {"v1": record("v1"), "v2": record("v2")}
    if final == "pending":
        records["v3"] = record("v3", state=VideoState.PENDING)
    elif final == "lost":
        records["v3"] = record("v3", state=VideoState.LOST)
    plan = prune_plan(chain, records)
    assert isinstance(plan, str)
    assert why in plan


@pytest.mark.parametrize("how", ["running", "failed", "cancelled"])
def test_nothing_is_pruned_unless_the_chain_succeeded(how: str) -> None:
    spec = Spec(video_id="v0", task_id="p0", steps=2, source_duration=5.0)
    chain = run(new_chain("c1", spec, NOW), 0)
    if how == "failed":
        chain = settle(chain, archived_ok=False)
    elif how == "cancelled":
        chain = settle(apply(chain, Cancel(), NOW).chain)
    assert chain.status.value == how
    plan = prune_plan(chain, {"v1": record("v1")})
    assert plan == f"the chain is {how}, not succeeded"


def test_a_chain_started_from_another_chains_final_never_prunes_it() -> None:
    # Given chain c2 extending c1's final video v3
    spec = Spec(video_id="v3", task_id="t2", steps=1, source_duration=18.5)
    chain = new_chain("c2", spec, NOW)
    step = Video("w1", "https://cdn.example/w1.mp4", 23.0)
    chain = apply(chain, Claim(0, "w", 60.0), NOW).chain
    chain = apply(chain, Submitted(0, task(0, TaskStatus.SUBMITTED)), NOW).chain
    chain = apply(chain, TaskUpdate(0, task(0, TaskStatus.SUCCEED, step)), NOW).chain
    chain = settle(chain)
    records = {"v3": record("v3", chain_id="c1"), "w1": record("w1", chain_id="c2")}
    # Then its prune keeps w1 and never names v3, its source and c1's final
    assert (supersedes(chain), prune_plan(chain, records)) == ([], Prune("w1", []))


def test_an_idempotency_key_never_outlives_its_chain() -> None:
    short, forever = store(Retention(5.0)), store(Retention())
    for s in (short, forever):
        assert s.claim_key("d1", "c1", "f1", ttl=DAY) == ("c1", "f1")
    assert 0 < short.redis.pttl(short.keys.idempotency("d1")) <= 5000
    assert forever.redis.ttl(forever.keys.idempotency("d1")) == DAY


# -- the record of a superseded video --------------------------------------------------------
def test_a_superseded_record_keeps_its_proof_and_says_what_holds_it() -> None:
    start = record("v1")
    marked = superseding(start, "v3")
    assert (marked.state, marked.superseded_by, marked.location) == (
        "superseding",
        "v3",
        "/a/v1.mp4",
    )
    gone = superseded(marked, NOW + 5)
    assert (gone.state, gone.location, gone.superseded_at) == ("superseded", None, NOW + 5)
    assert (gone.video_id, gone.bytes, gone.sha256, gone.superseded_by) == (
        "v1",
        9,
        "sha-v1",
        "v3",
    )
    assert VideoRecord.from_json(gone.to_json()) == gone
    view = gone.view(NOW, 0)
    assert (view["state"], view["superseded_by"], view["superseded_at"]) == (
        "superseded",
        "v3",
        NOW + 5,
    )
    entry = archive_entry("v1", 9.5, gone)
    assert (entry["status"], entry["path"], entry["sha256"]) == ("superseded", None, "sha-v1")


@pytest.mark.parametrize("state", [VideoState.PENDING, VideoState.LOST])
def test_only_an_archived_video_can_be_superseded(state: VideoState) -> None:
    start = record("v1", state=state)
    assert superseding(start, "v3") == start
    assert superseded(start, NOW) == start
    assert superseded(record("v1"), NOW) == record("v1")  # not marked first: unchanged


def test_a_record_stored_before_supersession_existed_still_reads() -> None:
    fields = record("v1").to_json().replace(',"superseded_by":null,"superseded_at":null', "")
    assert "superseded" not in fields
    assert VideoRecord.from_json(fields) == record("v1")


def test_a_superseded_video_is_never_archived_again() -> None:
    gone = superseded(superseding(record("v1"), "v3"), NOW)
    assert archived(gone, location="/b", size=1, sha256="x", host=None, now=NOW) == gone
    assert lost(gone, "expired") == gone


# -- the store: TTLs, the listing, the prunes owed -------------------------------------------
def store(retention: Retention, client: fakeredis.FakeRedis | None = None) -> Store:
    return Store(
        client or fakeredis.FakeRedis(),
        prefix="t:",
        timing=Timing(poll_after=120, submit_lease=60),
        retention=retention,
        clock=lambda: NOW,
    )


def test_a_finished_chain_gets_its_ttl_and_a_resume_clears_it() -> None:
    s = store(Retention(3600.0))
    spec = Spec(video_id="v0", task_id="p0", steps=2, source_duration=5.0)
    s.create(new_chain("c1", spec, NOW))
    key = s.keys.chain("c1")
    assert s.redis.pttl(key) == -1  # queued: kept
    s.transition("c1", Cancel())  # nothing in flight: cancelled at once
    assert 3_590_000 < s.redis.pttl(key) <= 3_600_000
    assert s.redis.zscore(s.keys.chains_expiring, "c1") == NOW + 3600
    out = s.transition("c1", Resume())
    assert out.refused is None
    assert s.redis.pttl(key) == -1  # running again: kept as long as it runs
    assert s.redis.zscore(s.keys.chains_expiring, "c1") is None


def test_without_a_retention_nothing_expires() -> None:
    s = store(Retention())
    s.create(new_chain("c1", Spec(video_id="v0", task_id="p0", steps=1), NOW))
    s.transition("c1", Cancel())
    assert s.get("c1").status.value == "cancelled"
    assert s.redis.pttl(s.keys.chain("c1")) == -1
    assert s.redis.zcard(s.keys.chains_expiring) == 0


def zmembers(s: Store, key: str) -> set[str]:
    return {m.decode() for m in s.redis.zrange(key, 0, -1)}  # type: ignore[union-attr]


def test_expired_chains_leave_the_listing_and_live_ones_stay() -> None:
    s = store(Retention(60.0))
    for chain_id in ("c1", "c2", "c3"):
        s.create(new_chain(chain_id, Spec(video_id="v0", task_id="p0", steps=1), NOW))
    s.transition("c1", Cancel())
    s.transition("c2", Cancel())
    s.redis.delete(s.keys.chain("c1"))  # as its TTL would
    # Not yet due: nothing taken out
    assert s.trim_expired(now=NOW + 30) == 0
    # Due: c1 is gone and leaves; c2 still has its document (Redis's clock) and stays listed
    assert s.trim_expired(now=NOW + 61) == 1
    assert zmembers(s, s.keys.chains) == {"c2", "c3"}
    assert zmembers(s, s.keys.chains_expiring) == {"c2"}
    assert {c.id for c in s.recent(limit=10)} == {"c2", "c3"}


def test_the_change_that_makes_a_chain_succeed_owes_a_prune_with_keep_final() -> None:
    for keep, owed in ((Keep.ALL, 0), (Keep.FINAL, 1)):
        s = store(Retention(3600.0, keep))
        chain = succeeded(2)
        # stored just before its last video settled
        last = chain.video_ids[-1]
        s.create(replace(chain, settled=[v for v in chain.settled if v != last]))
        assert s.get(chain.id).status.value == "running"
        s.transition(chain.id, VideoSettled(last, True, None))
        assert s.get(chain.id).status.value == "succeeded"
        assert s.redis.zcard(s.keys.prune) == owed
        assert s.take_prunes(now=NOW, hold=60) == []  # the fast path's turn first
        assert s.take_prunes(now=NOW + 121, hold=60) == ["c1"][:owed]
        assert s.take_prunes(now=NOW + 122, hold=60) == []  # held: handed out once


# -- the archiver: mark, delete, mark -----------------------------------------------------------
class Rig:
    def __init__(self, tmp_path: Path, keep: str = "final") -> None:
        self.dir = tmp_path / "archive"
        self.settings = Settings(
            callback_secret="s" * 32,
            kling_api_key="k",
            archive_dir=self.dir,
            archive_keep=keep,
        )
        self.store = store(Retention(3600.0, Keep(keep)))
        self.videos = Videos(self.store.redis, prefix="t:", clock=lambda: NOW)
        self.storage = LocalStorage(self.dir)
        self.queued: list[tuple[str, tuple[Any, ...]]] = []
        self.archiver = Archiver(
            self.settings,
            self.storage,
            self.store,
            self.videos,
            None,  # type: ignore[arg-type]  # no provider: pruning never asks one
            lambda name, args: self.queued.append((name, args)),
            clock=lambda: NOW,
        )

    def succeeded_chain(self, steps: int = 3) -> Chain:
        """A succeeded chain whose videos are archived here, each with its sidecar."""
        chain = succeeded(steps)
        for video_id in chain.video_ids:
            body = f"video {video_id}".encode()
            upload = self.storage.open(f"{video_id}.mp4")
            upload.write(body)
            where = upload.commit(size=len(body))
            self.storage.write_json(f"{video_id}.json", {"video_id": video_id})
            base = record(video_id)
            self.videos.register(replace(base, location=where, bytes=len(body)))
        self.store.create(chain)
        self.store.redis.zadd(self.store.keys.prune, {chain.id: NOW})
        return chain

    def files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())

    def states(self) -> dict[str, str]:
        return {
            v: r.state.value for v in ("v1", "v2", "v3") if (r := self.videos.get(v)) is not None
        }


def test_keep_final_leaves_the_final_file_and_marks_the_rest_superseded(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    assert rig.archiver.supersede(chain.id) is None
    assert rig.files() == ["v3.json", "v3.mp4"]
    assert rig.states() == {"v1": "superseded", "v2": "superseded", "v3": "archived"}
    v1 = rig.videos.get("v1")
    assert v1 is not None
    assert (v1.superseded_by, v1.superseded_at, v1.sha256, v1.location) == (
        "v3",
        NOW,
        "sha-v1",
        None,
    )
    assert rig.store.redis.zcard(rig.store.keys.prune) == 0  # no longer owed
    assert rig.videos.counts()["superseded"] == 2
    # A repeat (a redelivery, or the sweep) changes nothing
    before = {v: rig.videos.get(v) for v in ("v1", "v2", "v3")}
    assert rig.archiver.supersede(chain.id) is None
    assert {v: rig.videos.get(v) for v in ("v1", "v2", "v3")} == before
    assert rig.files() == ["v3.json", "v3.mp4"]


class Flaky(LocalStorage):
    """Local storage whose ``fail_at``-th delete fails, as a crash or a full disk would."""

    def __init__(self, directory: Path, fail_at: int) -> None:
        super().__init__(directory)
        self.fail_at = fail_at
        self.deletes = 0

    def delete(self, name: str) -> bool:
        self.deletes += 1
        if self.deletes == self.fail_at:
            raise OSError("disk went away")
        return super().delete(name)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_prune_cut_short_converges_when_run_again(tmp_path: Path, fail_at: int) -> None:
    # Given a prune whose storage fails at its 1st, 2nd or 3rd delete
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    rig.archiver.storage = Flaky(rig.dir, fail_at)
    # When it runs: it asks to be run again, still owed, and no record lies about its file
    assert rig.archiver.supersede(chain.id) is not None
    assert rig.store.redis.zcard(rig.store.keys.prune) == 1
    for video_id, state in rig.states().items():
        on_disk = f"{video_id}.mp4" in rig.files()
        if state == "archived":
            assert on_disk, video_id  # an archived record's file is there
        assert state != "superseded" or not on_disk
    assert "superseding" in rig.states().values()
    # Then the next run finishes it
    assert rig.archiver.supersede(chain.id, attempt=1) is None
    assert rig.files() == ["v3.json", "v3.mp4"]
    assert rig.states() == {"v1": "superseded", "v2": "superseded", "v3": "archived"}
    assert rig.store.redis.zcard(rig.store.keys.prune) == 0


def test_nothing_is_deleted_when_the_final_file_is_not_whole(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    (rig.dir / "v3.mp4").write_bytes(b"cut")  # not the bytes its record says
    assert rig.archiver.supersede(chain.id) is None
    assert rig.states() == {"v1": "archived", "v2": "archived", "v3": "archived"}
    assert len(rig.files()) == 6
    (rig.dir / "v3.mp4").unlink()
    rig.store.redis.zadd(rig.store.keys.prune, {chain.id: NOW})
    assert rig.archiver.supersede(chain.id) is None
    assert len(rig.files()) == 5  # nothing deleted by the prune
    assert rig.states() == {"v1": "archived", "v2": "archived", "v3": "archived"}


def test_nothing_is_deleted_from_another_storage(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    rig.videos.update("v1", lambda r: replace(r, location="s3://old-bucket/v1.mp4"))
    assert rig.archiver.supersede(chain.id) is None
    assert rig.states() == {"v1": "archived", "v2": "superseded", "v3": "archived"}
    assert rig.files() == ["v1.json", "v1.mp4", "v3.json", "v3.mp4"]


def test_keep_all_deletes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, keep="all")
    chain = rig.succeeded_chain(3)
    assert rig.archiver.supersede(chain.id) is None
    assert len(rig.files()) == 6
    assert set(rig.states().values()) == {"archived"}
    assert rig.store.redis.zcard(rig.store.keys.prune) == 0  # owed no more


def test_a_prune_of_an_expired_chain_is_dropped(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    rig.store.redis.delete(rig.store.keys.chain(chain.id))
    assert rig.archiver.supersede(chain.id) is None
    assert len(rig.files()) == 6
    assert rig.store.redis.zcard(rig.store.keys.prune) == 0


def test_a_prune_cut_short_whose_chain_then_expired_finishes_what_it_marked(
    tmp_path: Path,
) -> None:
    # Given a prune cut short right after marking v2, and the chain's document expired since
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(3)
    rig.archiver.storage = Flaky(rig.dir, fail_at=1)
    assert rig.archiver.supersede(chain.id) is not None
    assert rig.states() == {"v1": "archived", "v2": "superseding", "v3": "archived"}
    rig.store.redis.delete(rig.store.keys.chain(chain.id))
    # When it runs again: v2, decided before, is finished; v1 is kept (nothing says what the
    # final contains without the chain)
    assert rig.archiver.supersede(chain.id, attempt=1) is None
    assert rig.states() == {"v1": "archived", "v2": "superseded", "v3": "archived"}
    assert rig.files() == ["v1.json", "v1.mp4", "v3.json", "v3.mp4"]
    assert rig.store.redis.zcard(rig.store.keys.prune) == 0


def test_unfinished_plan_needs_the_final_still_archived() -> None:
    marked = [superseding(record("v1"), "v3"), superseding(record("v2"), "v3")]
    records = {r.video_id: r for r in marked}
    assert unfinished_plan("c1", marked, records) == "its final video v3 is not archived (unknown)"
    records["v3"] = record("v3")
    assert unfinished_plan("c1", marked, records) == Prune("v3", ["v1", "v2"])
    assert unfinished_plan("c2", marked, records) == (
        "the chain is gone (expired) and left no deletion half done: its files are kept"
    )


def test_the_end_that_makes_a_chain_succeed_queues_its_prune(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    chain = rig.succeeded_chain(2)
    last = chain.video_ids[-1]
    rig.store.redis.delete(rig.store.keys.chain(chain.id))
    rig.store.create(replace(chain, settled=[v for v in chain.settled if v != last]))
    rig.videos.update(last, lambda r: replace(r, state=VideoState.PENDING))
    settle_as_archived = lambda r: replace(r, state=VideoState.ARCHIVED)  # noqa: E731
    rig.archiver._settle(last, settle_as_archived, EventType.VIDEO_ARCHIVED)
    assert rig.store.get(chain.id).status.value == "succeeded"
    assert (SUPERSEDE, (chain.id,)) in rig.queued


# -- the archive API ------------------------------------------------------------------------------
def test_the_archive_api_filters_and_counts_superseded_videos(client: TestClient) -> None:
    reply = client.get("/archive", params={"state": "superseded"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["counts"] == {
        "pending": 0,
        "archived": 0,
        "lost": 0,
        "superseding": 0,
        "superseded": 0,
    }
    wrong = client.get("/archive", params={"state": "deleted"})
    assert wrong.status_code == 422
    assert "superseding, superseded" in wrong.json()["error"]
