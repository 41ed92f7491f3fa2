"""The runner against cancel and resume: fakeredis and a scripted provider (``test_runner``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pytest

from kling.errors import AmbiguousCreate
from tests.unit.test_runner import (
    Rig,
    ScriptedProvider,
    fake_download,
    make_rig,
    notified,
    succeed_step,
)
from worker.core.chain import Cancel, Claim, Event, Outcome, Resume, StepStatus
from worker.state import Also
from worker.tasknames import NOTIFY, SUBMIT_STEP

HOOKS = {
    "notify_url": "https://hooks.example/kc",
    "notify_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


class Transition(Protocol):
    """``Store.transition``'s signature."""

    def __call__(self, chain_id: str, event: Event, *, also: Also | None = None) -> Outcome: ...


def cancel_right_after_claims(rig: Rig) -> Transition:
    """A user's cancel lands right after each claim, before the worker sends the create.

    Returns the store's own ``transition``, to put back."""
    transition = rig.store.transition

    def cancel_after_claim(chain_id: str, event: Event, **kwargs: Any) -> Outcome:
        out = transition(chain_id, event, **kwargs)
        if isinstance(event, Claim):
            transition(chain_id, Cancel())
        return out

    rig.store.transition = cancel_after_claim  # type: ignore[method-assign]
    return transition


def test_a_cancel_between_the_claim_and_the_create_sends_nothing(tmp_path: Path) -> None:
    # Given a cancel that lands right after a worker claimed the step
    rig = make_rig(tmp_path, ScriptedProvider(), **HOOKS)
    cid = rig.chain()
    transition = cancel_right_after_claims(rig)
    # When the worker goes on to send it
    assert rig.runner.submit(cid, 0, owner="a") is None
    # Then nothing was sent, the claim is given back, and the chain ends cancelled, once
    assert rig.provider.creates == []
    chain = rig.store.get(cid)
    assert (chain.status.value, chain.step(0).status) == ("cancelled", StepStatus.PENDING)
    assert len(notified(rig, "chain.cancelled")) == 1
    rig.store.transition = transition  # type: ignore[method-assign]
    rig.runner.submit(cid, 0, owner="b")
    assert rig.provider.creates == []


def test_a_lost_reply_of_a_cancelled_chain_is_looked_up_and_followed(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider())
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("read timed out")]
    assert rig.runner.submit(cid, 0, owner="a") is not None
    rig.store.transition(cid, Cancel())
    rig.runner.submit(cid, 0, owner="a", attempt=1)  # the retry reconciles
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t0")
    assert len(rig.provider.creates) == 1


def test_a_paid_step_of_a_cancelled_chain_ends_it_cancelled_once_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), **HOOKS)
    monkeypatch.setattr("worker.archiver.download_into", fake_download(b"mp4 bytes"))
    rig.runner.archiver.clock = lambda: 2_000_000_000.0
    cid = rig.chain(steps=3)
    rig.runner.submit(cid, 0, owner="a")
    rig.store.transition(cid, Cancel())
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4", created=2_000_000_000.0)
    chain = rig.store.get(cid)
    assert len(chain.steps) == 1
    assert chain.status.value == "running"
    assert not [a for name, a in rig.queued if name == SUBMIT_STEP]
    rig.runner.archiver.archive_video("v1", owner="x")
    assert rig.store.get(cid).status.value == "cancelled"
    [end] = notified(rig, "chain.cancelled")
    assert end["data"]["archive"][0]["status"] == "done"


def test_resuming_an_attention_step_reconciles_it_and_pays_nothing_more(tmp_path: Path) -> None:
    # Given a step that lost its reply on a provider that could not be asked then
    provider = ScriptedProvider(lists=False)
    rig = make_rig(tmp_path, provider, kling_external_task_id=False, **HOOKS)
    cid = rig.chain()
    provider.script = [AmbiguousCreate("connection reset")]
    rig.runner.submit(cid, 0, owner="a")
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    assert rig.store.get(cid).step(0).status is StepStatus.ATTENTION
    assert len(notified(rig, "chain.failed")) == 1
    # When the provider lists its tasks again and the chain is resumed
    provider.lists = True
    out = rig.store.transition(cid, Resume())
    assert out.refused is None
    rig.runner.submit(cid, 0, owner="b")
    # Then the lost task was found and recorded, never created again
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t0")
    assert len(provider.creates) == 1
    assert provider.listings >= 1


def test_a_resumed_chain_announces_its_next_end_as_a_new_event(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), **HOOKS)
    cid = rig.chain()
    rig.store.transition(cid, Cancel())
    rig.runner.submit(cid, 0, owner="a")  # nothing to do: the claim is refused
    rig.store.transition(cid, Resume())
    cancel_right_after_claims(rig)
    rig.runner.submit(cid, 0, owner="b")
    ids = [args[0]["id"] for name, args in rig.queued if name == NOTIFY]
    assert len(ids) == len(set(ids)) == 1  # the second end; the first was in the web process
    assert ids[0].endswith("_end_1")
