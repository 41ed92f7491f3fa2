"""Cancel and resume (``worker.core.control``) against every state of a chain's newest step.

The promises: once a cancel is accepted no create is sent; a step that may have been paid
for is followed to its end and archived; a resume goes on from the newest good video, keeps
failed steps, never pays for a succeeded step again and reconciles a step in ``attention``.
"""

from __future__ import annotations

import pytest

from kling.models import TaskStatus
from tests.unit.test_chain import EVENTS, LEASE, NOW, S, chain_at, task
from worker.core.chain import (
    ArchiveVideo,
    Cancel,
    Chain,
    ChainStatus,
    Claim,
    Release,
    Resume,
    Spec,
    StepStatus,
    SubmitRetry,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
    VideoSettled,
    apply,
    new_chain,
)
from worker.core.schedule import Work, schedule


def owed(c: Chain) -> set[Work]:
    return {d.work for d in schedule(c, poll_after=30.0, submit_lease=LEASE)}


def finish_paid_step(c: Chain) -> Chain:
    """Whatever step 0 was doing when cancelled, the provider's side runs to its end."""
    step = c.steps[0]
    if step.status is S.SUBMITTING:  # the create the claimant sent lands
        c = apply(c, Submitted(0, task(TaskStatus.SUBMITTED)), NOW + 2).chain
        step = c.steps[0]
    if step.status.active:
        c = apply(c, EVENTS["succeed"], NOW + 3).chain
    if "v1" in c.video_ids:
        c = apply(c, VideoSettled("v1", archived=True), NOW + 4).chain
    return c


# state of the newest step -> (refused, status right after the cancel, status in the end)
CANCEL = {
    S.PENDING: (False, ChainStatus.CANCELLED, ChainStatus.CANCELLED),
    S.SUBMITTING: (False, ChainStatus.RUNNING, ChainStatus.CANCELLED),
    S.SUBMITTED: (False, ChainStatus.RUNNING, ChainStatus.CANCELLED),
    S.PROCESSING: (False, ChainStatus.RUNNING, ChainStatus.CANCELLED),
    S.SUCCEED: (False, ChainStatus.RUNNING, ChainStatus.CANCELLED),  # its video is archiving
    S.FAILED: (True, ChainStatus.FAILED, ChainStatus.FAILED),
    S.ATTENTION: (True, ChainStatus.FAILED, ChainStatus.FAILED),
}


def test_the_cancel_table_covers_every_step_state() -> None:
    assert set(CANCEL) == set(StepStatus)


@pytest.mark.parametrize("state", list(StepStatus))
def test_cancel_against_every_step_state(state: StepStatus) -> None:
    # Given a chain whose step 0 is in `state`
    before = chain_at(state)
    refused, right_after, in_the_end = CANCEL[state]
    # When it is cancelled
    out = apply(before, Cancel(), NOW + 1)
    # Then a finished chain refuses, and any other stops spending at once
    assert (out.refused is not None) is refused
    assert out.chain.status is right_after
    if refused:
        assert out.chain == before
        return
    assert out.chain.cancelled_at == NOW + 1
    assert Work.SUBMIT not in owed(out.chain)
    assert out.actions == []
    for step in out.chain.steps:
        if step.status is S.PENDING:
            assert apply(out.chain, Claim(step.index, "w9", LEASE), NOW + 2).verdict is Verdict.SKIP
    assert out.ended is (right_after is ChainStatus.CANCELLED)
    # And a step that may have been paid for is followed to its end, archived, and nothing
    # follows it
    end = finish_paid_step(out.chain)
    assert end.status is in_the_end
    assert len(end.steps) == len(before.steps)
    assert Work.SUBMIT not in owed(end)
    assert Work.POLL not in owed(end)
    assert set(end.video_ids) <= set(end.settled)


def test_a_paid_step_is_followed_while_cancelling_and_says_so() -> None:
    c = apply(chain_at(S.PROCESSING), Cancel(), NOW + 1).chain
    view = c.view({})
    assert view["status"] == "running"
    assert view["waiting"] == "cancelling: following step 0 to its end (paid for)"
    assert view["cancelled_at"] == NOW + 1
    assert owed(c) == {Work.POLL}
    out = apply(c, EVENTS["succeed"], NOW + 2)
    assert out.actions == [ArchiveVideo("v1")]  # archived, and no next step
    assert out.chain.end_reason is None
    done = apply(out.chain, VideoSettled("v1", archived=True), NOW + 3)
    assert done.ended
    assert done.chain.status is ChainStatus.CANCELLED
    assert done.chain.view({})["waiting"] is None


def test_a_cancelled_claim_only_reconciles_and_the_sweep_owes_no_submit() -> None:
    c = apply(chain_at(S.SUBMITTING), Cancel(), NOW + 1).chain
    assert owed(c) == {Work.RECONCILE}
    assert apply(c, Claim(0, "w2", LEASE), NOW + 2).verdict is Verdict.SKIP  # live claim
    assert apply(c, Claim(0, "w2", LEASE), NOW + LEASE).verdict is Verdict.RECONCILE


def test_the_claimant_that_finds_the_chain_cancelled_releases_its_claim() -> None:
    c = apply(chain_at(S.SUBMITTING), Cancel(), NOW + 1).chain
    assert apply(c, Release(0, "someone-else"), NOW + 2).chain == c
    out = apply(c, Release(0, "w1"), NOW + 2)
    assert out.chain.steps[0].status is S.PENDING
    assert out.ended
    assert out.chain.status is ChainStatus.CANCELLED
    assert owed(out.chain) == set()


def test_a_retryable_refusal_after_cancel_is_never_sent_again() -> None:
    c = apply(chain_at(S.SUBMITTING), Cancel(), NOW + 1).chain
    c = apply(c, SubmitRetry(0, "rate limited", NOW + 5, NOW + 600), NOW + 2).chain
    assert c.status is ChainStatus.CANCELLED
    assert apply(c, Claim(0, "w1", LEASE), NOW + 10).verdict is Verdict.SKIP
    assert owed(c) == set()


@pytest.mark.parametrize("state", [S.PENDING, S.PROCESSING])
def test_cancelling_twice_is_a_no_op(state: StepStatus) -> None:
    once = apply(chain_at(state), Cancel(), NOW + 1).chain
    again = apply(once, Cancel(), NOW + 5)
    assert again.refused is None
    assert again.chain == once
    assert not again.ended


def succeeded_chain() -> Chain:
    c = apply(chain_at(S.PROCESSING, target_seconds=9.0), EVENTS["succeed"], NOW).chain
    return apply(c, VideoSettled("v1", archived=True), NOW).chain


def test_a_succeeded_chain_cannot_be_cancelled() -> None:
    c = succeeded_chain()
    out = apply(c, Cancel(), NOW + 1)
    assert out.refused == "the chain has succeeded already: there is nothing to cancel"
    assert out.chain == c


def test_an_ended_chain_still_archiving_cannot_be_cancelled() -> None:
    c = apply(chain_at(S.PROCESSING, target_seconds=9.0), EVENTS["succeed"], NOW).chain
    assert c.status is ChainStatus.RUNNING
    assert apply(c, Cancel(), NOW + 1).refused is not None


# -- resume ------------------------------------------------------------------------------------
def resume(c: Chain) -> Chain:
    out = apply(c, Resume(), NOW + 10)
    assert out.refused is None, out.refused
    assert out.actions == [SubmitStep(out.chain.steps[-1].index)]
    assert out.chain.error is None
    assert out.chain.cancelled_at is None
    assert out.chain.resumed == c.resumed + 1
    return out.chain


def test_resume_of_a_cancelled_chain_sends_its_unsent_step() -> None:
    c = apply(chain_at(S.PENDING), Cancel(), NOW + 1).chain
    out = apply(c, Resume(), NOW + 10)
    assert out.actions == [SubmitStep(0)]
    assert len(out.chain.steps) == 1
    assert apply(out.chain, Claim(0, "w1", LEASE), NOW + 11).verdict is Verdict.GO
    assert owed(out.chain) == {Work.SUBMIT}


def test_resume_after_a_cancelled_paid_step_goes_on_from_its_video() -> None:
    c = finish_paid_step(apply(chain_at(S.PROCESSING), Cancel(), NOW + 1).chain)
    c = resume(c)
    assert [s.status for s in c.steps] == [S.SUCCEED, S.PENDING]
    nxt = c.steps[1]
    assert (nxt.parent_video_id, nxt.parent_task_id) == ("v1", "t0")
    assert c.status is ChainStatus.RUNNING


def test_resume_of_a_failed_chain_keeps_the_failed_step_and_starts_again() -> None:
    c = chain_at(S.SUBMITTED)
    c = apply(c, TaskUpdate(0, task(TaskStatus.FAILED)), NOW).chain
    assert c.status is ChainStatus.FAILED
    c = resume(c)
    assert [s.status for s in c.steps] == [S.FAILED, S.PENDING]
    assert c.steps[0].error  # its history stays
    nxt = c.steps[1]
    assert (nxt.parent_video_id, nxt.parent_task_id) == ("v0", "p0")  # nothing succeeded
    assert nxt.external_task_id == "kc-c1-1"


def test_resume_goes_on_from_the_newest_good_video_and_never_repays_it() -> None:
    c = chain_at(S.SUCCEED, prompts=["first", "second", "third"])
    c = apply(c, VideoSettled("v1", archived=True), NOW).chain
    c = apply(c, Claim(1, "w", LEASE), NOW).chain
    c = apply(c, Submitted(1, task(TaskStatus.SUBMITTED, task_id="t1")), NOW).chain
    c = apply(c, TaskUpdate(1, task(TaskStatus.FAILED, task_id="t1")), NOW).chain
    c = resume(c)
    assert [s.status for s in c.steps] == [S.SUCCEED, S.FAILED, S.PENDING]
    nxt = c.steps[2]
    assert (nxt.parent_video_id, nxt.parent_task_id) == ("v1", "t0")  # not v0: paid once
    assert nxt.prompt == "second"  # the second extension's prompt: the failed try took none


def test_resume_of_an_attention_step_reconciles_it_never_resends() -> None:
    c = chain_at(S.ATTENTION)
    out = apply(c, Resume(), NOW + 10)
    assert out.refused is None
    assert out.actions == [SubmitStep(0)]
    assert len(out.chain.steps) == 1  # no new step, no new create
    step = out.chain.steps[0]
    assert step.status is S.SUBMITTING
    assert step.owner is None
    assert apply(out.chain, Claim(0, "w7", LEASE), NOW + 11).verdict is Verdict.RECONCILE
    # a reconcile that finds the task records it; one that cannot tell stops it again
    found = apply(out.chain, Submitted(0, task(TaskStatus.SUBMITTED)), NOW + 12).chain
    assert found.steps[0].status is S.SUBMITTED
    lost = apply(out.chain, EVENTS["attention"], NOW + 12).chain
    assert lost.steps[0].status is S.ATTENTION
    assert lost.status is ChainStatus.FAILED


@pytest.mark.parametrize(
    "make",
    [
        lambda: chain_at(S.PENDING),
        lambda: chain_at(S.PROCESSING),
        lambda: apply(chain_at(S.PROCESSING), Cancel(), NOW).chain,  # still cancelling
        succeeded_chain,
    ],
    ids=["queued", "running", "cancelling", "succeeded"],
)
def test_only_a_failed_or_cancelled_chain_resumes(make: object) -> None:
    c = make()  # type: ignore[operator]
    out = apply(c, Resume(), NOW + 10)
    assert out.refused is not None
    assert out.chain == c
    assert out.actions == []


def test_resume_with_nothing_left_to_do_is_refused() -> None:
    # cancelled while its last paid step ran; that step reached the target
    c = apply(chain_at(S.PROCESSING, target_seconds=9.0), Cancel(), NOW).chain
    c = finish_paid_step(c)
    assert c.status is ChainStatus.CANCELLED
    assert c.end_reason is None
    out = apply(c, Resume(), NOW + 10)
    assert out.refused == "nothing remains to do: the chain would end at once (target_reached)"
    assert out.chain == c


def test_resume_counts_the_extensions_that_succeeded_against_the_step_count() -> None:
    c = chain_at(S.SUCCEED, target_seconds=None, steps=2)  # one of two done
    c = apply(c, VideoSettled("v1", archived=True), NOW).chain
    c = apply(c, Cancel(), NOW).chain
    c = resume(c)
    assert len(c.steps) == 2  # the unsent step 1, nothing more
    c = apply(c, Claim(1, "w", LEASE), NOW + 11).chain
    c = apply(c, Submitted(1, task(TaskStatus.SUBMITTED, task_id="t1")), NOW + 12).chain
    done = task(TaskStatus.SUCCEED, task_id="t1", video="v2", duration=14.0)
    c = apply(c, TaskUpdate(1, done), NOW + 13).chain
    c = apply(c, VideoSettled("v2", archived=True), NOW + 14).chain
    assert c.status is ChainStatus.SUCCEEDED
    assert len(c.steps) == 2


def test_resume_of_a_text_chain_whose_first_video_failed_starts_from_text() -> None:
    c = new_chain("c", Spec(text_prompt="a fox", steps=1), NOW)
    c = apply(c, Claim(0, "w", LEASE), NOW).chain
    c = apply(c, Submitted(0, task(TaskStatus.SUBMITTED)), NOW).chain
    c = apply(c, TaskUpdate(0, task(TaskStatus.FAILED)), NOW).chain
    c = resume(c)
    assert [(s.kind, s.status) for s in c.steps] == [
        ("text2video", S.FAILED),
        ("text2video", S.PENDING),
    ]
    assert c.steps[1].prompt == "a fox"


def test_cancel_and_resume_survive_the_document() -> None:
    c = resume(apply(chain_at(S.PENDING), Cancel(), NOW).chain)
    c = apply(c, Cancel(), NOW + 20).chain
    back = Chain.from_json(c.to_json())
    assert back == c
    assert (back.cancelled_at, back.resumed) == (NOW + 20, 1)
