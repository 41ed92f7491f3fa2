"""The I/O around a chain: talk to the provider, record what happened, archive its videos.

Each method reads input, runs the pure core through an atomic ``Store.transition`` and does
the I/O the outcome asks for. It returns ``None`` when finished, or a delay in seconds after
which it wants to run again (the Celery task turns that into a retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kling.client import KlingClient
from kling.errors import (
    AmbiguousCreate,
    InvalidRequest,
    KlingError,
    MalformedReply,
    NotFound,
    PermanentError,
    RetryableError,
)
from kling.models import ExtendRequest, Task, TaskKind, Text2VideoRequest
from worker.archiver import Archiver
from worker.core import budget, polling, retry, slots, tokens
from worker.core.chain import (
    EARLY_STATUSES,
    Action,
    ArchiveVideo,
    AwaitBudget,
    AwaitSlot,
    Chain,
    Claim,
    Event,
    NeedsAttention,
    Outcome,
    Release,
    Step,
    StepStatus,
    SubmitFailed,
    SubmitRetry,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
    step_name,
)
from worker.core.metrics import create_outcome
from worker.core.reconcile import (
    LIST_MAX_PAGES,
    LIST_PAGE_SIZE,
    Answer,
    Capability,
    Found,
    NotCreated,
    Unknown,
    combine,
    judge_list,
    list_read_far_enough,
    mismatch,
    window_for,
)
from worker.core.schedule import Work
from worker.settings import Settings
from worker.state import Also, also_both
from worker.state.budget import Budget
from worker.state.chains import Store, UnknownChain
from worker.state.metrics import Metrics
from worker.state.polling import CallbackSeen, TaskDurations
from worker.state.slots import Slots
from worker.tasknames import ARCHIVE_VIDEO, REFRESH_STEP, SUBMIT_STEP

log = logging.getLogger(__name__)


def _fields(chain_id: str, step: int, event: str, task_id: str | None = None) -> dict[str, Any]:
    """A log record's ``extra=``: the fields ``LOG_FORMAT=json`` lines carry (worker.logs)."""
    fields: dict[str, Any] = {"chain_id": chain_id, "step": step, "event": event}
    if task_id is not None:
        fields["task_id"] = task_id
    return fields


Enqueue = Callable[[str, tuple[Any, ...]], None]
Later = Callable[[str, tuple[Any, ...], float], None]  # enqueue with a countdown (seconds)


def describe(exc: KlingError) -> str:
    code = f" (code {exc.code})" if exc.code is not None else ""
    return f"{exc.message}{code}"


# Events after which a step may no longer hold a provider slot (``Runner._free_slot``).
_MAY_END_A_HOLD = (TaskUpdate, SubmitRetry, SubmitFailed, NeedsAttention, Release)


# What a provider was seen to do is read once per create; known answers are kept this long.
CAPABILITIES_CACHE_SECONDS = 300.0


class LookupFailed(Exception):
    """Asking the provider about a lost create failed for now; ask again later."""


def attention_message(step: Step, reason: str) -> str:
    parent = f" on video {step.parent_video_id}" if step.parent_video_id else ""
    return (
        "a create request for this step may have reached the provider and been billed, and "
        f"the provider cannot tell whether it did: {reason}. It was not sent again. Look in "
        f"the account's task list for a {step.kind} task{parent} (external_task_id "
        f"{step.external_task_id}) before starting again from the last good video"
    )


class Runner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: KlingClient,
        enqueue: Enqueue,
        archiver: Archiver,
        *,
        slots: Slots | None = None,
        budget: Budget | None = None,
        later: Later | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.later = later  # None: no polls planned here, the sweep's alone (as before)
        self.durations = TaskDurations(store.redis, store.keys)
        self.seen = CallbackSeen(store.redis, store.keys)
        self._healthy: bool | None = None
        self.slots = slots
        self.budget = budget
        self.settings = settings
        self.store = store
        self.provider = provider
        self.enqueue = enqueue
        self.archiver = archiver
        self.clock = clock
        self.metrics = Metrics(store.redis, store.keys, clock=clock)
        self._known: dict[tuple[str, tuple[str, ...]], tuple[float, dict[str, Capability]]] = {}

    # -- plumbing ------------------------------------------------------------------------------
    def dispatch(self, chain_id: str, actions: list[Action], *, owner: str | None = None) -> None:
        """Queue what a transition asked for. With ``owner`` (the task that learnt a step's
        end), the next step's submit runs here and now as that task: one task fewer per
        step. A wait it asks for (a retry, a slot) becomes a submit task with that
        countdown; should this task die meanwhile, the chain's schedule has the step
        (pending, or claimed by ``owner`` until its lease ends).

        The archive is queued after that submit, however it ends: its download would
        otherwise run beside the paid create and slow the step's turnaround. The
        transition registered the video's record, which the archive's sweep finds anyway
        should this task die before queuing it."""
        now: list[int] = []
        archive: list[str] = []
        for action in actions:
            match action:
                case SubmitStep(index) if owner is not None:
                    now.append(index)
                case SubmitStep(index):
                    self.enqueue(SUBMIT_STEP, (chain_id, index))
                case ArchiveVideo(video_id):
                    archive.append(video_id)
        try:
            for index in now:
                assert owner is not None
                delay = self.submit(chain_id, index, owner=owner)
                if delay is not None:
                    if self.later is not None:
                        self.later(SUBMIT_STEP, (chain_id, index), delay)
                    else:
                        self.enqueue(SUBMIT_STEP, (chain_id, index))
        finally:
            for video_id in archive:
                self.enqueue(ARCHIVE_VIDEO, (video_id,))

    def _request(self, chain: Chain, step: Step) -> ExtendRequest | Text2VideoRequest:
        spec = chain.spec
        callback = tokens.callback_url(
            self.settings.public_base(), self.settings.secret(), chain.id, step.index
        )
        external = step.external_task_id if self.settings.kling_external_task_id else None
        if step.kind == TaskKind.TEXT2VIDEO.value:
            return Text2VideoRequest(
                prompt=step.prompt or "",
                negative_prompt=spec.negative_prompt,
                cfg_scale=spec.cfg_scale,
                duration=spec.text_duration,
                callback_url=callback,
                external_task_id=external,
            )
        return ExtendRequest(
            video_id=step.parent_video_id or "",
            task_id=step.parent_task_id,
            prompt=step.prompt,
            negative_prompt=spec.negative_prompt,
            cfg_scale=spec.cfg_scale,
            callback_url=callback,
            external_task_id=external,
        )

    def _record(self, chain_id: str, step: Step, task: Task, *, also: Also | None = None) -> None:
        """Record the step's task: its owner (the step, unless bound already) is written in
        the same commit as the step, so no crash leaves one without the other."""
        index = step.index
        owner = self.store.owns(task.task_id, step_name(chain_id, index))
        look_at = self._look_at(step.kind, self.clock())
        out = self._apply(
            chain_id, Submitted(index, task, look_at=look_at), also=also_both(owner, also)
        )
        if task.status.terminal:  # a lookup found it finished already: that reply is a query
            out = self._apply(chain_id, TaskUpdate(index, task))
        self.dispatch(chain_id, out.actions)
        self._plan_poll(chain_id, out.chain.step(index))

    # -- submit one step -------------------------------------------------------------------------
    def submit(self, chain_id: str, index: int, *, owner: str, attempt: int = 0) -> float | None:
        lease = self.settings.submit_lease_seconds
        costs = self.budget.account_costs() if self.budget is not None else {}
        out = self._apply(chain_id, Claim(index, owner, lease, account_costs=costs))
        if out.verdict is Verdict.SKIP:
            return None
        step = out.chain.step(index)
        kind = TaskKind(step.kind)
        if out.verdict is Verdict.RECONCILE:
            try:
                answer = self._reconcile(chain_id, step, kind)
            except LookupFailed as exc:
                log.warning("step %s/%s: %s; will ask again", chain_id, index, exc)
                return self._lookup_again(chain_id, step, str(exc), attempt)
            match answer:
                case Found(task):
                    log.info(
                        "step %s/%s: found task %s, not resubmitting",
                        chain_id,
                        index,
                        task.task_id,
                        extra=_fields(chain_id, index, "step.found", task.task_id),
                    )
                    self._record(chain_id, step, task)
                    return None
                case Unknown(reason):
                    log.error(
                        "step %s/%s needs attention: %s",
                        chain_id,
                        index,
                        reason,
                        extra=_fields(chain_id, index, "step.attention"),
                    )
                    self._apply(chain_id, NeedsAttention(index, attention_message(step, reason)))
                    return None
                case NotCreated(how):
                    log.info("step %s/%s: not created (%s); sending it", chain_id, index, how)

        if self.store.get(chain_id).cancelled_at is not None:
            # Cancelled since the claim: one read narrows the window to the create's own
            # send; a create already on its way is followed and archived like any paid step.
            log.info(
                "step %s/%s: chain cancelled before the create; not sent",
                chain_id,
                index,
                extra=_fields(chain_id, index, "step.not_sent"),
            )
            self._apply(chain_id, Release(index, owner))
            return None
        if self.budget is not None:
            now = self.clock()
            cost = budget.estimate(out.chain, step.kind, costs)
            let = self.budget.admit(chain_id, index, cost, now=now)
            if not let.admitted and let.limit is not None:
                text = budget.waiting_text(let.spent, let.reserved, let.limit, now)
                log.info("step %s/%s held back: %s", chain_id, index, text)
                self._apply(chain_id, AwaitBudget(index, owner, text))
                return self.settings.budget_poll_seconds
        if self.slots is not None:
            slot = self.slots.acquire(chain_id, index, now=self.clock())
            if not slot.taken:
                text = slots.waiting_text(slot.in_use, self.slots.limit)
                self._apply(chain_id, AwaitSlot(index, owner, text))
                return self.settings.slot_poll_seconds  # unless a release hands one over first
        try:
            request = self._request(out.chain, step)
            # When the previous step's end was recorded: its success callback's refresh ran.
            ran = out.chain.step(index - 1).ended_at if index > 0 else None
            task, counted = self._create(kind, request, chain_id, index, ran)
        except InvalidRequest as exc:
            self._apply(chain_id, SubmitFailed(index, describe(exc)))
            return None
        except (AmbiguousCreate, MalformedReply) as exc:
            # The request may have created a billed task. Keep the claim; the retry (same
            # owner) reconciles by external_task_id instead of sending again.
            log.warning(
                "step %s/%s: create reply lost (%s); will look it up",
                chain_id,
                index,
                exc,
                extra=_fields(chain_id, index, "step.create_lost"),
            )
            return self.settings.recheck_after_seconds
        except RetryableError as exc:
            delay = retry.delay(retry.Kind.CREATE, attempt + 1)
            now = self.clock()
            first = step.first_try_at or now
            after = self._apply(
                chain_id,
                SubmitRetry(
                    index,
                    describe(exc),
                    retry_at=now + delay,
                    deadline=first + self.settings.retry_deadline_seconds,
                ),
            )
            return delay if not after.chain.step(index).status.done else None
        except PermanentError as exc:
            if self._exists_already(kind, step.external_task_id, exc):
                return self.submit(chain_id, index, owner=owner, attempt=attempt)
            self._apply(chain_id, SubmitFailed(index, describe(exc), exc.code))
            return None
        log.info(
            "step %s/%s: created task %s",
            chain_id,
            index,
            task.task_id,
            extra=_fields(chain_id, index, "step.created", task.task_id),
        )
        self._record(chain_id, step, task, also=counted)
        self._learn(kind, step, task)
        return None

    def _create(
        self,
        kind: TaskKind,
        request: ExtendRequest | Text2VideoRequest,
        chain_id: str,
        index: int,
        refreshed: float | None,
    ) -> tuple[Task, Also]:
        """Send the create, counted by its outcome (``kc_creates_total``); raises as the
        client does. An accepted one's count comes back as writes for the commit that
        records the task."""
        try:
            task = self.provider.create(kind, request)
        except InvalidRequest:
            raise  # refused before sending: nothing reached the provider
        except KlingError as exc:
            self.metrics.created(kind.value, create_outcome(exc), chain_id=chain_id, index=index)
            raise
        return task, self.metrics.accepted(
            kind.value, chain_id=chain_id, index=index, refreshed=refreshed
        )

    # -- reconcile a create whose reply was lost -----------------------------------------------
    def _reconcile(self, chain_id: str, step: Step, kind: TaskKind) -> Answer:
        """Ask by external id, then the task list (``worker.core.reconcile``).

        Raises LookupFailed when the provider could not be asked: ask again later."""
        by_external_id: NotCreated | Unknown | None = None
        if self.settings.kling_external_task_id:
            try:
                found = self.provider.find_by_external_id(kind, step.external_task_id)
            except (RetryableError, MalformedReply) as exc:
                raise LookupFailed(
                    f"looking the step up by external_task_id failed: {exc}"
                ) from exc
            except PermanentError as exc:
                found = None  # some gateways refuse an unknown external id as a bad parameter
                log.info("step %s/%s: lookup by external id refused: %s", chain_id, step.index, exc)
            if found is not None:
                return Found(found)
            what = f"external_id:{kind}"
            proven = self.store.capabilities(self.provider.base_url, what)[what]
            by_external_id = (
                NotCreated("a lookup by external_task_id, which this provider answers, found none")
                if proven is Capability.WORKS
                else Unknown(
                    "a lookup by external_task_id found none, but this provider has not been "
                    "seen to find this service's own tasks that way"
                )
            )
        # The list too, even after a proven "none": a gateway may have changed since.
        return combine(by_external_id, self._scan_list(chain_id, step, kind))

    def _scan_list(self, chain_id: str, step: Step, kind: TaskKind) -> Answer:
        what = f"list:{kind}"
        window = window_for(step, self.clock())
        tasks: list[Task] = []
        complete = False
        for page in range(1, LIST_MAX_PAGES + 1):
            try:
                found = self.provider.list_tasks(kind, page=page, page_size=LIST_PAGE_SIZE)
            except (RetryableError, MalformedReply) as exc:
                raise LookupFailed(f"reading the task list failed: {exc}") from exc
            except PermanentError as exc:
                return Unknown(f"the provider refused to list its tasks ({describe(exc)})")
            tasks += found
            if list_read_far_enough(found, window):
                complete = True
                break
        return judge_list(
            tasks,
            step,
            window,
            owners=self.store.task_owners(t.task_id for t in tasks),
            me=step_name(chain_id, step.index),
            complete=complete,
            capability=self.store.capabilities(self.provider.base_url, what)[what],
        )

    def _lookup_again(self, chain_id: str, step: Step, reason: str, attempt: int) -> float | None:
        """Keep the claim and ask again, until the retry deadline: then a person decides."""
        first = step.first_try_at or self.clock()
        if self.clock() - first >= self.settings.retry_deadline_seconds:
            message = attention_message(step, f"the provider kept failing to answer ({reason})")
            self._apply(chain_id, NeedsAttention(step.index, message))
            return None
        return retry.delay(retry.Kind.LOOKUP, attempt + 1)

    def _learn(self, kind: TaskKind, step: Step, task: Task) -> None:
        """Find out (once a day) whether this provider can be asked about a lost create.

        Right after a create whose reply came home, the task surely exists: a provider that
        cannot find it by its external id, or does not list it, cannot be believed when it
        says it has no such task. Costs one Redis read per create once known.
        """
        provider = self.provider.base_url
        by_id, by_list = f"external_id:{kind}", f"list:{kind}"
        known = self._capabilities(provider, by_id, by_list)
        if self.settings.kling_external_task_id and known[by_id] is Capability.UNKNOWN:
            self._remember(provider, by_id, self._probe_external_id(kind, step, task))
        if known[by_list] is Capability.UNKNOWN:
            self._remember(provider, by_list, self._probe_list(kind, task))

    def _capabilities(self, provider: str, *whats: str) -> dict[str, Capability]:
        """``Store.capabilities``, kept in the process for ``CAPABILITIES_CACHE_SECONDS`` once
        every one asked for is known: they change at most daily (``CAPABILITY_TTL``)."""
        now = self.clock()
        cached = self._known.get((provider, whats))
        if cached is not None and now - cached[0] < CAPABILITIES_CACHE_SECONDS:
            return cached[1]
        found = self.store.capabilities(provider, *whats)
        if Capability.UNKNOWN not in found.values():
            self._known[(provider, whats)] = (now, found)
        return found

    def _probe_external_id(self, kind: TaskKind, step: Step, task: Task) -> Capability:
        try:
            found = self.provider.find_by_external_id(kind, step.external_task_id)
        except (RetryableError, MalformedReply):
            return Capability.UNKNOWN  # ask again after the next create
        except PermanentError:
            return Capability.BROKEN
        return Capability.WORKS if found and found.task_id == task.task_id else Capability.BROKEN

    def _probe_list(self, kind: TaskKind, task: Task) -> Capability:
        try:
            page = self.provider.list_tasks(kind, page=1, page_size=LIST_PAGE_SIZE)
        except (RetryableError, MalformedReply):
            return Capability.UNKNOWN
        except PermanentError:
            return Capability.BROKEN
        listed = any(t.task_id == task.task_id for t in page)
        return Capability.WORKS if listed else Capability.BROKEN

    def _remember(self, provider: str, what: str, verdict: Capability) -> None:
        if verdict is Capability.UNKNOWN:
            return
        self.store.set_capability(provider, what, verdict)
        self._known.clear()  # read again, with this one, at the next create
        if verdict is Capability.BROKEN:
            log.warning(
                "provider %s: %s does not find tasks this service just created; a create whose "
                "reply is lost is reconciled another way, or left for a person",
                provider,
                what.replace("_", " "),
            )

    def _exists_already(self, kind: TaskKind, external_id: str, exc: PermanentError) -> bool:
        """A parameter error may be the provider refusing a duplicate external_task_id: the
        step's first create landed after all. The claim is still ours, so the next pass
        reconciles and records that task instead of failing the step."""
        if not self.settings.kling_external_task_id or exc.code not in (1200, 1201):
            return False
        try:
            return self.provider.find_by_external_id(kind, external_id) is not None
        except KlingError:
            return False

    # -- learn how a step is doing ---------------------------------------------------------------
    def refresh(
        self,
        chain_id: str,
        index: int,
        *,
        candidate: str | None = None,
        attempt: int = 0,
        planned: float | None = None,
        reported: str | None = None,
        owner: str | None = None,
    ) -> float | None:
        """Query the step's task and apply what it says. ``candidate``: the task id that a
        callback on the step's own URL named, for a step whose create reply is not home yet.
        ``owner``: the task running this, which then submits the next step itself
        (``dispatch``).

        ``planned``: this is the poll a query planned (``_plan_poll``), named by the step's
        ``news_at`` that query wrote. When the step has had news since, another query (a
        callback's, the sweep's) planned the step's next poll instead: this one is dropped,
        so a step never has more than one planned poll going.

        ``reported``: the status the callback that asked for this claimed. Only a terminal
        status leads to any action, so a callback claiming an earlier one (``submitted``,
        ``processing``) costs no query once the step's task is known; it still names its
        task for a step whose create reply is not home yet."""
        step = self.store.get(chain_id).step(index)
        if step.status.done:
            return None
        if planned is not None and step.news_at != planned:
            return None
        if step.task_id is not None and reported is not None and reported in EARLY_STATUSES:
            return None
        if step.task_id is None:
            # Only a step mid-submit can be racing its own create reply; anything else is news
            # about nothing (the chain's schedule polls every real task anyway).
            if step.status is not StepStatus.SUBMITTING or candidate is None:
                return None
            return self._confirm_candidate(chain_id, step, candidate, attempt)
        task_id = step.task_id
        counted: list[Also] = []
        try:
            task = self.metrics.query(
                lambda: self.provider.get(TaskKind(step.kind), task_id), defer=counted
            )
        except (RetryableError, MalformedReply) as exc:
            log.warning(
                "step %s/%s: query failed: %s",
                chain_id,
                index,
                exc,
                extra=_fields(chain_id, index, "step.query_failed", task_id),
            )
            if isinstance(exc, RetryableError) and exc.code == polling.RATE_LIMITED:
                # Querying too fast: back off (doubling, jittered) and keep the step's poll.
                return polling.rate_limit_backoff(
                    attempt + 1, self.durations.of(step.kind), self.settings.poll_curve()
                )
            return retry.after(retry.Kind.QUERY, attempt + 1)  # None: the sweep polls later
        except PermanentError as exc:
            log.error(
                "step %s/%s: query refused: %s",
                chain_id,
                index,
                describe(exc),
                extra=_fields(chain_id, index, "step.query_refused", task_id),
            )
            return None
        log.info(
            "step %s/%s: task %s %s",
            chain_id,
            index,
            task_id,
            task.status,
            extra=_fields(chain_id, index, "step.status", task_id),
        )
        look_at = self._look_at(step.kind, step.submitted_at or step.news_at)
        # A success's duration sample rides in this commit (Store.transition), for polling.
        out = self._apply(chain_id, TaskUpdate(index, task, look_at=look_at), also=counted[0])
        self._plan_poll(chain_id, out.chain.step(index))
        self.dispatch(chain_id, out.actions, owner=owner)
        return None

    # -- adaptive polling (worker.core.polling) ------------------------------------------------
    def callbacks_healthy(self) -> bool:
        """Whether provider callbacks are arriving (``polling.callback_health``); says so in
        the log when that changes."""
        s = self.settings
        health = polling.callback_health(
            s.public_base(),
            self.seen.last(cached=True),
            now=self.clock(),
            silence=s.callback_silence_seconds,
        )
        if health.reachable != self._healthy:
            if not health.reachable:
                log.warning("callbacks: %s", health.reason)
            elif self._healthy is not None:
                log.info("callbacks: arriving again (%s)", health.reason)
            self._healthy = health.reachable
        return health.reachable

    def _look_at(self, kind: str, started: float | None) -> float | None:
        """With callbacks arriving (adaptive polling), the one query planned for a task: the
        late look just after the kind's longest tasks end, covering a lost callback. It rides
        in the step (``Step.look_at``), so the chain's schedule carries it to the sweep: no
        task is queued for it, and a callback that ends the step first takes it off. None:
        no plan sooner than POLL_AFTER_SECONDS, or callbacks are not arriving (then
        ``_plan_poll`` queues each query, densely, as the only way to learn of the end)."""
        s = self.settings
        if polling.Mode(s.polling) is not polling.Mode.ADAPTIVE or not self.callbacks_healthy():
            return None
        now = self.clock()
        wait = polling.next_poll(
            now - (started if started is not None else now),
            self.durations.of(kind),
            callbacks_healthy=True,
            curve=s.poll_curve(),
        )
        return now + wait if wait <= s.poll_after_seconds - s.sweep_seconds else None

    def _plan_poll(self, chain_id: str, step: Step) -> None:
        """Plan the next query of an active step (``polling.next_poll``) as a refresh with a
        countdown, named by the ``news_at`` just written, when callbacks are not arriving or
        with ``POLLING=fixed``. (With callbacks, the late look rides in the step instead:
        ``_look_at``.) A plan within one sweep of ``POLL_AFTER_SECONDS`` is left to the
        sweep, which polls a task quiet that long anyway. The sweep's poll stays the net
        under a plan lost with its worker; with ``POLLING=fixed`` it comes one sweep later
        (``Timing.poll_grace``)."""
        if self.later is None or not step.status.active or step.news_at is None:
            return
        s = self.settings
        mode = polling.Mode(s.polling)
        if mode is polling.Mode.ADAPTIVE and self.callbacks_healthy():
            return
        started = step.submitted_at or step.news_at
        wait = polling.next_poll(
            self.clock() - started,
            self.durations.of(step.kind),
            callbacks_healthy=mode is polling.Mode.FIXED,
            curve=s.poll_curve(),
            mode=mode,
        )
        if mode is polling.Mode.ADAPTIVE and wait > s.poll_after_seconds - s.sweep_seconds:
            return
        self.later(REFRESH_STEP, (chain_id, step.index, None, step.news_at), wait)

    def _confirm_candidate(
        self, chain_id: str, step: Step, candidate: str, attempt: int
    ) -> float | None:
        """The callback beat the create reply home. Its body is only a hint: record the task
        it names once a query shows it can be this step's (``worker.core.reconcile.mismatch``)."""
        try:
            task = self.metrics.query(lambda: self.provider.get(TaskKind(step.kind), candidate))
        except (RetryableError, MalformedReply) as exc:
            log.info("step %s/%s: query of candidate failed: %s", chain_id, step.index, exc)
            return retry.after(retry.Kind.CANDIDATE, attempt + 1)
        except NotFound:
            log.warning(
                "step %s/%s: callback named unknown task %s", chain_id, step.index, candidate
            )
            return None
        except PermanentError as exc:
            log.warning("step %s/%s: candidate query refused: %s", chain_id, step.index, exc)
            return None
        me = step_name(chain_id, step.index)
        owner = self.store.task_owners([task.task_id]).get(task.task_id)
        window = window_for(step, self.clock())
        problem = mismatch(task, step, window, owner=owner, me=me, by_url=True)
        if problem is None and self.store.claim_task(task.task_id, me) != me:
            problem = "another step recorded it meanwhile"
        if problem is not None:
            log.warning(
                "step %s/%s: a callback named task %s, which cannot be this step's: %s",
                chain_id,
                step.index,
                task.task_id,
                problem,
            )
            return None
        self._record(chain_id, step, task)
        return None

    def _apply(self, chain_id: str, event: Event, *, also: Also | None = None) -> Outcome:
        out = self.store.transition(chain_id, event, also=also)
        self.archiver.notify_end(out)
        self.archiver.prune_later(out)
        if self.slots is not None and isinstance(event, _MAY_END_A_HOLD):
            self._free_slot(out.chain, event.index)
        return out

    # -- provider slots (KLING_CONCURRENCY) -----------------------------------------------------
    def _free_slot(self, chain: Chain, index: int) -> None:
        """After an event that may end a step's hold: free its slot unless it still holds one
        (``worker.core.slots.holds``), and hand free slots to the first in line."""
        assert self.slots is not None
        status = chain.step(index).status
        if slots.holds(status):
            return
        waiting = status is StepStatus.PENDING and not slots.waiter_stale(chain, index)
        self._hand_over(self.slots.release(chain.id, index, leave_line=not waiting))

    def _hand_over(self, nexts: list[tuple[str, int]]) -> None:
        for chain_id, index in nexts:
            self.enqueue(SUBMIT_STEP, (chain_id, index))

    def sweep_slots(self) -> int:
        """Take slots from holders whose step no longer holds one, drop waiters that will
        never be sent, and hand free slots to the first in line again."""
        if self.slots is None:
            return 0
        reclaimed = 0
        for name, seen in self.slots.holders().items():
            chain_id, index = slots.parse(name)
            if slots.holder_stale(self._chain_or_none(chain_id), index):
                reclaimed += self.slots.reclaim(name, seen)
        for name in self.slots.waiters():
            chain_id, index = slots.parse(name)
            if slots.waiter_stale(self._chain_or_none(chain_id), index):
                self.slots.forget_waiter(name)
        if reclaimed:
            log.warning("slots: reclaimed %d slot(s) whose step no longer holds one", reclaimed)
        self._hand_over(self.slots.next_up())
        return reclaimed

    def sweep_budget(self) -> int:
        """Drop reservations whose step is no longer in flight (a crash between admission
        and the transition that would have dropped them)."""
        if self.budget is None:
            return 0
        reclaimed = 0
        for name, seen in self.budget.reservations().items():
            chain_id, index = slots.parse(name)
            if slots.holder_stale(self._chain_or_none(chain_id), index):
                reclaimed += self.budget.reclaim(name, seen)
        if reclaimed:
            log.warning("budget: dropped %d reservation(s) of steps not in flight", reclaimed)
        return reclaimed

    def _chain_or_none(self, chain_id: str) -> Chain | None:
        try:
            return self.store.get(chain_id)
        except UnknownChain:
            return None

    # -- the safety net --------------------------------------------------------------------------
    def sweep(self) -> int:
        """Enqueue owed work: quiet tasks to poll, stalled submits, and the archive's pending
        videos nearest their deadline first (``Archiver.sweep``)."""
        s = self.settings
        lock = self.store.keys.sweep_lock
        if not self.store.redis.set(lock, "1", nx=True, px=int(s.sweep_seconds * 800)):
            return 0  # another beat already swept in this interval
        hold = min(s.poll_after_seconds, s.submit_lease_seconds)
        items = self.store.take_due(now=self.clock(), hold=hold)
        # A step a callback said succeeded a moment ago looks quiet only because the refresh
        # queued with that callback waits behind others: a poll queued behind it would find
        # the step ended, and only make the backlog longer. Polled all the same, should that
        # refresh be lost, once POLL_AFTER_SECONDS have passed plus the latest turnaround
        # (how long such a refresh waits to run now: a backlog longer than the ceiling would
        # otherwise have a stale poll queued behind every refresh it holds).
        announced = self.metrics.announced(
            [(d.chain_id, d.index) for d in items if d.work is Work.POLL],
            within=s.poll_after_seconds,
        )
        sent = 0
        for due in items:
            match due.work:
                case Work.POLL if (due.chain_id, due.index) in announced:
                    continue  # held back for ``hold`` by take_due: looked at again then
                case Work.POLL:
                    self.enqueue(REFRESH_STEP, (due.chain_id, due.index))
                case Work.SUBMIT | Work.RECONCILE:  # a cancelled chain's claim only reconciles
                    self.enqueue(SUBMIT_STEP, (due.chain_id, due.index))
            sent += 1
        self.sweep_slots()
        self.sweep_budget()
        videos = self.archiver.sweep()
        self.archiver.sweep_prunes()
        trimmed = self.store.trim_expired(now=self.clock())
        if trimmed:
            log.info("sweep: %d expired chain(s) taken out of the listing", trimmed)
        if sent or videos:
            log.info("sweep: enqueued %d owed chain item(s), %d video(s)", sent, videos)
        if len(items) > sent:
            log.info(
                "sweep: %d poll(s) not sent: a callback said their step succeeded, and its "
                "refresh is queued",
                len(items) - sent,
            )
        return sent + videos
