"""``bench.scale``: the 1,000-chain runs of the current and the baseline code, in turn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench import scale

# CPU per step (gateway excluded) of each 1,000-chain run, in the order they are asked for.
CURRENT = [16.0, 30.0, 14.0]  # the middle one is slow: the host had a bad minute
BASELINE = [26.0, 40.0, 30.0]


def fake_run(count: int, cpu: float) -> dict[str, Any]:
    return {
        "chains": count,
        "steps": count * scale.STEPS,
        "seconds": cpu * 4,
        "create_seconds": 1.0,
        "statuses": {"succeeded": count},
        "steps_per_second": 1.0,
        "ms_per_chain": cpu,
        "redis_key_bytes_per_chain": 10_000,
        "redis_key_bytes_by_kind": {},
        "redis_used_memory_delta_per_chain": 10_000,
        "cpu_ms_per_step": {"gateway": 5.0, "web": 3.0, "worker": cpu - 3.0},
        "cpu_ms_per_step_all": cpu + 5.0,
        "cpu_ms_per_step_without_gateway": cpu,
        "cpu_speed_ms_after": 11.0,
        "gateway_creates": count * scale.STEPS,
        "gateway_callbacks_sent": 0,
        "queue_left": 0,
        "foreign_cores": 0.0,
    }


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every measured run, as ``current`` or ``baseline``, with the figures above."""
    order: list[str] = []
    current, baseline = iter(CURRENT), iter(BASELINE)

    def measure(root: Path, count: int, *, timeout: float, code: Path | None = None) -> Any:
        if count != scale.BASELINE_COUNT:
            return fake_run(count, 10.0)
        order.append("current" if code is None else "baseline")
        return fake_run(count, next(current) if code is None else next(baseline))

    @contextmanager
    def baseline_code(root: Path, ref: str) -> Iterator[tuple[str, Path]]:
        yield "a" * 40, tmp_path

    monkeypatch.setattr(scale, "measure", measure)
    monkeypatch.setattr(scale, "baseline_code", baseline_code)
    monkeypatch.setattr(
        scale,
        "imported_from",
        lambda code: {p: str(code / p / "__init__.py") for p in scale.PACKAGES},
    )
    return order


def figure(section: Any, name: str) -> Any:
    return next(f for f in section.figures if f.name == name)


def test_the_two_codes_run_in_turn_and_the_cpu_goal_compares_their_medians(
    calls: list[str], tmp_path: Path
) -> None:
    section = scale.run(tmp_path / "run", quick=False)
    assert calls == ["current", "baseline"] * scale.PAIRS
    cpu = figure(section, "CPU per step 1,000 x 5, gateway excluded")
    assert (cpu.value, cpu.baseline) == (16.0, 30.0)  # the medians, not one run of each
    assert cpu.runs == CURRENT
    assert cpu.met is False  # 16 > 50% of 30
    wall = figure(section, "wall time 1,000 x 5")
    assert wall.value == 16.0 * 4  # the current runs' median
    assert wall.baseline == 30.0 * 4
    assert section.details["baseline"]["run"]["cpu_ms_per_step_without_gateway"] == 30.0


def test_a_quick_run_takes_one_pair(calls: list[str], tmp_path: Path) -> None:
    section = scale.run(tmp_path / "run", quick=True)
    assert calls == ["current", "baseline"]
    cpu = figure(section, "CPU per step 1,000 x 5, gateway excluded")
    assert (cpu.value, cpu.baseline) == (16.0, 26.0)
