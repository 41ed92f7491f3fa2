"""The chain's pure core: every step state against every event, the cap, the target.

A chain's videos are archived through their records (``tests/unit/test_videos.py``); the
chain only learns that each one settled (``VideoSettled``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kling.models import Task, TaskStatus, Video
from worker.core.chain import (
    MAX_TOTAL_SECONDS,
    ArchiveVideo,
    Chain,
    ChainStatus,
    Claim,
    EndReason,
    Event,
    NeedsAttention,
    Spec,
    StepStatus,
    SubmitFailed,
    SubmitRetry,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
    VideoSettled,
    apply,
    duration_doubt,
    end_reason_after,
    extension_ceiling,
    fits_under_cap,
    new_chain,
    video_record,
)
from worker.core.schedule import Due, Work, schedule
from worker.core.videos import VideoRecord, VideoState, archived, lost

NOW = 1_000_000.0
LEASE = 60.0


def task(
    status: TaskStatus,
    *,
    task_id: str = "t0",
    video: str = "v1",
    duration: float | None = 9.5,
    parent: float | None = None,
) -> Task:
    """A query reply; ``parent`` is the duration its ``task_info.parent_video`` reports."""
    videos = (Video(video, f"https://cdn.example/{video}.mp4", duration),)
    return Task(
        task_id,
        status,
        status_msg="blocked by content safety" if status is TaskStatus.FAILED else None,
        created_at_ms=int(NOW * 1000),
        videos=videos if status is TaskStatus.SUCCEED else (),
        parent_video=None if parent is None else Video("p", "https://cdn.example/p.mp4", parent),
    )


def chain_at(status: StepStatus, **spec: object) -> Chain:
    """A one-step chain whose step 0 is in ``status`` (reached through real events)."""
    base = {"video_id": "v0", "task_id": "p0", "source_duration": 5.0, "target_seconds": 30.0}
    c = new_chain("c1", Spec(**{**base, **spec}), NOW)  # type: ignore[arg-type]
    if status is StepStatus.PENDING:
        return c
    c = apply(c, Claim(0, "w1", LEASE), NOW).chain
    if status is StepStatus.SUBMITTING:
        return c
    if status is StepStatus.ATTENTION:
        return apply(c, NeedsAttention(0, "lost reply"), NOW).chain
    if status is StepStatus.FAILED:
        return apply(c, SubmitFailed(0, "bad request", 1201), NOW).chain
    c = apply(c, Submitted(0, task(TaskStatus.SUBMITTED)), NOW).chain
    if status is StepStatus.SUBMITTED:
        return c
    c = apply(c, TaskUpdate(0, task(TaskStatus.PROCESSING)), NOW).chain
    if status is StepStatus.PROCESSING:
        return c
    assert status is StepStatus.SUCCEED
    return apply(c, TaskUpdate(0, task(TaskStatus.SUCCEED)), NOW).chain


EVENTS: dict[str, Event] = {
    "claim": Claim(0, "w2", LEASE),
    "submitted": Submitted(0, task(TaskStatus.SUBMITTED)),
    "retry": SubmitRetry(0, "rate limited (code 1302)", NOW + 5, NOW + 600),
    "submit_failed": SubmitFailed(0, "account in arrears (code 1101)", 1101),
    "attention": NeedsAttention(0, "lost reply"),
    "processing": TaskUpdate(0, task(TaskStatus.PROCESSING)),
    "succeed": TaskUpdate(0, task(TaskStatus.SUCCEED)),
    "failed": TaskUpdate(0, task(TaskStatus.FAILED)),
    "foreign": TaskUpdate(0, task(TaskStatus.SUCCEED, task_id="someone-else")),
}

S = StepStatus
# (state, event) -> the step's status afterwards. Anything not listed must change nothing.
MOVES = {
    (S.PENDING, "claim"): S.SUBMITTING,
    (S.PENDING, "submitted"): S.SUBMITTED,
    (S.SUBMITTING, "submitted"): S.SUBMITTED,
    (S.SUBMITTING, "retry"): S.PENDING,
    (S.PENDING, "submit_failed"): S.FAILED,
    (S.SUBMITTING, "submit_failed"): S.FAILED,
    (S.SUBMITTING, "attention"): S.ATTENTION,
    (S.SUBMITTED, "processing"): S.PROCESSING,
    (S.SUBMITTED, "succeed"): S.SUCCEED,
    (S.PROCESSING, "succeed"): S.SUCCEED,
    (S.SUBMITTED, "failed"): S.FAILED,
    (S.PROCESSING, "failed"): S.FAILED,
}
# News that changes no status but is still news (resets the poll timer).
TOUCHES = {(S.PROCESSING, "processing")}


@pytest.mark.parametrize("state", list(StepStatus))
@pytest.mark.parametrize("event", list(EVENTS))
def test_every_state_against_every_event(state: StepStatus, event: str) -> None:
    # Given a chain whose first step is in `state`
    before = chain_at(state)
    # When the event arrives
    out = apply(before, EVENTS[event], NOW + 1)
    # Then the step moves exactly as the table says, and the input is never mutated
    expected = MOVES.get((state, event), state)
    assert out.chain.steps[0].status is expected
    assert before == chain_at(state)
    if (state, event) not in MOVES and (state, event) not in TOUCHES:
        assert out.chain == before, "a stale or duplicate event must change nothing"
        assert out.actions == []


def test_success_archives_the_video_and_queues_the_next_step_once() -> None:
    c = chain_at(S.PROCESSING)
    out = apply(c, EVENTS["succeed"], NOW + 1)
    assert out.actions == [ArchiveVideo("v1"), SubmitStep(1)]
    nxt = out.chain.steps[1]
    assert (nxt.parent_video_id, nxt.parent_task_id, nxt.status) == ("v1", "t0", S.PENDING)
    assert nxt.external_task_id == "kc-c1-1"
    # the same success again (a duplicate callback confirmed by query) does nothing
    again = apply(out.chain, EVENTS["succeed"], NOW + 2)
    assert again.actions == []
    assert again.chain == out.chain


def test_stale_processing_after_success_changes_nothing() -> None:
    c = chain_at(S.SUCCEED)
    out = apply(c, EVENTS["processing"], NOW + 5)
    assert out.chain == c
    assert out.actions == []


def test_failed_step_fails_chain_with_provider_reason_and_keeps_good_video() -> None:
    c = chain_at(S.SUCCEED)
    c = apply(c, VideoSettled("v1", archived=True), NOW).chain
    c = apply(c, Claim(1, "w", LEASE), NOW).chain
    c = apply(c, Submitted(1, task(TaskStatus.SUBMITTED, task_id="t1")), NOW).chain
    out = apply(c, TaskUpdate(1, task(TaskStatus.FAILED, task_id="t1")), NOW)
    assert out.chain.status is ChainStatus.FAILED
    assert "content safety" in (out.chain.error or "")
    assert out.chain.duration == 9.5
    record = archived_record(out.chain, "v1")
    assert out.chain.view({"v1": record})["archive"][0]["status"] == "done"


def test_chain_succeeds_only_once_the_newest_video_is_archived() -> None:
    c = chain_at(S.PROCESSING, target_seconds=9.0)
    c = apply(c, EVENTS["succeed"], NOW).chain
    assert c.end_reason is EndReason.TARGET_REACHED
    assert c.status is ChainStatus.RUNNING
    out = apply(c, VideoSettled("v1", archived=True), NOW)
    assert out.chain.status is ChainStatus.SUCCEEDED
    assert out.ended
    assert not apply(out.chain, VideoSettled("v1", archived=True), NOW).ended  # once


def test_archive_failure_of_newest_video_fails_the_chain() -> None:
    c = apply(chain_at(S.PROCESSING, target_seconds=9.0), EVENTS["succeed"], NOW).chain
    c = apply(c, VideoSettled("v1", archived=False, error="HTTP 404"), NOW).chain
    assert c.status is ChainStatus.FAILED
    assert "HTTP 404" in (c.error or "")
    assert c.error == "archiving video v1 failed: HTTP 404"


def test_losing_an_older_video_does_not_fail_the_chain() -> None:
    c = chain_at(S.SUCCEED)  # v1 made, step 1 pending
    c = apply(c, Claim(1, "w", LEASE), NOW).chain
    c = apply(c, Submitted(1, task(TaskStatus.SUBMITTED, task_id="t1")), NOW).chain
    done = task(TaskStatus.SUCCEED, task_id="t1", video="v2", duration=14.0)
    c = apply(c, TaskUpdate(1, done), NOW).chain
    c = apply(c, VideoSettled("v1", archived=False, error="HTTP 404"), NOW).chain
    assert c.error is None
    assert c.settled == ["v1"]


@pytest.mark.parametrize(
    "event",
    [
        VideoSettled("v9", archived=True),  # not this chain's
        VideoSettled("v1", archived=False, error="again"),  # settled already
    ],
)
def test_stale_or_foreign_settlements_change_nothing(event: VideoSettled) -> None:
    c = apply(chain_at(S.SUCCEED), VideoSettled("v1", archived=True), NOW).chain
    assert apply(c, event, NOW + 1).chain == c


@pytest.mark.parametrize(
    ("duration", "fits"),
    [(0.0, True), (170.0, True), (175.0, True), (175.01, False), (179.9, False), (180.0, False)],
)
def test_cap_arithmetic(duration: float, fits: bool) -> None:
    assert fits_under_cap(duration) is fits
    assert (duration + 5.0 <= MAX_TOTAL_SECONDS) is fits


@pytest.mark.parametrize(
    ("spec", "duration", "done", "reason"),
    [
        (Spec(target_seconds=30), 29.9, 5, None),
        (Spec(target_seconds=30), 30.0, 5, EndReason.TARGET_REACHED),
        (Spec(target_seconds=180), 175.0, 30, None),
        (Spec(target_seconds=180), 175.1, 30, EndReason.CAP_REACHED),
        (Spec(steps=3), 20.0, 2, None),
        (Spec(steps=3), 20.0, 3, EndReason.STEPS_DONE),
        (Spec(steps=40), 176.0, 38, EndReason.CAP_REACHED),
        (Spec(steps=3, target_seconds=15), 15.5, 2, EndReason.TARGET_REACHED),
        (Spec(steps=2, target_seconds=50), 20.0, 2, EndReason.STEPS_DONE),
        (Spec(steps=5), 179.0, 5, EndReason.STEPS_DONE),
        # the ceiling: ceil((180 - 5) / 4) = 44 extensions from a 5 s start, 45 from unknown
        (Spec(target_seconds=180, source_duration=5), 137.0, 43, None),
        (Spec(target_seconds=180, source_duration=5), 137.0, 44, EndReason.CAP_REACHED),
        (Spec(target_seconds=180), 140.0, 44, None),
        (Spec(target_seconds=180), 140.0, 45, EndReason.CAP_REACHED),
        (Spec(steps=44, source_duration=5), 137.0, 44, EndReason.STEPS_DONE),
        (Spec(target_seconds=137, source_duration=5), 137.0, 44, EndReason.TARGET_REACHED),
    ],
)
def test_end_reason(spec: Spec, duration: float, done: int, reason: EndReason | None) -> None:
    assert end_reason_after(spec, duration, done) is reason


@pytest.mark.parametrize(
    ("start", "ceiling"),
    [
        (None, 45),  # unknown: counted from 0 s
        (0.0, 45),
        (4.0, 44),  # 176 / 4 = 44 exactly
        (5.0, 44),  # 175 / 4 = 43.75
        (10.0, 43),
        (100.0, 20),
        (175.0, 2),
        (176.0, 1),
        (179.9, 1),
        (180.0, 0),
    ],
)
def test_extension_ceiling(start: float | None, ceiling: int) -> None:
    assert extension_ceiling(start) == ceiling
    if start is not None:
        assert ceiling == max(0, -(-(180 - start) // 4))


@pytest.mark.parametrize(
    ("duration", "parent", "extension", "doubted"),
    [
        (9.5, 5.0, True, None),
        (8.0, 5.0, True, None),  # 3.0 s is the least growth believed
        (7.9, 5.0, True, "reports the extended video as 7.9 s, its parent was 5.0 s"),
        (4.6, 5.0, True, "as 4.6 s, its parent was 5.0 s"),  # a relay showing the segment only
        (10.1, 10.1, True, "as 10.1 s, its parent was 10.1 s"),  # or the parent's length again
        (4.6, None, True, None),  # nothing to compare with: believed
        (None, 5.0, True, "no duration for the extended video (its parent was 5.0 s)"),
        (None, None, True, "no duration for the extended video (its parent was of unknown"),
        (5.0, None, False, None),  # a text2video video has no parent
        (None, None, False, "no duration for the video:"),
    ],
)
def test_duration_doubt(
    duration: float | None, parent: float | None, extension: bool, doubted: str | None
) -> None:
    doubt = duration_doubt(duration, parent, extension=extension)
    if doubted is None:
        assert doubt is None
    else:
        assert doubt is not None
        assert doubted in doubt
        assert "stop" in doubt


def test_forty_steps_stop_at_the_cap_and_never_submit_past_it() -> None:
    c = new_chain("c", Spec(video_id="v0", task_id="p0", steps=40), NOW)
    duration, submitted = 5.0, 0
    for i in range(60):
        if c.end_reason:
            break
        c = apply(c, Claim(i, "w", LEASE), NOW).chain
        c = apply(c, Submitted(i, task(TaskStatus.SUBMITTED, task_id=f"t{i}")), NOW).chain
        submitted += 1
        assert duration + 5.0 <= 180.0, "a step was submitted that could pass 180 s"
        duration = round(duration + 4.9, 1)
        done = task(TaskStatus.SUCCEED, task_id=f"t{i}", video=f"v{i + 1}", duration=duration)
        c = apply(c, TaskUpdate(i, done), NOW).chain
    assert c.end_reason is EndReason.CAP_REACHED
    assert submitted == 35
    assert c.duration is not None
    assert c.duration <= 180.0


def run(c: Chain, durations: list[float | None], *, parent: float | None = None) -> Chain:
    """Submit and finish steps while the chain asks for them, reporting ``durations`` in turn."""
    for i, duration in enumerate(durations):
        if c.end_reason or c.error or i >= len(c.steps):
            break
        c = apply(c, Claim(i, "w", LEASE), NOW).chain
        c = apply(c, Submitted(i, task(TaskStatus.SUBMITTED, task_id=f"t{i}")), NOW).chain
        done = task(
            TaskStatus.SUCCEED, task_id=f"t{i}", video=f"v{i + 1}", duration=duration, parent=parent
        )
        c = apply(c, TaskUpdate(i, done), NOW).chain
    return c


@pytest.mark.parametrize(
    ("spec", "first", "extensions"),
    [
        (Spec(video_id="v0", source_duration=5.0), 8.0, 44),  # ceil(175 / 4)
        (Spec(video_id="v0", source_duration=100.0), 103.0, 20),  # ceil(80 / 4)
        (Spec(video_id="v0"), 8.0, 44),  # start unknown: the first result, 1 + ceil(172 / 4)
        (Spec(text_prompt="a fox"), 5.0, 44),  # the text2video video is the start
    ],
)
def test_durations_that_grow_too_slowly_to_reach_the_target_stop_at_the_ceiling(
    spec: Spec, first: float, extensions: int
) -> None:
    # Given a chain toward 180 s with no step count, whose every extension is reported to add
    # 3.0 s: believable one by one, but the video never gets near the cap
    spec = replace(spec, target_seconds=180.0)
    durations: list[float | None] = [round(first + 3.0 * i, 1) for i in range(100)]
    # When it runs as long as it asks for more
    c = run(new_chain("c", spec, NOW), durations)
    # Then it pays for exactly ceil((180 - start) / 4) extensions and ends cap_reached
    paid = [s for s in c.steps if s.kind == "video-extend"]
    assert len(paid) == extensions
    assert all(s.status is S.SUCCEED for s in c.steps)
    assert (c.end_reason, c.error) == (EndReason.CAP_REACHED, None)
    assert c.duration is not None
    assert fits_under_cap(c.duration), "the 180 s cap alone would not have stopped it"


def test_honest_durations_never_meet_the_ceiling() -> None:
    # Every real extension adds 4-5 s: the 180 s cap stops those chains first.
    for start in (0.5, 5.0, 10.0, 97.3):
        c = run(
            new_chain("c", Spec(video_id="v0", source_duration=start, target_seconds=180), NOW),
            [round(start + 4.0 * (i + 1), 1) for i in range(60)],
        )
        assert c.end_reason is EndReason.CAP_REACHED
        assert c.duration is not None
        assert not fits_under_cap(c.duration)


@pytest.mark.parametrize(
    ("start", "durations", "parent", "failed_step", "named"),
    [
        # the first step's parent: the user's source_duration, else the reply's parent_video
        ({"source_duration": 5.0}, [4.6], None, 0, "as 4.6 s, its parent was 5.0 s"),
        ({}, [4.6], 5.0, 0, "as 4.6 s, its parent was 5.0 s"),
        ({"source_duration": 5.0}, [7.0], 3.0, 0, "as 7.0 s, its parent was 5.0 s"),
        # later steps: the length the chain recorded for the step before, over the reply's
        ({}, [9.8, 10.1], None, 1, "as 10.1 s, its parent was 9.8 s"),
        ({}, [9.8, 12.0], 4.5, 1, "as 12.0 s, its parent was 9.8 s"),
        ({}, [9.8, 14.3, 14.3], None, 2, "as 14.3 s, its parent was 14.3 s"),
        ({"source_duration": 5.0}, [9.8, None], None, 1, "no duration for the extended video"),
        ({"text_prompt": "a fox"}, [None], None, 0, "no duration for the video"),
        ({"text_prompt": "a fox"}, [5.0, 4.4], None, 1, "as 4.4 s, its parent was 5.0 s"),
    ],
)
def test_an_unbelievable_duration_fails_the_chain_before_it_pays_again(
    start: dict[str, Any],
    durations: list[float | None],
    parent: float | None,
    failed_step: int,
    named: str,
) -> None:
    # Given a chain toward 60 s with no step count, whose provider reports `durations`
    source = None if "text_prompt" in start else "v0"
    spec = Spec(video_id=source, target_seconds=60.0, **start)
    # When they come in
    c = run(new_chain("c", spec, NOW), [*durations, 30.0, 35.0], parent=parent)
    # Then the doubted step fails the chain, naming both lengths, and nothing more is asked for
    assert len(c.steps) == failed_step + 1
    step = c.steps[failed_step]
    assert step.status is S.FAILED
    assert named in (step.error or "")
    assert c.error == f"step {failed_step}: {step.error}"
    assert c.error.endswith("stopping before paying for more")
    assert not [d for d in schedule(c, poll_after=1, submit_lease=1) if d.work is Work.SUBMIT]
    # and the duration shown is the last believed one, while the doubted video is still kept
    believed = durations[:failed_step]
    assert c.duration == (believed[-1] if believed else spec.source_duration)
    assert (step.video_id, step.duration) == (f"v{failed_step + 1}", durations[failed_step])
    assert c.video_ids[-1] == step.video_id
    assert c.status is ChainStatus.RUNNING  # until that video is archived
    for video_id in c.video_ids:
        c = apply(c, VideoSettled(video_id, archived=True), NOW).chain
    assert c.status is ChainStatus.FAILED
    assert Chain.from_json(c.to_json()) == c


def test_the_doubting_update_asks_only_for_the_archive() -> None:
    c = chain_at(S.PROCESSING)  # source_duration 5.0
    out = apply(c, TaskUpdate(0, task(TaskStatus.SUCCEED, duration=5.0)), NOW + 1)
    assert out.actions == [ArchiveVideo("v1")]
    assert out.chain.end_reason is None
    # a duplicate of the same reply changes nothing
    assert (
        apply(out.chain, TaskUpdate(0, task(TaskStatus.SUCCEED, duration=5.0)), NOW + 2).chain
        == out.chain
    )


def test_prompts_apply_per_step_then_fall_back_to_prompt() -> None:
    c = new_chain("c", Spec(video_id="v0", prompts=["a", "b"], prompt="z", steps=3), NOW)
    prompts = []
    for i in range(3):
        prompts.append(c.steps[i].prompt)
        c = apply(c, Claim(i, "w", LEASE), NOW).chain
        c = apply(c, Submitted(i, task(TaskStatus.SUBMITTED, task_id=f"t{i}")), NOW).chain
        ok = task(TaskStatus.SUCCEED, task_id=f"t{i}", video=f"v{i + 1}", duration=10.0 + 4.5 * i)
        c = apply(c, TaskUpdate(i, ok), NOW).chain
    assert prompts == ["a", "b", "z"]
    assert c.end_reason is EndReason.STEPS_DONE


def test_text_chain_starts_with_text2video_and_steps_count_extensions() -> None:
    c = new_chain("c", Spec(text_prompt="a fox", steps=1), NOW)
    assert c.steps[0].kind == "text2video"
    c = apply(c, Claim(0, "w", LEASE), NOW).chain
    c = apply(c, Submitted(0, task(TaskStatus.SUBMITTED)), NOW).chain
    c = apply(c, TaskUpdate(0, task(TaskStatus.SUCCEED, duration=5.0)), NOW).chain
    assert [s.kind for s in c.steps] == ["text2video", "video-extend"]
    assert c.end_reason is None


class TestClaims:
    def test_second_worker_is_refused_while_the_claim_is_live(self) -> None:
        c = chain_at(S.SUBMITTING)
        assert apply(c, Claim(0, "w2", LEASE), NOW + 1).verdict is Verdict.SKIP

    def test_dead_claim_is_reconciled_never_resent(self) -> None:
        c = chain_at(S.SUBMITTING)
        assert apply(c, Claim(0, "w2", LEASE), NOW + LEASE).verdict is Verdict.RECONCILE

    def test_same_task_redelivered_after_a_crash_reconciles(self) -> None:
        c = chain_at(S.SUBMITTING)
        assert apply(c, Claim(0, "w1", LEASE), NOW + 1).verdict is Verdict.RECONCILE

    def test_retry_waits_for_its_time(self) -> None:
        c = apply(chain_at(S.SUBMITTING), EVENTS["retry"], NOW).chain
        assert "1302" in (c.waiting or "")
        assert c.status is ChainStatus.RUNNING
        assert apply(c, Claim(0, "w1", LEASE), NOW + 1).verdict is Verdict.SKIP
        assert apply(c, Claim(0, "w1", LEASE), NOW + 5).verdict is Verdict.GO

    def test_retry_past_the_deadline_fails_the_step(self) -> None:
        late = SubmitRetry(0, "server busy (code 5001)", NOW + 700, NOW + 600)
        c = apply(chain_at(S.SUBMITTING), late, NOW + 650).chain
        assert c.steps[0].status is S.FAILED
        assert c.status is ChainStatus.FAILED
        assert "5001" in (c.error or "")

    def test_ended_chain_refuses_claims(self) -> None:
        c = apply(chain_at(S.SUBMITTING), EVENTS["submit_failed"], NOW).chain
        assert apply(c, Claim(0, "w9", LEASE), NOW + 999).verdict is Verdict.SKIP


class TestSchedule:
    def timing(self, c: Chain) -> dict[str, float]:
        due = schedule(c, poll_after=120, submit_lease=60)
        return {d.member: at for d, at in due.items()}

    def test_pending_step_is_owed_a_submit(self) -> None:
        assert self.timing(chain_at(S.PENDING)) == {"submit|c1|0": NOW + 60}

    def test_quiet_task_is_polled_after_poll_after(self) -> None:
        assert self.timing(chain_at(S.SUBMITTED)) == {"poll|c1|0": NOW + 120}

    def test_a_planned_look_comes_first_but_never_after_poll_after(self) -> None:
        c = chain_at(S.SUBMITTED)
        c.steps[0].look_at = NOW + 7
        assert self.timing(c) == {"poll|c1|0": NOW + 7}
        c.steps[0].look_at = NOW + 500
        assert self.timing(c) == {"poll|c1|0": NOW + 120}

    def test_news_replaces_the_planned_look(self) -> None:
        c = chain_at(S.SUBMITTED)
        c.steps[0].look_at = NOW + 7
        c = apply(c, TaskUpdate(0, task(TaskStatus.PROCESSING)), NOW + 3).chain
        assert c.steps[0].look_at is None
        assert self.timing(c) == {"poll|c1|0": NOW + 123}

    def test_success_owes_the_next_submit(self) -> None:
        # and the archive, through the video's record (registered with this transition)
        c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW + 3).chain
        assert self.timing(c) == {"submit|c1|1": NOW + 63}

    def test_finished_chain_owes_nothing(self) -> None:
        c = apply(chain_at(S.PROCESSING, target_seconds=9), EVENTS["succeed"], NOW).chain
        assert self.timing(c) == {}
        c = apply(c, VideoSettled("v1", archived=True), NOW).chain
        assert self.timing(c) == {}

    def test_attention_owes_nothing(self) -> None:
        assert self.timing(chain_at(S.ATTENTION)) == {}


def test_json_round_trip_keeps_everything() -> None:
    c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW).chain
    assert Chain.from_json(c.to_json()) == c


def test_view_has_the_contract_fields() -> None:
    view = chain_at(S.SUCCEED).view({})
    assert {
        "id",
        "status",
        "end_reason",
        "error",
        "duration",
        "target_seconds",
        "steps",
        "archive",
    } <= set(view)
    assert set(view["steps"][0]) >= {
        "index",
        "task_id",
        "status",
        "parent_video_id",
        "video_id",
        "duration",
        "error",
    }
    assert view["status"] == "running"


@pytest.mark.parametrize("due", [Due(Work.POLL, "c1", "0"), Due(Work.SUBMIT, "c-2", "13")])
def test_owed_work_round_trips_through_its_member_string(due: Due) -> None:
    assert Due.parse(due.member) == due


# -- the chain's videos and their archive records ----------------------------------------------
def archived_record(c: Chain, video_id: str) -> VideoRecord:
    mine = video_record(c, video_id, NOW)
    return archived(
        mine, location=f"/a/{video_id}.mp4", size=10, sha256="ab", host="cdn.example", now=NOW
    )


ENTRY_FIELDS = {"video_id", "status", "path", "bytes", "sha256", "duration", "error"}


@pytest.mark.parametrize(
    ("state", "status", "path", "error"),
    [
        (VideoState.PENDING, "pending", None, None),
        (VideoState.ARCHIVED, "done", "/a/v1.mp4", None),
        (VideoState.LOST, "failed", None, "HTTP 404"),
    ],
)
def test_view_lists_archive_entries_from_the_video_records(
    state: VideoState, status: str, path: str | None, error: str | None
) -> None:
    c = chain_at(S.SUCCEED)
    record = video_record(c, "v1", NOW)
    if state is VideoState.ARCHIVED:
        record = archived_record(c, "v1")
    elif state is VideoState.LOST:
        record = lost(record, "HTTP 404")
    [entry] = c.view({"v1": record})["archive"]
    assert set(entry) == ENTRY_FIELDS  # the API contract
    assert (entry["video_id"], entry["status"], entry["path"], entry["error"]) == (
        "v1",
        status,
        path,
        error,
    )
    assert entry["duration"] == 9.5
    assert (entry["bytes"], entry["sha256"]) == ((10, "ab") if path else (None, None))


def test_a_video_without_a_readable_record_is_shown_pending() -> None:
    [entry] = chain_at(S.SUCCEED).view({})["archive"]
    assert (entry["video_id"], entry["status"], entry["duration"]) == ("v1", "pending", 9.5)


def test_a_chain_video_record_carries_what_its_sidecar_needs() -> None:
    c = chain_at(S.SUCCEED)
    record = video_record(c, "v1", NOW + 7)
    assert (record.origin, record.chain_id, record.step, record.task_id) == ("chain", "c1", 0, "t0")
    assert (record.kind, record.parent_video_id, record.parent_task_id) == (
        "video-extend",
        "v0",
        "p0",
    )
    assert (record.url, record.created_at, record.duration) == (
        "https://cdn.example/v1.mp4",
        NOW,
        9.5,
    )
    assert record.state is VideoState.PENDING
    assert record.queued_at == NOW + 7  # enqueued right after the commit


@pytest.mark.parametrize("video_id", ["../../etc/passwd", ".hidden", "a/b", "x" * 200])
def test_an_unsafe_video_id_is_lost_at_once_and_never_recorded(video_id: str) -> None:
    # Given a one-step chain whose provider names an unsafe video id
    c = chain_at(S.PROCESSING, steps=1, target_seconds=None)
    # When the step succeeds
    out = apply(c, TaskUpdate(0, task(TaskStatus.SUCCEED, video=video_id)), NOW + 1)
    # Then no record is asked for, the video counts as lost, and the chain fails saying why
    assert out.actions == []
    assert out.chain.settled == [video_id]
    assert out.chain.status is ChainStatus.FAILED
    assert out.ended
    assert "not a safe file name" in (out.chain.error or "")
    [entry] = out.chain.view({})["archive"]
    assert entry["status"] == "failed"
    assert "not a safe file name" in (entry["error"] or "")


def test_a_document_from_before_video_records_reads_its_settled_videos() -> None:
    c = apply(chain_at(S.SUCCEED), VideoSettled("v1", archived=True), NOW).chain
    data = json.loads(c.to_json())
    del data["settled"]
    data["archive"] = [{"video_id": "v1", "status": "done"}]
    assert Chain.from_json(json.dumps(data)) == c
