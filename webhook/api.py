"""What a client may ask for in ``POST /chains``, checked before anything is stored or paid for."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kling.models import MAX_PROMPT_CHARS, TaskKind
from worker.core import webhooks
from worker.core.chain import MAX_STEP_SECONDS, MAX_TOTAL_SECONDS, Spec

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Units = Annotated[
    Decimal, Field(gt=0, max_digits=18, decimal_places=6, allow_inf_nan=False)
]  # the provider's units, as a JSON number or a decimal string ("12.5")
MAX_STEPS = 60


class ChainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    video_id: Id | None = None
    task_id: Id | None = None
    text_prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = None
    text_duration: Literal[5, 10] = 5
    source_duration: Annotated[float, Field(gt=0, le=MAX_TOTAL_SECONDS)] | None = None
    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    cfg_scale: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    target_seconds: Annotated[float, Field(gt=0, le=MAX_TOTAL_SECONDS)] | None = None
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    prompts: Annotated[list[Prompt], Field(max_length=MAX_STEPS)] | None = None
    # Per-chain webhooks (worker.core.webhooks); the address check needs DNS: webhook.app.
    webhook_url: str | None = None
    webhook_events: Annotated[list[str], Field(max_length=20)] | None = None
    metadata: dict[str, Any] | None = None
    max_units: Units | None = None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        problem = None if value is None else webhooks.webhook_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        problem = webhooks.events_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return list(dict.fromkeys(value))  # repeats once, in the order given

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if value is None else webhooks.metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChainRequest:
        if (self.video_id is None) == (self.text_prompt is None):
            raise ValueError("give exactly one of video_id (extend a video) or text_prompt")
        if self.text_prompt is not None and (self.task_id or self.source_duration):
            raise ValueError("task_id and source_duration belong to video_id chains")
        if self.target_seconds is None and self.steps is None and not self.prompts:
            raise ValueError("give target_seconds (up to 180) or steps (at least 1)")
        if self.webhook_events is not None and self.webhook_url is None:
            raise ValueError("webhook_events filters the events sent to webhook_url: give both")
        if self.prompts and self.steps is not None and len(self.prompts) > self.steps:
            raise ValueError(f"prompts has {len(self.prompts)} entries but steps is {self.steps}")
        start = self.source_duration if self.video_id else float(self.text_duration)
        if start is not None:
            if self.target_seconds is not None and self.video_id and start >= self.target_seconds:
                raise ValueError(
                    f"the source is already {start:g} s, at or past target_seconds "
                    f"{self.target_seconds:g}: nothing to do"
                )
            if self.video_id and start + MAX_STEP_SECONDS > MAX_TOTAL_SECONDS:
                raise ValueError(
                    f"the source is {start:g} s: one more extension could pass the 180 s cap"
                )
        return self

    def spec(self) -> Spec:
        steps = self.steps
        if steps is None and self.target_seconds is None and self.prompts:
            steps = len(self.prompts)
        return Spec(
            video_id=self.video_id,
            task_id=self.task_id,
            text_prompt=self.text_prompt,
            text_duration=self.text_duration,
            source_duration=self.source_duration,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            cfg_scale=self.cfg_scale,
            prompts=list(self.prompts or []),
            target_seconds=self.target_seconds,
            steps=steps,
            webhook_url=self.webhook_url,
            webhook_events=self.webhook_events,
            metadata=self.metadata,
            max_units=None if self.max_units is None else f"{self.max_units.normalize():f}",
        )


class ArchiveTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: Id
    kind: TaskKind = TaskKind.VIDEO_EXTEND


class ArchiveRequest(BaseModel):
    """``POST /archive``: tasks of the account whose videos must be kept."""

    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[ArchiveTask], Field(min_length=1, max_length=500)]


class BudgetRequest(BaseModel):
    """``PUT /spend/budget``: the account's daily units (null: back to DAILY_UNIT_BUDGET)."""

    model_config = ConfigDict(extra="forbid")

    daily_units: Units | None


def problems(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as ``{"field", "message"}`` a person can act on."""
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or None
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"field": field, "message": message})
    return out
