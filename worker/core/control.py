"""The user's commands on a chain: cancel it, resume it. Pure rules, applied by ``chain.apply``.

Cancel stops the spending: once it is accepted no create is sent for the chain. A step the
provider may already have accepted (``submitting``, ``submitted``, ``processing``) was paid
for, so it is followed to its end and its video archived, but nothing follows it; the chain
is ``cancelled`` once that is done. A ``pending`` step is simply never sent.

Resume takes a ``failed`` or ``cancelled`` chain on from its newest good video with the work
that remains (its target or step count, counting the extensions that succeeded). Failed steps
stay in its history, a succeeded step is never paid for again, and a step whose outcome is
unknown (``attention``) is looked up first, never sent blindly.
"""

from __future__ import annotations

from kling.models import TaskKind
from worker.core.chain import (
    Action,
    Cancel,
    Chain,
    ChainStatus,
    Resume,
    Step,
    StepStatus,
    SubmitStep,
    _extend_prompt,
    _extensions_done,
    _new_extension,
    chain_ceiling,
    end_reason_after,
    external_task_id,
)


def command(chain: Chain, event: Cancel | Resume, now: float, actions: list[Action]) -> str | None:
    """Change ``chain`` in place; returns why the command is refused, or None."""
    if isinstance(event, Cancel):
        return cancel(chain, now)
    return resume(chain, actions)


def cancel(chain: Chain, now: float) -> str | None:
    if chain.cancelled_at is not None:
        return None  # cancelled already: a repeat changes nothing
    status = chain.status
    if status in (ChainStatus.SUCCEEDED, ChainStatus.FAILED):
        return f"the chain has {status.value} already: there is nothing to cancel"
    if chain.error is not None or chain.end_reason is not None:
        return "the chain has ended and is archiving its last video: there is nothing to cancel"
    chain.cancelled_at, chain.waiting = now, None
    return None


def resume(chain: Chain, actions: list[Action]) -> str | None:
    status = chain.status
    if status not in (ChainStatus.FAILED, ChainStatus.CANCELLED):
        if chain.cancelled_at is not None:
            return (
                "the chain is still cancelling (a paid step is being followed to its end): "
                "resume it once it is cancelled"
            )
        return f"only a failed or cancelled chain can be resumed; this one is {status.value}"
    unknown = [s for s in chain.steps if s.status is StepStatus.ATTENTION]
    newest = chain.steps[-1]
    if unknown:
        # Its create may have been billed: hand it back to the submitter with a lapsed claim,
        # so the next claim reconciles it (by external id, the task list, its callback).
        step = unknown[-1]
        step.status, step.owner, step.claimed_at, step.error = (
            StepStatus.SUBMITTING,
            None,
            None,
            None,
        )
    elif newest.status is StepStatus.PENDING:
        step = newest  # never sent (cancelled before it was): send it now
        step.retry_at = None
    else:
        reason = end_reason_after(
            chain.spec, chain.duration, _extensions_done(chain), ceiling=chain_ceiling(chain)
        )
        if reason is not None:
            return f"nothing remains to do: the chain would end at once ({reason.value})"
        step = _next_step(chain)
        chain.steps.append(step)
    chain.error = chain.end_reason = chain.cancelled_at = chain.waiting = None
    chain.resumed += 1
    actions.append(SubmitStep(step.index))
    return None


def _next_step(chain: Chain) -> Step:
    """A step from the newest good video, or from the chain's start when none succeeded."""
    good = next((s for s in reversed(chain.steps) if s.status is StepStatus.SUCCEED), None)
    spec = chain.spec
    if good is None and spec.text_prompt is not None:
        index = len(chain.steps)
        return Step(
            index=index,
            kind=TaskKind.TEXT2VIDEO.value,
            external_task_id=external_task_id(chain.id, index),
            prompt=spec.text_prompt,
        )
    if good is None:
        step = _new_extension(chain, spec.video_id, spec.task_id)
    else:
        step = _new_extension(chain, good.video_id, good.task_id)
    step.prompt = _extend_prompt(spec, _extensions_done(chain))  # failed tries take no prompt
    return step
