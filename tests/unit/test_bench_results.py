"""``bench/results.json``: a run of some sections keeps the figures of the others."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import Section, write_results

FACTS = {"cores_logical": 2}


def section(name: str, value: float) -> Section:
    s = Section(name)
    s.add(f"{name} figure", value, "s", baseline=2 * value, goal="<= 1 s", met=value <= 1)
    return s


def test_a_partial_run_replaces_its_sections_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_results(path, FACTS, [section("ingest", 0.5), section("slots", 3.0)], mode="full")
    write_results(path, FACTS, [section("polling", 0.7), section("slots", 0.9)], mode="quick")
    data = json.loads(path.read_text())
    assert set(data["sections"]) == {"ingest", "slots", "polling"}
    figures = {f["name"]: f for f in data["figures"]}
    assert set(figures) == {"ingest figure", "slots figure", "polling figure"}
    assert figures["slots figure"]["value"] == 0.9  # replaced, not kept twice
    assert figures["ingest figure"]["baseline"] == 1.0
    assert data["goals"] == {"met": 3, "missed": 0}
    assert data["sections"]["ingest"]["mode"] == "full"  # when and how each section ran
    assert data["sections"]["polling"]["mode"] == data["mode"] == "quick"


def test_an_unreadable_results_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("{not json")
    write_results(path, FACTS, [section("polling", 0.7)], mode="full")
    assert [f["name"] for f in json.loads(path.read_text())["figures"]] == ["polling figure"]
