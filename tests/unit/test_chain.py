"""The chain's pure core: every step state against every event, the cap, the target."""

from __future__ import annotations

import pytest

from kling.models import Task, TaskStatus, Video
from worker.chain import (
    MAX_TOTAL_SECONDS,
    ArchiveClaim,
    Archived,
    ArchiveFailed,
    ArchiveRetry,
    ArchiveStatus,
    ArchiveVideo,
    Chain,
    ChainStatus,
    Claim,
    EndReason,
    NeedsAttention,
    Spec,
    StepStatus,
    SubmitFailed,
    SubmitRetry,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
    apply,
    end_reason_after,
    fits_under_cap,
    new_chain,
    schedule,
)

NOW = 1_000_000.0
LEASE = 60.0


def task(
    status: TaskStatus, *, task_id: str = "t0", video: str = "v1", duration: float = 9.5
) -> Task:
    videos = (Video(video, f"https://cdn.example/{video}.mp4", duration),)
    return Task(
        task_id,
        status,
        status_msg="blocked by content safety" if status is TaskStatus.FAILED else None,
        created_at_ms=int(NOW * 1000),
        videos=videos if status is TaskStatus.SUCCEED else (),
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


EVENTS = {
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
    c = apply(c, Archived("v1", "/a/v1.mp4", 10, "ab"), NOW).chain
    c = apply(c, Claim(1, "w", LEASE), NOW).chain
    c = apply(c, Submitted(1, task(TaskStatus.SUBMITTED, task_id="t1")), NOW).chain
    out = apply(c, TaskUpdate(1, task(TaskStatus.FAILED, task_id="t1")), NOW)
    assert out.chain.status is ChainStatus.FAILED
    assert "content safety" in (out.chain.error or "")
    assert out.chain.duration == 9.5
    assert out.chain.archive[0].status is ArchiveStatus.DONE


def test_chain_succeeds_only_once_the_newest_video_is_archived() -> None:
    c = chain_at(S.PROCESSING, target_seconds=9.0)
    c = apply(c, EVENTS["succeed"], NOW).chain
    assert c.end_reason is EndReason.TARGET_REACHED
    assert c.status is ChainStatus.RUNNING
    c = apply(c, Archived("v1", "/a/v1.mp4", 10, "ab"), NOW).chain
    assert c.status is ChainStatus.SUCCEEDED


def test_archive_failure_of_newest_video_fails_the_chain() -> None:
    c = apply(chain_at(S.PROCESSING, target_seconds=9.0), EVENTS["succeed"], NOW).chain
    c = apply(c, ArchiveFailed("v1", "HTTP 404"), NOW).chain
    assert c.status is ChainStatus.FAILED
    assert "HTTP 404" in (c.error or "")


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
    ],
)
def test_end_reason(spec: Spec, duration: float, done: int, reason: EndReason | None) -> None:
    assert end_reason_after(spec, duration, done) is reason


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


def test_prompts_apply_per_step_then_fall_back_to_prompt() -> None:
    c = new_chain("c", Spec(video_id="v0", prompts=["a", "b"], prompt="z", steps=3), NOW)
    prompts = []
    for i in range(3):
        prompts.append(c.steps[i].prompt)
        c = apply(c, Claim(i, "w", LEASE), NOW).chain
        c = apply(c, Submitted(i, task(TaskStatus.SUBMITTED, task_id=f"t{i}")), NOW).chain
        ok = task(TaskStatus.SUCCEED, task_id=f"t{i}", video=f"v{i + 1}", duration=10.0 + i)
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

    def test_archive_claim_is_exclusive_until_the_lease_ends(self) -> None:
        c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW).chain
        first = apply(c, ArchiveClaim("v1", "a", LEASE), NOW)
        assert first.verdict is Verdict.GO
        assert apply(first.chain, ArchiveClaim("v1", "b", LEASE), NOW + 1).verdict is Verdict.SKIP
        assert apply(first.chain, ArchiveClaim("v1", "a", LEASE), NOW + 1).verdict is Verdict.GO
        assert apply(first.chain, ArchiveClaim("v1", "b", LEASE), NOW + LEASE).verdict is Verdict.GO
        done = apply(first.chain, Archived("v1", "/a", 1, "x"), NOW).chain
        assert apply(done, ArchiveClaim("v1", "b", LEASE), NOW + LEASE).verdict is Verdict.SKIP

    def test_archive_retry_backs_off(self) -> None:
        c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW).chain
        c = apply(c, ArchiveRetry("v1", "connection reset", NOW + 30), NOW).chain
        assert apply(c, ArchiveClaim("v1", "a", LEASE), NOW + 10).verdict is Verdict.SKIP
        assert apply(c, ArchiveClaim("v1", "a", LEASE), NOW + 30).verdict is Verdict.GO


class TestSchedule:
    def timing(self, c: Chain) -> dict[str, float]:
        return schedule(c, poll_after=120, submit_lease=60, archive_lease=600)

    def test_pending_step_is_owed_a_submit(self) -> None:
        assert self.timing(chain_at(S.PENDING)) == {"submit|c1|0": NOW + 60}

    def test_quiet_task_is_polled_after_poll_after(self) -> None:
        assert self.timing(chain_at(S.SUBMITTED)) == {"poll|c1|0": NOW + 120}

    def test_success_owes_an_archive_and_the_next_submit(self) -> None:
        c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW + 3).chain
        assert self.timing(c) == {"submit|c1|1": NOW + 63, "archive|c1|v1": NOW + 63}

    def test_finished_chain_owes_nothing(self) -> None:
        c = apply(chain_at(S.PROCESSING, target_seconds=9), EVENTS["succeed"], NOW).chain
        c = apply(c, Archived("v1", "/a", 1, "x"), NOW).chain
        assert self.timing(c) == {}

    def test_attention_owes_nothing(self) -> None:
        assert self.timing(chain_at(S.ATTENTION)) == {}


def test_json_round_trip_keeps_everything() -> None:
    c = apply(chain_at(S.PROCESSING), EVENTS["succeed"], NOW).chain
    assert Chain.from_json(c.to_json()) == c


def test_view_has_the_contract_fields() -> None:
    view = chain_at(S.SUCCEED).view()
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
