"""Fault knobs: JSON merge, validation, defaults."""

from __future__ import annotations

import pytest

from kling.fake.faults import Faults, FaultsError


def test_defaults_are_a_well_behaved_provider() -> None:
    knobs = Faults().to_dict()
    assert knobs["callbacks"] == {
        "drop": 0.0,
        "duplicate": 0,
        "delay_seconds": 0.0,
        "reorder": False,
    }
    assert knobs["support_external_task_id"] is True
    assert knobs["ranges"] is True
    assert knobs["download_bytes_per_second"] is None
    assert knobs["fail_next_creates"]["count"] == 0
    assert knobs["result_durations"] == "whole"


@pytest.mark.parametrize("value", ["whole", "segment", "missing"])
def test_result_durations_takes_its_three_values(value: str) -> None:
    assert Faults().merged({"result_durations": value}).result_durations == value


def test_a_patch_changes_only_the_fields_it_gives() -> None:
    base = Faults().merged({"callbacks": {"duplicate": 2}, "fail_next_creates": {"code": 1303}})
    merged = base.merged({"callbacks": {"drop": 1}, "fail_next_creates": {"count": 3}})
    assert merged.callbacks.duplicate == 2
    assert merged.callbacks.drop == 1.0
    assert (merged.fail_next_creates.count, merged.fail_next_creates.code) == (3, 1303)
    assert merged.fail_next_creates.http_status == 429
    assert base.fail_next_creates.count == 0  # the original is left alone


def test_null_puts_a_nested_knob_back_to_its_defaults() -> None:
    armed = Faults().merged({"callbacks": {"reorder": True, "duplicate": 3}})
    assert armed.callbacks.reorder is True
    assert armed.merged({"callbacks": None}).to_dict() == Faults().to_dict()


@pytest.mark.parametrize(
    "patch",
    [
        [],
        {"no_such_knob": 1},
        {"callbacks": {"nope": 1}},
        {"callbacks": {"drop": 1.5}},
        {"callbacks": {"drop": "all"}},
        {"callbacks": {"duplicate": -1}},
        {"callbacks": {"duplicate": 1.5}},
        {"callbacks": {"reorder": 1}},
        {"callbacks": 3},
        {"fail_next_creates": {"http_status": 200}},
        {"fail_next_creates": {"count": True}},
        {"drop_next_creates": {"mode": "explode"}},
        {"drop_next_creates": {"hang_seconds": -1}},
        {"download_bytes_per_second": 0},
        {"ranges": "yes"},
        {"require_parent_task_id": None},
        {"result_durations": "parts"},
        {"result_durations": None},
        {"result_durations": True},
    ],
)
def test_bad_patches_are_refused_whole(patch: object) -> None:
    knobs = Faults()
    with pytest.raises(FaultsError):
        knobs.merged(patch)
    with pytest.raises(FaultsError):
        knobs.merged({"callbacks": {"duplicate": 5}, "zzz": patch})
    assert knobs.to_dict() == Faults().to_dict()


def test_redirect_next_downloads_is_off_by_default_and_merges_its_fields() -> None:
    assert Faults().to_dict()["redirect_next_downloads"] == {
        "count": 0,
        "location": "",
        "status": 302,
    }
    armed = Faults().merged(
        {"redirect_next_downloads": {"count": 2, "location": "http://127.0.0.2:9/x.mp4"}}
    )
    knob = armed.redirect_next_downloads
    assert (knob.count, knob.location, knob.status) == (2, "http://127.0.0.2:9/x.mp4", 302)
    assert armed.merged({"redirect_next_downloads": {"status": 307}}).redirect_next_downloads == (
        type(knob)(count=2, location="http://127.0.0.2:9/x.mp4", status=307)
    )


@pytest.mark.parametrize(
    "patch",
    [
        {"redirect_next_downloads": {"status": 200}},
        {"redirect_next_downloads": {"status": 304}},
        {"redirect_next_downloads": {"status": True}},
        {"redirect_next_downloads": {"count": -1}},
        {"redirect_next_downloads": {"location": 5}},
        {"redirect_next_downloads": {"where": "x"}},
        {"redirect_next_downloads": "http://x/"},
    ],
)
def test_bad_redirect_patches_are_refused(patch: object) -> None:
    with pytest.raises(FaultsError, match="redirect_next_downloads"):
        Faults().merged(patch)
