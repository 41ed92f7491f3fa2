"""Imports point one way: provider <- core <- adapters <- wiring <- {worker tasks, web, CLI}.

Read from the source (every ``import`` and ``from ... import``, also inside functions), so a
shortcut that would tie a lower layer to a higher one fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kling", "worker", "webhook", "chainctl")

# Lower number, lower layer. A module may import its own layer and the ones below.
LAYERS: tuple[tuple[str, int], ...] = (
    ("kling", 0),  # the provider: client, models, errors, auth, and the fake gateway
    ("worker.core", 1),  # pure rules
    ("worker.tasknames", 1),  # names only
    ("worker.queues", 1),  # which task goes to which queue
    ("worker.state", 2),  # Redis
    ("worker.storage", 2),  # archive storage backends
    ("worker.outbound", 2),  # HTTP out: download, notify, the address guard
    ("worker.settings", 3),
    ("worker.wiring", 3),
    ("worker.runner", 3),
    ("worker.archiver", 3),
    ("worker.celery", 4),
    ("worker.tasks", 4),
    ("webhook", 4),
    ("chainctl", 4),
    ("worker", 4),  # the package itself: ``celery -A worker`` starts here
)
# Entry points that must not reach into each other or into the worker's jobs.
FORBIDDEN = {
    "webhook": ("worker.runner", "worker.archiver", "worker.tasks", "worker.outbound", "chainctl"),
    "chainctl": ("worker", "webhook"),
    "worker": ("webhook", "chainctl"),
}


def layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, rank in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > best[0]
        ):
            best = (len(prefix), rank)
    return None if best is None else best[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


MODULES = modules()


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_the_layers(name: str, path: Path) -> None:
    own = layer(name)
    assert own is not None, f"{name} is in no layer: add it to LAYERS"
    upward = []
    for target in sorted(imports(path)):
        if target in PACKAGES:
            continue  # "from worker import wiring" names a module, checked by its full name
        rank = layer(target)
        if rank is not None and rank > own:
            upward.append(target)
    assert not upward, f"{name} (layer {own}) imports from higher layers: {upward}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_entry_points_stay_out_of_each_other(package: str) -> None:
    for name, path in MODULES:
        if name.split(".")[0] != package:
            continue
        for target in imports(path):
            for banned in FORBIDDEN[package]:
                hit = target == banned or target.startswith(banned + ".")
                assert not hit, f"{name} imports {target}"


def test_task_names_import_nothing() -> None:
    tree = ast.parse((ROOT / "worker" / "tasknames.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
